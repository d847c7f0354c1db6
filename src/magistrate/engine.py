"""The engine: Policy + Item -> Prompt -> Backend -> Completion -> Verdict -> Decision.

`Classifier` is the one path that `classify` (CLI and Python), evaluation, batch jobs and the
server all run. It builds prompts with `prompt.build_prompt`, parses answers with
`verdict.parse_verdict`, bounds concurrency to what the backend allows, falls back to
constrained decoding when a free answer does not parse, and turns backend failures into
decisions with status `error`, never into a "safe" label.

Example:
    >>> clf = Classifier("spam", mode="score")
    >>> decisions = asyncio.run(clf.classify_many(["Win a prize!", "See you at 6"]))
    >>> decision = classify("Win a FREE iPhone!!!", policy="spam")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from magistrate.backends import DEFAULT_MODEL, Backend, Completion, CompletionOptions, get_backend
from magistrate.backends.base import Usage
from magistrate.decision import Decision, OnAbstain
from magistrate.errors import BackendError, BackendTimeout, ConfigError, InputError
from magistrate.ids import new_ulid
from magistrate.item import DEFAULT_MAX_CHARS, Item
from magistrate.policy import Policy, PolicyBundle, load_policy
from magistrate.prompt import Effort, Mode, Prompt, build_bundle_prompt, build_prompt
from magistrate.store import Recorder
from magistrate.verdict import (
    ParseStatus,
    Verdict,
    failed,
    parse_bundle_verdict,
    parse_verdict,
    verdict_from_scores,
    with_scores,
)

MAX_TOKENS_BY_EFFORT = {Effort.LOW: 128, Effort.MEDIUM: 256, Effort.HIGH: 512}
"""Answer budget for models without a reasoning channel (rationale length grows with effort)."""
REASONING_MAX_TOKENS_BY_EFFORT = {Effort.LOW: 4096, Effort.MEDIUM: 8192, Effort.HIGH: 16384}
"""Budget for models that reason first (gpt-oss): reasoning cut by the budget leaves no answer."""

DecisionCallback = Callable[[Decision], None]
_R = TypeVar("_R")


class _Engine:
    """What every judge shares: the backend, mode, effort, budgets, timeouts and concurrency."""

    def __init__(
        self,
        model: str | Backend = DEFAULT_MODEL,
        *,
        effort: Effort | str = Effort.MEDIUM,
        mode: Mode | str = Mode.REASON,
        max_chars: int = DEFAULT_MAX_CHARS,
        timeout_s: float | None = None,
        fallback: bool = True,
        calibrated: bool = True,
        max_tokens: int | None = None,
        concurrency: int | None = None,
        on_abstain: OnAbstain | str = OnAbstain.ERROR,
        recorder: Recorder | None = None,
    ) -> None:
        self.effort = _enum(Effort, effort, "effort")
        self.mode = _enum(Mode, mode, "mode")
        self.backend = model if isinstance(model, Backend) else get_backend(model)
        if self.mode is Mode.SCORE and not self.backend.capabilities.label_scores:
            raise ConfigError(
                f"Score mode needs label probabilities, which {self.backend.name} cannot give. "
                "Use --mode reason."
            )
        self.max_chars = max_chars
        self.timeout_s = timeout_s
        self.fallback = fallback and self.backend.capabilities.constrained
        self.calibrated = calibrated and self.backend.capabilities.label_scores
        budgets = (
            REASONING_MAX_TOKENS_BY_EFFORT
            if self.backend.capabilities.native_reasoning
            else MAX_TOKENS_BY_EFFORT
        )
        self.max_tokens = max_tokens or budgets[self.effort]
        self.concurrency = max(1, concurrency or self.backend.max_concurrency)
        self.on_abstain = _enum(OnAbstain, on_abstain, "on_abstain")
        self.recorder = recorder

    def item(self, content: str | bytes | Item, *, id: str | None = None) -> Item:
        """A checked item from content (see `Item.of`)."""
        if isinstance(content, Item):
            return content
        return Item.of(content, id=id, max_chars=self.max_chars)

    def _options(self, threshold: float | None, *, constrained: bool = False) -> CompletionOptions:
        if self.mode is Mode.SCORE:
            return CompletionOptions(
                max_tokens=1,
                constrain_label=True,
                label_threshold=threshold,
                timeout_s=self.timeout_s,
            )
        return CompletionOptions(
            max_tokens=self.max_tokens,
            constrained=constrained,
            label_threshold=threshold,
            timeout_s=self.timeout_s,
        )

    async def _many(
        self,
        items: Iterable[str | bytes | Item],
        judge: Callable[[Item], Awaitable[_R]],
        on_result: Callable[[_R], None] | None,
    ) -> list[_R]:
        """Run `judge` over checked items, `concurrency` at a time, keeping the input order."""
        checked = [self.item(c) for c in items]
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: Item) -> _R:
            async with gate:
                result = await judge(item)
            if on_result is not None:
                on_result(result)
            return result

        return list(await asyncio.gather(*(one(item) for item in checked)))

    def _should_fall_back(self, verdicts: Iterable[Verdict]) -> bool:
        """Retry under the constrained grammar: reason mode, and some answer did not parse."""
        return self.fallback and self.mode is Mode.REASON and not all(v.ok for v in verdicts)

    async def aclose(self) -> None:
        """Close the backend (only needed for backends this classifier created)."""
        await self.backend.aclose()

    async def _complete(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        if self.timeout_s is None:
            return await self.backend.complete(prompt, options)
        try:
            # The backend enforces timeout_s itself where it can; this is the outer guard.
            return await asyncio.wait_for(
                self.backend.complete(prompt, options), timeout=self.timeout_s * 1.5 + 1
            )
        except TimeoutError:
            raise BackendTimeout(
                f"{self.backend.name} did not answer within {self.timeout_s} s."
            ) from None

    def _decision(
        self,
        policy: Policy,
        item: Item,
        verdict: Verdict,
        options: dict[str, Any],
        latency_s: float,
        *,
        completion: Completion | None = None,
        usage: Usage | None = None,
        error: str | None = None,
    ) -> Decision:
        return Decision(
            id=new_ulid(),
            created_at=datetime.now(UTC),
            item_id=item.id,
            item_hash=item.hash,
            policy_id=policy.id,
            policy_version=policy.version,
            policy_hash=policy.hash,
            backend=self.backend.name,
            model=completion.model if completion else self.backend.model,
            effort=self.effort.value,
            mode=self.mode.value,
            options={**options, "on_abstain": self.on_abstain.value},
            verdict=verdict,
            reasoning=completion.reasoning if completion else None,
            usage=usage or Usage(),
            latency_s=latency_s,
            error=error,
            metadata=dict(item.metadata),
        )


class Classifier(_Engine):
    """Judges items under one policy with one backend.

    Args:
        policy: A `Policy`, a path to a policy file, or a bundled policy name.
        model: A `provider/model` string or a ready `Backend`.
        effort: Reasoning effort (`low`, `medium`, `high`).
        mode: `reason` (the model writes its answer) or `score` (one label token, scored).
        max_chars: Size limit for one item's content.
        timeout_s: Per-item time limit; past it the decision is an error, not a label.
        fallback: Retry with constrained decoding when a free answer does not parse.
        calibrated: On backends that expose label scores, choose the label by the policy's
            threshold (front matter `threshold`) rather than by the raw most-likely token, in
            both modes; the model then writes its rule ids and rationale for that label.
        max_tokens: Answer budget; default from the effort.
        concurrency: Items in flight at once; default is what the backend allows.
        on_abstain: What an abstention means for routing (`Decision.flagged`): `error`,
            `fail-closed` (flag it) or `fail-open`; the verdict stays an abstention either way.
        recorder: Records every decision (see `magistrate.store`); None records nothing.
            Recording never changes a verdict; a decision that cannot be recorded raises
            `StoreError` naming it.
    """

    def __init__(
        self,
        policy: Policy | str | Path,
        model: str | Backend = DEFAULT_MODEL,
        **kwargs: Any,
    ) -> None:
        self.policy = policy if isinstance(policy, Policy) else load_policy(policy)
        super().__init__(model, **kwargs)

    def prompt(self, item: Item) -> Prompt:
        """The prompt this classifier sends for `item`."""
        return build_prompt(
            self.policy,
            item,
            effort=self.effort,
            native_reasoning=self.backend.capabilities.native_reasoning,
        )

    def options(self, *, constrained: bool = False) -> CompletionOptions:
        """Completion options for this classifier's mode and effort."""
        threshold = self.policy.threshold if self.calibrated else None
        return self._options(threshold, constrained=constrained)

    async def classify(self, content: str | bytes | Item, *, id: str | None = None) -> Decision:
        """Judge one item. Backend failures come back as decisions with status `error`.

        Raises:
            InputError: The content cannot be classified (empty, too large, binary).
            StoreError: The decision was made but could not be recorded.
        """
        item = self.item(content, id=id)
        decision = await self._judge(item)
        if self.recorder is not None:
            await self.recorder.arecord(decision, self.policy, item)
        return decision

    async def _judge(self, item: Item) -> Decision:
        start = time.perf_counter()
        prompt = self.prompt(item)
        options = self.options()
        try:
            completion = await self._complete(prompt, options)
            verdict = self._verdict(completion)
            usage = completion.usage
            if self._should_fall_back([verdict]):
                options = self.options(constrained=True)
                retry = await self._complete(prompt, options)
                usage = usage + retry.usage
                completion, verdict = retry, self._verdict(retry)
        except (BackendError, InputError) as exc:
            return self._decision(
                self.policy,
                item,
                failed(ParseStatus.ERROR, detail=str(exc)),
                options.to_dict(),
                time.perf_counter() - start,
                error=str(exc),
            )
        return self._decision(
            self.policy,
            item,
            verdict,
            options.to_dict(),
            time.perf_counter() - start,
            completion=completion,
            usage=usage,
        )

    async def classify_many(
        self,
        items: Iterable[str | bytes | Item],
        *,
        on_decision: DecisionCallback | None = None,
    ) -> list[Decision]:
        """Judge many items with bounded concurrency; results keep the input order.

        Every item is checked before any is sent, so bad input fails the call up front.

        Args:
            items: Contents or `Item`s.
            on_decision: Called as each decision is made (for progress bars).
        """
        return await self._many(items, self.classify, on_decision)

    def _verdict(self, completion: Completion) -> Verdict:
        if self.mode is Mode.SCORE:
            return verdict_from_scores(completion.label_probs, self.policy)
        verdict = parse_verdict(
            completion.text, self.policy, truncated=completion.finish_reason == "length"
        )
        return with_scores(verdict, completion.label_probs, self.policy)


class CombinedClassifier(_Engine):
    """Judges items under several policies at once: one prompt and one call per item.

    The "combined" multi-policy strategy: the model reads every policy and answers one label
    per policy (`build_bundle_prompt`, `parse_bundle_verdict`). Each policy gets its own
    `Decision`, recorded under that policy; their `options` name the bundle (`bundle`,
    `bundle_policies`) so they can be told apart from decisions made one policy at a time.
    Every decision of one call carries that call's whole latency and usage (shared, not
    split); count it once per item when adding up cost.

    Score mode, on backends that read several labels in one pass (`label_slots`: the
    embedded llama.cpp backend), reads each policy's label distribution where its answer
    line begins; each policy's verdict then comes from its own score and front-matter
    threshold, as when it is judged alone.

    Args:
        policies: Two or more policies (or paths, or bundled names), in answer order.
        model: A `provider/model` string or a ready `Backend`.
        **kwargs: As for `Classifier` (`effort`, `timeout_s`, `fallback`, `on_abstain`, ...).

    Raises:
        ConfigError: Score mode was asked for on a backend that cannot read label slots.
        PolicyError: Fewer than two policies, or two with one id.
    """

    def __init__(
        self,
        policies: PolicyBundle | Iterable[Policy | str | Path],
        model: str | Backend = DEFAULT_MODEL,
        **kwargs: Any,
    ) -> None:
        self.bundle = policies if isinstance(policies, PolicyBundle) else PolicyBundle.of(policies)
        kwargs["calibrated"] = False
        super().__init__(model, **kwargs)
        if self.mode is Mode.SCORE and not self.backend.capabilities.label_slots:
            raise ConfigError(
                f"Several policies in one prompt can be scored only where each policy's label "
                f"can be read in one pass, which {self.backend.name} cannot do. Use --mode "
                "reason, or judge the policies separately (--strategy separate) for scores."
            )

    @property
    def policies(self) -> tuple[Policy, ...]:
        """The bundle's policies, in answer order."""
        return self.bundle.policies

    def prompt(self, item: Item) -> Prompt:
        """The one prompt sent for `item`."""
        return build_bundle_prompt(
            self.bundle,
            item,
            effort=self.effort,
            native_reasoning=self.backend.capabilities.native_reasoning,
        )

    def options(self, *, constrained: bool = False) -> CompletionOptions:
        """Completion options: label slots read in score mode; no label scores in reason mode."""
        options = self._options(None, constrained=constrained)
        return options if self.mode is Mode.SCORE else replace(options, scores=False)

    def decision_options(self, *, constrained: bool = False) -> dict[str, Any]:
        """What a decision made in a combined call records as its options."""
        return {
            **self.options(constrained=constrained).to_dict(),
            "bundle": self.bundle.hash,
            "bundle_policies": list(self.bundle.ids),
        }

    async def classify(
        self, content: str | bytes | Item, *, id: str | None = None
    ) -> tuple[Decision, ...]:
        """Judge one item under every policy; one decision per policy, in bundle order.

        Raises:
            InputError: The content cannot be classified (empty, too large, binary).
            StoreError: A decision was made but could not be recorded.
        """
        item = self.item(content, id=id)
        decisions = await self._judge(item)
        if self.recorder is not None:
            for decision, policy in zip(decisions, self.policies, strict=True):
                await self.recorder.arecord(decision, policy, item)
        return decisions

    async def classify_many(
        self,
        items: Iterable[str | bytes | Item],
        *,
        on_result: Callable[[tuple[Decision, ...]], None] | None = None,
    ) -> list[tuple[Decision, ...]]:
        """Judge many items, one call each, with bounded concurrency; input order kept.

        Every item is checked before any is sent, so bad input fails the call up front.

        Args:
            items: Contents or `Item`s.
            on_result: Called with an item's decisions as they are made (progress bars).
        """
        return await self._many(items, self.classify, on_result)

    async def _judge(self, item: Item) -> tuple[Decision, ...]:
        start = time.perf_counter()
        prompt = self.prompt(item)
        constrained = False
        try:
            completion = await self._complete(prompt, self.options())
            verdicts = self._verdicts(completion)
            usage = completion.usage
            if self._should_fall_back(verdicts):
                constrained = True
                retry = await self._complete(prompt, self.options(constrained=True))
                usage = usage + retry.usage
                completion, verdicts = retry, self._verdicts(retry)
        except (BackendError, InputError) as exc:
            error = failed(ParseStatus.ERROR, detail=str(exc))
            elapsed = time.perf_counter() - start
            return tuple(
                self._decision(p, item, error, self.decision_options(), elapsed, error=str(exc))
                for p in self.policies
            )
        elapsed = time.perf_counter() - start
        options = self.decision_options(constrained=constrained)
        return tuple(
            self._decision(p, item, v, options, elapsed, completion=completion, usage=usage)
            for p, v in zip(self.policies, verdicts, strict=True)
        )

    def _verdicts(self, completion: Completion) -> tuple[Verdict, ...]:
        if self.mode is Mode.SCORE:
            slots = completion.slot_probs or ()
            if len(slots) != len(self.policies):
                return tuple(
                    failed(ParseStatus.NO_FINAL_ANSWER, detail="the backend read no label slots")
                    for _ in self.policies
                )
            return tuple(
                replace(verdict_from_scores(probs, policy), answer=completion.text)
                for probs, policy in zip(slots, self.policies, strict=True)
            )
        return parse_bundle_verdict(
            completion.text, self.bundle, truncated=completion.finish_reason == "length"
        )


def classify(
    content: str | bytes | Item,
    *,
    policy: Policy | str | Path,
    model: str | Backend = DEFAULT_MODEL,
    effort: Effort | str = Effort.MEDIUM,
    mode: Mode | str = Mode.REASON,
    **kwargs: Any,
) -> Decision:
    """Judge one piece of content under a policy (blocking; loads the model once per process).

    Example:
        >>> classify("WIN a FREE iPhone!!!", policy="spam").verdict.violation
        True

    Raises:
        InputError: The content cannot be classified.
        PolicyError: The policy cannot be read.
    """
    classifier = Classifier(policy, model, effort=effort, mode=mode, **kwargs)
    return asyncio.run(classifier.classify(content))


_E = TypeVar("_E", Effort, Mode, OnAbstain)


def _enum(kind: type[_E], value: _E | str, what: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise ConfigError(f"Unknown {what} {value!r}; use one of {allowed}.") from None
