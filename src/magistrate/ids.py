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
_lock = threading.Lock()
_last = (0, 0)


def new_ulid() -> str:
    """A new ULID, strictly increasing within this process."""
    global _last
    with _lock:
        ms = time.time_ns() // 1_000_000
        last_ms, last_rand = _last
        rand = last_rand + 1 if ms <= last_ms else int.from_bytes(os.urandom(10), "big")
        ms = max(ms, last_ms)
        if rand >= 1 << 80:  # 2**80 ids in one millisecond: move to the next one
            ms, rand = ms + 1, int.from_bytes(os.urandom(10), "big")
        _last = (ms, rand)
    value = (ms << 80) | rand
    return "".join(_ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(26)))
