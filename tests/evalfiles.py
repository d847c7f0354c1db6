"""Eval documents as older versions wrote them (schema `magistrate.eval/1`), built by hand.

The shapes are those of `EvalResult.to_dict()`, `ItemResult.to_dict()` and the `eval_runs`
rows of the version before `magistrate.eval/2`: plain dicts, every key always present,
optional blocks (`scores`, `pr_curve`, `reliability`, `threshold_transfer`) left out when
there was nothing to put in them.
"""

from __future__ import annotations

from typing import Any

from magistrate.backends.mock import MockBackend, Scripted
from magistrate.evaluate import metrics as m

POLICY_HASH = "cd" * 32
DATASET_HASH = "ab" * 32


def v1_item(k: int, gold: bool, pred: bool | None, **fields: Any) -> dict[str, Any]:
    """One item row as `ItemResult.to_dict()` wrote it in `magistrate.eval/1`."""
    row = {
        "id": f"i{k}",
        "text": f"t{k}",
        "gold": gold,
        "labels": {},
        "pred": pred,
        "label": None if pred is None else str(int(pred)),
        "status": "ok" if pred is not None else "truncated",
        "score": None,
        "category": None,
        "rule_ids": [],
        "unknown_rule_ids": [],
        "rationale": None,
        "reasoning": None,
        "detail": None if pred is not None else "token limit",
        "decision_id": f"01DECISION{k:016d}",
        "latency_s": 0.25,
        "prompt_tokens": 400,
        "completion_tokens": 2,
        "cached": False,
    }
    return row | fields


def v1_spec(version: str = "1", *, items: int = 5) -> dict[str, Any]:
    """A single-policy spec as `magistrate.eval/1` wrote it."""
    return {
        "dataset": {
            "name": "golden",
            "source": "golden.jsonl",
            "hash": DATASET_HASH,
            "items": items,
            "positive": "label is positive",
        },
        "policy": {"id": "spam", "version": version, "hash": POLICY_HASH[:-2] + version * 2},
        "backend": "llamacpp/embedded",
        "model": "gpt-oss-safeguard-20b",
        "effort": "medium",
        "mode": "reason",
        "options": {
            "max_tokens": 512,
            "temperature": 0.0,
            "top_p": 1.0,
            "seed": 0,
            "constrained": False,
            "label_threshold": None,
            "on_abstain": "error",
        },
        "package_version": "0.1.0",
        "git_revision": "e933b6f00000000000000000000000000000000",
        "created_at": "2026-11-28T00:00:00+00:00",
        "elapsed_s": 1.5,
    }


def v1_metrics(confusion: dict[str, int], f1: float = 0.5) -> dict[str, Any]:
    """Single-policy metrics as `magistrate.eval/1` wrote them (figures need not add up)."""
    n = sum(confusion.values())
    return {
        "n": n,
        "positives": confusion["tp"] + confusion["fn"],
        "predicted_positives": confusion["tp"] + confusion["fp"],
        "precision": 0.5,
        "recall": 0.5,
        "f1": f1,
        "accuracy": 0.5,
        "kappa": None,
        "mcc": 0.1,
        "abstain_rate": confusion["abstained"] / n,
        "strict_precision": 0.5,
        "strict_recall": 0.4,
        "strict_f1": 0.45,
        "strict_accuracy": 0.4,
        "confusion": confusion,
        "statuses": {"ok": n - confusion["abstained"], "truncated": confusion["abstained"]},
        "parse_rate": 1 - confusion["abstained"] / n,
        "ci95": {"f1": [0.2, 0.8], "precision": [0.1, 0.9], "recall": [0.2, 0.7]},
        "latency_s": {"p50": 0.25, "p95": 0.3},
        "tokens_per_item": {"prompt": 400.0, "completion": 2.0},
        "cached_items": 0,
    }


def v1_result(preds: list[bool | None], run: str, *, gold_positives: int = 3) -> dict[str, Any]:
    """A whole `magistrate.eval/1` result file: items k < `gold_positives` are violating."""
    items = [v1_item(k, k < gold_positives, p) for k, p in enumerate(preds)]
    confusion = m.confusion([r["gold"] for r in items], [r["pred"] for r in items])
    return {
        "schema": "magistrate.eval/1",
        "id": run,
        "spec": v1_spec(run, items=len(items)),
        "metrics": v1_metrics(confusion),
        "items": items,
    }


def v1_run_row(run: str, dataset: str, f1: float, backend: str = "llamacpp/q") -> dict[str, Any]:
    """A single-policy `eval_runs` row as the `magistrate.eval/1` version recorded it."""
    spec = v1_spec() | {"backend": backend, "mode": "score"}
    spec["dataset"] = spec["dataset"] | {"name": dataset, "items": 200}
    metrics = v1_metrics({"tp": 50, "fp": 50, "fn": 50, "tn": 50, "abstained": 0}, f1)
    metrics["ci95"]["f1"] = [f1 - 0.1, f1 + 0.1]
    return {
        "id": run,
        "created_at": f"2026-11-28T00:00:0{run}+00:00",
        "dataset": dataset,
        "dataset_hash": DATASET_HASH,
        "policy_id": "spam",
        "policy_hash": spec["policy"]["hash"],
        "backend": backend,
        "effort": "medium",
        "mode": "score",
        "spec": spec,
        "metrics": metrics,
    }


def v1_multi_row(run: str, exact_match: float) -> dict[str, Any]:
    """A multi-policy `eval_runs` row as the `magistrate.eval/1` version recorded it."""
    policies = [
        {"id": "hate", "version": "1", "hash": "11" * 32},
        {"id": "violence", "version": "1", "hash": "22" * 32},
    ]
    return {
        "id": run,
        "created_at": f"2026-11-28T00:00:0{run}+00:00",
        "dataset": "openai-moderation-2022~100@7#multi",
        "dataset_hash": DATASET_HASH,
        "policy_id": "hate+violence",
        "policy_hash": "33" * 32,
        "backend": "llamacpp/q",
        "effort": "medium",
        "mode": "score",
        "spec": {
            "kind": "multi",
            "strategy": "combined",
            "dataset": {"name": "openai-moderation-2022~100@7", "hash": DATASET_HASH, "items": 100},
            "policies": policies,
            "labels": ["hate", "violence"],
            "runs": ["r-hate", "r-violence"],
            "backend": "llamacpp/q",
            "model": "q",
            "package_version": "0.1.0",
            "created_at": f"2026-11-28T00:00:0{run}+00:00",
        },
        "metrics": {
            "exact_match": exact_match,
            "exact_match_items": 90,
            "per_policy": {
                p["id"]: {"f1": 0.5, "precision": 0.5, "recall": 0.5, "parse_rate": 1.0}
                for p in policies
            },
            "calls_per_item": 1,
            "seconds_per_item": 0.8,
            "tokens_per_item": 4400.0,
        },
    }


def scripted(labels: list[int]) -> MockBackend:
    """A scripted backend answering each label in turn, scored 0.2 (label 0) or 0.8 (1)."""
    return MockBackend(
        script=[
            Scripted(str(v), label_probs={"0": 1 - (0.2 + 0.6 * v), "1": 0.2 + 0.6 * v})
            for v in labels
        ],
        max_concurrency=1,
    )
