"""Fitting a read-out: cross-validated logistic regression, operating points, review bands.

The numbers here are pure functions of arrays (no model), so they are tested on their own;
`magistrate.readout.collect` gathers the hidden states through the one judge.

Protocol:
- Features are one hidden state at the label position (the final normalised output, or the
  residual stream after a middle block: `candidate_kinds`), optionally with the zero-shot
  score's log-odds appended (`hidden+score`). Each column is standardised (mean and scale of
  the fitted items: no labels are used for it).
- Out-of-fold scores come from stratified k-fold cross-validation (items with the same
  content share a fold). The candidate states are compared at one regularisation strength;
  for the best, each feature set and each C of the grid is tried. The configuration with the
  best out-of-fold PR-AUC wins (ties, to three places, go to the lower out-of-fold log loss).
- The threshold and the review band are chosen on those out-of-fold scores, never on scores
  of items a model was fitted on. The final model is then fitted on every item.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from magistrate.backends.base import FINAL_NORM, layer_kind
from magistrate.errors import ConfigError
from magistrate.readout.artefact import (
    TOP,
    Candidate,
    FeatureSet,
    OperatingPoint,
    in_band,
    zero_shot_logit,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

C_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
"""Regularisation strengths tried for the chosen state (inverse: smaller is stronger)."""
C_PROBE = 1e-2
"""The strength at which the candidate states are compared (the usual optimum on the
development data: every fit so far chose a C between 3e-3 and 3e-2)."""
FEATURE_SETS: tuple[FeatureSet, ...] = ("hidden", "hidden+score")
MIN_PER_CLASS = 10
"""Fewest items of each label a fit accepts (each fold needs some of both)."""

_TARGET = re.compile(r"^(?:f1|(precision|recall)=(0(?:\.\d+)?|1(?:\.0+)?))$")


@dataclass(frozen=True)
class Target:
    """An operating-point target: best F1, or a precision or recall to reach.

    Parse one with `Target.parse("precision=0.9")`.
    """

    kind: str  # "f1", "precision" or "recall"
    value: float | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        """`f1`, `precision=P` or `recall=R` with P, R in (0, 1].

        Raises:
            ConfigError: Anything else.
        """
        match = _TARGET.match(text.strip().lower())
        if not match or (match.group(2) is not None and float(match.group(2)) <= 0):
            raise ConfigError(
                f"A target is `f1`, `precision=P` or `recall=R` with 0 < P, R <= 1 "
                f"(e.g. precision=0.9), not {text!r}."
            )
        if match.group(1) is None:
            return cls("f1")
        return cls(match.group(1), float(match.group(2)))

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}={self.value:g}"


@dataclass(frozen=True)
class Fitted:
    """The outcome of `fit_probe`."""

    kind: str
    """The hidden state read (`final-norm@label`, `layer-K@label`)."""
    features: FeatureSet
    c: float
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    oof: list[float]
    """Out-of-fold scores of the chosen configuration, in item order."""
    candidates: list[Candidate]


DEPTHS = (0.45, 0.55, 0.65, 0.75)
"""Where the middle states a fit tries sit, as fractions of the model's depth. On the
development data (1,000 ToxicChat train rows, `toxic-prompt`, the embedded 28-block model)
the residual stream after blocks 15-17 ranked best out of fold (PR-AUC 0.79-0.81), the final
normalised output 0.75, and blocks 9, 12-14 and 19-27 0.68-0.77 (docs/quality.md)."""


def candidate_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    """The states a fit compares, from those a backend offers: the final normalised output
    and the residual stream at each of `DEPTHS` (when the backend offers blocks)."""
    layers = [k for k in kinds if k.startswith("layer-")]
    chosen = [k for k in kinds if k == FINAL_NORM]
    if layers:
        for depth in DEPTHS:
            kind = layer_kind(int(depth * len(layers)))
            if kind in kinds and kind not in chosen:
                chosen.append(kind)
    return tuple(chosen) or tuple(kinds[:1])


def design(
    hidden: npt.NDArray[np.float64], zero_shot: Sequence[float], features: FeatureSet
) -> npt.NDArray[np.float64]:
    """The feature matrix of a feature set."""
    import numpy as np

    if features == "hidden":
        return hidden
    logits = np.asarray([zero_shot_logit(p) for p in zero_shot], dtype=np.float64)
    return np.hstack([hidden, logits[:, None]])


def check_labels(gold: Sequence[bool], folds: int) -> None:
    """Refuse data a k-fold fit cannot use.

    Raises:
        ConfigError: Too few items of either label.
    """
    positives = sum(1 for g in gold if g)
    negatives = len(gold) - positives
    need = max(MIN_PER_CLASS, folds)
    if positives < need or negatives < need:
        raise ConfigError(
            f"A read-out needs at least {need} violating and {need} non-violating labelled "
            f"items; got {positives} and {negatives}. Add labelled items (or a larger "
            "--sample)."
        )


def fit_probe(
    states: Mapping[str, npt.NDArray[np.float64]],
    zero_shot: Sequence[float],
    gold: Sequence[bool],
    *,
    folds: int = 5,
    seed: int = 0,
    feature_sets: Sequence[FeatureSet] = FEATURE_SETS,
    grid: Sequence[float] = C_GRID,
    groups: Sequence[str] | None = None,
    jobs: int | None = None,
) -> Fitted:
    """Choose a state, a feature set and C by out-of-fold PR-AUC, then fit on every item.

    In two stages, so the cost grows with the states tried only once: each state (`states`,
    by kind) is scored on its own at `C_PROBE`; then, for the best state, every feature set
    and every C of `grid`. Ties in PR-AUC (to three places) go to the lower out-of-fold log
    loss. (The best state's `hidden` features at `C_PROBE` are fitted in both stages: the
    second walks the grid with warm starts, so its figure differs in the last places.)

    Args:
        states: One matrix (items x width) per hidden-state kind, rows in item order.
        groups: One key per item (the content hash): items with the same key stay in one
            fold, so a repeated text is never scored by a model fitted on its copy.
        jobs: Folds fitted at once (default: every core this process may use, at most 2).
    """
    import numpy as np
    from sklearn.metrics import average_precision_score, log_loss
    from sklearn.model_selection import StratifiedGroupKFold

    if not states:
        raise ConfigError("No hidden states to fit a read-out on.")
    check_labels(gold, folds)
    y = np.asarray(gold, dtype=bool)
    keys = list(groups) if groups is not None else [str(i) for i in range(len(y))]
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(np.zeros(len(y)), y, groups=keys))
    workers = jobs or min(2, _cores())
    candidates: list[Candidate] = []
    best: tuple[tuple[float, float], str, FeatureSet, float, list[float]] | None = None

    def consider(kind: str, features: FeatureSet, cs: Sequence[float]) -> None:
        nonlocal best
        x = _standardise(design(states[kind], zero_shot, features))[0]
        for c, oof in zip(cs, _out_of_fold(x, y, splits, cs, workers), strict=True):
            ap = float(average_precision_score(y, oof))
            candidates.append(Candidate(kind=kind, features=features, c=c, pr_auc=round(ap, 6)))
            # PR-AUC first (to three places); among ties, the better-calibrated scores.
            key = (round(ap, 3), -float(log_loss(y, oof, labels=[False, True])))
            if best is None or key > best[0]:
                best = (key, kind, features, c, oof.tolist())

    chosen = next(iter(states))
    if len(states) > 1:
        for kind in states:
            consider(kind, "hidden", (C_PROBE,))
        assert best is not None
        chosen = best[1]
    for features in feature_sets:
        consider(chosen, features, sorted(grid))
    assert best is not None
    _, kind, features, c, oof_scores = best
    x, mean, scale = _standardise(design(states[kind], zero_shot, features))
    final = _logistic(c).fit(x, y)
    return Fitted(
        kind=kind,
        features=features,
        c=c,
        mean=mean.tolist(),
        scale=scale.tolist(),
        coef=final.coef_[0].astype(float).tolist(),
        intercept=float(final.intercept_[0]),
        oof=oof_scores,
        candidates=candidates,
    )


def _logistic(c: float, *, warm: bool = False) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, warm_start=warm)


def _fold_path(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.bool_],
    train: npt.NDArray[np.intp],
    test: npt.NDArray[np.intp],
    cs: Sequence[float],
) -> list[npt.NDArray[np.float64]]:
    """One fold's held-out scores for each C, walking from strong to weak regularisation
    with warm starts."""
    model = _logistic(cs[0], warm=True)
    out = []
    for c in cs:
        model.set_params(C=c)
        model.fit(x[train], y[train])
        out.append(model.predict_proba(x[test])[:, 1])
    return out


def _cores() -> int:
    """Cores this process may use (joblib's count honours CPU affinity and cgroup limits)."""
    from joblib import cpu_count

    return max(1, int(cpu_count()))


def _out_of_fold(
    x: npt.NDArray[np.float64],
    y: npt.NDArray[np.bool_],
    splits: Sequence[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]],
    cs: Sequence[float],
    workers: int,
) -> list[npt.NDArray[np.float64]]:
    """Out-of-fold scores for each C (folds fitted `workers` at a time)."""
    import numpy as np
    from joblib import Parallel, delayed

    if workers > 1:
        paths = Parallel(n_jobs=workers)(
            delayed(_fold_path)(x, y, train, test, cs) for train, test in splits
        )
    else:
        paths = [_fold_path(x, y, train, test, cs) for train, test in splits]
    oof = [np.zeros(len(y)) for _ in cs]
    for (_, test), path in zip(splits, paths, strict=True):
        for i, scores in enumerate(path):
            oof[i][test] = scores
    return oof


def _standardise(
    x: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    import numpy as np

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    return (x - mean) / scale, mean, scale


def operating_point(
    gold: Sequence[bool],
    scores: Sequence[float],
    target: Target,
    *,
    review_share: float = 0.0,
    band: tuple[float, float] | None = None,
) -> OperatingPoint:
    """The threshold for `target` and the review band, from out-of-fold scores.

    Args:
        target: Best F1; or the lowest threshold whose precision reaches P (the most recall
            at that precision); or the highest threshold whose recall reaches R.
        review_share: The band is the score range around the threshold that holds this
            share of the items (half below it, half above, where there is room).
        band: An explicit `(low, high)` band instead (must hold the threshold).

    Raises:
        ConfigError: The target cannot be reached on these items, or a band that does not
            hold the threshold.
    """
    import numpy as np
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(gold, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0)
    if target.kind == "f1":
        i = int(np.argmax(f1))
    elif target.kind == "precision":
        ok = np.flatnonzero(precision >= (target.value or 0) - 1e-12)
        if not len(ok):
            raise ConfigError(
                f"No threshold reaches precision {target.value:g} on these items (out of fold, "
                f"the best is {float(precision.max()):.3f}). Ask for less, or add labelled items."
            )
        i = int(ok[0])  # thresholds rise with the index: the first has the most recall
    else:
        ok = np.flatnonzero(recall >= (target.value or 0) - 1e-12)
        i = int(ok[-1])  # the highest threshold that still reaches the recall
    threshold = float(thresholds[i])
    pred = s >= threshold
    p, r, f = _prf(y, pred)
    low_high = band if band is not None else _band(s, threshold, review_share)
    if low_high is not None and not (low_high[0] <= threshold <= low_high[1]):
        raise ConfigError(
            f"The review band [{low_high[0]:g}, {low_high[1]:g}) must hold the threshold "
            f"{threshold:.4f}."
        )
    share = outside_f1 = None
    if low_high is not None:
        inside = np.asarray([in_band(low_high, float(x)) for x in s], dtype=bool)
        share = float(inside.mean())
        outside_f1 = _prf(y[~inside], pred[~inside])[2] if (~inside).any() else None
    return OperatingPoint(
        target=str(target),
        threshold=threshold,
        precision=p,
        recall=r,
        f1=f,
        band=low_high,
        band_share=share,
        f1_outside_band=outside_f1,
    )


def _band(
    scores: npt.NDArray[np.float64], threshold: float, share: float
) -> tuple[float, float] | None:
    """The score range around `threshold` holding `share` of the items."""
    import numpy as np

    if share <= 0:
        return None
    if share >= 1:
        return (0.0, TOP)
    ordered = np.sort(scores)
    n = len(ordered)
    k = max(1, math.ceil(share * n - 1e-9))
    at = int(np.searchsorted(ordered, threshold, side="left"))
    start = min(max(0, at - k // 2), max(0, n - k))
    end = start + k
    low = min(float(ordered[start]), threshold)
    # Past the last score the band reaches the top; a score of exactly 1 below that end
    # stays outside (a saturated sigmoid is the surest violation, not an unsure one).
    high = max(min(float(ordered[end]), 1.0 - 1e-12), threshold) if end < n else TOP
    return (low, high)


def _prf(y: npt.NDArray[np.bool_], pred: npt.NDArray[np.bool_]) -> tuple[float, float, float]:
    tp = float((y & pred).sum())
    fp = float((~y & pred).sum())
    fn = float((y & ~pred).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def ranking(gold: Sequence[bool], scores: Sequence[float]) -> tuple[float, float, float]:
    """ROC-AUC, PR-AUC and best F1 of a score."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    best = operating_point(gold, scores, Target("f1")).f1
    return (
        float(roc_auc_score(gold, scores)),
        float(average_precision_score(gold, scores)),
        best,
    )


__all__ = [
    "C_GRID",
    "DEPTHS",
    "FEATURE_SETS",
    "Fitted",
    "Target",
    "candidate_kinds",
    "fit_probe",
    "operating_point",
    "ranking",
]
