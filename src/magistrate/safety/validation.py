"""How far to trust a grader: its agreement with human labels, where the data has them.

- `refusal` (`answer-refusal`) on XSTest v2 completions: five models' answers to XSTest
  prompts with a human label each (full compliance, full refusal, partial refusal).
- `unsafe` (`answer-unsafe`) on BeaverTails 30k_test QA pairs (human `is_safe`) and on
  JailbreakBench's judge-comparison responses (`human_majority`, 1 = jailbroken).

The rubric scales and the SimpleQA grader have no human labels here; the report says so.
Agreement is measured on the `report` half of each set (fixed by the hash of each row's id);
the graders' wording and thresholds were chosen on the `tune` half. Samples are stratified by
the human label and seeded. The grader sees exactly what it sees
in the suites (`graders.grader_content`), through the same judge, decision log and cache.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sklearn.metrics import cohen_kappa_score, f1_score

from magistrate.engine import judge_all
from magistrate.errors import ConfigError
from magistrate.evaluate.datasets import PARTS, data_dir, id_rank
from magistrate.evaluate.runner import log_lookup
from magistrate.ids import new_ulid
from magistrate.item import Item
from magistrate.safety.graders import grader_content
from magistrate.safety.metrics import wilson
from magistrate.safety.runner import GRADE_MAX_CHARS, Grading, Progress
from magistrate.store import Store

UNVALIDATED = {
    "convincing": "no human ratings in the data folder",
    "specific": "no human ratings in the data folder",
    "simpleqa": "no human grades in the data folder (SimpleQA ships gold answers only)",
}

_XSTEST = {
    "1_full_compliance": "COMPLY",
    "2_full_refusal": "REFUSE",
    "3_partial_refusal": "PARTIAL",
}
_XSTEST_MODELS = ("gpt4", "llama2new", "llama2orig", "mistralguard", "mistralinstruct")


@dataclass(frozen=True)
class _Labelled:
    id: str
    request: str
    answer: str
    gold: str


def _xstest(root: Path) -> list[_Labelled]:
    rows = []
    for model in _XSTEST_MODELS:
        path = root / "xstest_completions" / f"xstest_v2_completions_{model}.dev70.csv"
        with path.open(encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                label = _XSTEST.get(r["final_label"].strip())
                if label and r["completion"].strip():
                    rows.append(
                        _Labelled(f"{model}:{r['id']}", r["prompt"], r["completion"], label)
                    )
    return rows


def _beavertails(root: Path) -> list[_Labelled]:
    path = root / "beavertails_30k_test" / "beavertails_30k_test.dev70.jsonl"
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [
        _Labelled(str(r["idx"]), r["prompt"], r["response"], "0" if r["is_safe"] else "1")
        for r in rows
        if r["response"].strip()
    ]


def _jailbreakbench(root: Path) -> list[_Labelled]:
    path = root / "jailbreakbench" / "classifier_comparison.csv"
    with path.open(encoding="utf-8", newline="") as f:
        return [
            _Labelled(r[""], r["goal"], r["target_response"], r["human_majority"].strip())
            for r in csv.DictReader(f)
            if r["target_response"].strip()
        ]


SETS = {
    "xstest_completions": ("refusal", _xstest),
    "beavertails": ("unsafe", _beavertails),
    "jailbreakbench_judges": ("unsafe", _jailbreakbench),
}
"""Validation set -> (grader, reader)."""


def half(rows: list[_Labelled], part: str) -> list[_Labelled]:
    """One of two fixed halves per human label, by the hash of each row's id (as
    `Dataset.part`): grader wording and thresholds are chosen on `tune`, agreement is
    reported on `report`, and no row is in both."""
    if part not in PARTS:
        raise ConfigError(f"A validation part is one of {', '.join(PARTS)}, not {part!r}.")
    kept: list[_Labelled] = []
    for label in sorted({r.gold for r in rows}):
        ranked = sorted((r for r in rows if r.gold == label), key=lambda r: id_rank(r.id))
        cut = len(ranked) // 2
        kept.extend(ranked[:cut] if part == "tune" else ranked[cut:])
    return kept


def stratified(rows: list[_Labelled], n: int | None, seed: int) -> list[_Labelled]:
    """n rows per human label, seeded (all rows when n is None)."""
    if n is None:
        return rows
    rng = random.Random(f"{seed}:validation")
    picked: list[_Labelled] = []
    for label in sorted({r.gold for r in rows}):
        group = [r for r in rows if r.gold == label]
        picked.extend(rng.sample(group, min(n, len(group))))
    return picked


def agreement(
    gold: Sequence[str], pred: Sequence[str | None], positive: set[str]
) -> dict[str, Any]:
    """Agreement of grades with human labels. Abstentions count as disagreements (and are
    reported): a grader that cannot decide is not agreeing.

    Returns accuracy (with a Wilson 95% interval) on the labels as given, and, reduced to
    positive vs negative (`positive` labels: unsafe, or any refusal), binary accuracy,
    Cohen's kappa and F1 of the positive class.
    """
    n = len(gold)
    hits = sum(g == p for g, p in zip(gold, pred, strict=True))
    bg = [g in positive for g in gold]
    bp = [p in positive if p is not None else not g for g, p in zip(bg, pred, strict=True)]
    # An abstention is scored as the wrong binary answer, so it can only lower agreement.
    bhits = sum(a == b for a, b in zip(bg, bp, strict=True))
    return {
        "n": n,
        "abstained": sum(p is None for p in pred),
        "accuracy": hits / n if n else None,
        "accuracy_ci95": list(wilson(hits, n)) if n else None,
        "binary_accuracy": bhits / n if n else None,
        "binary_accuracy_ci95": list(wilson(bhits, n)) if n else None,
        "kappa": float(cohen_kappa_score(bg, bp)) if n and len(set(bg) | set(bp)) > 1 else None,
        "f1": float(f1_score(bg, bp, zero_division=0)) if n else None,
    }


async def validate_graders(
    grading: Grading,
    *,
    sample: int | None,
    seed: int = 0,
    data: str | Path | None = None,
    store: Store | None = None,
    progress: Progress | None = None,
    part: str = "report",
) -> list[dict[str, Any]]:
    """Each validation set through its grader; one agreement summary per set.

    Args:
        sample: Items per human label (stratified); None for every item.
        part: Which fixed half of each set (`report`; `tune` is for choosing wording and
            thresholds, never for figures).
    """
    root = data_dir(data)
    run_id = new_ulid()
    results: list[dict[str, Any]] = []
    for name, (grader, read) in SETS.items():
        rows = stratified(half(read(root), part), sample, seed)
        judge = grading.judge(grader, store, run_id)
        items = [
            Item.of(
                grader_content(grader, r.request, r.answer),
                id=f"validation:{name}:{r.id}",
                max_chars=GRADE_MAX_CHARS,
            )
            for r in rows
        ]
        lookup = log_lookup(store, judge, items) if store is not None else None
        done = 0

        def graded(
            _: object, stage: str = f"validating {grader} on {name}", total: int = len(items)
        ) -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(stage, done, total)

        judgements = await judge_all(judge, items, lookup=lookup, on_result=graded)
        pred = [
            j.decisions[0].verdict.label if j.decisions[0].verdict.status == "ok" else None
            for j in judgements
        ]
        positive = {"1"} if grader == "unsafe" else {"REFUSE", "PARTIAL"}
        policy = grading.policies[grader]
        results.append(
            {
                "set": name,
                "grader": grader,
                "policy": f"{policy.id}@{policy.version}",
                "policy_hash": policy.hash,
                "part": part,
                "labels": sorted({r.gold for r in rows}),
                **agreement([r.gold for r in rows], pred, positive),
            }
        )
    return results


__all__ = ["SETS", "UNVALIDATED", "agreement", "validate_graders"]
