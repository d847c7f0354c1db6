"""The one judge: `Judge.judge_many` streaming, cache lookups, error budget, cancellation,
the shared backend gate, several policies, and backend ownership (scripted backends)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from magistrate import backends
from magistrate.backends.base import Backend, Capabilities
from magistrate.backends.mock import MockBackend, Scripted
from magistrate.completion import Completion, CompletionOptions
from magistrate.engine import Classifier, CombinedClassifier, Judge, classify, judge_all
from magistrate.errors import (
    BackendTimeout,
    ConfigError,
    ErrorBudgetExceeded,
    StoreError,
)
from magistrate.policy import load_policy
from magistrate.prompt import Prompt
from magistrate.verdict import ParseStatus


def score(p: float) -> Scripted:
    return Scripted("1" if p >= 0.5 else "0", label_probs={"0": 1 - p, "1": p})


def test_judge_many_streams_without_reading_ahead_and_cancels_on_close(spam):
    backend = MockBackend(script=[score(0.9)], cycle=True, max_concurrency=2, delay_s=0.01)
    judge = Judge(spam, backend, mode="score")
    read = []

    def endless():
        for n in itertools.count():
            read.append(n)
            yield f"item {n}"

    async def first_five():
        async with contextlib.aclosing(judge.judge_many(endless())) as results:
            got = []
            async for judgement in results:
                got.append(judgement)
                if len(got) == 5:
                    break
        return got

    got = asyncio.run(first_five())
    assert [j.index for j in got] == [0, 1, 2, 3, 4]
    assert len(read) <= 5 + 2 * judge.concurrency + 8  # bounded read-ahead, never the stream
    assert backend.in_flight == 0  # calls still running when the consumer left were cancelled


def test_judge_many_takes_an_async_iterable(spam):
    async def source():
        for n in range(3):
            await asyncio.sleep(0)
            yield f"item {n}"

    backend = MockBackend(script=[score(0.1), score(0.9), score(0.2)], max_concurrency=1)
    results = asyncio.run(judge_all(Judge(spam, backend, mode="score"), source()))
    assert [j.violation for j in results] == [False, True, False]


def test_lookup_answers_skip_the_backend_and_are_not_recorded_again(spam, tmp_path):
    from magistrate.store import Recorder, Store

    store = Store(tmp_path / "log.db")
    backend = MockBackend(script=[score(0.9), score(0.1)])
    judge = Judge(spam, backend, mode="score", recorder=Recorder(store))
    first = asyncio.run(judge.judge("Win a prize"))
    known = {first.item.hash: first.decisions[0]}

    async def lookup(item):
        hit = known.get(item.hash)
        return None if hit is None else [hit]

    again = asyncio.run(judge_all(judge, ["Win a prize", "Dinner at 7?"], lookup=lookup))
    assert again[0].decisions[0] is first.decisions[0] and again[0].cached == (True,)
    assert again[1].cached == (False,) and len(backend.prompts) == 2
    assert store.count() == 2  # the cached decision was not recorded a second time


def test_separate_policies_make_only_the_missing_calls(tmp_path):
    hate, violence = load_policy("hate"), load_policy("violence")
    backend = MockBackend(script=[score(0.9), score(0.2), score(0.3)], max_concurrency=1)
    judge = Judge([hate, violence], backend, mode="score", strategy="separate")
    first = asyncio.run(judge.judge("x"))
    assert [d.policy_id for d in first.decisions] == ["hate", "violence"]
    assert first.flagged is True and first.flagged_by == ("hate",)
    assert first.score == pytest.approx(0.9)
    assert "bundle" not in first.decisions[0].options  # judged alone, not in a combined prompt

    async def only_hate(item):
        return [first.decisions[0], None]

    partial = asyncio.run(judge_all(judge, ["x"], lookup=only_hate))[0]
    assert partial.cached == (True, False) and len(backend.prompts) == 3
    assert partial.decisions[1].verdict.score == pytest.approx(0.3)
    assert judge.calls_needed([first.decisions[0], None]) == 1 and judge.calls_needed() == 2


def test_a_combined_call_is_remade_whole_when_part_of_it_is_missing():
    two = ["hate", "violence"]
    slots = ({"0": 0.2, "1": 0.8}, {"0": 0.9, "1": 0.1})
    backend = MockBackend(script=[Scripted("", slot_probs=slots)] * 2, max_concurrency=1)
    judge = Judge(two, backend, mode="score")
    assert judge.combined and judge.calls_needed() == 1
    first = asyncio.run(judge.judge("x"))
    assert first.decisions[0].options["bundle"] == judge.bundle.hash

    async def half(item):
        return [first.decisions[0], None]

    again = asyncio.run(judge_all(judge, ["x"], lookup=half))[0]
    assert again.cached == (False, False) and len(backend.prompts) == 2


def test_error_budget_by_count_and_by_fraction(spam):
    failing = [BackendTimeout("slow")] * 3 + [score(0.9)] * 30
    judge = Judge(spam, MockBackend(script=failing, max_concurrency=1), mode="score")
    with pytest.raises(ErrorBudgetExceeded, match="max-errors 2"):
        asyncio.run(judge_all(judge, [f"i{n}" for n in range(10)], max_errors=2))
    mostly_bad = [BackendTimeout("slow"), score(0.9)] * 20
    judge = Judge(spam, MockBackend(script=mostly_bad, max_concurrency=1), mode="score")
    with pytest.raises(ErrorBudgetExceeded, match="10 of 20"):
        asyncio.run(judge_all(judge, [f"i{n}" for n in range(40)], max_errors=0.25))
    judge = Judge(spam, MockBackend(script=[score(0.9)] * 5), mode="score")
    assert len(asyncio.run(judge_all(judge, ["a", "b"], max_errors=0.01))) == 2


def test_judges_sharing_a_backend_share_its_gate(spam):
    backend = MockBackend(script=[score(0.5)], cycle=True, max_concurrency=2, delay_s=0.01)
    a = Judge(spam, backend, mode="score")
    b = Judge(load_policy("hate"), backend, mode="score")

    async def both():
        await asyncio.gather(judge_all(a, ["1", "2", "3", "4"]), judge_all(b, ["5", "6", "7"]))

    asyncio.run(both())
    assert backend.peak_in_flight == 2  # never the 4 that two separate gates would allow


class _FailingRecorder:
    def __init__(self) -> None:
        self.calls = 0

    async def arecord_all(self, decisions, item) -> list[int]:
        self.calls += 1
        if self.calls == 2:
            raise StoreError("disk gone")
        return [self.calls]


def test_an_unrecordable_decision_stops_the_run_and_cancels_the_rest(spam):
    backend = MockBackend(script=[score(0.5)], cycle=True, max_concurrency=3, delay_s=0.02)
    judge = Judge(spam, backend, mode="score", recorder=_FailingRecorder())
    with pytest.raises(StoreError, match="disk gone"):
        asyncio.run(judge_all(judge, [f"i{n}" for n in range(50)]))
    assert backend.in_flight == 0 and len(backend.prompts) < 50


def test_a_lookup_of_the_wrong_shape_is_refused(spam):
    async def wrong(item):
        return [None, None]

    judge = Judge(spam, MockBackend(script=[score(0.5)]), mode="score")
    with pytest.raises(ConfigError, match="one per policy"):
        asyncio.run(judge_all(judge, ["x"], lookup=wrong))


def test_backend_errors_in_a_combined_call_fail_every_policy_of_that_item_only():
    backend = MockBackend(
        script=[BackendTimeout("slow"), "hate: 1\nviolence: 0"], max_concurrency=1
    )
    judge = Judge(["hate", "violence"], backend)
    bad, good = asyncio.run(judge_all(judge, ["a", "b"]))
    assert {d.verdict.status for d in bad.decisions} == {ParseStatus.ERROR}
    assert bad.flagged is None and bad.violation is None
    assert good.ok and good.flagged_by == ("hate",)


def test_deprecated_names_still_work_and_warn(spam):
    with pytest.warns(DeprecationWarning, match="Judge"):
        clf = Classifier(spam, MockBackend(script=['{"violation": 1}', '{"violation": 0}']))
    assert asyncio.run(clf.classify("x")).violation is True
    assert [d.violation for d in asyncio.run(clf.classify_many(["y"]))] == [False]
    with pytest.warns(DeprecationWarning, match="several"):
        combined = CombinedClassifier(
            ["hate", "violence"], MockBackend(script=["hate: 0\nviolence: 1"])
        )
    assert [d.violation for d in asyncio.run(combined.classify("x"))] == [False, True]
    from magistrate.errors import EvalAborted

    assert EvalAborted is ErrorBudgetExceeded


class DyingBackend(Backend):
    """Like the embedded backend: its calls run on an executor that `aclose` shuts down."""

    provider = "dying"
    capabilities = Capabilities(label_scores=True)

    def __init__(self, model: str) -> None:
        self.model = model
        self._thread = ThreadPoolExecutor(max_workers=1)

    async def complete(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(self._thread, lambda: "0")
        return Completion(text=text, model=self.model, label_probs={"0": 0.9, "1": 0.1})

    async def aclose(self) -> None:
        self._thread.shutdown(wait=True)


def test_closing_a_judge_never_kills_a_backend_the_registry_shares(spam, monkeypatch):
    monkeypatch.setitem(backends._BUILTIN, "dying", f"{__name__}:DyingBackend")
    judge = Judge(spam, "dying/shared", mode="score")
    assert asyncio.run(judge.judge("x")).ok
    asyncio.run(judge.aclose())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated path is involved
        again = classify("y", policy=spam, model="dying/shared", mode="score")
    assert again.ok and again.verdict.label == "0"


class _SlowFirst(MockBackend):
    """The first call hangs (until cancelled); every other call answers at once."""

    def __init__(self) -> None:
        super().__init__(script=[score(0.5)], cycle=True, max_concurrency=4)
        self.first_finished = False
        self.calls = 0

    async def complete(self, prompt, options):
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(30)
            self.first_finished = True
        return await super().complete(prompt, options)


class _FailOnFirstWrite:
    async def arecord_all(self, decisions, item) -> list[int]:
        raise StoreError("disk gone")


def test_a_later_item_failure_stops_the_run_without_waiting_for_earlier_items(spam):
    backend = _SlowFirst()
    judge = Judge(spam, backend, mode="score", recorder=_FailOnFirstWrite())
    with pytest.raises(StoreError, match="disk gone"):
        asyncio.run(judge_all(judge, [f"i{n}" for n in range(10)]))
    assert not backend.first_finished  # the hanging first item was cancelled, not awaited


def test_a_separate_judge_may_hold_one_policy_twice(spam):
    backend = MockBackend(script=[score(0.9), score(0.1)], max_concurrency=1)
    judgement = asyncio.run(
        Judge([spam, spam], backend, mode="score", strategy="separate").judge("x")
    )
    assert [d.violation for d in judgement.decisions] == [True, False]
    with pytest.raises(Exception, match="appears twice"):
        Judge([spam, spam], backend, mode="score")  # one prompt cannot answer one id twice


def test_a_combined_call_is_recorded_in_one_transaction(tmp_path):
    from magistrate.store import Recorder, Store

    store = Store(tmp_path / "log.db")
    slots = ({"0": 0.2, "1": 0.8}, {"0": 0.9, "1": 0.1})
    backend = MockBackend(script=[Scripted("", slot_probs=slots)])
    judge = Judge(["hate", "violence"], backend, mode="score", recorder=Recorder(store))
    judgement = asyncio.run(judge.judge("x"))
    rows = sorted(store.decisions(), key=lambda r: r.seq)
    assert [r.decision.id for r in rows] == [d.id for d in judgement.decisions]
    assert rows[1].seq == rows[0].seq + 1


def test_share_identical_judges_content_in_flight_once(spam):
    backend = MockBackend(script=[score(0.9), score(0.1)], cycle=True, delay_s=0.02)
    judge = Judge(spam, backend, mode="score")
    texts = ["same words", "other words", "same words", "same words"]
    shared = asyncio.run(judge_all(judge, texts, share_identical=True))
    assert len(backend.prompts) == 2  # one call per distinct content
    assert [j.cached for j in shared] == [(False,), (False,), (True,), (True,)]
    first = shared[0].decisions[0]
    assert shared[2].decisions[0] is first and shared[3].decisions[0] is first
    assert [j.index for j in shared] == [0, 1, 2, 3]
    assert shared[3].item.text == "same words"

    again = asyncio.run(judge_all(judge, texts))  # off by default: every item its own call
    assert len(backend.prompts) == 6 and not any(j.cached[0] for j in again)


def test_refused_makes_error_decisions_per_policy_without_a_call(spam, severity):
    backend = MockBackend(script=[])
    judge = Judge([spam, severity], backend, strategy="separate")
    made = judge.refused(judge.item("x"), "row 3: not JSON")
    assert [d.policy_id for d in made] == [spam.id, severity.id]
    assert all(d.verdict.status is ParseStatus.ERROR and d.flagged is None for d in made)
    assert all(d.error == "row 3: not JSON" for d in made) and backend.prompts == []
