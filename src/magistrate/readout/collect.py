"""Fit a read-out on labelled items: hidden states through the one judge, then the probe.

`fit_readout` runs a score-mode `Judge` that keeps each decision's hidden states (the
candidate kinds, `Judge(features=...)`) over the labelled items through `judge_many`, the same path
every verdict takes (recorded in the decision log when a store is given), then fits the
probe and its operating point (`magistrate.readout.fit`) and returns the artefact, bound to
the policy text, the model file and the prompt layout.

Example:
    >>> result = await fit_readout(policy, dataset, backend, target=Target.parse("f1"))
    >>> result.readout.point.threshold, result.readout.document.cv.pr_auc
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from magistrate import __version__
from magistrate.backends.base import Backend
from magistrate.engine import Judge, Judgement, judge_all
from magistrate.errors import ConfigError
from magistrate.evaluate.datasets import Dataset
from magistrate.ids import new_ulid
from magistrate.item import Item
from magistrate.policy import Policy
from magistrate.prompt import build_prompt
from magistrate.readout.artefact import (
    Binding,
    CrossValidation,
    ReadOut,
    ReadOutDocument,
    TrainingData,
)
from magistrate.readout.fit import (
    Target,
    candidate_kinds,
    check_labels,
    fit_probe,
    operating_point,
    ranking,
)
from magistrate.store import Recorder, Store
from magistrate.verdict import violation_score


@dataclass(frozen=True)
class FitResult:
    """A fitted read-out and what the fit left out.

    Attributes:
        readout: The artefact (not yet stored).
        abstained: Items the judge reached no verdict on (left out of the fit).
        dropped: Items left out because they overlap the held-out part (`drop_overlap`).
        run_id: The run id of the decisions recorded while fitting (None without a store).
    """

    readout: ReadOut
    abstained: int
    dropped: int
    run_id: str | None


async def fit_readout(
    policy: Policy,
    dataset: Dataset,
    backend: Backend,
    *,
    target: Target,
    review_share: float = 0.0,
    band: tuple[float, float] | None = None,
    folds: int = 5,
    seed: int = 0,
    held_out: Collection[str] = (),
    held_out_name: str = "the report part",
    drop_overlap: bool = False,
    store: Store | None = None,
    on_result: Callable[[Judgement], None] | None = None,
    kinds: Sequence[str] = (),
) -> FitResult:
    """Judge `dataset` in score mode keeping hidden states, and fit a read-out on them.

    Args:
        target: The operating point (`f1`, `precision=P`, `recall=R`).
        review_share: Fit a review band holding this share of the items around the
            threshold (0: none); or give `band` explicitly.
        held_out: Content hashes of items that figures will be reported on: fitting on any
            of them is refused (or, with `drop_overlap`, they are left out and counted).
        store: Record the zero-shot decisions made while fitting (one run id).
        kinds: The hidden states to compare (default: `candidate_kinds` of what the backend
            offers); the best out of fold is the one the read-out reads.

    Raises:
        ConfigError: Overlap with `held_out`, too few labelled items of a kind, a backend
            without hidden states, an unreachable target.
    """
    if not backend.capabilities.hidden_state:
        raise ConfigError(
            f"{backend.name} does not return hidden states; fit read-outs on a llama.cpp "
            "model (the embedded model, or a GGUF file)."
        )
    labelled = [e for e in dataset.examples if e.gold is not None]
    items = [Item.of(e.text, id=e.id) for e in labelled]
    forbidden = set(held_out)
    overlap = [i for i, item in enumerate(items) if item.hash in forbidden]
    if overlap and not drop_overlap:
        raise ConfigError(
            f"{len(overlap)} of the {len(items)} labelled items are also in {held_out_name}, "
            "which figures are reported on: a read-out fitted on them would be measured on "
            "what it learnt. Fit on the tune part or another split, or pass --drop-overlap "
            "to leave those items out."
        )
    if overlap:
        skip = set(overlap)
        labelled = [e for i, e in enumerate(labelled) if i not in skip]
        items = [item for i, item in enumerate(items) if i not in skip]
    check_labels([bool(e.gold) for e in labelled], folds)

    probe = Item.of("representation probe")
    native = backend.capabilities.native_reasoning
    representation = backend.representation(build_prompt(policy, probe, native_reasoning=native))
    if representation is None:
        raise ConfigError(f"{backend.name} cannot say what its hidden states are bound to.")
    tried = tuple(kinds) or candidate_kinds(representation.kinds)
    run_id = new_ulid() if store is not None else None
    judge = Judge(
        policy,
        backend,
        mode="score",
        features=tried,
        recorder=Recorder(store, run_id=run_id) if store is not None else None,
    )  # refuses a state the backend cannot return, before anything is judged
    tried = judge.features  # each state once, in order
    started = time.perf_counter()
    judgements = await judge_all(judge, items, on_result=on_result)
    judge_seconds = time.perf_counter() - started

    import numpy as np

    rows = [
        (labelled[j.index], j.decisions[0])
        for j in judgements
        if j.decisions[0].ok and j.decisions[0].features is not None
    ]
    check_labels([bool(e.gold) for e, _ in rows], folds)
    width = representation.size
    hidden = np.asarray([d.features for _, d in rows], dtype=np.float64)
    if hidden.shape[1:] != (width * len(tried),):
        raise ConfigError(
            f"{backend.name} returned hidden states of {hidden.shape[1:]} numbers; "
            f"{width * len(tried)} were expected ({len(tried)} of {width})."
        )
    states = {kind: hidden[:, i * width : (i + 1) * width] for i, kind in enumerate(tried)}
    del hidden
    zero_shot = [violation_score(d.verdict.label_probs, policy) for _, d in rows]
    gold = [bool(e.gold) for e, _ in rows]

    started = time.perf_counter()
    groups = [d.item_hash for _, d in rows]
    fitted = fit_probe(states, zero_shot, gold, folds=folds, seed=seed, groups=groups)
    point = operating_point(gold, fitted.oof, target, review_share=review_share, band=band)
    roc, pr, best = ranking(gold, fitted.oof)
    zs_roc, zs_pr, zs_best = ranking(gold, zero_shot)
    fit_seconds = time.perf_counter() - started

    document = ReadOutDocument(
        id=new_ulid(),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        package_version=__version__,
        binding=Binding(
            policy_id=policy.id,
            policy_version=policy.version,
            policy_hash=policy.hash,
            model=backend.name,
            model_sha256=representation.model_sha256,
            layout=representation.layout,
            kind=fitted.kind,
            size=representation.size,
        ),
        features=fitted.features,
        mean=fitted.mean,
        scale=fitted.scale,
        coef=fitted.coef,
        intercept=fitted.intercept,
        point=point,
        cv=CrossValidation(
            folds=folds,
            seed=seed,
            features=fitted.features,
            c=fitted.c,
            roc_auc=roc,
            pr_auc=pr,
            best_f1=best,
            zero_shot_roc_auc=zs_roc,
            zero_shot_pr_auc=zs_pr,
            zero_shot_best_f1=zs_best,
            candidates=fitted.candidates,
        ),
        trained_on=TrainingData(
            dataset=dataset.name,
            source=dataset.source,
            dataset_hash=dataset.hash,
            items=len(rows),
            positive=sum(gold),
            item_hashes=sorted({d.item_hash for _, d in rows}),
        ),
        judge_seconds=round(judge_seconds, 3),
        fit_seconds=round(fit_seconds, 3),
    )
    return FitResult(
        readout=ReadOut(document),
        abstained=len(judgements) - len(rows),
        dropped=len(overlap),
        run_id=run_id,
    )


__all__ = ["FitResult", "fit_readout"]
