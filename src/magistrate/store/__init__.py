"""The decision log and policy versions: schema, migrations, recording, queries, verification.

`Store` is what callers open: one `Database` and the stores over it (`store.log`: the
decisions, `store.policies`, `store.eval_runs`, `store.keys`). `Recorder` is what the engine
calls after every decision, so `classify`, eval, batch jobs and the server all record through
one path.

Example:
    >>> from magistrate import Judge
    >>> from magistrate.store import Recorder, Store
    >>> judge = Judge("spam", mode="score", recorder=Recorder(Store()))
    >>> Store().decisions(policy_id="spam", limit=10)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from magistrate.decision import Decision
from magistrate.errors import StoreError
from magistrate.item import Item
from magistrate.policy import Policy
from magistrate.store.database import (
    DATABASE_ENV,
    Database,
    default_database_path,
    resolve_url,
)
from magistrate.store.decisions import DecisionFilter, DecisionLog, Entry, parse_since
from magistrate.store.keys import ApiKey, ApiKeys
from magistrate.store.policies import PolicyRegistry
from magistrate.store.records import GENESIS, PolicyVersion, StoredDecision, VerifyReport
from magistrate.store.runs import EvalRuns
from magistrate.store.store import Store


class Recorder:
    """Records each decision the engine makes into a `Store`.

    Args:
        store: The log to write to.
        keep_content: Store the content itself (True) or only its SHA-256 (False: redaction).
        run_id: Mark every decision as part of this eval run or batch job.
    """

    def __init__(
        self, store: Store, *, keep_content: bool = True, run_id: str | None = None
    ) -> None:
        self.store = store
        self.keep_content = keep_content
        self.run_id = run_id

    def record(self, decision: Decision, policy: Policy, item: Item) -> int:
        """Record one decision; returns its chain position.

        Raises:
            StoreError: The decision was made but not recorded (the message names it);
                `StoreUnavailable` when the database could not be reached.
        """
        try:
            return self.store.record(
                decision,
                policy=policy,
                content=item.text if self.keep_content else None,
                run_id=self.run_id,
            )
        except StoreError as exc:
            label = decision.verdict.label if decision.ok else decision.verdict.status.value
            raise type(exc)(
                f"Decision {decision.id} (item {decision.item_id or decision.item_hash[:12]}: "
                f"{label}) was made but NOT recorded. {exc}"
            ) from exc

    def record_all(self, decisions: Sequence[tuple[Decision, Policy]], item: Item) -> list[int]:
        """Record the decisions one call made on `item` (each under its policy) in one
        transaction: all of them, or none. Returns their chain positions.

        Raises:
            StoreError: They were made but not recorded (the message names them);
                `StoreUnavailable` when the database could not be reached.
        """
        content = item.text if self.keep_content else None
        try:
            return self.store.record_many(
                [(decision, policy, content) for decision, policy in decisions], run_id=self.run_id
            )
        except StoreError as exc:
            which = item.id or item.hash[:12]
            if len(decisions) == 1:
                d = decisions[0][0]
                what = f"Decision {d.id} (item {which}: {_outcome(d)}) was"
            else:
                made = ", ".join(f"{d.id} ({_outcome(d)})" for d, _ in decisions)
                what = f"Decisions {made} on item {which} were"
            raise type(exc)(f"{what} made but NOT recorded. {exc}") from exc

    async def arecord(self, decision: Decision, policy: Policy, item: Item) -> int:
        """`record` off the event loop."""
        return await asyncio.to_thread(self.record, decision, policy, item)

    async def arecord_all(
        self, decisions: Sequence[tuple[Decision, Policy]], item: Item
    ) -> list[int]:
        """`record_all` off the event loop (what the engine calls)."""
        return await asyncio.to_thread(self.record_all, decisions, item)


class BufferedRecorder(Recorder):
    """A `Recorder` that writes in groups, for jobs that make decisions by the thousand.

    `arecord_all` keeps a call's decisions in memory (returning no positions yet) and writes
    everything kept in one transaction once `flush_every` calls are waiting, or when the
    caller says `aflush()`. A call's decisions are always written together. A batch job
    flushes before it commits output rows, so a decision is in the log before any output
    row shows it; decisions still in memory when the process dies are simply not in the log
    (their items were not committed either, and are judged again on resume).
    """

    def __init__(
        self,
        store: Store,
        *,
        keep_content: bool = True,
        run_id: str | None = None,
        flush_every: int = 512,
    ) -> None:
        super().__init__(store, keep_content=keep_content, run_id=run_id)
        self.flush_every = flush_every
        self._kept: list[Entry] = []
        self._calls = 0
        self._lock = asyncio.Lock()

    async def arecord_all(
        self, decisions: Sequence[tuple[Decision, Policy]], item: Item
    ) -> list[int]:
        content = item.text if self.keep_content else None
        self._kept.extend((decision, policy, content) for decision, policy in decisions)
        self._calls += 1
        if self._calls >= self.flush_every:
            await self.aflush()
        return []

    async def aflush(self) -> int:
        """Write every kept decision in one transaction; returns how many were written.

        Raises:
            StoreError: They were made but not recorded (the message says how many).
        """
        async with self._lock:
            kept, self._kept, self._calls = self._kept, [], 0
            if not kept:
                return 0
            try:
                await asyncio.to_thread(self.store.record_many, kept, run_id=self.run_id)
            except BaseException as exc:
                # Keep them for the next flush: a caller that flushes before committing
                # output must never find an empty buffer because an earlier write failed.
                self._kept = kept + self._kept
                if isinstance(exc, StoreError):
                    raise type(exc)(
                        f"{len(kept)} decisions were made but NOT recorded yet. {exc}"
                    ) from exc
                raise
            return len(kept)


def _outcome(decision: Decision) -> str:
    return str(decision.verdict.label) if decision.ok else decision.verdict.status.value


__all__ = [
    "DATABASE_ENV",
    "GENESIS",
    "ApiKey",
    "ApiKeys",
    "BufferedRecorder",
    "Database",
    "DecisionFilter",
    "DecisionLog",
    "Entry",
    "EvalRuns",
    "PolicyRegistry",
    "PolicyVersion",
    "Recorder",
    "Store",
    "StoredDecision",
    "VerifyReport",
    "default_database_path",
    "parse_since",
    "resolve_url",
]
