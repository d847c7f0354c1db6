"""Run the engine over a dataset: cached, resumable, bounded, and measured.

The cache is the decision log itself. Before judging, the runner looks up decisions already
recorded for the same policy text (hash), backend, effort and mode, item by item (content
hash), and reuses those that reached a verdict; only the rest are judged, and each new
decision is recorded (marked with the run's id) as soon as it is made. A run that crashed, or
a re-run after editing one policy, therefore computes only what changed.

One function, `evaluate`, runs every kind of evaluation over one or several judges: a judge
of one policy (single), several judges of one policy each (policies judged separately, one
after another so each policy's prompt prefix stays warm), or one judge of several policies
(combined in one prompt). Every item goes through `Judge.judge_many`.

Example:
    >>> run = asyncio.run(evaluate(dataset, Judge("spam", mode="score"), store=Store()))
    >>> run.runs[0].metrics.f1, run.runs[0].cached
"""

from __future__ import annotations

import random
import subprocess
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from magistrate import __version__
from magistrate.decision import Decision, any_of
from magistrate.engine import Judge, Judgement, Lookup, judge_all
from magistrate.errors import ConfigError, EvalAborted, MagistrateError
from magistrate.evaluate import metrics as m
from magistrate.evaluate.datasets import Dataset, Example
from magistrate.evaluate.report import (
    RESULT_SCHEMA,
    AnyMetrics,
    AnyPolicyRow,
    BundleRef,
    DatasetRef,
    EvalReport,
    EvalSpec,
    HeldOut,
    Intervals,
    ItemRow,
    JSONValue,
    Latency,
    Metrics,
    MultiDatasetRef,
    MultiMetrics,
    MultiReport,
    MultiRunRecord,
    MultiSpec,
    PolicyFigures,
    PolicyRef,
    Reliability,
    ScoreMetrics,
    SingleRunRecord,
    Strategy,
    ThresholdTransfer,
    TokensPerItem,
    ZeroShot,
)
from magistrate.ids import new_ulid
from magistrate.item import Item
from magistrate.policy import Policy, bundle_hash
from magistrate.store import Recorder, Store
from magistrate.verdict import violation_score

_M = TypeVar("_M", ScoreMetrics, Reliability)


@dataclass(frozen=True)
class ItemResult:
    """One example and the decision made on it."""

    example: Example
    decision: Decision
    cached: bool
    zero_shot: float | None = None
    """The label-token score, when the verdict came from a fitted read-out."""

    @property
    def pred(self) -> bool | None:
        return self.decision.verdict.violation if self.decision.ok else None

    def row(self) -> ItemRow:
        """The item's row in the result file (needs a known gold label)."""
        v = self.decision.verdict
        return ItemRow(
            id=self.example.id,
            text=self.example.text,
            gold=bool(self.example.gold),
            labels=dict(self.example.labels),
            pred=self.pred,
            label=v.label,
            status=v.status,
            score=v.score,
            category=v.category,
            rule_ids=list(v.rule_ids),
            unknown_rule_ids=list(v.unknown_rule_ids),
            rationale=v.rationale,
            reasoning=self.decision.reasoning,
            detail=v.detail,
            decision_id=self.decision.id,
            latency_s=self.decision.latency_s,
            prompt_tokens=self.decision.usage.prompt_tokens,
            completion_tokens=self.decision.usage.completion_tokens,
            cached=self.cached,
            zero_shot_score=self.zero_shot,
        )

    def to_dict(self) -> dict[str, JSONValue]:
        """The row as JSON (`row().document()`)."""
        return self.row().document()


@dataclass
class EvalResult:
    """Everything one run produced: its spec, per-item results and metrics."""

    id: str
    spec: EvalSpec
    items: list[ItemResult]
    metrics: Metrics
    unscored: list[ItemResult] = field(default_factory=list)
    """Items judged without a gold label (multi-policy runs judge every item under every
    policy); no metric of this run counts them."""

    @property
    def cached(self) -> int:
        return sum(1 for r in self.items if r.cached)

    def report(self) -> EvalReport:
        """The result as written to `<run id>.json` (schema `magistrate.eval/2`)."""
        return EvalReport(
            id=self.id, spec=self.spec, metrics=self.metrics, items=[r.row() for r in self.items]
        )

    def to_dict(self) -> dict[str, JSONValue]:
        """The result as JSON (`report().document()`)."""
        return self.report().document()


Progress = Callable[[Judgement], None]
"""Called with each item's judgement as it is made (progress bars)."""


@dataclass
class EvalRun:
    """What `evaluate` returns: one result per policy, and the multi-policy result.

    Attributes:
        runs: One `EvalResult` per policy, in the order the judges hold them.
        multi: Exact match, per-policy metrics, cost and the any-policy answer, when more
            than one policy was judged; None for a single policy.
    """

    runs: list[EvalResult]
    multi: MultiEvalResult | None = None


@dataclass
class _Pass:
    """One judge's pass over the examples: each example with its judgement."""

    judge: Judge
    run_id: str
    rows: list[tuple[Example, Judgement]]
    elapsed_s: float


async def evaluate(
    dataset: Dataset,
    judges: Judge | Sequence[Judge],
    *,
    store: Store | None = None,
    use_cache: bool = True,
    max_errors: float | None = None,
    threshold_split: float | None = None,
    seed: int = 0,
    on_result: Progress | None = None,
) -> EvalRun:
    """Judge a dataset with one or several judges and compute every metric.

    A single policy is scored on the dataset's overall label. Several policies (one judge of
    several, or several judges run one after another) are each scored on the dataset label
    of their name (`labels_for`); a policy with no such label counts only towards the
    any-policy answer, scored on the overall label.

    Args:
        dataset: The examples; those no metric could use (no gold label at all) are skipped.
        judges: A judge, or several judges (their policies must have distinct ids).
        store: The decision log: the cache, and where new decisions are recorded (each
            judge's decisions under that pass's run id).
        use_cache: Reuse recorded decisions (needs `store`).
        max_errors: The error budget of each pass (see `Judge.judge_many`).
        threshold_split: With scores, choose the best-F1 threshold on this fraction of the
            items (stratified, `seed`) and report metrics on the rest with it applied.
        on_result: Called with each judgement as it is made.

    Raises:
        ErrorBudgetExceeded: The error budget was crossed; decisions so far are recorded.
        MagistrateError: A policy matches no label and the dataset has no overall label.
    """
    judges = [judges] if isinstance(judges, Judge) else list(judges)
    ids = [p.id for j in judges for p in j.policies]
    single = len(ids) == 1
    labels: list[str | None] = [None] if single else labels_for(ids, dataset)
    examples = examples_to_judge(dataset, labels)
    passes, runs = [], []
    names = iter(labels)
    for judge in judges:
        done = await _judge_examples(examples, judge, store, use_cache, max_errors, on_result)
        passes.append(done)
        for position in range(len(judge.policies)):
            run = _policy_run(dataset, done, position, next(names), single, threshold_split, seed)
            if store is not None and not judge.combined:
                _record_run(store, dataset, run)  # as soon as its pass is done
            runs.append(run)
    if single:
        return EvalRun(runs)
    multi = _multi_result(dataset, passes, runs, labels, seed, threshold_split)
    _record_multi(store, dataset, multi)
    return EvalRun(runs, multi)


def examples_to_judge(dataset: Dataset, labels: Sequence[str | None]) -> list[Example]:
    """The examples some metric can use: with an overall gold label, or a label of one of
    the policies judged (`labels`, as `labels_for` gives them)."""
    return [
        e
        for e in dataset.examples
        if e.gold is not None or any(_gold_for(e, n) is not None for n in labels)
    ]


async def _judge_examples(
    examples: list[Example],
    judge: Judge,
    store: Store | None,
    use_cache: bool,
    max_errors: float | None,
    on_result: Progress | None,
) -> _Pass:
    """One pass of `judge` over the examples through `judge_many`, cached and recorded."""
    run_id = new_ulid()
    items = [Item.of(e.text, id=e.id, max_chars=max(judge.max_chars, 1)) for e in examples]
    refuse_leakage(judge, items)
    lookup = log_lookup(store, judge, items) if store is not None and use_cache else None
    if store is not None:
        judge.recorder = Recorder(store, run_id=run_id)
    started = time.perf_counter()
    judgements = await judge_all(
        judge, items, lookup=lookup, max_errors=max_errors, on_result=on_result
    )
    rows = [(examples[j.index], j) for j in judgements]
    return _Pass(judge, run_id, rows, time.perf_counter() - started)


def refuse_leakage(judge: Judge, items: Sequence[Item]) -> None:
    """Refuse to measure a read-out on items it was fitted on (by content hash).

    Raises:
        ConfigError: Some items are in a read-out's training data.
    """
    hashes = {item.hash for item in items}
    for readout in judge.readouts.values():
        seen = hashes & readout.trained_hashes()
        if seen:
            raise ConfigError(
                f"Read-out {readout.id} was fitted on {len(seen)} of these {len(hashes)} items "
                f"({readout.document.trained_on.dataset}); figures measured on them would "
                "flatter it. Evaluate on other items (--part report), or pass --readout none."
            )


def log_lookup(store: Store, judge: Judge, items: Sequence[Item]) -> Lookup:
    """The decision-log cache for one judge: recorded verdicts per policy, by item hash."""
    found = store.log.reusable(judge.cache_keys(), (item.hash for item in items))

    async def lookup(item: Item) -> list[Decision | None] | None:
        hits = [by_item.get(item.hash) for by_item in found]
        return None if all(h is None for h in hits) else hits

    return lookup


def _policy_run(
    dataset: Dataset,
    done: _Pass,
    position: int,
    label: str | None,
    single: bool,
    threshold_split: float | None,
    seed: int,
) -> EvalResult:
    """The result of one policy of a pass, scored on its own gold label."""
    judge, policy = done.judge, done.judge.policies[position]
    readout = judge.readouts.get(policy.hash)
    judged = [
        ItemResult(
            e if single else replace(e, gold=_gold_for(e, label)),
            j.decisions[position],
            j.cached[position],
            _zero_shot(j.decisions[position], policy) if readout is not None else None,
        )
        for e, j in done.rows
    ]
    items = [r for r in judged if r.example.gold is not None]
    part = (
        dataset
        if single
        else replace(
            dataset, name=f"{dataset.name}#{label}", examples=tuple(r.example for r in items)
        )
    )
    return EvalResult(
        done.run_id if len(judge.policies) == 1 else new_ulid(),
        _spec(part, judge, len(items), done.elapsed_s, policy),
        items,
        compute_metrics(
            items,
            threshold_split=threshold_split,
            seed=seed,
            zero_shot=(readout.id, policy.threshold) if readout is not None else None,
        ),
        unscored=[r for r in judged if r.example.gold is None],
    )


def _zero_shot(decision: Decision, policy: Policy) -> float | None:
    probs = decision.verdict.label_probs
    return violation_score(probs, policy) if decision.ok and probs else None


def _record_run(store: Store, dataset: Dataset, run: EvalResult) -> None:
    """The `eval_runs` row of one policy's run."""
    spec = run.spec
    record = SingleRunRecord(
        id=run.id,
        created_at=spec.created_at,
        dataset=spec.dataset.name,
        dataset_hash=spec.dataset.hash,
        policy_id=spec.policy.id,
        policy_hash=spec.policy.hash,
        backend=spec.backend,
        effort=spec.effort.value,
        mode=spec.mode.value,
        spec=spec,
        metrics=run.metrics,
    )
    store.add_run(record.row())


def _multi_result(
    dataset: Dataset,
    passes: list[_Pass],
    runs: list[EvalResult],
    labels: list[str | None],
    seed: int,
    threshold_split: float | None,
) -> MultiEvalResult:
    """Several policies' runs together: cost per item, exact match and the any-policy answer."""
    cost = _Cost(
        calls_per_item=sum(len(p.judge.policies) if not p.judge.combined else 1 for p in passes),
        # Recorded latencies, cached items included: what judging an item costs. The
        # decisions of one combined call share its cost, so each call counts once.
        seconds_per_item=sum(
            m.mean([_call_cost(j, p.judge).seconds for _, j in p.rows]) for p in passes
        ),
        tokens_per_item=sum(
            m.mean([_call_cost(j, p.judge).tokens for _, j in p.rows]) for p in passes
        ),
    )
    combined = len(passes) == 1 and passes[0].judge.combined
    rows = any_policy_items(runs, dataset)
    return MultiEvalResult(
        passes[0].run_id if combined else new_ulid(),
        runs,
        labels,
        _multi_metrics(runs, labels, cost, rows, seed, threshold_split),
        strategy="combined" if combined else "separate",
        items=rows,
    )


class _Cost(NamedTuple):
    """What judging one item cost, over every policy."""

    calls_per_item: int
    seconds_per_item: float
    tokens_per_item: float


class _CallCost(NamedTuple):
    seconds: float
    tokens: int


def _call_cost(judgement: Judgement, judge: Judge) -> _CallCost:
    """Seconds and tokens an item's calls took (a combined call's decisions share one)."""
    counted = judgement.decisions[:1] if judge.combined else judgement.decisions
    seconds = sum(d.latency_s for d in counted)
    tokens = sum(d.usage.prompt_tokens + d.usage.completion_tokens for d in counted)
    return _CallCost(seconds, tokens)


async def run_eval(dataset: Dataset, classifier: Judge, **kwargs: Any) -> EvalResult:
    """Deprecated: `evaluate(dataset, judge)`, whose `runs[0]` this returns.

    `on_result` is now called with each `Judgement`; `judge_unlabelled` is accepted and has
    no effect (a single policy is scored on the items with a gold label).
    """
    _deprecated("run_eval(dataset, classifier)", "evaluate(dataset, judge).runs[0]")
    kwargs.pop("judge_unlabelled", None)
    return (await evaluate(dataset, classifier, **kwargs)).runs[0]


async def run_multi_eval(
    dataset: Dataset, classifiers: Sequence[Judge], **kwargs: Any
) -> MultiEvalResult:
    """Deprecated: `evaluate(dataset, judges)` with one judge per policy, and its `multi`."""
    _deprecated("run_multi_eval(dataset, classifiers)", "evaluate(dataset, judges).multi")
    return _multi_of(await evaluate(dataset, classifiers, **kwargs))


async def run_combined_eval(dataset: Dataset, combined: Judge, **kwargs: Any) -> MultiEvalResult:
    """Deprecated: `evaluate(dataset, judge)` with a judge of several policies, and its
    `multi`."""
    _deprecated("run_combined_eval(dataset, combined)", "evaluate(dataset, judge).multi")
    return _multi_of(await evaluate(dataset, combined, **kwargs))


def _multi_of(run: EvalRun) -> MultiEvalResult:
    if run.multi is None:
        raise MagistrateError("Several policies are needed for a multi-policy result.")
    return run.multi


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new}.", DeprecationWarning, stacklevel=3)


_INTERVALS = (("f1", m.f1_of), ("precision", m.precision_of), ("recall", m.recall_of))


def compute_metrics(
    items: list[ItemResult],
    *,
    threshold_split: float | None = None,
    seed: int = 0,
    zero_shot: tuple[str, float] | None = None,
) -> Metrics:
    """Every metric of a run, from its per-item results.

    Args:
        zero_shot: For a run judged by a read-out, its id and the policy's threshold: the
            items' zero-shot scores are then reported beside (`Metrics.zero_shot`).
    """
    gold = [bool(r.example.gold) for r in items]
    pred = [r.pred for r in items]
    scores = [r.decision.verdict.score for r in items]
    statuses = Counter(r.decision.verdict.status.value for r in items)
    latencies = [r.decision.latency_s for r in items if not r.cached]
    n = len(items) or 1
    scored = m.score_metrics(gold, scores)
    return Metrics(
        **m.binary_metrics(gold, pred),
        statuses=dict(statuses),
        parse_rate=statuses["ok"] / len(items) if items else 0.0,
        ci95=Intervals(
            **{name: m.bootstrap_ci(fn, gold, pred, seed=seed) for name, fn in _INTERVALS}
        ),
        scores=_optional(ScoreMetrics, scored),
        pr_curve=_pr_curve(gold, scores) if scored else None,
        reliability=_optional(Reliability, m.reliability(gold, scores)) if scored else None,
        threshold_transfer=(
            threshold_transfer(gold, scores, threshold_split, seed)
            if scored and threshold_split
            else None
        ),
        latency_s=Latency(p50=m.percentile(latencies, 50), p95=m.percentile(latencies, 95)),
        tokens_per_item=TokensPerItem(
            prompt=sum(r.decision.usage.prompt_tokens for r in items) / n,
            completion=sum(r.decision.usage.completion_tokens for r in items) / n,
        ),
        cached_items=sum(1 for r in items if r.cached),
        zero_shot=_zero_shot_metrics(items, *zero_shot, seed=seed) if zero_shot else None,
    )


def _zero_shot_metrics(
    items: list[ItemResult], readout: str, threshold: float, *, seed: int
) -> ZeroShot:
    """The zero-shot figures of a read-out's run (abstentions stay abstentions)."""
    gold = [bool(r.example.gold) for r in items]
    scores = [r.zero_shot for r in items]
    pred = m.apply_threshold(scores, threshold)
    figures = m.binary_metrics(gold, pred)
    return ZeroShot(
        readout=readout,
        threshold=threshold,
        precision=figures["precision"],
        recall=figures["recall"],
        f1=figures["f1"],
        ci95_f1=m.bootstrap_ci(m.f1_of, gold, pred, seed=seed),
        scores=_optional(ScoreMetrics, m.score_metrics(gold, scores)),
    )


def _pr_curve(gold: list[bool], scores: list[float | None]) -> list[tuple[float, float]]:
    """The PR curve over the scored items."""
    pairs = [(g, s) for g, s in zip(gold, scores, strict=True) if s is not None]
    return m.pr_curve([g for g, _ in pairs], [s for _, s in pairs])


def _optional(model: type[_M], figures: Mapping[str, object] | None) -> _M | None:
    """A metric function's figures as `model`, or None when it had none to give."""
    return None if figures is None else model.model_validate(figures)


def threshold_transfer(
    gold: list[bool], scores: list[float | None], fraction: float, seed: int
) -> ThresholdTransfer:
    """Choose the best-F1 threshold on a stratified part of the items, apply it to the rest."""
    rng = random.Random(seed)
    tune: set[int] = set()
    for label in (True, False):
        idx = [
            i
            for i, (g, s) in enumerate(zip(gold, scores, strict=True))
            if g is label and s is not None
        ]
        tune |= set(rng.sample(idx, round(len(idx) * fraction)))
    tune_idx = sorted(tune)
    test_idx = [i for i in range(len(gold)) if i not in tune]
    tuned_scores = [scores[i] for i in tune_idx]
    threshold, tune_f1 = m.best_threshold(
        [gold[i] for i in tune_idx], [float(s) for s in tuned_scores if s is not None]
    )
    test_gold = [gold[i] for i in test_idx]
    test_pred = m.apply_threshold([scores[i] for i in test_idx], threshold)
    report = m.binary_metrics(test_gold, test_pred)
    return ThresholdTransfer(
        fraction=fraction,
        seed=seed,
        threshold=threshold,
        tune_items=len(tune_idx),
        tune_f1=tune_f1,
        test_items=len(test_idx),
        test=HeldOut.model_validate({k: report[k] for k in HeldOut.model_fields}),
        test_ci95_f1=m.bootstrap_ci(m.f1_of, test_gold, test_pred, seed=seed),
    )


def _spec(dataset: Dataset, judge: Judge, n: int, elapsed: float, policy: Policy) -> EvalSpec:
    """What one policy's run is (combined: with the bundle it was judged in)."""
    bundle = judge.bundle if judge.combined else None
    return EvalSpec(
        dataset=DatasetRef(
            name=dataset.name,
            source=dataset.source,
            hash=dataset.hash,
            items=n,
            positive=dataset.positive,
        ),
        policy=PolicyRef(id=policy.id, version=policy.version, hash=policy.hash),
        backend=judge.backend.name,
        model=judge.backend.model,
        effort=judge.effort,
        mode=judge.mode,
        options=judge.decision_options(None if judge.combined else policy),
        package_version=__version__,
        git_revision=_git_revision(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        elapsed_s=round(elapsed, 3),
        strategy="combined" if bundle is not None else None,
        bundle=BundleRef(id=bundle.id, hash=bundle.hash) if bundle is not None else None,
    )


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@dataclass
class MultiEvalResult:
    """Several policies judged on one dataset, separately (N calls) or combined (one call).

    `runs` holds one `EvalResult` per policy, scored on that policy's own label.
    """

    id: str
    runs: list[EvalResult]
    label_names: list[str | None]
    metrics: MultiMetrics
    strategy: Strategy = "separate"
    items: list[AnyPolicyRow] = field(default_factory=list)
    """The any-policy answer per item (`any_policy_items`), when the dataset has an overall
    label."""

    def report(self, *, results: Sequence[str] = ()) -> MultiReport:
        """The summary written to `<run id>.multi.json` (schema `magistrate.eval-multi/2`).

        Args:
            results: The paths of the per-policy result files, when written.
        """
        return MultiReport(
            id=self.id,
            strategy=self.strategy,
            policies=[r.spec.policy for r in self.runs],
            labels=self.label_names,
            runs=[r.id for r in self.runs],
            metrics=self.metrics,
            results=list(results),
            items=self.items,
        )

    def to_dict(self, *, items: bool = True) -> dict[str, JSONValue]:
        """The summary as JSON, with or without the per-item rows."""
        return self.report().model_dump(
            mode="json", by_alias=True, exclude=None if items else {"items"}
        )


def label_for(policy_id: str, labels: list[str]) -> str | None:
    """The dataset label a policy judges: the same name, with `/` and `-` treated alike.

    None when no label has the policy's name.
    """

    def norm(name: str) -> str:
        return name.lower().replace("/", "-").replace("_", "-")

    for label in labels:
        if norm(label) == norm(policy_id):
            return label
    return None


def labels_for(policy_ids: Sequence[str], dataset: Dataset) -> list[str | None]:
    """The dataset label each policy judges, or None for a policy that only counts towards
    the any-policy answer (several narrow policies for one overall label, as for ToxicChat).

    Raises:
        MagistrateError: A policy matches no label and the dataset has no overall label
            either, so nothing could score it.
    """
    names = sorted({k for e in dataset.examples for k in e.labels})
    found = [label_for(pid, names) for pid in policy_ids]
    has_overall = any(e.gold is not None for e in dataset.examples)
    for pid, label in zip(policy_ids, found, strict=True):
        if label is None and not has_overall:
            listed = ", ".join(names) or "none"
            raise MagistrateError(
                f"Policy {pid!r} matches none of the dataset's labels ({listed}), and the "
                "dataset has no overall label to score the policies against together. "
                "Name each policy after the label it judges."
            )
    return found


def _gold_for(example: Example, label: str | None) -> bool | None:
    """The example's gold label for one policy (None for an any-policy-only policy)."""
    return None if label is None else example.labels.get(label)


def _multi_metrics(
    runs: list[EvalResult],
    label_names: list[str | None],
    cost: _Cost,
    any_rows: list[AnyPolicyRow],
    seed: int,
    threshold_split: float | None = None,
) -> MultiMetrics:
    """Exact match over items whose every label is known, per-policy metrics, and cost.

    Policies with no label of their own (`label_names` None) take no part in exact match
    and have no per-policy metrics; they count only towards the any-policy answer.
    """
    labelled = [run for run, name in zip(runs, label_names, strict=True) if name is not None]
    by_item = [{r.example.id: r for r in run.items} for run in labelled]
    complete = [i for i in by_item[0] if all(i in b for b in by_item)] if by_item else []
    gold = [[bool(b[i].example.gold) for b in by_item] for i in complete]
    pred = [[b[i].pred for b in by_item] for i in complete]
    return MultiMetrics(
        exact_match=m.exact_match(gold, pred),
        exact_match_items=len(complete),
        per_policy={
            run.spec.policy.id: PolicyFigures(
                f1=run.metrics.f1,
                precision=run.metrics.precision,
                recall=run.metrics.recall,
                parse_rate=run.metrics.parse_rate,
            )
            for run in labelled
        },
        calls_per_item=cost.calls_per_item,
        seconds_per_item=cost.seconds_per_item,
        tokens_per_item=cost.tokens_per_item,
        any=_any_metrics(any_rows, seed, threshold_split),
    )


def _any_metrics(
    rows: list[AnyPolicyRow], seed: int, threshold_split: float | None
) -> AnyMetrics | None:
    """The policies combined into one binary answer, scored on the overall label.

    When the dataset also has a binary gold label (OpenAI Moderation's "any category"), the
    answer is computed over the rows of `any_policy_items`: flagged when any policy flags (an
    abstention with no flag is an abstention), scored by the highest policy score; with
    `threshold_split`, one threshold on that max score is chosen on part of the items and
    applied to the rest. None when there are no such rows.
    """
    if not rows:
        return None
    gold = [r.gold for r in rows]
    pred = [r.flagged for r in rows]
    scores = [r.score for r in rows]
    scored = _optional(ScoreMetrics, m.score_metrics(gold, scores))
    return AnyMetrics(
        **m.binary_metrics(gold, pred),
        items=len(rows),
        ci95_f1=m.bootstrap_ci(m.f1_of, gold, pred, seed=seed),
        scores=scored,
        threshold_transfer=(
            threshold_transfer(gold, scores, threshold_split, seed)
            if scored is not None and threshold_split
            else None
        ),
    )


def any_policy_items(runs: list[EvalResult], dataset: Dataset) -> list[AnyPolicyRow]:
    """The any-policy answer for every item that has an overall label and every policy judged.

    Each row: `id`, `gold` (the overall label), `flagged` (True when any policy flags the
    item; None when none flags it and some policy gave no verdict), `score` (the highest
    policy score; None when some policy has none), `flagged_by` (the ids of the policies that
    flag it) and `decisions` (the decision id under each policy, in policy order).
    """
    binary = {e.id: e.gold for e in dataset.examples}
    by_item = [{r.example.id: r for r in run.items + run.unscored} for run in runs]
    if not by_item:
        return []
    ids = [run.spec.policy.id for run in runs]
    rows = []
    for i in by_item[0]:
        if binary.get(i) is None or not all(i in b for b in by_item):
            continue
        results = [b[i] for b in by_item]
        preds = [r.pred for r in results]
        scores = [r.decision.verdict.score for r in results]
        rows.append(
            AnyPolicyRow(
                id=i,
                gold=bool(binary[i]),
                flagged=any_of(preds),
                score=None if None in scores else max(s for s in scores if s is not None),
                flagged_by=[p for p, pred in zip(ids, preds, strict=True) if pred],
                decisions=[r.decision.id for r in results],
            )
        )
    return rows


def _record_multi(store: Store | None, dataset: Dataset, result: MultiEvalResult) -> None:
    """One `eval_runs` row for the multi-policy run (the exact-match column of the table)."""
    if store is None or not result.runs:
        return
    first = result.runs[0].spec
    policies = [r.spec.policy for r in result.runs]
    spec = MultiSpec(
        strategy=result.strategy,
        dataset=MultiDatasetRef(name=dataset.name, hash=dataset.hash, items=len(dataset)),
        policies=policies,
        labels=result.label_names,
        runs=[r.id for r in result.runs],
        backend=first.backend,
        model=first.model,
        package_version=__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    record = MultiRunRecord(
        id=result.id,
        created_at=spec.created_at,
        dataset=f"{dataset.name}#multi",
        dataset_hash=dataset.hash,
        policy_id="+".join(p.id for p in policies),
        policy_hash=bundle_hash(p.hash for p in policies),
        backend=first.backend,
        effort=first.effort.value,
        mode=first.mode.value,
        spec=spec,
        metrics=result.metrics,
    )
    store.add_run(record.row())


__all__ = [
    "RESULT_SCHEMA",
    "EvalAborted",
    "EvalResult",
    "EvalRun",
    "ItemResult",
    "MultiEvalResult",
    "any_policy_items",
    "compute_metrics",
    "evaluate",
    "examples_to_judge",
    "label_for",
    "labels_for",
    "run_combined_eval",
    "run_eval",
    "run_multi_eval",
    "threshold_transfer",
]
