"""The decision log and policy versions: schema, migrations, recording, queries, verification.

`Store` is what callers open: one `Database` and the stores over it (`store.log`: the
decisions, `store.policies`, `store.eval_runs`, `store.keys`). `Recorder` is what the engine
calls after every decision, so `classify`, eval, batch jobs and the server all record through
one path.

Example:
    >>> from magistrate import Classifier
    >>> from magistrate.store import Recorder, Store
    >>> clf = Classifier("spam", mode="score", recorder=Recorder(Store()))
    >>> Store().decisions(policy_id="spam", limit=10)
"""

from __future__ import annotations

import asyncio

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

    async def arecord(self, decision: Decision, policy: Policy, item: Item) -> int:
        """`record` off the event loop."""
        return await asyncio.to_thread(self.record, decision, policy, item)


__all__ = [
    "DATABASE_ENV",
    "GENESIS",
    "ApiKey",
    "ApiKeys",
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
