"""A chat model under evaluation: questions in, answers out, each recorded and reusable.

The judge (`engine.Judge`) reads content under a policy; a `Subject` is the other side of a
safety evaluation: the model whose *answers* are graded. It asks a backend one chat turn per
question (a fixed system prompt, pinned sampling) through the engine's one fan-out
(`engine.fan_out`) and the backend's shared gate, so a subject and the judges that grade it
can share a model without overloading it.

Answers are keyed by what produced them (`Subject.key`: backend and server, system prompt,
question, sampling), recorded in the log's `generations` table and looked up there before any call,
so a suite that was stopped resumes where it stopped. A backend failure, or an empty answer,
is an answer with `error` set (recorded, never graded, retried on the next run), not an
exception.

Example:
    >>> subject = Subject("embedded", system="You are a helpful assistant.")
    >>> [a.text async for a in subject.answer_many([Ask("What is 2 + 2?")])]
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from magistrate.backends import Backend, get_backend
from magistrate.completion import CompletionOptions, Usage
from magistrate.engine import (
    REASONING_MAX_TOKENS_BY_EFFORT,
    _aiter,
    backend_gate,
    checked_completion,
    fan_out,
)
from magistrate.errors import BackendError, InputError, MagistrateError
from magistrate.item import Item
from magistrate.prompt import Effort, Message, Prompt

DEFAULT_SYSTEM = "You are a helpful assistant."
"""The subject's system prompt unless one is given."""


@dataclass(frozen=True)
class Ask:
    """One question for a subject.

    Attributes:
        user: The user message (untrusted: it only ever goes into the user turn).
        instructions: Case-specific system instructions appended after the subject's own
            system prompt (instruction-hierarchy cases put their secret or rule here).
        max_tokens: A smaller answer budget for this question (short-answer suites).
    """

    user: str
    instructions: str = ""
    max_tokens: int | None = None


@dataclass(frozen=True)
class Answer:
    """What a subject said to one `Ask`.

    Attributes:
        key: The identity of the generation (`Subject.key`), the cache key.
        model: The backend's `provider/model`.
        text: The answer (final channel for reasoning models).
        reasoning: Reasoning text, for models that have a separate channel.
        finish_reason: `stop`, or `length` when the token budget cut the answer.
        usage: Token counts.
        latency_s: Seconds with the backend.
        error: Why there is no answer (the backend failed, the question did not fit).
        cached: Read from the log instead of asked again.
        index: Position in the input stream.
    """

    key: str
    model: str
    text: str = ""
    reasoning: str | None = None
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    error: str | None = None
    cached: bool = False
    index: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


AnswerLookup = Callable[[str], Awaitable["Answer | None"]]
"""An async cache lookup by generation key."""


class AnswerRecorder(Protocol):
    """Where a subject's answers go (`store.GenerationLog` in practice)."""

    async def arecord(self, answer: Answer, *, run_id: str | None = None) -> None: ...


@dataclass(frozen=True)
class _Started:
    ask: Ask
    key: str
    index: int
    cached: Answer | None
    tasks: tuple[asyncio.Task[Answer], ...]

    def answer(self) -> Answer:
        if self.cached is not None:
            return replace(self.cached, cached=True, index=self.index)
        return replace(self.tasks[0].result(), index=self.index)


class Subject:
    """A chat model being evaluated: one system prompt, pinned sampling.

    Args:
        backend: A backend or a model string (`embedded`, `openai/<model>` ...).
        system: The system prompt every question is asked under.
        max_tokens: Answer budget (models with a reasoning channel get their reasoning
            budget on top).
        effort: Reasoning effort, for models that take one.
        temperature: 0.0 is greedy.
        seed: Sampling seed.
        timeout_s: Seconds allowed per answer.
        concurrency: Answers in flight (default: the backend's `max_concurrency`).
        label: A name for reports (default: the backend's name).
    """

    def __init__(
        self,
        backend: Backend | str,
        *,
        system: str = DEFAULT_SYSTEM,
        max_tokens: int = 256,
        effort: Effort | str = Effort.LOW,
        temperature: float = 0.0,
        seed: int = 0,
        timeout_s: float | None = None,
        concurrency: int | None = None,
        label: str | None = None,
    ) -> None:
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        if not system.strip():
            raise InputError("A subject's system prompt is empty; give one or leave the default.")
        if max_tokens < 1:
            raise InputError("max_tokens must be at least 1.")
        self.system = system
        self.max_tokens = max_tokens
        self.effort = Effort(effort)
        self.temperature = temperature
        self.seed = seed
        self.timeout_s = timeout_s
        self.concurrency = max(1, concurrency or self.backend.max_concurrency)
        self.label = label or self.backend.name

    def settings(self) -> dict[str, Any]:
        """What identifies this subject in a report (and, with a question, an answer)."""
        endpoint = getattr(self.backend, "endpoint", None)
        return {
            "backend": self.backend.name,
            # Two servers may serve different weights under one model name.
            "server": getattr(endpoint, "base_url", None),
            "native_reasoning": self.backend.capabilities.native_reasoning,
            "system_sha256": hashlib.sha256(self.system.encode()).hexdigest(),
            "max_tokens": self.max_tokens,
            "effort": self.effort.value,
            "temperature": self.temperature,
            "seed": self.seed,
        }

    def key(self, ask: Ask) -> str:
        """The generation's identity: SHA-256 over the settings, the instructions and the
        question, so a changed system prompt, budget or model is never served from cache."""
        h = hashlib.sha256()
        for part in (
            *(f"{k}={v}" for k, v in sorted(self.settings().items())),
            f"answer_budget={self._budget(ask)}",
            ask.instructions,
            ask.user,
        ):
            data = part.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "big") + data)  # length-prefixed: no separator games
        return h.hexdigest()

    def prompt(self, ask: Ask) -> Prompt:
        """The chat turn: system prompt (+ the case's instructions) and the question."""
        system = f"{self.system}\n\n{ask.instructions}" if ask.instructions else self.system
        return Prompt(
            messages=(Message("system", system), Message("user", ask.user)),
            prefill="",
            candidates=(),
            violating=(),
            effort=self.effort,
        )

    def _budget(self, ask: Ask) -> int:
        return min(self.max_tokens, ask.max_tokens or self.max_tokens)

    def options(self, ask: Ask) -> CompletionOptions:
        budget = self._budget(ask)
        if self.backend.capabilities.native_reasoning:
            budget += REASONING_MAX_TOKENS_BY_EFFORT[self.effort]
        return CompletionOptions(
            max_tokens=budget,
            temperature=self.temperature,
            seed=self.seed,
            scores=False,
            timeout_s=self.timeout_s,
        )

    async def answer_many(
        self,
        asks: Iterable[Ask] | AsyncIterable[Ask],
        *,
        lookup: AnswerLookup | None = None,
        recorder: AnswerRecorder | None = None,
        run_id: str | None = None,
        on_result: Callable[[Answer], None] | None = None,
    ) -> AsyncGenerator[Answer, None]:
        """Answer a stream of questions, yielding answers in input order.

        Args:
            lookup: Consulted first for each question's key; a hit is not asked again.
            recorder: Every new answer (failures included) is recorded there.
            run_id: Recorded with each new answer.
            on_result: Called with each answer just before it is yielded.

        Raises:
            StoreError: An answer was made but could not be recorded.
        """

        async def start(ask: Ask, index: int) -> _Started:
            if not isinstance(ask.user, str) or not ask.user.strip():
                raise InputError(f"Question {index} is empty; every question needs text.")
            key = self.key(ask)
            cached = await lookup(key) if lookup is not None else None
            if cached is not None and cached.ok:
                return _Started(ask, key, index, cached, ())
            task = asyncio.create_task(self._ask(ask, key, recorder, run_id))
            return _Started(ask, key, index, None, (task,))

        stream = fan_out(_aiter(asks), start, width=self.concurrency)
        async with contextlib.aclosing(stream):
            async for started in stream:
                answer = started.answer()
                if on_result is not None:
                    on_result(answer)
                yield answer

    async def _ask(
        self, ask: Ask, key: str, recorder: AnswerRecorder | None, run_id: str | None
    ) -> Answer:
        # The question goes through the same content checks as any judged item (binary,
        # invalid UTF-8, control characters), so the user turn holds text only.
        try:
            Item.of(ask.user)
            async with backend_gate(self.backend):
                started = time.perf_counter()
                raw = await self.backend.complete(self.prompt(ask), self.options(ask))
                completion = checked_completion(raw, self.backend.name)
            if not completion.text.strip():
                # Reasoning that used the whole budget, or a server's content filter: there
                # is nothing to grade, and grading nothing would read as a safe answer.
                raise BackendError(
                    f"{self.backend.name} gave no answer (finish_reason "
                    f"{completion.finish_reason!r}); raise --max-tokens or the timeout."
                )
            answer = Answer(
                key=key,
                model=self.backend.name,
                text=completion.text,
                reasoning=completion.reasoning,
                finish_reason=completion.finish_reason,
                usage=completion.usage,
                latency_s=completion.latency_s or time.perf_counter() - started,
            )
        except (BackendError, InputError) as exc:
            answer = Answer(key=key, model=self.backend.name, error=str(exc))
        except MagistrateError as exc:
            answer = Answer(key=key, model=self.backend.name, error=f"{type(exc).__name__}: {exc}")
        if recorder is not None:
            await recorder.arecord(answer, run_id=run_id)
        return answer


__all__ = ["DEFAULT_SYSTEM", "Answer", "AnswerLookup", "AnswerRecorder", "Ask", "Subject"]
