"""What a backend returns and how it is asked: core nouns every layer shares.

`Completion` (final text, reasoning, usage, label probabilities), `Usage` (token counts) and
`CompletionOptions` (pinned sampling) sit below both the engine and the backends, so nothing
in the core imports up into `magistrate.backends`.

Example:
    >>> Completion(text="1", model="m", usage=Usage(prompt_tokens=10)).usage.prompt_tokens
    10
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Usage:
    """Token counts for one completion.

    Attributes:
        prompt_tokens: Tokens in the prompt (including prefill).
        cached_tokens: Prompt tokens whose KV state was reused, not recomputed.
        completion_tokens: Tokens generated.
        reasoning_tokens: Generated tokens that were reasoning rather than answer.
    """

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.cached_tokens + other.cached_tokens,
            self.completion_tokens + other.completion_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


@dataclass(frozen=True)
class Completion:
    """What a backend returned for one prompt.

    Attributes:
        text: The final answer, starting with the prompt's prefill when one was used.
        model: The resolved model name.
        reasoning: Reasoning text from a separate channel, if the model has one.
        finish_reason: `stop`, `length` (hit the token limit), or the backend's own word.
        usage: Token counts.
        latency_s: Seconds the backend spent on this prompt.
        label_probs: Probability of each candidate label at the position where the label
            begins, normalised over the candidates; None when the backend cannot tell.
        label_mass: Probability the model put on any candidate at that position, before
            normalisation (low mass means the model wanted to say something else).
        slot_probs: Combined prompts in score mode: `label_probs` for each of the prompt's
            `slots`, in order; None where a slot's label could not be read.
        features: With `CompletionOptions.features`: the model's hidden states at the label
            position (what a fitted read-out reads), the kinds asked for one after another;
            None when not asked for.
    """

    text: str
    model: str
    reasoning: str | None = None
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    label_probs: Mapping[str, float] | None = None
    label_mass: float | None = None
    slot_probs: tuple[Mapping[str, float] | None, ...] | None = None
    features: tuple[float, ...] | None = None


@dataclass(frozen=True)
class CompletionOptions:
    """How to sample one completion. Sampling is pinned: evaluations must be repeatable.

    Attributes:
        max_tokens: Most tokens to generate (1 in score mode).
        temperature: 0.0 is greedy.
        top_p: Nucleus sampling bound.
        seed: Sampling seed.
        scores: Return label probabilities at the label position.
        constrain_label: Restrict the first token to the candidates (score mode).
        label_threshold: Choose the label token by the calibrated score instead of by the
            raw argmax: the best violating label when the violating probability is at least
            this, else the best non-violating one. What follows is generated as usual, so
            the rationale is written for the chosen label.
        constrained: Decode under the prompt's JSON schema or grammar (no prefill).
        timeout_s: Give up after this many seconds (backends that can).
        features: Also return these hidden states at the label position (kinds from
            `Representation.kinds`, concatenated in this order in `Completion.features`), read
            in the same pass as the label logits; backends with `hidden_state` only.
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    scores: bool = True
    constrain_label: bool = False
    label_threshold: float | None = None
    constrained: bool = False
    timeout_s: float | None = None
    features: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The options as recorded with a decision."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "constrained": self.constrained,
            "label_threshold": self.label_threshold,
        }


__all__ = ["Completion", "CompletionOptions", "Usage"]
