"""Decisions: a verdict plus everything needed to audit and reproduce it.

Example:
    >>> decision = classify("Win a prize!", policy="spam")
    >>> decision.verdict.violation, decision.policy_hash[:12], decision.to_dict()["usage"]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from magistrate.completion import Usage
from magistrate.verdict import Verdict, probability_problem

if TYPE_CHECKING:
    from magistrate.item import Item
    from magistrate.policy import Policy


def any_of(flags: Iterable[bool | None]) -> bool | None:
    """An item judged under several policies violates when any policy says so; with none
    saying so and some undecided, it has no answer (never a silent "allowed")."""
    seen = list(flags)
    if any(seen):
        return True
    return None if None in seen else False


class OnAbstain(StrEnum):
    """What a decision without a verdict means for a caller that routes content.

    The verdict itself always stays an abstention with its reason; this only sets `flagged`.
    """

    ERROR = "error"
    """No routing answer: `flagged` is None and callers must handle it (CLI exit 3)."""
    FAIL_CLOSED = "fail-closed"
    """Route it as a violation (`flagged` True): held for review, never waved through."""
    FAIL_OPEN = "fail-open"
    """Route it as allowed (`flagged` False), explicitly chosen and recorded as such."""


@dataclass(frozen=True)
class Decision:
    """One ruling on one item under one policy.

    Attributes:
        id: ULID; sorts by creation time.
        created_at: When the decision was made (UTC).
        item_id: The caller's id for the item, if any.
        item_hash: SHA-256 of the content (the content itself is not kept here).
        policy_id: The policy's id.
        policy_version: The policy's version label.
        policy_hash: SHA-256 of the policy's exact text.
        backend: `provider/model` of the backend.
        model: The resolved model name the backend reported.
        effort: Reasoning effort used.
        mode: `reason` or `score`.
        options: Sampling options and whether constrained decoding was needed.
        verdict: The parsed verdict (status `ok`, or why none was reached).
        reasoning: The model's reasoning text, when it has a separate channel.
        usage: Token counts over all attempts.
        latency_s: Seconds from request to verdict, over all attempts.
        error: The backend error, when the backend failed.
        metadata: The caller's item metadata, carried through untouched.
        features: The hidden states at the label position (the kinds the judge was asked to
            keep, one after another) when fitting a read-out; kept in memory only, never
            recorded.
    """

    id: str
    created_at: datetime
    item_id: str | None
    item_hash: str
    policy_id: str
    policy_version: str
    policy_hash: str
    backend: str
    model: str
    effort: str
    mode: str
    options: Mapping[str, Any]
    verdict: Verdict
    reasoning: str | None = None
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    error: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    features: tuple[float, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when a verdict was reached."""
        return self.verdict.ok

    @property
    def violation(self) -> bool | None:
        """The verdict's violation flag; None when no verdict was reached."""
        return self.verdict.violation

    @property
    def on_abstain(self) -> OnAbstain:
        """The abstention setting this decision was made under (kept in `options`)."""
        return OnAbstain(self.options.get("on_abstain", OnAbstain.ERROR.value))

    @property
    def flagged(self) -> bool | None:
        """What to route by: the violation flag, or for an abstention what `on_abstain` says."""
        if self.verdict.ok:
            return self.verdict.violation
        return {OnAbstain.FAIL_CLOSED: True, OnAbstain.FAIL_OPEN: False}.get(self.on_abstain)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the JSON lines `classify --json` prints)."""
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "item_id": self.item_id,
            "item_hash": self.item_hash,
            "policy": {
                "id": self.policy_id,
                "version": self.policy_version,
                "hash": self.policy_hash,
            },
            "backend": self.backend,
            "model": self.model,
            "effort": self.effort,
            "mode": self.mode,
            "options": dict(self.options),
            **{k: v for k, v in self.verdict.to_dict().items()},
            "flagged": self.flagged,
            "reasoning": self.reasoning,
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "cached_tokens": self.usage.cached_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "reasoning_tokens": self.usage.reasoning_tokens,
            },
            "latency_s": round(self.latency_s, 4),
            "error": self.error,
            "metadata": dict(self.metadata),
        }


class Recorder(Protocol):
    """What the engine records decisions through (`magistrate.store.Recorder` is one).

    The engine depends on this protocol only, so judging never imports a database driver.
    """

    async def arecord_all(
        self, decisions: Sequence[tuple[Decision, Policy]], item: Item
    ) -> list[int]:
        """Record the decisions of one call (each under its policy) in one transaction:
        all of them or none. Returns their positions in the log.

        Raises:
            StoreError: The decisions were made but not recorded (the message names them).
        """
        ...


@dataclass(frozen=True)
class CacheKey:
    """What a recorded decision must match to stand in for a new call under one policy.

    The decision-log cache (eval runs, batch jobs) reuses a recorded verdict only when it was
    made under the same policy text, backend, effort and mode, with the same options
    (`Judge.decision_options`). Whether the answer needed the constrained-decoding fallback
    does not matter: that is how the verdict was reached, not what was asked.
    """

    policy_hash: str
    backend: str
    effort: str
    mode: str
    options: Mapping[str, Any]

    def matches(self, decision: Decision) -> bool:
        """True when `decision` answers the same question with a usable verdict."""
        if (decision.policy_hash, decision.backend, decision.effort, decision.mode) != (
            self.policy_hash,
            self.backend,
            self.effort,
            self.mode,
        ):
            return False
        probs = decision.verdict.label_probs
        if probs and probability_problem(probs) is not None:
            return False  # recorded before invalid probabilities became abstentions
        return _asked(decision.options) == _asked(self.options)


def _asked(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k != "constrained"}
