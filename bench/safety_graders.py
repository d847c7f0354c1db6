"""Choose a safety grader's wording on the *tune* half of its human-labelled set.

Scores one or more candidate policies for a grader on the tune half (`validation.half`) of a
validation set and prints ROC-AUC, accuracy at 0.5 and the best accuracy over thresholds.
Figures for the report come from `magistrate safety run`, which uses the report half only.

    MAGISTRATE_DATA_DIR=../shared/data python bench/safety_graders.py beavertails 20 mine.md
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sklearn.metrics import roc_auc_score

from magistrate.backends import get_backend
from magistrate.engine import Judge, judge_all
from magistrate.evaluate.datasets import data_dir
from magistrate.item import Item
from magistrate.policy import load_policy
from magistrate.safety.graders import grader_content, grader_policies
from magistrate.safety.validation import SETS, half, stratified


def main(which: str, per_label: int, candidates: list[str]) -> None:
    grader, read = SETS[which]
    rows = stratified(half(read(data_dir(None)), "tune"), per_label, 0)
    positive = {"1"} if grader == "unsafe" else {"REFUSE", "PARTIAL"}
    gold = [r.gold in positive for r in rows]
    backend = get_backend("embedded")
    for candidate in candidates:
        policy = (
            grader_policies()[grader] if candidate == "default" else load_policy(Path(candidate))
        )
        judge = Judge(policy, backend, mode="score", calibrated=False)
        items = [
            Item.of(grader_content(grader, r.request, r.answer), max_chars=64_000) for r in rows
        ]
        out = asyncio.run(judge_all(judge, items))
        scores = [j.decisions[0].verdict.score or 0.0 for j in out]
        at = [sum((s >= t) == g for s, g in zip(scores, gold, strict=True)) / len(gold)
              for t in (i / 20 for i in range(1, 20))]  # fmt: skip
        print(
            f"{which} {candidate}: n={len(rows)} auc={roc_auc_score(gold, scores):.3f} "
            f"acc@0.5={at[9]:.3f} best_acc={max(at):.3f}"
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:] or ["default"])
