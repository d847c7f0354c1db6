"""Back-pressure and short-term memory for the service: the bounded queue in front of the
backend, per-key rate limits, and small TTL caches (results, idempotency keys).

All of it lives in one process: with `--workers N` each worker has its own queue, limits and
caches (the decision log and the policies are shared through the store).
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from magistrate.errors import Overloaded, TooLarge

V = TypeVar("V")


class Admission:
    """A bounded queue of work units (one unit = one item judged under one policy).

    At most `concurrency` units run at once (the backend's width); up to `queue` more wait.
    Work past that is refused at once with a Retry-After estimate, instead of waiting an
    unbounded time: callers retry, or route elsewhere.

    Args:
        concurrency: Units the backend works on at once.
        queue: Units allowed to wait.
        clock: Monotonic clock (tests pass a fake).
    """

    def __init__(
        self, concurrency: int, queue: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.concurrency = max(1, concurrency)
        self.capacity = self.concurrency + max(0, queue)
        self.in_use = 0
        self.seconds_per_unit = 1.0  # moving average, updated as work finishes
        self._clock = clock

    def admit(self, units: int) -> None:
        """Take `units` places or refuse.

        Raises:
            Overloaded: Not enough free places; `retry_after` estimates when there will be.
            TooLarge: More places than the queue has at all (it would never fit).
        """
        if units > self.capacity:
            raise TooLarge(
                f"This request needs {units} judgements at once but the server queues at most "
                f"{self.capacity}; send fewer items or policies per request.",
                code="too_many_judgements",
            )
        if self.in_use + units > self.capacity:
            backlog = self.in_use + units - self.capacity
            wait = backlog * self.seconds_per_unit / self.concurrency
            raise Overloaded(
                f"The server is busy ({self.in_use} judgements queued or running); retry "
                "after the Retry-After delay.",
                retry_after=max(1, min(300, math.ceil(wait))),
            )
        self.in_use += units

    def release(self, units: int, seconds_each: float | None = None) -> None:
        """Give back places; `seconds_each` feeds the wait estimate."""
        self.in_use = max(0, self.in_use - units)
        if seconds_each is not None and seconds_each >= 0:
            self.seconds_per_unit = 0.8 * self.seconds_per_unit + 0.2 * seconds_each


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: `per_minute` requests, with bursts of up to 10 seconds' worth.

    Args:
        per_minute: Default rate; a key's own rate (if set) overrides it per call.
        clock: Monotonic clock (tests pass a fake).
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, _Bucket] = {}
        self._clock = clock

    def check(self, key: str, per_minute: int | None = None) -> int:
        """Spend one request for `key`; 0 when allowed, else the seconds until it would be."""
        rate = per_minute or self.per_minute
        if rate <= 0:
            return 0
        per_second = rate / 60.0
        burst = max(1.0, per_second * 10)
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * per_second)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - bucket.tokens) / per_second))


class TTLCache(Generic[V]):
    """A small LRU cache whose entries expire after `ttl_s` seconds, bounded by entry count
    and, with `size_of`, by bytes: an entry count alone says nothing about memory when one
    entry may be a few bytes or a few hundred kilobytes.

    Args:
        ttl_s: Seconds an entry stays (`math.inf`: until pushed out).
        max_entries: Entries kept at most.
        max_bytes: Bytes kept at most, as `size_of` estimates them (least recently used
            entries go first; an entry larger than the whole budget is not kept).
        size_of: An entry's size in bytes (default: every entry counts 0).
        clock: Monotonic clock (tests pass a fake).
    """

    def __init__(
        self,
        ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: float = math.inf,
        size_of: Callable[[V], int] | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size_of = size_of
        self._data: OrderedDict[str, tuple[float, V, int]] = OrderedDict()
        self._bytes = 0
        self._clock = clock

    @property
    def bytes(self) -> int:
        """The estimated size of what is kept."""
        return self._bytes

    def get(self, key: str) -> V | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        stored, value, _ = entry
        if self._clock() - stored > self.ttl_s:
            self.pop(key)
            return None
        self._data.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        if self.ttl_s <= 0 or self.max_entries <= 0:
            return
        size = self._size_of(value) if self._size_of is not None else 0
        self.pop(key)
        if size > self.max_bytes:
            return
        self._data[key] = (self._clock(), value, size)
        self._bytes += size
        while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, _, gone) = self._data.popitem(last=False)
            self._bytes -= gone

    def pop(self, key: str) -> None:
        entry = self._data.pop(key, None)
        if entry is not None:
            self._bytes -= entry[2]

    def __len__(self) -> int:
        return len(self._data)


def json_size(value: object) -> int:
    """Bytes of `value` as compact JSON: the size of an answer kept for replay."""
    return len(json.dumps(value, separators=(",", ":"), default=str).encode("utf-8", "replace"))
