"""Run the engine over a dataset: cached, resumable, bounded, and measured.

The cache is the decision log itself. Before judging, the runner looks up decisions already
recorded for the same policy text (hash), backend, effort and mode, item by item (content
hash), and reuses those that reached a verdict; only the rest are judged, and each new
decision is recorded (marked with the run's id) as soon as it is made. A run that crashed, or
a re-run after editing one policy, therefore computes only what changed.

Example:
    >>> result = asyncio.run(run_eval(dataset, Classifier("spam", mode="score"), store=Store()))
    >>> result.metrics["f1"], result.cached
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from magistrate import __version__
from magistrate.decision import Decision, any_of
from magistrate.engine import Classifier, CombinedClassifier
from magistrate.errors import MagistrateError
from magistrate.evaluate import metrics as m
from magistrate.evaluate.datasets import Dataset, Example
from magistrate.ids import new_ulid
from magistrate.item import Item
from magistrate.policy import Policy, bundle_hash
from magistrate.store import DecisionFilter, Recorder, Store

RESULT_SCHEMA = "magistrate.eval/1"


class EvalAborted(MagistrateError):
    """Too many items got no verdict (the max-error threshold was crossed)."""


@dataclass(frozen=True)
class ItemResult:
    """One example and the decision made on it."""

    example: Example
    decision: Decision
    cached: bool

    @property
    def pred(self) -> bool | None:
        return self.decision.verdict.violation if self.decision.ok else None

    def to_dict(self) -> dict[str, Any]:
        v = self.decision.verdict
        return {
            "id": self.example.id,
            "text": self.example.text,
            "gold": self.example.gold,
            "labels": dict(self.example.labels),
            "pred": self.pred,
            "label": v.label,
            "status": v.status.value,
            "score": v.score,
            "category": v.category,
            "rule_ids": list(v.rule_ids),
            "unknown_rule_ids": list(v.unknown_rule_ids),
            "rationale": v.rationale,
            "reasoning": self.decision.reasoning,
            "detail": v.detail,
            "decision_id": self.decision.id,
            "latency_s": self.decision.latency_s,
            "prompt_tokens": self.decision.usage.prompt_tokens,
            "completion_tokens": self.decision.usage.completion_tokens,
            "cached": self.cached,
        }


@dataclass
class EvalResult:
    """Everything one run produced: its spec, per-item results and metrics."""

    id: str
    spec: dict[str, Any]
    items: list[ItemResult]
    metrics: dict[str, Any] = field(default_factory=dict)
    unscored: list[ItemResult] = field(default_factory=list)
    """Items judged without a gold label (multi-policy runs judge every item under every
    policy); no metric of this run counts them."""

    @property
    def cached(self) -> int:
        return sum(1 for r in self.items if r.cached)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": RESULT_SCHEMA,
            "id": self.id,
            "spec": self.spec,
            "metrics": self.metrics,
            "items": [r.to_dict() for r in self.items],
        }


ProgressFn = Callable[[ItemResult, dict[str, int]], None]


async def run_eval(
    dataset: Dataset,
    classifier: Classifier,
    *,
    store: Store | None = None,
    use_cache: bool = True,
    max_errors: float | None = None,
    threshold_split: float | None = None,
    seed: int = 0,
    on_result: ProgressFn | None = None,
    judge_unlabelled: bool = False,
) -> EvalResult:
    """Judge every example with a known gold label and compute the metrics.

    Args:
        dataset: The examples (those without a gold label are skipped, unless
            `judge_unlabelled`: then they are judged and kept in `EvalResult.unscored`).
        classifier: The engine, already set up with policy, backend, mode and effort.
        store: The decision log: the cache, and where new decisions are recorded.
        use_cache: Reuse recorded decisions (needs `store`).
        max_errors: Abort when more items than this got no verdict: a count (>= 1) or a
            fraction of the items judged so far (< 1, checked after 20 items).
        threshold_split: With scores, choose the best-F1 threshold on this fraction of the
            items (stratified, `seed`) and report metrics on the rest with it applied.
        on_result: Called after every item with its result and the running confusion counts.

    Raises:
        EvalAborted: The max-error threshold was crossed; decisions made so far are recorded.
    """
    run_id = new_ulid()
    examples = [e for e in dataset.examples if e.gold is not None or judge_unlabelled]
    cache = _cached(store, classifier) if (store is not None and use_cache) else {}
    if store is not None:
        classifier.recorder = Recorder(store, run_id=run_id)
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "abstained": 0, "done": 0}
    results: list[ItemResult | None] = [None] * len(examples)
    gate = asyncio.Semaphore(classifier.concurrency)
    started = time.perf_counter()

    def tally(index: int, result: ItemResult) -> None:
        results[index] = result
        g, p = bool(result.example.gold), result.pred
        key = (
            "abstained" if p is None else ("tp" if p and g else "fp" if p else "fn" if g else "tn")
        )
        if result.example.gold is not None or p is None:
            counts[key] += 1
        counts["done"] += 1
        if on_result is not None:
            on_result(result, counts)
        if max_errors is not None and _over(counts, max_errors):
            raise EvalAborted(
                f"{counts['abstained']} of {counts['done']} items got no verdict, past "
                f"--max-errors {max_errors:g}. Decisions so far are recorded; fix the cause "
                "and re-run (finished items come from the cache)."
            )

    async def one(index: int, example: Example) -> None:
        item = Item.of(example.text, id=example.id, max_chars=max(classifier.max_chars, 1))
        hit = cache.get(item.hash)
        if hit is not None:
            tally(index, ItemResult(example, hit, cached=True))
            return
        async with gate:
            decision = await classifier.classify(item)
        tally(index, ItemResult(example, decision, cached=False))

    await _all_or_none([one(i, e) for i, e in enumerate(examples)])
    finished = [r for r in results if r is not None and r.example.gold is not None]
    unscored = [r for r in results if r is not None and r.example.gold is None]
    spec = _spec(dataset, classifier, len(finished), time.perf_counter() - started)
    result = EvalResult(run_id, spec, finished, unscored=unscored)
    result.metrics = compute_metrics(finished, threshold_split=threshold_split, seed=seed)
    result.metrics["cached_items"] = result.cached
    if store is not None:
        store.add_run(
            {
                "id": run_id,
                "created_at": spec["created_at"],
                "dataset": dataset.name,
                "dataset_hash": dataset.hash,
                "policy_id": classifier.policy.id,
                "policy_hash": classifier.policy.hash,
                "backend": classifier.backend.name,
                "effort": classifier.effort.value,
                "mode": classifier.mode.value,
                "spec": spec,
                "metrics": {k: v for k, v in result.metrics.items() if k != "pr_curve"},
            }
        )
    return result


async def _all_or_none(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run every item's coroutine; when one fails, cancel the rest before re-raising."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _over(counts: dict[str, int], limit: float) -> bool:
    if limit >= 1:
        return counts["abstained"] > limit
    return counts["done"] >= 20 and counts["abstained"] / counts["done"] > limit


def _cached(store: Store, classifier: Classifier) -> dict[str, Decision]:
    """Recorded verdicts for this policy text, backend, effort, mode and options, by item."""
    wanted = {**classifier.options().to_dict(), "on_abstain": classifier.on_abstain.value}
    return _recorded(store, classifier.policy.hash, classifier, wanted)


def _recorded(
    store: Store, policy_hash: str, engine: Classifier | CombinedClassifier, wanted: dict[str, Any]
) -> dict[str, Decision]:
    """Recorded verdicts under one policy text whose options match `wanted`, by item hash.

    Whether the answer needed the constrained-decoding fallback does not matter: that is
    part of how the verdict was reached, not of what was asked.
    """
    where = DecisionFilter(
        policy_hash=policy_hash,
        backend=engine.backend.name,
        effort=engine.effort.value,
        mode=engine.mode.value,
        ok=True,
    )
    want = {k: v for k, v in wanted.items() if k != "constrained"}
    found: dict[str, Decision] = {}
    for stored in store.iter_decisions(where):
        d = stored.decision
        if {k: v for k, v in d.options.items() if k != "constrained"} == want:
            found[d.item_hash] = d  # oldest first, so the newest wins
    return found


def compute_metrics(
    items: list[ItemResult], *, threshold_split: float | None = None, seed: int = 0
) -> dict[str, Any]:
    """Every metric of a run, from its per-item results."""
    gold = [bool(r.example.gold) for r in items]
    pred = [r.pred for r in items]
    out: dict[str, Any] = m.binary_metrics(gold, pred)
    statuses: dict[str, int] = {}
    for r in items:
        statuses[r.decision.verdict.status.value] = (
            statuses.get(r.decision.verdict.status.value, 0) + 1
        )
    out["statuses"] = statuses
    out["parse_rate"] = statuses.get("ok", 0) / len(items) if items else 0.0
    out["ci95"] = {
        name: m.bootstrap_ci(fn, gold, pred, seed=seed)
        for name, fn in (("f1", m.f1_of), ("precision", m.precision_of), ("recall", m.recall_of))
    }
    scores = [r.decision.verdict.score for r in items]
    scored = m.score_metrics(gold, scores)
    if scored is not None:
        out["scores"] = scored
        pairs = [(g, s) for g, s in zip(gold, scores, strict=True) if s is not None]
        out["pr_curve"] = m.pr_curve([g for g, _ in pairs], [s for _, s in pairs])
        out["reliability"] = m.reliability(gold, scores)
        if threshold_split:
            out["threshold_transfer"] = threshold_transfer(gold, scores, threshold_split, seed)
    fresh = [r for r in items if not r.cached]
    latencies = [r.decision.latency_s for r in fresh]
    out["latency_s"] = {"p50": m.percentile(latencies, 50), "p95": m.percentile(latencies, 95)}
    n = len(items) or 1
    out["tokens_per_item"] = {
        "prompt": sum(r.decision.usage.prompt_tokens for r in items) / n,
        "completion": sum(r.decision.usage.completion_tokens for r in items) / n,
    }
    return out


def threshold_transfer(
    gold: list[bool], scores: list[float | None], fraction: float, seed: int
) -> dict[str, Any]:
    """Choose the best-F1 threshold on a stratified part of the items, apply it to the rest."""
    import random

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
    return {
        "fraction": fraction,
        "seed": seed,
        "threshold": threshold,
        "tune_items": len(tune_idx),
        "tune_f1": tune_f1,
        "test_items": len(test_idx),
        "test": {k: report[k] for k in ("precision", "recall", "f1", "accuracy", "confusion")},
        "test_ci95_f1": m.bootstrap_ci(m.f1_of, test_gold, test_pred, seed=seed),
    }


def _spec(
    dataset: Dataset,
    clf: Classifier | CombinedClassifier,
    n: int,
    elapsed: float,
    *,
    policy: Policy | None = None,
) -> dict[str, Any]:
    if policy is None:
        assert isinstance(clf, Classifier)
        policy = clf.policy
    options = (
        clf.decision_options() if isinstance(clf, CombinedClassifier) else clf.options().to_dict()
    )
    return {
        "dataset": {
            "name": dataset.name,
            "source": dataset.source,
            "hash": dataset.hash,
            "items": n,
            "positive": dataset.positive,
        },
        "policy": {"id": policy.id, "version": policy.version, "hash": policy.hash},
        "backend": clf.backend.name,
        "model": clf.backend.model,
        "effort": clf.effort.value,
        "mode": clf.mode.value,
        "options": {**options, "on_abstain": clf.on_abstain.value},
        "package_version": __version__,
        "git_revision": _git_revision(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 3),
    }


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
    metrics: dict[str, Any]
    strategy: str = "separate"
    items: list[dict[str, Any]] = field(default_factory=list)
    """The any-policy answer per item (`any_policy_items`), when the dataset has an overall
    label."""

    def to_dict(self, *, items: bool = True) -> dict[str, Any]:
        out = {
            "schema": "magistrate.eval-multi/1",
            "id": self.id,
            "strategy": self.strategy,
            "policies": [r.spec["policy"] for r in self.runs],
            "labels": self.label_names,
            "runs": [r.id for r in self.runs],
            "metrics": self.metrics,
        }
        if items:
            out["items"] = self.items
        return out


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


async def run_multi_eval(
    dataset: Dataset,
    classifiers: list[Classifier],
    *,
    store: Store | None = None,
    use_cache: bool = True,
    max_errors: float | None = None,
    threshold_split: float | None = None,
    seed: int = 0,
    on_result: ProgressFn | None = None,
) -> MultiEvalResult:
    """Judge every policy separately on its own label; per-policy metrics, exact match, cost.

    An item counts towards exact-match accuracy only when every policy's gold label is known
    for it, and it is right only when every policy's verdict matches (an abstention is wrong).
    """
    label_names = labels_for([c.policy.id for c in classifiers], dataset)
    runs = []
    for clf, label in zip(classifiers, label_names, strict=True):
        part = replace(
            dataset,
            name=f"{dataset.name}#{label}",
            examples=tuple(replace(e, gold=_gold_for(e, label)) for e in dataset.examples),
        )
        runs.append(
            await run_eval(
                part,
                clf,
                store=store,
                use_cache=use_cache,
                max_errors=max_errors,
                threshold_split=threshold_split,
                seed=seed,
                on_result=on_result,
                judge_unlabelled=True,
            )
        )
    judged = [run.items + run.unscored for run in runs]
    cost = {
        "calls_per_item": len(runs),
        # Recorded latencies, cached items included: what judging an item costs.
        "seconds_per_item": sum(m.mean([r.decision.latency_s for r in rs]) for rs in judged),
        "tokens_per_item": sum(
            m.mean(
                [r.decision.usage.prompt_tokens + r.decision.usage.completion_tokens for r in rs]
            )
            for rs in judged
        ),
    }
    rows = any_policy_items(runs, dataset)
    result = MultiEvalResult(
        new_ulid(),
        runs,
        label_names,
        _multi_metrics(runs, label_names, cost, rows, seed, threshold_split),
        items=rows,
    )
    _record_multi(store, dataset, result)
    return result


async def run_combined_eval(
    dataset: Dataset,
    combined: CombinedClassifier,
    *,
    store: Store | None = None,
    use_cache: bool = True,
    max_errors: float | None = None,
    threshold_split: float | None = None,
    seed: int = 0,
    on_result: ProgressFn | None = None,
) -> MultiEvalResult:
    """Judge every policy at once, one prompt per item; per-policy metrics, exact match, cost.

    The same metrics as `run_multi_eval`, so the two strategies compare side by side (in
    score mode with `threshold_split`, thresholds are transferred as there). The cache holds
    an item only when every policy's combined verdict for it is recorded.

    Raises:
        EvalAborted: More items than `max_errors` got no verdict under some policy.
    """
    label_names = labels_for([p.id for p in combined.policies], dataset)
    run_id = new_ulid()
    examples = [
        e
        for e in dataset.examples
        if e.gold is not None or any(_gold_for(e, n) is not None for n in label_names)
    ]
    cache: dict[str, tuple[Decision, ...]] = {}
    if store is not None and use_cache:
        wanted = {**combined.decision_options(), "on_abstain": combined.on_abstain.value}
        per_policy = [_recorded(store, p.hash, combined, wanted) for p in combined.policies]
        for item_hash in set.intersection(*(set(d) for d in per_policy)):
            cache[item_hash] = tuple(d[item_hash] for d in per_policy)
    if store is not None:
        combined.recorder = Recorder(store, run_id=run_id)
    gate = asyncio.Semaphore(combined.concurrency)
    rows: list[tuple[Example, tuple[Decision, ...], bool] | None] = [None] * len(examples)
    abstained = done = 0
    started = time.perf_counter()

    async def one(index: int, example: Example) -> None:
        nonlocal abstained, done
        item = Item.of(example.text, id=example.id, max_chars=max(combined.max_chars, 1))
        hit = cache.get(item.hash)
        if hit is None:
            async with gate:
                decisions = await combined.classify(item)
        else:
            decisions = hit
        rows[index] = (example, decisions, hit is not None)
        done += 1
        abstained += 0 if all(d.ok for d in decisions) else 1
        if on_result is not None:
            for d, label in zip(decisions, label_names, strict=True):
                part = replace(example, gold=_gold_for(example, label))
                on_result(ItemResult(part, d, hit is not None), {"done": done})
        if max_errors is not None and _over({"abstained": abstained, "done": done}, max_errors):
            raise EvalAborted(
                f"{abstained} of {done} items got no verdict under some policy, past "
                f"--max-errors {max_errors:g}. Decisions so far are recorded; fix the cause "
                "and re-run (finished items come from the cache)."
            )

    await _all_or_none([one(i, e) for i, e in enumerate(examples)])
    finished = [r for r in rows if r is not None]
    elapsed = time.perf_counter() - started
    runs = []
    for i, (policy, label) in enumerate(zip(combined.policies, label_names, strict=True)):
        judged = [
            ItemResult(replace(e, gold=_gold_for(e, label)), ds[i], cached)
            for e, ds, cached in finished
        ]
        items = [r for r in judged if r.example.gold is not None]
        part = replace(
            dataset, name=f"{dataset.name}#{label}", examples=tuple(i.example for i in items)
        )
        spec = _spec(part, combined, len(items), elapsed, policy=policy)
        spec["strategy"] = "combined"
        spec["bundle"] = {"id": combined.bundle.id, "hash": combined.bundle.hash}
        unscored = [r for r in judged if r.example.gold is None]
        run = EvalResult(new_ulid(), spec, items, unscored=unscored)
        run.metrics = compute_metrics(items, threshold_split=threshold_split, seed=seed)
        run.metrics["cached_items"] = run.cached
        runs.append(run)
    calls = [ds[0] for _, ds, _cached in finished]  # every decision of a call shares its cost
    cost = {
        "calls_per_item": 1,
        "seconds_per_item": m.mean([d.latency_s for d in calls]),
        "tokens_per_item": m.mean(
            [d.usage.prompt_tokens + d.usage.completion_tokens for d in calls]
        ),
    }
    any_rows = any_policy_items(runs, dataset)
    result = MultiEvalResult(
        run_id,
        runs,
        label_names,
        _multi_metrics(runs, label_names, cost, any_rows, seed, threshold_split),
        strategy="combined",
        items=any_rows,
    )
    _record_multi(store, dataset, result)
    return result


def _multi_metrics(
    runs: list[EvalResult],
    label_names: list[str | None],
    cost: dict[str, Any],
    any_rows: list[dict[str, Any]],
    seed: int,
    threshold_split: float | None = None,
) -> dict[str, Any]:
    """Exact match over items whose every label is known, per-policy metrics, and cost.

    Policies with no label of their own (`label_names` None) take no part in exact match
    and have no per-policy metrics; they count only towards the any-policy answer.

    When the dataset also has a binary gold label (OpenAI Moderation's "any category"), the
    policies are combined into one binary answer and scored on it under `any`, over the rows
    of `any_policy_items`: flagged when any policy flags (an abstention with no flag is an
    abstention), scored by the highest policy score; with `threshold_split`, one threshold
    on that max score is chosen on part of the items and applied to the rest.
    """
    labelled = [run for run, name in zip(runs, label_names, strict=True) if name is not None]
    by_item = [{r.example.id: r for r in run.items} for run in labelled]
    complete = [i for i in by_item[0] if all(i in b for b in by_item)] if by_item else []
    gold = [[bool(b[i].example.gold) for b in by_item] for i in complete]
    pred = [[b[i].pred for b in by_item] for i in complete]
    out: dict[str, Any] = {
        "exact_match": m.exact_match(gold, pred),
        "exact_match_items": len(complete),
        "per_policy": {
            run.spec["policy"]["id"]: {
                k: run.metrics[k] for k in ("f1", "precision", "recall", "parse_rate")
            }
            for run in labelled
        },
        **cost,
    }
    if any_rows:
        any_gold = [bool(r["gold"]) for r in any_rows]
        any_pred: list[bool | None] = [r["flagged"] for r in any_rows]
        any_score: list[float | None] = [r["score"] for r in any_rows]
        combined = m.binary_metrics(any_gold, any_pred)
        combined["items"] = len(any_rows)
        combined["ci95_f1"] = m.bootstrap_ci(m.f1_of, any_gold, any_pred, seed=seed)
        scored = m.score_metrics(any_gold, any_score)
        if scored is not None:
            combined["scores"] = scored
            if threshold_split:
                combined["threshold_transfer"] = threshold_transfer(
                    any_gold, any_score, threshold_split, seed
                )
        out["any"] = combined
    return out


def any_policy_items(runs: list[EvalResult], dataset: Dataset) -> list[dict[str, Any]]:
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
    ids = [run.spec["policy"]["id"] for run in runs]
    rows = []
    for i in by_item[0]:
        if binary.get(i) is None or not all(i in b for b in by_item):
            continue
        results = [b[i] for b in by_item]
        preds = [r.pred for r in results]
        scores = [r.decision.verdict.score for r in results]
        rows.append(
            {
                "id": i,
                "gold": bool(binary[i]),
                "flagged": any_of(preds),
                "score": None if None in scores else max(s for s in scores if s is not None),
                "flagged_by": [p for p, pred in zip(ids, preds, strict=True) if pred],
                "decisions": [r.decision.id for r in results],
            }
        )
    return rows


def _record_multi(store: Store | None, dataset: Dataset, result: MultiEvalResult) -> None:
    """One `eval_runs` row for the multi-policy run (the exact-match column of the table)."""
    if store is None or not result.runs:
        return
    first = result.runs[0].spec
    policies = [r.spec["policy"] for r in result.runs]
    spec = {
        "kind": "multi",
        "strategy": result.strategy,
        "dataset": {"name": dataset.name, "hash": dataset.hash, "items": len(dataset)},
        "policies": policies,
        "labels": result.label_names,
        "runs": [r.id for r in result.runs],
        "backend": first["backend"],
        "model": first["model"],
        "package_version": __version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    store.add_run(
        {
            "id": result.id,
            "created_at": spec["created_at"],
            "dataset": f"{dataset.name}#multi",
            "dataset_hash": dataset.hash,
            "policy_id": "+".join(p["id"] for p in policies),
            "policy_hash": bundle_hash(p["hash"] for p in policies),
            "backend": first["backend"],
            "effort": first["effort"],
            "mode": first["mode"],
            "spec": spec,
            "metrics": result.metrics,
        }
    )


__all__ = [
    "RESULT_SCHEMA",
    "EvalAborted",
    "EvalResult",
    "ItemResult",
    "MultiEvalResult",
    "any_policy_items",
    "compute_metrics",
    "label_for",
    "labels_for",
    "run_combined_eval",
    "run_eval",
    "run_multi_eval",
    "threshold_transfer",
]
