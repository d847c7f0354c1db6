"""Compare two eval results item by item: metric deltas with paired intervals, and flips.

Example:
    >>> report = compare(load_result("a.json"), load_result("b.json"))
    >>> report.deltas["f1"].delta, report.fixed, report.broken
"""

from __future__ import annotations

import numpy as np

from magistrate.errors import ConfigError
from magistrate.evaluate import metrics as m
from magistrate.evaluate.report import EvalReport, EvalSpec, Interval, ItemRow, ReportModel


class RunRef(ReportModel):
    """One of the two runs compared."""

    id: str
    spec: EvalSpec


class Delta(ReportModel):
    """One metric on the shared items: A, B, and B - A with its paired bootstrap 95% CI."""

    a: float
    b: float
    delta: float
    ci95: Interval


class FlipSide(ReportModel):
    """What one run said about a flipped item."""

    pred: bool | None
    label: str | None
    score: float | None
    rule_ids: list[str]
    rationale: str | None

    @classmethod
    def of(cls, row: ItemRow) -> FlipSide:
        return cls(
            pred=row.pred,
            label=row.label,
            score=row.score,
            rule_ids=row.rule_ids,
            rationale=row.rationale,
        )


class Flip(ReportModel):
    """An item whose verdict differs between the runs; `fixed` when B is now right."""

    id: str
    text: str
    gold: bool
    a: FlipSide
    b: FlipSide
    fixed: bool


class Comparison(ReportModel):
    """What `compare` returns (and `eval compare --json` prints)."""

    a: RunRef
    b: RunRef
    shared_items: int
    deltas: dict[str, Delta]
    flips: list[Flip]
    fixed: int
    broken: int


def compare(a: EvalReport, b: EvalReport, *, rounds: int = 1000, seed: int = 0) -> Comparison:
    """Deltas (B - A) on the items both runs judged, with paired bootstrap 95% intervals.

    Raises:
        ConfigError: The runs share no items.
    """
    items_a = {r.id: r for r in a.items}
    items_b = {r.id: r for r in b.items}
    shared = [i for i in items_a if i in items_b]
    if not shared:
        raise ConfigError("The two runs share no items (different datasets?).")
    gold = [items_a[i].gold for i in shared]
    pred_a = [items_a[i].pred for i in shared]
    pred_b = [items_b[i].pred for i in shared]
    flips = [
        Flip(
            id=i,
            text=items_a[i].text,
            gold=truth,
            a=FlipSide.of(items_a[i]),
            b=FlipSide.of(items_b[i]),
            fixed=pb == truth,
        )
        for i, truth, pa, pb in zip(shared, gold, pred_a, pred_b, strict=True)
        if pa != pb
    ]
    return Comparison(
        a=RunRef(id=a.id, spec=a.spec),
        b=RunRef(id=b.id, spec=b.spec),
        shared_items=len(shared),
        deltas=_deltas(gold, pred_a, pred_b, rounds, seed),
        flips=flips,
        fixed=sum(1 for f in flips if f.fixed),
        broken=sum(1 for f in flips if not f.fixed),
    )


def _deltas(
    gold: list[bool], pred_a: list[m.Pred], pred_b: list[m.Pred], rounds: int, seed: int
) -> dict[str, Delta]:
    """F1, precision and recall of each run, and B - A with a paired bootstrap interval."""
    rng = np.random.default_rng(seed)
    n = len(gold)
    deltas = {}
    for name, fn in (("f1", m.f1_of), ("precision", m.precision_of), ("recall", m.recall_of)):
        base = fn(gold, pred_a)
        new = fn(gold, pred_b)
        samples = []
        for _ in range(rounds):
            idx = rng.integers(0, n, n)
            g = [gold[k] for k in idx]
            samples.append(fn(g, [pred_b[k] for k in idx]) - fn(g, [pred_a[k] for k in idx]))
        lo, hi = np.percentile(samples, [2.5, 97.5])
        deltas[name] = Delta(a=base, b=new, delta=new - base, ci95=(float(lo), float(hi)))
    return deltas
