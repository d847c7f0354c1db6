"""Decisions for store tests, and a writer process for the concurrency and crash tests.

python tests/storehelp.py URL write N TAG     record N decisions one by one, then exit
python tests/storehelp.py URL kill N          record N, then die (SIGKILL) mid-transaction
"""

from __future__ import annotations

import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from magistrate.backends.base import Usage
from magistrate.decision import Decision
from magistrate.ids import new_ulid
from magistrate.item import Item
from magistrate.policy import Policy, load_policy
from magistrate.verdict import ParseStatus, Verdict


def make_decision(
    policy: Policy,
    text: str = "Win a prize!",
    *,
    label: str | None = "1",
    status: ParseStatus = ParseStatus.OK,
    rules: tuple[str, ...] = ("SP2.a",),
    score: float | None = 0.875,
    when: datetime | None = None,
    item_id: str | None = None,
) -> tuple[Decision, Item]:
    """A decision as the engine would make it (no model needed to test the log)."""
    item = Item.of(text, id=item_id)
    ok = status is ParseStatus.OK
    chosen = policy.label(label) if ok and label is not None else None
    verdict = Verdict(
        status=status,
        label=label if ok else None,
        violation=chosen.violation if chosen else None,
        rule_ids=rules if ok else (),
        unknown_rule_ids=("SP9.z",) if ok else (),
        score=score,
        rationale="Bulk promotion with a lure." if ok else None,
        answer='{"violation": 1}' if ok else "???",
        detail=None if ok else "no answer the policy allows",
        label_probs={"0": 0.125, "1": 0.875},
    )
    decision = Decision(
        id=new_ulid(),
        created_at=when or datetime.now(UTC),
        item_id=item.id,
        item_hash=item.hash,
        policy_id=policy.id,
        policy_version=policy.version,
        policy_hash=policy.hash,
        backend="llamacpp/test-model",
        model="test-model",
        effort="medium",
        mode="score",
        options={"max_tokens": 1, "temperature": 0.0},
        verdict=verdict,
        reasoning="It promises a prize and asks for a click." if ok else None,
        usage=Usage(prompt_tokens=1100, cached_tokens=1050, completion_tokens=1),
        latency_s=0.7125,
        metadata={"source": "test", "n": 1},
    )
    return decision, item


def main(argv: list[str]) -> None:
    from magistrate.store import Store

    url, action, n = argv[0], argv[1], int(argv[2])
    tag = argv[3] if len(argv) > 3 else "w"
    policy = load_policy("spam")
    store = Store(url)
    for i in range(n):
        decision, item = make_decision(policy, f"{tag} message {i}", item_id=f"{tag}-{i}")
        store.record(decision, policy=policy, content=item.text)
        print(decision.id, flush=True)  # reported as recorded only after the commit
    if action == "kill":
        decision, item = make_decision(policy, "never committed", item_id="lost")
        with store.db.write() as conn:
            conn.execute(
                store.tables["decisions"].delete().where(store.tables["decisions"].c.seq == 1)
            )
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1:])
