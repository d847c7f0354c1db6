"""ULIDs for decisions: 48-bit millisecond time + 80 random bits, Crockford base32.

They sort by creation time, so the decision log reads in order without another index.

Example:
    >>> len(new_ulid())
    26
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
"""Two digits for every 10-bit value: 13 lookups encode the 130 bits of a ULID."""
_SHIFTS = tuple(range(120, -1, -10))
_lock = threading.Lock()
_last = (0, 0)
_entropy = b""
"""Random bytes read ahead from the OS in one call (a system call per id is slow in
sandboxes), consumed 10 at a time."""


def _random80() -> int:
    global _entropy
    if len(_entropy) < 10:
        _entropy = os.urandom(4000)
    chunk, _entropy = _entropy[:10], _entropy[10:]
    return int.from_bytes(chunk, "big")


def new_ulid() -> str:
    """A new ULID, strictly increasing within this process."""
    global _last
    with _lock:
        ms = time.time_ns() // 1_000_000
        last_ms, last_rand = _last
        rand = last_rand + 1 if ms <= last_ms else _random80()
        ms = max(ms, last_ms)
        if rand >= 1 << 80:  # 2**80 ids in one millisecond: move to the next one
            ms, rand = ms + 1, _random80()
        _last = (ms, rand)
    value = (ms << 80) | rand
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])
