"""Metrics as pure functions over per-item results (scikit-learn where it fits).

Conventions: `gold` holds the true violation flags (True = positive, the violating class);
`pred` holds predicted flags, with None for an abstention (no verdict). The plain metrics are
computed over the items that got a verdict, and the abstention rate is reported beside them;
the `strict` variant counts every abstention as a wrong answer, as a deployment would feel it.

Example:
    >>> binary_metrics([True, False, True], [True, None, False])["f1"]
    0.6666666666666666
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

Pred = bool | None


def confusion(gold: Sequence[bool], pred: Sequence[Pred]) -> dict[str, int]:
    """Counts of tp, fp, fn, tn over items with a verdict, and abstentions."""
    out = {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "abstained": 0}
    for g, p in zip(gold, pred, strict=True):
        if p is None:
            out["abstained"] += 1
        elif p and g:
            out["tp"] += 1
        elif p:
            out["fp"] += 1
        elif g:
            out["fn"] += 1
        else:
            out["tn"] += 1
    return out


def _prf(c: dict[str, int]) -> tuple[float, float, float]:
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    recall = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def strict_predictions(gold: Sequence[bool], pred: Sequence[Pred]) -> list[bool]:
    """Predictions with every abstention turned into the wrong answer."""
    return [(not g) if p is None else p for g, p in zip(gold, pred, strict=True)]


def binary_metrics(gold: Sequence[bool], pred: Sequence[Pred]) -> dict[str, Any]:
    """Precision, recall and F1 of the violating class, accuracy, Cohen's kappa, MCC.

    Computed over the items with a verdict; `abstain_rate` is reported separately and the
    `strict_*` figures count abstentions as errors.
    """
    c = confusion(gold, pred)
    n = len(gold)
    answered = [(g, p) for g, p in zip(gold, pred, strict=True) if p is not None]
    precision, recall, f1 = _prf(c)
    strict = strict_predictions(gold, pred)
    sc = confusion(gold, strict)
    s_precision, s_recall, s_f1 = _prf(sc)
    out: dict[str, Any] = {
        "n": n,
        "positives": int(sum(gold)),
        "predicted_positives": c["tp"] + c["fp"],
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": (c["tp"] + c["tn"]) / len(answered) if answered else 0.0,
        "kappa": _safe(skm.cohen_kappa_score, answered),
        "mcc": _safe(skm.matthews_corrcoef, answered),
        "abstain_rate": c["abstained"] / n if n else 0.0,
        "strict_precision": s_precision,
        "strict_recall": s_recall,
        "strict_f1": s_f1,
        "strict_accuracy": (sc["tp"] + sc["tn"]) / n if n else 0.0,
        "confusion": c,
    }
    return out


def _safe(fn: Callable[..., Any], pairs: list[tuple[bool, bool]]) -> float | None:
    if len(pairs) < 2:
        return None
    g = [int(a) for a, _ in pairs]
    p = [int(b) for _, b in pairs]
    if len(set(g)) < 2 and len(set(p)) < 2:
        return None  # undefined when both sides are constant
    value = float(fn(g, p))
    return None if math.isnan(value) else value


def score_metrics(gold: Sequence[bool], scores: Sequence[float | None]) -> dict[str, Any] | None:
    """PR-AUC (average precision), ROC-AUC, and the best-F1 threshold, over scored items."""
    pairs = [(g, s) for g, s in zip(gold, scores, strict=True) if s is not None]
    if len(pairs) < 2 or len({g for g, _ in pairs}) < 2:
        return None
    g = np.array([int(a) for a, _ in pairs])
    s = np.array([b for _, b in pairs], dtype=float)
    threshold, best_f1 = best_threshold(g.astype(bool).tolist(), s.tolist())
    return {
        "n_scored": len(pairs),
        "pr_auc": float(skm.average_precision_score(g, s)),
        "roc_auc": float(skm.roc_auc_score(g, s)),
        "best_threshold": threshold,
        "best_f1": best_f1,
    }


def reliability(
    gold: Sequence[bool], scores: Sequence[float | None], bins: int = 10
) -> dict[str, Any] | None:
    """Calibration of the scores: per equal-width score bin, how many items, their mean
    score and the share of them that are truly violating; and the expected calibration
    error (ECE, the bin-size-weighted mean gap between the two)."""
    pairs = [(bool(g), float(s)) for g, s in zip(gold, scores, strict=True) if s is not None]
    if not pairs:
        return None
    table = []
    ece = 0.0
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        inside = [(g, s) for g, s in pairs if lo <= s < hi or (k == bins - 1 and s == 1.0)]
        if not inside:
            continue
        mean_score = sum(s for _, s in inside) / len(inside)
        rate = sum(1 for g, _ in inside if g) / len(inside)
        ece += len(inside) / len(pairs) * abs(rate - mean_score)
        table.append(
            {"lo": lo, "hi": hi, "n": len(inside), "mean_score": mean_score, "positive_rate": rate}
        )
    return {"bins": table, "ece": ece}


def best_threshold(gold: Sequence[bool], scores: Sequence[float]) -> tuple[float, float]:
    """The score threshold (predict positive when score >= t) with the highest F1."""
    precision, recall, thresholds = skm.precision_recall_curve([int(x) for x in gold], list(scores))
    f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall + 1e-12), 0)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    if not len(thresholds):
        return 0.5, 0.0
    return float(thresholds[best]), float(f1[best])


def pr_curve(gold: Sequence[bool], scores: Sequence[float]) -> list[tuple[float, float]]:
    """(recall, precision) points for plotting."""
    precision, recall, _ = skm.precision_recall_curve([int(x) for x in gold], list(scores))
    return [(float(r), float(p)) for r, p in zip(recall, precision, strict=True)]


def apply_threshold(scores: Sequence[float | None], threshold: float) -> list[Pred]:
    """Predictions from scores: positive when score >= threshold; None stays None."""
    return [None if s is None else s >= threshold for s in scores]


def bootstrap_ci(
    statistic: Callable[[list[bool], list[Pred]], float],
    gold: Sequence[bool],
    pred: Sequence[Pred],
    *,
    rounds: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `statistic(gold, pred)` over items."""
    n = len(gold)
    if n == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    g = list(gold)
    p = list(pred)
    values = []
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        values.append(statistic([g[i] for i in idx], [p[i] for i in idx]))
    lo, hi = np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


def f1_of(gold: list[bool], pred: list[Pred]) -> float:
    """F1 of the violating class over answered items (for `bootstrap_ci`)."""
    return _prf(confusion(gold, pred))[2]


def precision_of(gold: list[bool], pred: list[Pred]) -> float:
    return _prf(confusion(gold, pred))[0]


def recall_of(gold: list[bool], pred: list[Pred]) -> float:
    return _prf(confusion(gold, pred))[1]


def mean(values: Sequence[float]) -> float:
    """The mean, or 0.0 when there are no values."""
    return float(np.mean(list(values))) if values else 0.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) of the values, or None when there are none."""
    return float(np.percentile(list(values), q)) if values else None


def exact_match(gold: Sequence[Sequence[bool]], pred: Sequence[Sequence[Pred]]) -> float:
    """Multi-policy exact-match accuracy: an item counts only if every policy's flag is right."""
    if not gold:
        return 0.0
    right = sum(
        all(p is not None and p == g for g, p in zip(gs, ps, strict=True))
        for gs, ps in zip(gold, pred, strict=True)
    )
    return right / len(gold)
