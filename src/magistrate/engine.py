"""The engine: Policy + Item -> Prompt -> Backend -> Completion -> Verdict -> Decision.

`Judge` is the one judge every feature runs: `classify` (CLI and Python), evaluation, batch
jobs and the server. It holds a bundle of one or more policies (a single policy is a bundle
of one) and answers, for each item, one decision per policy plus the any-policy answer (a
`Judgement`). `Judge.judge_many` is how every verdict is made; its loop, `fan_out`, is the
only loop in the package that spreads work over a backend (`subject.Subject.answer_many`,
which asks a chat model questions for the safety suites, is its other caller).

How several policies are judged is the judge's `strategy`:
- `combined`: one prompt and one call per item (`prompt.build_bundle_prompt`, one answer
  line per policy; in score mode the label of each policy is read where its line begins).
- `separate`: one call per policy per item, each policy's prompt built as if it were alone.

Every failure of a backend becomes a decision with status `error` for that item only, never
a "safe" label; a failed parse in reason mode is retried once under constrained decoding.

Example:
    >>> judge = Judge(["hate", "violence"], mode="score")
    >>> judgement = asyncio.run(judge.judge("some text"))
    >>> judgement.flagged, [d.verdict.label for d in judgement.decisions]
    >>> decision = classify("Win a FREE iPhone!!!", policy="spam")
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import warnings
import weakref
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from magistrate.backends import DEFAULT_MODEL, Backend, get_backend
from magistrate.completion import Completion, CompletionOptions, Usage
from magistrate.decision import CacheKey, Decision, OnAbstain, Recorder, any_of
from magistrate.errors import (
    BackendError,
    BackendTimeout,
    ConfigError,
    ErrorBudgetExceeded,
    InputError,
    MagistrateError,
    MalformedAnswer,
    ReadOutMismatch,
)
from magistrate.ids import new_ulid
from magistrate.item import DEFAULT_MAX_CHARS, Item
from magistrate.policy import Policy, PolicyBundle, load_policy
from magistrate.prompt import Effort, Mode, Prompt, build_bundle_prompt, build_prompt
from magistrate.readout.artefact import ReadOut
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

PolicyLike = Policy | str | Path
Content = str | bytes | Item
Cached = Sequence[Decision | None]
"""What a cache lookup answers for an item: a decision per policy of the judge, in bundle
order, or None for a policy with nothing cached."""
Lookup = Callable[[Item], Awaitable[Cached | None]]
"""An async cache lookup: the cached decisions for an item, or None for a miss."""


class Strategy(StrEnum):
    """How a judge with several policies asks the backend."""

    COMBINED = "combined"
    """One prompt and one call per item, one answer line per policy."""
    SEPARATE = "separate"
    """One call per policy per item, each prompt built as if the policy were alone."""


@dataclass(frozen=True)
class Judgement:
    """One item judged under every policy of a judge: a decision per policy, in bundle order.

    Attributes:
        item: The checked item.
        decisions: One decision per policy, in the judge's policy order.
        cached: Per decision: True when it came from the cache rather than the backend.
        index: The item's position in the input of `Judge.judge_many` (0 for `judge`).
    """

    item: Item
    decisions: tuple[Decision, ...]
    cached: tuple[bool, ...]
    index: int = 0

    @property
    def ok(self) -> bool:
        """True when every policy reached a verdict."""
        return all(d.ok for d in self.decisions)

    @property
    def violation(self) -> bool | None:
        """The any-policy verdict: True when some policy finds a violation; None when none
        does and some policy reached no verdict (never a silent "allowed")."""
        return any_of(d.violation if d.ok else None for d in self.decisions)

    @property
    def flagged(self) -> bool | None:
        """What to route by: any policy flags it (abstentions count as `on_abstain` says)."""
        return any_of(d.flagged for d in self.decisions)

    @property
    def flagged_by(self) -> tuple[str, ...]:
        """The ids of the policies that flag the item."""
        return tuple(d.policy_id for d in self.decisions if d.flagged)

    @property
    def score(self) -> float | None:
        """The highest policy score; None when some policy has no score."""
        scores = [d.verdict.score for d in self.decisions]
        return None if any(s is None for s in scores) else max(s for s in scores if s is not None)

    @property
    def from_cache(self) -> bool:
        """True when no decision of this judgement needed the backend."""
        return all(self.cached)

    def to_dict(self) -> dict[str, Any]:
        """The JSON line `classify --json` prints for an item judged under several policies."""
        return {
            "item_id": self.item.id,
            "item_hash": self.item.hash,
            "flagged": self.flagged,
            "flagged_by": list(self.flagged_by),
            "decisions": [d.to_dict() for d in self.decisions],
        }


@dataclass(frozen=True)
class _Call:
    """One backend call per item: a single policy, or a bundle answered in one prompt."""

    policies: tuple[Policy, ...]
    bundle: PolicyBundle | None
    positions: tuple[int, ...]
    """Where this call's decisions go in the judge's policy order."""


@dataclass(frozen=True)
class _Pending:
    """An item of `judge_many` whose calls are running: assembled when they all finish."""

    item: Item
    index: int
    cached: Cached
    calls: tuple[_Call, ...]
    tasks: tuple[asyncio.Task[tuple[Decision, ...]], ...]
    shared: bool = False
    """The tasks belong to an earlier item with the same content (`share_identical`)."""

    def judgement(self) -> Judgement:
        """Cached decisions where a call was not needed, the calls' decisions elsewhere
        (counted as cached when they were shared with an identical earlier item)."""
        decisions: list[Decision | None] = list(self.cached)
        from_cache = [d is not None for d in decisions]
        for call, task in zip(self.calls, self.tasks, strict=True):
            for position, decision in zip(call.positions, task.result(), strict=True):
                decisions[position] = decision
                from_cache[position] = self.shared
        made = tuple(d for d in decisions if d is not None)
        assert len(made) == len(decisions)
        return Judgement(self.item, made, tuple(from_cache), self.index)


class ErrorBudget:
    """Counts items without a verdict; past the limit the run stops (`ErrorBudgetExceeded`)."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.done = 0
        self.failed = 0

    def count(self, judgement: Judgement) -> None:
        self.done += 1
        self.failed += 0 if judgement.ok else 1
        if self.limit is None:
            return
        over = (
            self.failed > self.limit
            if self.limit >= 1
            else self.done >= 20 and self.failed / self.done > self.limit
        )
        if over:
            raise ErrorBudgetExceeded(
                f"{self.failed} of {self.done} items got no verdict, past --max-errors "
                f"{self.limit:g}. Decisions made so far are recorded; fix the cause and run "
                "again (recorded decisions are reused)."
            )


class _Clock:
    """Adds up the seconds spent inside `with clock:` blocks (time with the backend)."""

    def __init__(self) -> None:
        self.spent = 0.0
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.spent += time.perf_counter() - self._started


class _InFlight:
    """The tasks of `fan_out` that may still be running.

    Counted from the tasks themselves (a finished task's done-callbacks may not have run yet
    when the generator resumes), and as a set: items sharing an identical earlier item's
    calls do not count them twice. Finished tasks are dropped only when the count matters
    (at the limit, or before waiting), so each check costs O(calls in flight), not
    O(items read ahead).
    """

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def add(self, tasks: Iterable[asyncio.Task[Any]]) -> None:
        self.tasks.update(tasks)

    def count(self, limit: int) -> int:
        """Calls still running (exact once it reaches `limit`)."""
        if len(self.tasks) >= limit:
            self.tasks = {t for t in self.tasks if not t.done()}
        return len(self.tasks)

    def unfinished(self) -> set[asyncio.Task[Any]]:
        self.tasks = {t for t in self.tasks if not t.done()}
        return self.tasks


def _raise_first_failure(done: Iterable[asyncio.Task[Any]]) -> None:
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            task.result()


class Started(Protocol):
    """What `fan_out`'s `start` returns for one input: the tasks it started (maybe none)."""

    @property
    def tasks(self) -> tuple[asyncio.Task[Any], ...]: ...


_S = TypeVar("_S", bound=Started)
_In = TypeVar("_In")


async def fan_out(
    source: AsyncIterable[_In],
    start: Callable[[_In, int], Awaitable[_S]],
    *,
    width: int,
    read_ahead: int | None = None,
) -> AsyncGenerator[_S, None]:
    """The package's one fan-out: start work for a stream of inputs, yield it in input order.

    `start(input, index)` begins the work for one input (its backend calls, as tasks) and
    returns at once; each started input is yielded, in input order, once all its tasks are
    done. At most `width` tasks run at once and at most `read_ahead` inputs (default
    `2 * width + 8`) are read ahead, so memory does not grow with the input. A task that
    fails with an exception stops the stream as soon as it finishes, not when its input's
    turn comes. When the consumer stops (closes the generator) or an error propagates, every
    task not yet yielded is cancelled and awaited first. `Judge.judge_many` (verdicts) and
    `Subject.answer_many` (a chat model's answers) are both this loop.
    """
    read_ahead = read_ahead if read_ahead is not None else 2 * width + 8
    pending: deque[_S] = deque()
    live = _InFlight()
    stream = source.__aiter__()
    exhausted = False
    read = 0
    try:
        while True:
            while not exhausted and live.count(width) < width and len(pending) < read_ahead:
                try:
                    value = await anext(stream)
                except StopAsyncIteration:
                    exhausted = True
                    break
                started = await start(value, read)
                read += 1
                pending.append(started)
                live.add(started.tasks)
            if not pending:
                return
            if not all(task.done() for task in pending[0].tasks):
                done, _ = await asyncio.wait(live.unfinished(), return_when=asyncio.FIRST_COMPLETED)
                _raise_first_failure(done)  # a later input's failure stops the run now
                continue
            yield pending.popleft()
    finally:
        stranded = [task for p in pending for task in p.tasks]
        for task in stranded:
            task.cancel()
        await asyncio.gather(*stranded, return_exceptions=True)


_gates: weakref.WeakKeyDictionary[Backend, dict[asyncio.AbstractEventLoop, asyncio.Semaphore]]
_gates = weakref.WeakKeyDictionary()


def backend_gate(backend: Backend) -> asyncio.Semaphore:
    """The one semaphore, per backend and event loop, that bounds calls in flight to it.

    Every judge sharing a backend shares its gate, so two judges (or a server's many
    requests) never put more calls on a backend than its `max_concurrency`.
    """
    loop = asyncio.get_running_loop()
    per_loop = _gates.setdefault(backend, {})
    gate = per_loop.get(loop)
    if gate is None:
        for stale in [lp for lp in per_loop if lp.is_closed()]:
            del per_loop[stale]
        gate = per_loop[loop] = asyncio.Semaphore(max(1, backend.max_concurrency))
    return gate


class Judge:
    """Judges items under a bundle of one or more policies with one backend.

    Args:
        policies: A policy (or a path, or a bundled policy name), several of them, or a
            `PolicyBundle`. A single policy is a bundle of one.
        model: A `provider/model` string or a ready `Backend`. Backends from model strings
            belong to the process-wide registry and are shared; a judge never closes one.
        strategy: With several policies: `combined` (one call per item) or `separate`
            (one call per policy per item).
        effort: Reasoning effort (`low`, `medium`, `high`).
        mode: `reason` (the model writes its answer) or `score` (one label token, scored).
        max_chars: Size limit for one item's content.
        timeout_s: Per-call time limit; past it the decision is an error, not a label.
        fallback: Retry with constrained decoding when a free answer does not parse.
        calibrated: On backends that expose label scores, choose a single policy's label by
            its threshold (front matter `threshold`) rather than by the raw most-likely
            token, in both modes. Combined prompts read thresholds in score mode only.
        max_tokens: Answer budget; default from the effort.
        concurrency: Backend calls this judge keeps in flight in `judge_many`; default what
            the backend allows. Calls are also bounded by the backend's shared gate.
        on_abstain: What an abstention means for routing (`Decision.flagged`): `error`,
            `fail-closed` (flag it) or `fail-open`; the verdict stays an abstention either way.
        recorder: Records every decision made (see `magistrate.store.Recorder`); None
            records nothing. Recording never changes a verdict; a decision that cannot be
            recorded raises `StoreError` naming it.
        readouts: Fitted read-outs (`magistrate.readout.ReadOut`), at most one per policy,
            each checked against its policy, the backend's model and the prompt layout
            (`ReadOutMismatch` when it was fitted on anything else). A policy with a
            read-out is judged by it in score mode; its decisions name it in `options`.
        features: Keep these hidden states at the label position on each decision (kinds
            from `Representation.kinds`, concatenated in `Decision.features`, never
            recorded): what `magistrate fit` learns from. Not with `readouts`.

    Raises:
        ConfigError: An unknown effort, mode or strategy, or a mode the backend cannot do.
        PolicyError: A policy cannot be read, or two policies share an id.
    """

    def __init__(
        self,
        policies: PolicyLike | PolicyBundle | Iterable[PolicyLike],
        model: str | Backend = DEFAULT_MODEL,
        *,
        strategy: Strategy | str = Strategy.COMBINED,
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
        readouts: Iterable[ReadOut] = (),
        features: Sequence[str] = (),
    ) -> None:
        self.policies = _load_policies(policies)
        self.strategy = _enum(Strategy, strategy, "strategy")
        self.effort = _enum(Effort, effort, "effort")
        self.mode = _enum(Mode, mode, "mode")
        self.backend = model if isinstance(model, Backend) else get_backend(model)
        caps = self.backend.capabilities
        if self.mode is Mode.SCORE and not caps.label_scores:
            raise ConfigError(
                f"Score mode needs label probabilities, which {self.backend.name} cannot give. "
                "Use --mode reason."
            )
        self.bundle = (
            PolicyBundle.of(self.policies)
            if len(self.policies) > 1 and self.strategy is Strategy.COMBINED
            else None
        )
        if self.combined and self.mode is Mode.SCORE and not caps.label_slots:
            raise ConfigError(
                f"Several policies in one prompt can be scored only where each policy's label "
                f"can be read in one pass, which {self.backend.name} cannot do. Use --mode "
                "reason, or judge the policies separately (--strategy separate) for scores."
            )
        self.max_chars = max_chars
        self.timeout_s = timeout_s
        self.fallback = fallback and caps.constrained
        self.calibrated = calibrated and caps.label_scores
        budgets = REASONING_MAX_TOKENS_BY_EFFORT if caps.native_reasoning else MAX_TOKENS_BY_EFFORT
        self.max_tokens = max_tokens or budgets[self.effort]
        self.concurrency = max(1, concurrency or self.backend.max_concurrency)
        self.on_abstain = _enum(OnAbstain, on_abstain, "on_abstain")
        self.recorder = recorder
        self._calls = self._plan()
        self._decision_options: dict[tuple[object, ...], dict[str, Any]] = {}
        if isinstance(features, str):
            features = (features,)
        self.features = tuple(dict.fromkeys(features))  # each state once, in order
        self.readouts = self._bind(tuple(readouts))
        if self.features and self.readouts:
            raise ConfigError(
                "A judge keeps hidden states for fitting or applies read-outs, not both."
            )
        if features and (self.mode is not Mode.SCORE or self.combined or not caps.hidden_state):
            raise ConfigError(
                f"Hidden states are read per policy in score mode, on a backend that returns "
                f"them ({self.backend.name} {'does' if caps.hidden_state else 'does not'}); "
                "use --mode score and one policy per prompt."
            )
        if self.features:
            probe = self.prompt(Item.of("representation probe"), self.policy)
            offered = self.backend.representation(probe)
            missing = [k for k in self.features if offered is None or k not in offered.kinds]
            if missing:
                returns = f"; it returns {offered.describe_kinds()}" if offered else ""
                raise ConfigError(
                    f"{self.backend.name} cannot return the state {missing[0]!r}{returns}."
                )

    def _bind(self, readouts: tuple[ReadOut, ...]) -> dict[str, ReadOut]:
        """The read-outs by policy hash, each checked against what it will read."""
        if not readouts:
            return {}
        if self.mode is not Mode.SCORE or self.combined:
            raise ConfigError(
                "Read-outs judge one policy's prompt in score mode: use --mode score (and "
                "--strategy separate with several policies), or pass --readout none. A "
                "pipeline can send a read-out's unsure items to reason mode."
            )
        by_id = {p.id: p for p in self.policies}
        bound: dict[str, ReadOut] = {}
        for readout in readouts:
            policy = by_id.get(readout.binding.policy_id)
            if policy is None:
                raise ReadOutMismatch(
                    f"Read-out {readout.id} was fitted on policy {readout.binding.policy_id}, "
                    f"which this judge does not have ({', '.join(by_id)}). Pass the read-out "
                    "of one of these policies, or judge that policy."
                )
            if policy.hash in bound:
                raise ConfigError(f"Two read-outs were given for policy {policy.id}; pass one.")
            probe = Item.of("representation probe")
            readout.check(policy, self.backend.representation(self.prompt(probe, policy)))
            bound[policy.hash] = readout
        return bound

    @property
    def combined(self) -> bool:
        """True when several policies share one prompt per item."""
        return self.bundle is not None

    @property
    def policy(self) -> Policy:
        """The first policy (the only one, for a judge of one policy)."""
        return self.policies[0]

    def _plan(self) -> tuple[_Call, ...]:
        if self.combined:
            return (_Call(self.policies, self.bundle, tuple(range(len(self.policies)))),)
        return tuple(_Call((p,), None, (i,)) for i, p in enumerate(self.policies))

    # -- what is sent --------------------------------------------------------------------------

    def item(self, content: Content, *, id: str | None = None) -> Item:
        """A checked item from content (see `Item.of`)."""
        if isinstance(content, Item):
            return content
        return Item.of(content, id=id, max_chars=self.max_chars)

    def prompt(self, item: Item, policy: Policy | None = None) -> Prompt:
        """The prompt sent for `item`: the combined prompt, or one policy's own prompt
        (`policy`, default the first)."""
        native = self.backend.capabilities.native_reasoning
        if self.combined and policy is None:
            assert self.bundle is not None
            return build_bundle_prompt(
                self.bundle, item, effort=self.effort, native_reasoning=native
            )
        return build_prompt(
            policy or self.policy, item, effort=self.effort, native_reasoning=native
        )

    def options(
        self, policy: Policy | None = None, *, constrained: bool = False
    ) -> CompletionOptions:
        """Completion options for this judge's mode and effort (for one policy's call, or
        the combined call when `policy` is None on a combined judge)."""
        combined = self.combined and policy is None
        threshold = None
        if not combined and self.calibrated:
            threshold = (policy or self.policy).threshold
        if self.mode is Mode.SCORE:
            target = policy or self.policy
            options = CompletionOptions(
                max_tokens=1,
                constrain_label=True,
                label_threshold=threshold,
                timeout_s=self.timeout_s,
                features=() if combined else self._kinds(target),
            )
        else:
            options = CompletionOptions(
                max_tokens=self.max_tokens,
                constrained=constrained,
                label_threshold=threshold,
                timeout_s=self.timeout_s,
            )
        return replace(options, scores=False) if combined and self.mode is Mode.REASON else options

    def _kinds(self, policy: Policy) -> tuple[str, ...]:
        """The hidden states a score-mode call for `policy` asks the backend for."""
        if self.features:
            return self.features
        readout = self.readouts.get(policy.hash)
        return (readout.binding.kind,) if readout is not None else ()

    def decision_options(
        self, policy: Policy | None = None, *, constrained: bool = False
    ) -> dict[str, Any]:
        """What a decision records as its options: the call's completion options, the
        bundle for a combined call, and `on_abstain`. The decision-log cache matches on it.

        Every decision made with the same settings shares one mapping (the log encodes it
        once per write): treat it as read-only.
        """
        target = policy or self.policy
        key = (
            target.hash, target.threshold, policy is None, constrained, self.mode,
            self.effort, self.timeout_s, self.calibrated, self.max_tokens, self.on_abstain,
            self.strategy, self.bundle.hash if self.bundle is not None else None,
        )  # fmt: skip
        out = self._decision_options.get(key)
        if out is None:
            out = self.options(policy, constrained=constrained).to_dict()
            if self.combined and self.bundle is not None:
                out["bundle"] = self.bundle.hash
                out["bundle_policies"] = list(self.bundle.ids)
            out["on_abstain"] = self.on_abstain.value
            readout = None if policy is None and self.combined else self.readouts.get(target.hash)
            if readout is not None:
                out["readout"] = readout.id
                out["readout_sha256"] = readout.hash
                out["readout_threshold"] = readout.point.threshold
            if len(self._decision_options) >= 64:
                self._decision_options.clear()
            self._decision_options[key] = out
        return out

    def cache_keys(self) -> tuple[CacheKey, ...]:
        """Per policy, what a recorded decision must match to be reused for it."""
        return tuple(
            CacheKey(
                policy_hash=p.hash,
                backend=self.backend.name,
                effort=self.effort.value,
                mode=self.mode.value,
                options=self.decision_options(None if self.combined else p),
            )
            for p in self.policies
        )

    # -- judging -------------------------------------------------------------------------------

    async def judge(self, content: Content, *, id: str | None = None) -> Judgement:
        """Judge one item under every policy; backend failures come back as `error` decisions.

        Raises:
            InputError: The content cannot be classified (empty, too large, binary).
            StoreError: A decision was made but could not be recorded.
        """
        return (await judge_all(self, [self.item(content, id=id)]))[0]

    async def judge_many(
        self,
        items: Iterable[Content] | AsyncIterable[Content],
        *,
        lookup: Lookup | None = None,
        max_errors: float | None = None,
        on_result: Callable[[Judgement], None] | None = None,
        share_identical: bool = False,
    ) -> AsyncIterator[Judgement]:
        """Judge a stream of items, yielding one `Judgement` per item in input order.

        It runs on `fan_out`, the package's only fan-out. Items are read lazily (an iterable
        or async iterable of any length is never materialised): at most `concurrency`
        backend calls of this judge are in flight, and each call also waits on its backend's
        shared gate.

        Args:
            items: Contents or `Item`s, checked as they are read.
            lookup: Consulted for every item before any call: cached decisions (one per
                policy, None where a policy has nothing cached). Only the calls of policies
                without a cached decision are made; cached decisions are not recorded again.
            max_errors: Error budget: stop when more items than this got no verdict, a count
                (>= 1) or a fraction of the items done (< 1, checked from 20 items on).
            on_result: Called with each judgement just before it is yielded.
            share_identical: An item whose content is identical to an item still in flight
                (same hash, same calls needed) waits for that item's calls instead of
                making its own: identical content is judged once, and the later item's
                decisions count as cached (they are the earlier item's decisions).

        Cancellation: when the consumer stops iterating (closes the generator, e.g. with
        `contextlib.aclosing`), or an error stops the run (a bad item: `InputError`; a
        decision that cannot be recorded: `StoreError`, raised as soon as any item's call
        fails, not when that item's turn comes; the error budget: `ErrorBudgetExceeded`),
        every call still in flight is cancelled and awaited before the generator returns or
        the error propagates. A call whose decisions are being recorded finishes recording
        them first (all of one call's decisions go into the log in one transaction, so a
        combined call is never half recorded); a backend that computes in a worker thread
        may finish the computation there, its answer discarded. Decisions already recorded
        stay recorded; items not yet yielded are not judged.

        Raises:
            InputError: An item cannot be classified.
            StoreError: A decision was made but not recorded.
            ErrorBudgetExceeded: More items than `max_errors` got no verdict.
        """
        budget = ErrorBudget(max_errors)
        twins: dict[str, _Pending] = {}  # share_identical: the items whose calls others may share

        async def start(content: Content, index: int) -> _Pending:
            started = await self._start(content, index, lookup, twins)
            if share_identical and started.tasks and not started.shared:
                twins[started.item.hash] = started
            return started

        stream = fan_out(_aiter(items), start, width=self.concurrency)
        async with contextlib.aclosing(stream):
            async for first in stream:
                if twins.get(first.item.hash) is first:
                    del twins[first.item.hash]
                judgement = first.judgement()
                budget.count(judgement)
                if on_result is not None:
                    on_result(judgement)
                yield judgement

    async def _start(
        self,
        content: Content,
        index: int,
        lookup: Lookup | None,
        twins: Mapping[str, _Pending] | None = None,
    ) -> _Pending:
        """Check an item, consult the cache, and start the calls its misses need (or take
        those of an identical item still in flight: `twins`, by content hash, when
        `share_identical` is on)."""
        item = self.item(content)
        cached = await self._cached(item, lookup)
        calls = tuple(self._needed(cached))
        if twins and calls:
            twin = twins.get(item.hash)
            if twin is not None and twin.calls == calls:
                return _Pending(item, index, cached, calls, twin.tasks, shared=True)
        tasks = tuple(asyncio.create_task(self._call(call, item)) for call in calls)
        return _Pending(item, index, cached, calls, tasks)

    def calls_needed(self, cached: Cached | None = None) -> int:
        """How many backend calls an item needs, given what the cache holds for it."""
        return len(self._needed(cached or (None,) * len(self.policies)))

    def _needed(self, cached: Cached) -> list[_Call]:
        return [c for c in self._calls if any(cached[i] is None for i in c.positions)]

    async def _cached(self, item: Item, lookup: Lookup | None) -> Cached:
        found = await lookup(item) if lookup is not None else None
        if found is None:
            return (None,) * len(self.policies)
        if len(found) != len(self.policies):
            raise ConfigError(
                f"A cache lookup answered {len(found)} decisions for a judge of "
                f"{len(self.policies)} policies; answer one per policy (None for a miss)."
            )
        return tuple(found)

    def refused(self, item: Item, reason: str) -> tuple[Decision, ...]:
        """Error decisions, one per policy, for an item that was never sent (bad input a
        batch job keeps going past). A lookup may answer them so no call is made; they are
        not recorded."""
        error = failed(ParseStatus.ERROR, detail=reason)
        made: list[Decision | None] = [None] * len(self.policies)
        for call in self._calls:
            verdicts = [error] * len(call.policies)
            decisions = self._decisions(call, item, verdicts, 0.0, False, error=reason)
            for position, d in zip(call.positions, decisions, strict=True):
                made[position] = d
        return tuple(d for d in made if d is not None)

    async def _call(self, call: _Call, item: Item) -> tuple[Decision, ...]:
        """One backend call (with its constrained retry) -> one decision per policy, recorded.

        The latency recorded is the time spent with the backend (both attempts), not the
        time spent waiting for the backend's gate.
        """
        clock = _Clock()
        policy = None if call.bundle is not None else call.policies[0]
        prompt = self.prompt(item, policy)
        options = self.options(policy)
        constrained = False
        try:
            completion = await self._complete(prompt, options, clock)
            verdicts = self._read(call, completion)
            usage = completion.usage
            if self.fallback and self.mode is Mode.REASON and not all(v.ok for v in verdicts):
                constrained = True
                retry = await self._complete(prompt, self.options(policy, constrained=True), clock)
                usage = usage + retry.usage
                completion, verdicts = retry, self._read(call, retry)
        except (BackendError, InputError) as exc:
            error = failed(ParseStatus.ERROR, detail=str(exc))
            decisions = self._decisions(
                call, item, [error] * len(call.policies), clock.spent, constrained, error=str(exc)
            )
        else:
            decisions = self._decisions(
                call, item, verdicts, clock.spent, constrained, completion=completion, usage=usage
            )
        await self._record(call, item, decisions)
        return decisions

    def _decisions(
        self,
        call: _Call,
        item: Item,
        verdicts: Sequence[Verdict],
        latency_s: float,
        constrained: bool,
        *,
        completion: Completion | None = None,
        usage: Usage | None = None,
        error: str | None = None,
    ) -> tuple[Decision, ...]:
        """The decisions of one call: a combined call's share its latency and usage."""
        policy_of_call = None if call.bundle is not None else call.policies[0]
        options = self.decision_options(policy_of_call, constrained=constrained)
        return tuple(
            Decision(
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
                options=options,
                verdict=verdict,
                reasoning=completion.reasoning if completion else None,
                usage=usage or Usage(),
                latency_s=latency_s,
                error=error,
                metadata=dict(item.metadata),
                features=completion.features if completion and self.features else None,
            )
            for policy, verdict in zip(call.policies, verdicts, strict=True)
        )

    async def _record(self, call: _Call, item: Item, decisions: tuple[Decision, ...]) -> None:
        """Record a call's decisions in one transaction; a cancellation that arrives while
        they are being written waits for the write, so none is left half done."""
        if self.recorder is None:
            return
        writing = asyncio.ensure_future(
            self.recorder.arecord_all(list(zip(decisions, call.policies, strict=True)), item)
        )
        cancelled: asyncio.CancelledError | None = None
        while True:
            try:
                await asyncio.shield(writing)
                break
            except asyncio.CancelledError as exc:
                if writing.done():  # the write itself was cancelled
                    raise
                cancelled = exc  # wait for the write however many cancellations arrive
        if cancelled is not None:
            raise cancelled

    async def _complete(
        self, prompt: Prompt, options: CompletionOptions, clock: _Clock
    ) -> Completion:
        """One backend call. Whatever goes wrong inside the backend, including its own bugs
        on a malformed answer (an overflow, a wrong type), is a `BackendError` for this item
        only; a completion whose fields have the wrong types is `MalformedAnswer`."""
        async with backend_gate(self.backend):
            with clock:
                try:
                    if self.timeout_s is None:
                        completion = await self.backend.complete(prompt, options)
                    else:
                        # The backend enforces timeout_s itself where it can; this is the
                        # outer guard.
                        completion = await asyncio.wait_for(
                            self.backend.complete(prompt, options),
                            timeout=self.timeout_s * 1.5 + 1,
                        )
                except TimeoutError:
                    raise BackendTimeout(
                        f"{self.backend.name} did not answer within {self.timeout_s} s."
                    ) from None
                except MagistrateError:
                    raise
                except Exception as exc:  # a backend's own failure on what it received
                    raise BackendError(
                        f"{self.backend.name} failed while answering "
                        f"({type(exc).__name__}); the item was not judged."
                    ) from exc
        return checked_completion(completion, self.backend.name)

    def _read(self, call: _Call, completion: Completion) -> tuple[Verdict, ...]:
        """The verdicts of a completion; an answer that breaks the parser is unreadable."""
        try:
            return self._verdicts(call, completion)
        except MagistrateError:
            raise
        except Exception as exc:
            raise MalformedAnswer(
                f"{self.backend.name}'s answer could not be read ({type(exc).__name__})."
            ) from exc

    def _verdicts(self, call: _Call, completion: Completion) -> tuple[Verdict, ...]:
        truncated = completion.finish_reason == "length"
        if call.bundle is None:
            policy = call.policies[0]
            if self.mode is Mode.SCORE:
                verdict = verdict_from_scores(completion.label_probs, policy)
                readout = self.readouts.get(policy.hash)
                if readout is not None:
                    verdict = readout.apply(verdict, completion.features, policy)
                return (verdict,)
            verdict = parse_verdict(completion.text, policy, truncated=truncated)
            return (with_scores(verdict, completion.label_probs, policy),)
        if self.mode is Mode.SCORE:
            slots = completion.slot_probs or ()
            if len(slots) != len(call.policies):
                return tuple(
                    failed(ParseStatus.NO_FINAL_ANSWER, detail="the backend read no label slots")
                    for _ in call.policies
                )
            return tuple(
                replace(verdict_from_scores(probs, policy), answer=completion.text)
                for probs, policy in zip(slots, call.policies, strict=True)
            )
        return parse_bundle_verdict(completion.text, call.bundle, truncated=truncated)

    async def aclose(self) -> None:
        """Nothing to release: backends belong to whoever made them (the registry for model
        strings), so closing a judge never closes a backend that others share."""
        return None


def checked_completion(completion: object, backend: str) -> Completion:
    """The completion, if its fields have the types the engine and the log rely on.

    Raises:
        MalformedAnswer: A field of the wrong type (the usage counts are recorded as
            integers, the answer is parsed as text).
    """
    if not isinstance(completion, Completion):
        raise MalformedAnswer(f"{backend} returned {type(completion).__name__}, not a Completion.")
    if not isinstance(completion.usage, Usage):
        raise MalformedAnswer(f"{backend} reported no token usage it could account for.")
    if not _label_map(completion.label_probs) or not (
        completion.slot_probs is None
        or (
            isinstance(completion.slot_probs, tuple)
            and all(_label_map(slot) for slot in completion.slot_probs)
        )
    ):
        raise MalformedAnswer(f"{backend} gave label probabilities that are not keyed by label.")
    if completion.features is not None and not (
        isinstance(completion.features, tuple)
        and all(isinstance(x, float | int) and not isinstance(x, bool) for x in completion.features)
    ):
        raise MalformedAnswer(f"{backend} returned a hidden state that is not a list of numbers.")
    usage = completion.usage
    counts = [
        usage.prompt_tokens,
        usage.cached_tokens,
        usage.completion_tokens,
        usage.reasoning_tokens,
    ]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        raise MalformedAnswer(f"{backend} reported token counts that are not counts.")
    texts = (completion.text, completion.model, completion.finish_reason)
    if not all(isinstance(t, str) for t in texts) or not isinstance(
        completion.reasoning, str | None
    ):
        raise MalformedAnswer(f"{backend} answered with text fields that are not text.")
    if any(_UNSTORABLE.search(t) for t in (*texts, completion.reasoning or "")):
        # A NUL (PostgreSQL text cannot hold it) or a lone surrogate (UTF-8 cannot encode
        # it) in what the model wrote: replaced, so the decision is recorded alike in every
        # log instead of failing to be recorded at all.
        completion = replace(
            completion,
            text=_storable(completion.text),
            model=_storable(completion.model),
            finish_reason=_storable(completion.finish_reason),
            reasoning=_storable(completion.reasoning) if completion.reasoning else None,
        )
    return completion


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(text: str) -> str:
    return _UNSTORABLE.sub("\ufffd", text)


def _label_map(probs: object) -> bool:
    """None, or a mapping from label names (text) to whatever values (checked later)."""
    return probs is None or (isinstance(probs, Mapping) and all(isinstance(k, str) for k in probs))


async def _aiter(items: Iterable[_In] | AsyncIterable[_In]) -> AsyncIterator[_In]:
    if isinstance(items, AsyncIterable):
        async for content in items:
            yield content
    else:
        for content in items:
            yield content


def _load_policies(
    policies: PolicyLike | PolicyBundle | Iterable[PolicyLike],
) -> tuple[Policy, ...]:
    if isinstance(policies, PolicyBundle):
        return policies.policies
    if isinstance(policies, Policy | str | Path):
        policies = [policies]
    loaded = tuple(p if isinstance(p, Policy) else load_policy(p) for p in policies)
    if not loaded:
        raise ConfigError("A judge needs at least one policy.")
    return loaded


async def judge_all(
    judge: Judge, items: Iterable[Content] | AsyncIterable[Content], **kwargs: Any
) -> list[Judgement]:
    """Every judgement of `judge.judge_many(items, **kwargs)`, in input order."""
    return [judgement async for judgement in judge.judge_many(items, **kwargs)]


def classify(
    content: Content,
    *,
    policy: PolicyLike,
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
    judge = Judge(policy, model, effort=effort, mode=mode, **kwargs)
    return asyncio.run(judge.judge(content)).decisions[0]


class Classifier(Judge):
    """Deprecated: use `Judge` (a judge of one policy), whose `judge` returns a `Judgement`."""

    def __init__(
        self, policy: PolicyLike, model: str | Backend = DEFAULT_MODEL, **kwargs: Any
    ) -> None:
        warnings.warn(
            "magistrate.Classifier is deprecated; use magistrate.Judge (judge / judge_many).",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(policy, model, **kwargs)

    async def classify(self, content: Content, *, id: str | None = None) -> Decision:
        """Judge one item; its one decision."""
        return (await self.judge(content, id=id)).decisions[0]

    async def classify_many(
        self,
        items: Iterable[Content],
        *,
        on_decision: Callable[[Decision], None] | None = None,
    ) -> list[Decision]:
        """Judge many items; one decision each, in input order."""

        def each(judgement: Judgement) -> None:
            if on_decision is not None:
                on_decision(judgement.decisions[0])

        return [j.decisions[0] for j in await judge_all(self, items, on_result=each)]


class CombinedClassifier(Judge):
    """Deprecated: use `Judge` with several policies (strategy `combined`, the default)."""

    def __init__(
        self,
        policies: PolicyBundle | Iterable[PolicyLike],
        model: str | Backend = DEFAULT_MODEL,
        **kwargs: Any,
    ) -> None:
        warnings.warn(
            "magistrate.CombinedClassifier is deprecated; use magistrate.Judge with several "
            "policies.",
            DeprecationWarning,
            stacklevel=2,
        )
        kwargs["calibrated"] = False
        bundle = policies if isinstance(policies, PolicyBundle) else PolicyBundle.of(policies)
        super().__init__(bundle, model, strategy=Strategy.COMBINED, **kwargs)

    async def classify(self, content: Content, *, id: str | None = None) -> tuple[Decision, ...]:
        """Judge one item; one decision per policy, in bundle order."""
        return (await self.judge(content, id=id)).decisions

    async def classify_many(
        self,
        items: Iterable[Content],
        *,
        on_result: Callable[[tuple[Decision, ...]], None] | None = None,
    ) -> list[tuple[Decision, ...]]:
        """Judge many items; each item's decisions, in input order."""

        def each(judgement: Judgement) -> None:
            if on_result is not None:
                on_result(judgement.decisions)

        return [j.decisions for j in await judge_all(self, items, on_result=each)]


_E = TypeVar("_E", Effort, Mode, OnAbstain, Strategy)


def _enum(kind: type[_E], value: _E | str, what: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise ConfigError(f"Unknown {what} {value!r}; use one of {allowed}.") from None


__all__ = [
    "Classifier",
    "CombinedClassifier",
    "Judge",
    "Judgement",
    "Lookup",
    "Strategy",
    "backend_gate",
    "classify",
    "judge_all",
]
