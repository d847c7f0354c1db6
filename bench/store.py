"""The decision log: decisions recorded per second, and what recording adds to a classification.

1. Decisions recorded per second into SQLite (and PostgreSQL when a URL is given, or
   `$MAGISTRATE_TEST_POSTGRES_URL` is set, as `make bench` does through scripts/with-postgres),
   one transaction per decision vs batches of 100 in one transaction.
2. Score-mode classification on the embedded model with recording vs without, the two
   interleaved item by item (which one goes first alternates), each after an untimed filler
   item so that neither finds the other's item in the KV cache. Target: <= 1.02x.

python bench/store.py [--items 12] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, mean, report, setup

sys.path.insert(0, str(ROOT / "tests"))

from storehelp import make_decision

from magistrate.engine import Judge
from magistrate.policy import Policy, load_policy
from magistrate.store import Recorder, Store


def inserts_per_second(url: str, policy: Policy, n: int, batch: int) -> float:
    entries = [make_decision(policy, f"message {i}") for i in range(n)]
    with Store(url) as store:
        start = time.perf_counter()
        for i in range(0, n, batch):
            chunk = entries[i : i + batch]
            store.record_many([(d, policy, item.text) for d, item in chunk])
        elapsed = time.perf_counter() - start
        assert store.verify().ok
    return n / elapsed


def throughput(name: str, url: str, policy: Policy) -> dict[str, float]:
    return {
        f"{name}: decisions/s, one per transaction": inserts_per_second(url, policy, 300, 1),
        f"{name}: decisions/s, 100 per transaction": inserts_per_second(url, policy, 3000, 100),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=12, help="items to time")
    parser.add_argument("--policy", default="spam")
    parser.add_argument("--model", default=None)
    parser.add_argument("--postgres", default=os.environ.get("MAGISTRATE_TEST_POSTGRES_URL"))
    args = parser.parse_args()

    figures: dict[str, float] = {}
    policy = load_policy(args.policy)
    with tempfile.TemporaryDirectory() as tmp:
        figures |= throughput("SQLite", str(Path(tmp) / "rate.db"), policy)
        if args.postgres:
            figures |= throughput("PostgreSQL", args.postgres, policy)

        backend, policy, items = setup(args)
        store = Store(Path(tmp) / "overhead.db")
        plain = Judge(policy, backend, mode="score")
        logged = Judge(policy, backend, mode="score", recorder=Recorder(store))
        asyncio.run(plain.judge(items[0]))  # load the model and the policy prefix
        t_plain, t_logged = [], []
        for n, item in enumerate(items[1 : args.items + 1]):
            order = [(plain, t_plain), (logged, t_logged)]
            for clf, times in order if n % 2 == 0 else order[::-1]:
                asyncio.run(plain.judge(items[0]))  # filler
                start = time.perf_counter()
                asyncio.run(clf.judge(item))
                times.append(time.perf_counter() - start)
        assert store.count() == len(t_logged) and store.verify().ok
        store.close()
    ratio = mean(t_logged) / mean(t_plain)
    figures["score-mode items/s, not recorded"] = 1 / mean(t_plain)
    figures["score-mode items/s, recorded (SQLite)"] = 1 / mean(t_logged)
    report("store", figures, ratio, "<= 1.02x", ratio <= 1.02)


if __name__ == "__main__":
    main()
