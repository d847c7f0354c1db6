"""Decision ids: ULIDs that sort by creation time and never repeat within a process."""

from __future__ import annotations

import itertools
import time

from magistrate.ids import new_ulid

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _decode(ulid: str) -> int:
    value = 0
    for char in ulid:
        value = value * 32 + CROCKFORD.index(char)
    return value


def test_ulids_increase_carry_the_time_and_use_crockford_digits():
    before = time.time_ns() // 1_000_000
    ids = [new_ulid() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 26 and set(i) <= set(CROCKFORD) for i in ids)
    values = [_decode(i) for i in ids]
    assert all(b > a for a, b in itertools.pairwise(values))
    assert before <= values[0] >> 80 and values[-1] >> 80 <= after + 1
    # 80 random bits: the ids of one millisecond differ in their random part, not by chance
    assert len({v & ((1 << 80) - 1) for v in values}) == len(values)
