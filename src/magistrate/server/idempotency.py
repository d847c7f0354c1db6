"""Idempotency keys: a retried request with the same key and body gets the first answer.

Keys are scoped to the caller's API key. The same key with another body is refused, and so
is a key whose first request is still running (the client should wait, not start a second
judgement). Answers are kept for a day, per process, within `IDEMPOTENCY_MAX_BYTES` (the
oldest go first: a replay then judges again, with the decision-log cache's help).

Example:
    >>> keys = Idempotency()
    >>> answer, replayed = await keys.run("key-id", "retry-1", body_digest, make_answer)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from magistrate.errors import Conflict
from magistrate.server.limits import TTLCache, json_size

IDEMPOTENCY_TTL_S = 24 * 3600
IDEMPOTENCY_ENTRIES = 100_000
IDEMPOTENCY_MAX_BYTES = 256 * 1024 * 1024
"""Answers kept, as compact JSON, per process (one answer of 16 items x 4 policies is about
95 KiB: an entry count alone allowed ~9 GiB)."""


class Idempotency:
    """The answers made under idempotency keys, and the keys whose request is running."""

    def __init__(
        self,
        ttl_s: float = IDEMPOTENCY_TTL_S,
        max_entries: int = IDEMPOTENCY_ENTRIES,
        max_bytes: int = IDEMPOTENCY_MAX_BYTES,
    ) -> None:
        self._answers: TTLCache[tuple[str, dict[str, Any]]] = TTLCache(
            ttl_s, max_entries, max_bytes=max_bytes, size_of=lambda kept: json_size(kept[1])
        )
        self._running: set[str] = set()

    async def run(
        self,
        caller: str,
        key: str,
        digest: str,
        make: Callable[[], Awaitable[dict[str, Any]]],
    ) -> tuple[dict[str, Any], bool]:
        """The answer for (caller, key): the stored one (replayed True), or `make()`'s.

        Raises:
            Conflict: The key was used with another body, or its first request still runs.
        """
        slot = f"{caller}:{key}"
        earlier = self._answers.get(slot)
        if earlier is not None:
            if earlier[0] != digest:
                raise Conflict(
                    "This Idempotency-Key was used with a different request body; use a new key.",
                    code="idempotency_mismatch",
                )
            return earlier[1], True
        if slot in self._running:
            raise Conflict(
                "A request with this Idempotency-Key is still running; retry when it ends.",
                code="idempotency_in_progress",
            )
        self._running.add(slot)
        try:
            answer = await make()
            self._answers.put(slot, (digest, answer))
            return answer, False
        finally:
            self._running.discard(slot)


__all__ = ["IDEMPOTENCY_MAX_BYTES", "IDEMPOTENCY_TTL_S", "Idempotency"]
