"""OpenAI's Moderation API shape over judgements: each category is a policy.

A category without a verdict fails the whole item (`Unavailable`, 503) rather than read as
unflagged, unless the server routes abstentions (`--on-abstain fail-closed` or `fail-open`).
`category_scores` carries only real probabilities: a category whose verdict has none (a
backend without label probabilities, or a routed abstention) is absent there, and its flag
is in `categories`.

Example:
    >>> moderation_result({"hate": "hate"}, judgement).flagged
"""

from __future__ import annotations

from collections.abc import Mapping

from magistrate.engine import Judgement
from magistrate.errors import Unavailable
from magistrate.server.schemas import ModerationRequest, ModerationResult


def moderation_texts(body: ModerationRequest) -> list[str]:
    """The texts of a moderation request (`input` as a string, strings or text parts)."""
    if isinstance(body.input, str):
        return [body.input]
    return [part if isinstance(part, str) else part.text for part in body.input]


def moderation_result(categories: Mapping[str, str], judgement: Judgement) -> ModerationResult:
    """One item's result: `categories` maps each category name to the policy judged for it,
    in the order of the judgement's decisions.

    Raises:
        Unavailable: A category reached no verdict and abstentions are not routed.
    """
    flags: dict[str, bool] = {}
    scores: dict[str, float] = {}
    ids: dict[str, str] = {}
    for name, decision in zip(categories, judgement.decisions, strict=True):
        if decision.flagged is None:
            raise Unavailable(
                f"No verdict was reached for category {name!r} "
                f"({decision.verdict.status.value}); the item was not judged safe. "
                f"Decision {decision.id} records why. Retry, or run the server with "
                "--on-abstain fail-closed.",
                code="verdict_unavailable",
                retry_after=5,
            )
        flags[name] = decision.flagged
        if decision.verdict.score is not None:  # a flag is never shown as a probability
            scores[name] = float(decision.verdict.score)
        ids[name] = decision.id
    return ModerationResult(
        flagged=any(flags.values()),
        categories=flags,
        category_scores=scores,
        category_applied_input_types={name: ["text"] for name in categories},
        decision_ids=ids,
    )


__all__ = ["moderation_result", "moderation_texts"]
