"""A scripted backend for engine unit tests only. It never reads the content's meaning.

Example:
    >>> backend = MockBackend(script=['{"violation": 1}', BackendTimeout("slow")])
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from magistrate.backends.base import (
    Backend,
    Capabilities,
    Completion,
    CompletionOptions,
    Representation,
    Usage,
)
from magistrate.errors import BackendError
from magistrate.prompt import Prompt


@dataclass(frozen=True)
class Scripted:
    """One scripted reply: answer text, finish reason, optional label probabilities (one
    distribution, or one per slot of a combined prompt)."""

    text: str
    finish_reason: str = "stop"
    label_probs: Mapping[str, float] | None = None
    reasoning: str | None = None
    slot_probs: tuple[Mapping[str, float] | None, ...] | None = None
    features: tuple[float, ...] | None = None


class MockBackend(Backend):
    """Replies from a script, in order; an exception in the script is raised instead.

    With `cycle=True` the script starts again when it runs out (for load and fuzz tests).

    Every prompt it was given is kept in `prompts`, with its options in `options`.
    """

    provider = "mock"
    capabilities = Capabilities(
        prefill=True, label_scores=True, constrained=True, label_slots=True, hidden_state=True
    )
    feature_size = 4
    """Length of the scripted hidden states (`Scripted.features`)."""

    def __init__(
        self,
        model: str = "scripted",
        *,
        script: Iterable[str | Scripted | BackendError] = (),
        max_concurrency: int = 4,
        delay_s: float = 0.0,
        cycle: bool = False,
    ) -> None:
        self._script = list(script)
        self._original = list(self._script) if cycle else []
        self.model = model
        self.max_concurrency = max_concurrency
        self.delay_s = delay_s
        self.prompts: list[Prompt] = []
        self.options: list[CompletionOptions] = []
        self.in_flight = 0
        self.peak_in_flight = 0

    async def complete(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        self.prompts.append(prompt)
        self.options.append(options)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            if not self._script and self._original:
                self._script = list(self._original)
            if not self._script:
                raise BackendError("The mock backend's script is exhausted.")
            step = self._script.pop(0)
        finally:
            self.in_flight -= 1
        if isinstance(step, BackendError):
            raise step
        if isinstance(step, str):
            step = Scripted(step)
        return Completion(
            text=step.text,
            model=self.model,
            reasoning=step.reasoning,
            finish_reason=step.finish_reason,
            usage=Usage(prompt_tokens=10, completion_tokens=max(1, len(step.text) // 4)),
            label_probs=step.label_probs,
            label_mass=1.0 if step.label_probs else None,
            slot_probs=step.slot_probs,
            features=(
                step.features * len(options.features)
                if options.features and step.features is not None
                else None
            ),
        )

    def representation(self, prompt: Prompt) -> Representation:
        """A stand-in binding: the model name as the weights, the system turn as the layout."""
        weights = hashlib.sha256(f"mock:{self.model}".encode()).hexdigest()
        layout = hashlib.sha256((prompt.system + "\x00" + prompt.prefill).encode()).hexdigest()
        return Representation(weights, layout, self.feature_size)
