"""Shared set-up for the benchmarks: the embedded model, the spam policy, the examples.

Benchmarks print ratios measured side by side in one run (the machines are shared and noisy,
so a bare absolute time means little), and exit 1 when a ratio misses its target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from magistrate.backends.llamacpp import LlamaCppBackend  # noqa: E402
from magistrate.item import Item  # noqa: E402
from magistrate.policy import Policy, load_policy  # noqa: E402


def parse_args(description: str, default_items: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--items", type=int, default=default_items, help="items to time")
    parser.add_argument("--policy", default="spam", help="policy file or bundled name")
    parser.add_argument("--model", default=None, help="GGUF path (default: embedded model)")
    return parser.parse_args()


def setup(args: argparse.Namespace) -> tuple[LlamaCppBackend, Policy, list[Item]]:
    backend = LlamaCppBackend(args.model)
    policy = load_policy(args.policy)
    rows = [json.loads(line) for line in (ROOT / "examples" / "spam.jsonl").open()]
    # Alternate spam and ham so both kinds of answer are timed.
    spam = [r for r in rows if r["label"]]
    ham = [r for r in rows if not r["label"]]
    mixed = [r for pair in zip(spam, ham, strict=False) for r in pair]
    items = [Item.of(r["text"], id=r["id"]) for r in mixed[: args.items + 1]]
    return backend, policy, items


def report(name: str, figures: dict[str, float], ratio: float, target: str, ok: bool) -> None:
    for key, value in figures.items():
        print(f"  {key:<40} {value:10.3f}")
    verdict = "PASS" if ok else "FAIL"
    print(f"{name}: ratio {ratio:.2f}x (target {target}) {verdict}")
    if not ok:
        sys.exit(1)


def mean(values: list[float]) -> float:
    return statistics.fmean(values)
