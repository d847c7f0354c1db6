"""Evaluating a pipeline: what each tier decided, how well, at what cost, against one tier.

`evaluate_pipeline` takes a dataset through a `Cascade` (each tier through its own
`judge_many`, the decision log as every tier's cache and recorder) and reports, per tier,
the items it saw, the share of all items it decided, its F1 on those, and its seconds and
tokens per item seen; for the cascade, its F1 and seconds per item; and, as the baseline,
the last tier run on every item (its decisions on the items the cascade sent it are reused
from the log). Costs are sums of the decisions' recorded latencies, so a decision reused
from the log counts what it cost when it was made.

Example:
    >>> result = asyncio.run(evaluate_pipeline(dataset, Cascade(spec, store=store), store=store))
    >>> result.report.cascade.f1, result.report.speedup
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from pydantic import Field

from magistrate import __version__
from magistrate.decision import Decision
from magistrate.engine import judge_all
from magistrate.evaluate import metrics as m
from magistrate.evaluate.datasets import Dataset
from magistrate.evaluate.report import DatasetRef, Interval, ReportModel
from magistrate.evaluate.runner import log_lookup, refuse_leakage
from magistrate.ids import new_ulid
from magistrate.item import Item
from magistrate.pipeline import Cascade, CascadeResult
from magistrate.store import Recorder, Store

PIPELINE_SCHEMA: Final = "magistrate.eval-pipeline/1"


class Cost(ReportModel):
    """Seconds and tokens per item, from the decisions' recorded latency and usage."""

    seconds_per_item: float
    tokens_per_item: float


class TierRow(ReportModel):
    """One tier's part in the cascade.

    Attributes:
        reached: Items that came to this tier.
        decided: Items this tier decided (a verdict outside its band).
        share_decided: `decided` over all items.
        f1, precision, recall: On the items this tier decided.
        cost: Per item that reached the tier.
    """

    name: str
    backend: str
    mode: str
    readout: str | None
    band: tuple[float, float] | None
    reached: int
    decided: int
    share_decided: float
    f1: float | None
    precision: float | None
    recall: float | None
    abstained: int
    cost: Cost


class Figures(ReportModel):
    """Binary figures over every item (abstentions and `needs_review` apart, and as errors in
    `strict_f1`), with cost per item."""

    n: int
    f1: float
    ci95_f1: Interval
    precision: float
    recall: float
    strict_f1: float
    abstained: int
    cost: Cost


class PipelineItem(ReportModel):
    """One item: its gold label, the final verdict, which tier decided, the tier decisions."""

    id: str
    gold: bool
    pred: bool | None
    status: str
    score: float | None
    decided_by: str | None
    decision_id: str
    tier_decisions: list[str]


class PipelineReport(ReportModel):
    """`<output>/<id>.pipeline.json` (schema `magistrate.eval-pipeline/1`)."""

    schema_: Literal["magistrate.eval-pipeline/1"] = Field(default=PIPELINE_SCHEMA, alias="schema")
    id: str
    created_at: str
    package_version: str
    dataset: DatasetRef
    pipeline: str
    pipeline_sha256: str
    policy: str
    tiers: list[TierRow]
    cascade: Figures
    baseline: Figures | None = None
    """The last tier on every item."""
    speedup: float | None = None
    """Baseline seconds per item over the cascade's."""
    elapsed_s: float
    items: list[PipelineItem]


@dataclass
class PipelineEvalResult:
    """The report and the cascade's results."""

    report: PipelineReport
    results: list[CascadeResult]


async def evaluate_pipeline(
    dataset: Dataset,
    cascade: Cascade,
    *,
    store: Store | None = None,
    use_cache: bool = True,
    baseline: bool = True,
    seed: int = 0,
    on_result: Callable[[object], None] | None = None,
) -> PipelineEvalResult:
    """Run the cascade over the labelled items and report it (see the module docstring).

    Raises:
        ConfigError: A tier's read-out was fitted on some of these items.
    """
    examples = [e for e in dataset.examples if e.gold is not None]
    items = [Item.of(e.text, id=e.id) for e in examples]
    gold = [bool(e.gold) for e in examples]
    for tier in cascade.tiers:
        refuse_leakage(tier.judge, items)
    run_id = new_ulid()
    if store is not None:
        recorder = Recorder(store, run_id=run_id)
        cascade.recorder = recorder
        for tier in cascade.tiers:
            tier.judge.recorder = recorder
    lookups = [
        log_lookup(store, t.judge, items) if store is not None and use_cache else None
        for t in cascade.tiers
    ]
    started = time.perf_counter()
    results = await cascade.judge_all(items, lookups=lookups, on_result=on_result)
    tiers = [_tier_row(cascade, i, results, gold) for i in range(len(cascade.tiers))]
    spent = [d for r in results for _, d, _ in r.tiers]
    figures = _figures(gold, [r.final for r in results], spent, seed)
    base = None
    if baseline:
        last = cascade.tiers[-1].judge
        lookup = log_lookup(store, last, items) if store is not None and use_cache else None
        judged = await judge_all(last, items, lookup=lookup, on_result=on_result)
        decisions = [j.decisions[0] for j in judged]
        base = _figures(gold, decisions, decisions, seed)
    elapsed = time.perf_counter() - started
    report = PipelineReport(
        id=run_id,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        package_version=__version__,
        dataset=DatasetRef(
            name=dataset.name,
            source=dataset.source,
            hash=dataset.hash,
            items=len(examples),
            positive=dataset.positive,
        ),
        pipeline=cascade.spec.id,
        pipeline_sha256=cascade.spec.sha256,
        policy=f"{cascade.policy.id}@{cascade.policy.version}",
        tiers=tiers,
        cascade=figures,
        baseline=base,
        speedup=(
            base.cost.seconds_per_item / figures.cost.seconds_per_item
            if base is not None and figures.cost.seconds_per_item > 0
            else None
        ),
        elapsed_s=round(elapsed, 3),
        items=[
            PipelineItem(
                id=e.id,
                gold=g,
                pred=r.final.violation if r.final.ok else None,
                status=r.final.verdict.status.value,
                score=r.final.verdict.score,
                decided_by=r.decided_by,
                decision_id=r.final.id,
                tier_decisions=[d.id for _, d, _ in r.tiers],
            )
            for e, g, r in zip(examples, gold, results, strict=True)
        ],
    )
    return PipelineEvalResult(report, results)


def _tier_row(
    cascade: Cascade, position: int, results: list[CascadeResult], gold: list[bool]
) -> TierRow:
    tier = cascade.tiers[position]
    came = [(g, r) for g, r in zip(gold, results, strict=True) if len(r.tiers) > position]
    reached = [r.tiers[position][1] for _, r in came]
    decided = [(g, r.tiers[position][1]) for g, r in came if r.decided_by == tier.name]
    prf = (
        m.binary_metrics([g for g, _ in decided], [d.violation for _, d in decided])
        if decided
        else None
    )
    return TierRow(
        name=tier.name,
        backend=tier.judge.backend.name,
        mode=tier.judge.mode.value,
        readout=tier.readout.id if tier.readout else None,
        band=tier.band,
        reached=len(came),
        decided=len(decided),
        share_decided=len(decided) / len(results) if results else 0.0,
        f1=prf["f1"] if prf else None,
        precision=prf["precision"] if prf else None,
        recall=prf["recall"] if prf else None,
        abstained=sum(1 for d in reached if not d.ok),
        cost=_cost(reached, len(came)),
    )


def _figures(
    gold: list[bool], finals: Sequence[Decision], spent: Sequence[Decision], seed: int
) -> Figures:
    pred = [d.violation if d.ok else None for d in finals]
    figures = m.binary_metrics(gold, pred)
    return Figures(
        n=len(gold),
        f1=figures["f1"],
        ci95_f1=m.bootstrap_ci(m.f1_of, gold, pred, seed=seed),
        precision=figures["precision"],
        recall=figures["recall"],
        strict_f1=figures["strict_f1"],
        abstained=sum(1 for p in pred if p is None),
        cost=_cost(spent, len(gold)),
    )


def _cost(decisions: Sequence[Decision], per: int) -> Cost:
    if not per:
        return Cost(seconds_per_item=0.0, tokens_per_item=0.0)
    seconds = sum(d.latency_s for d in decisions)
    tokens = sum(
        d.usage.prompt_tokens - d.usage.cached_tokens + d.usage.completion_tokens for d in decisions
    )
    return Cost(seconds_per_item=seconds / per, tokens_per_item=tokens / per)


__all__ = ["PIPELINE_SCHEMA", "PipelineEvalResult", "PipelineReport", "evaluate_pipeline"]
