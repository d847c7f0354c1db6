"""Backend answers that are broken or hostile never become "safe", a crash or a lost run.

Non-finite or malformed label probabilities are an abstention with its reason, in every mode
and path; any malformed answer is an `error` decision for that item only. The remote cases go
through the real openai backend against a loopback server that sends them (NaN and Infinity
as raw JSON); a Hypothesis test throws arbitrary answers and exceptions at the engine.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from faultserver import FaultServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from magistrate.backends.base import Backend, Capabilities
from magistrate.backends.mock import MockBackend, Scripted
from magistrate.backends.openai_compat import OpenAIBackend
from magistrate.completion import Completion, CompletionOptions, Usage
from magistrate.config import Endpoint
from magistrate.engine import Judge, judge_all
from magistrate.policy import load_policy
from magistrate.prompt import Prompt
from magistrate.verdict import ParseStatus, verdict_from_scores, with_scores

NOT_PROBABILITIES = [
    {"0": math.nan, "1": math.nan},
    {"0": 0.5, "1": math.nan},
    {"0": math.inf, "1": 0.0},
    {"0": 0.2, "1": -math.inf},
    {"0": -0.5, "1": 1.5},
    {"0": "oops", "1": 0.5},
    {"0": 0.0, "1": 0.0},
]


@pytest.mark.parametrize("probs", NOT_PROBABILITIES)
def test_invalid_probabilities_are_an_abstention_in_both_modes(spam, probs):
    scored = verdict_from_scores(probs, spam)
    assert not scored.ok and scored.violation is None and scored.score is None
    written = verdict_from_scores({"0": 0.9, "1": 0.1}, spam)  # a label the model "wrote"
    attached = with_scores(written, probs, spam)
    assert not attached.ok and attached.violation is None


@pytest.mark.parametrize("probs", NOT_PROBABILITIES[:4])
def test_nan_scores_abstain_in_every_engine_path(spam, probs):
    score = Judge(spam, MockBackend(script=[Scripted("0", label_probs=probs)]), mode="score")
    reason = Judge(
        spam,
        MockBackend(script=[Scripted('{"violation": 0}', label_probs=probs)]),
        fallback=False,
    )
    slots = (probs, {"0": 0.9, "1": 0.1})
    combined = Judge(
        ["hate", "violence"], MockBackend(script=[Scripted("", slot_probs=slots)]), mode="score"
    )
    for judge in (score, reason, combined):
        judgement = asyncio.run(judge.judge("x"))
        first = judgement.decisions[0]
        assert not first.ok and first.flagged is None, judge.mode
        assert first.verdict.status in (ParseStatus.MALFORMED, ParseStatus.NO_FINAL_ANSWER)
        assert judgement.flagged is None  # never "not flagged"


class Raising(Backend):
    """A backend whose own code breaks on the answer it got (a plugin's bug, say)."""

    provider = "raising"
    capabilities = Capabilities(label_scores=True)

    def __init__(self, errors: list[BaseException]) -> None:
        self.model = "raising"
        self.errors = errors

    async def complete(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        if self.errors:
            raise self.errors.pop(0)
        return Completion(text="0", model=self.model, label_probs={"0": 0.9, "1": 0.1})


def test_a_backend_that_breaks_fails_only_that_item(spam, tmp_path):
    from magistrate.store import Recorder, Store

    store = Store(tmp_path / "log.db")
    backend = Raising([OverflowError("math range error"), ValueError("oops"), TypeError("list")])
    judge = Judge(spam, backend, mode="score", recorder=Recorder(store))
    results = asyncio.run(judge_all(judge, ["a", "b", "c", "d"]))
    statuses = [j.decisions[0].verdict.status for j in results]
    assert statuses == [ParseStatus.ERROR] * 3 + [ParseStatus.OK]
    assert "OverflowError" in (results[0].decisions[0].error or "")
    assert store.count() == 4  # every item has its recorded decision


def test_usage_that_is_not_a_count_is_an_error_decision_not_a_lost_write(spam, tmp_path):
    from magistrate.store import Recorder, Store

    class WordyUsage(MockBackend):
        async def complete(self, prompt, options):
            done = await super().complete(prompt, options)
            return Completion(
                text=done.text,
                model=done.model,
                usage=Usage(prompt_tokens="many"),  # type: ignore[arg-type]
                label_probs=done.label_probs,
            )

    store = Store(tmp_path / "log.db")
    backend = WordyUsage(script=[Scripted("0", label_probs={"0": 0.9, "1": 0.1})])
    judge = Judge(spam, backend, mode="score", recorder=Recorder(store))
    decision = asyncio.run(judge.judge("x")).decisions[0]
    assert decision.verdict.status is ParseStatus.ERROR and "token counts" in (decision.error or "")
    assert store.count() == 1


@pytest.fixture(scope="module")
def server():
    with FaultServer() as s:
        yield s


@pytest.mark.parametrize("how", ["nan", "inf", "neg-inf", "big", "text", "parts", "usage"])
def test_a_hostile_remote_server_never_gets_a_safe_label(server, spam, how):
    endpoint = Endpoint(base_url=server.url, max_retries=0, timeout_s=30)
    backend = OpenAIBackend(f"gpt-oss-hostile:{how}", endpoint=endpoint)
    for mode in ("score", "reason"):
        results = asyncio.run(
            judge_all(Judge(spam, backend, mode=mode, fallback=False), ["a", "b"])
        )
        for judgement in results:  # both items judged: a bad answer fails its item only
            decision = judgement.decisions[0]
            if how == "neg-inf" and mode == "reason":
                # Probability 0 for every label is no probability: the answer the model
                # wrote stands, without a score (as from a server without logprobs).
                assert decision.ok and decision.verdict.score is None
                continue
            assert not decision.ok and decision.flagged is None, (how, mode)
            assert decision.verdict.status in (
                ParseStatus.ERROR,
                ParseStatus.MALFORMED,
                ParseStatus.NO_FINAL_ANSWER,
            )


class Anything(Backend):
    """Answers whatever Hypothesis drew: any text, any probabilities, or any exception."""

    provider = "anything"
    capabilities = Capabilities(label_scores=True, label_slots=True, constrained=True)

    def __init__(self, answer: object) -> None:
        self.model = "anything"
        self.answer = answer

    async def complete(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer  # type: ignore[return-value]


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.just(10**400),
    st.text(max_size=3),
    st.none(),
)
probabilities = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["0", "1", "2", "x", 1, None]), numbers, max_size=3),
    st.just(10**400),  # not even a mapping
)
completions = st.builds(
    Completion,
    text=st.one_of(st.text(max_size=40), st.sampled_from(["0", "1", '{"violation": 1}'])),
    model=st.just("anything"),
    finish_reason=st.sampled_from(["stop", "length", "weird"]),
    usage=st.one_of(
        st.builds(Usage, prompt_tokens=st.one_of(st.integers(0, 10**6), st.text(max_size=3))),
        st.none(),
    ),
    label_probs=probabilities,
    slot_probs=st.one_of(st.none(), st.tuples(probabilities, probabilities)),
)
failures = st.sampled_from(
    [OverflowError("x"), ValueError("x"), TypeError("x"), KeyError("x"), ZeroDivisionError()]
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(answer=st.one_of(completions, failures), mode=st.sampled_from(["score", "reason"]))
def test_no_answer_ever_escapes_or_passes_invalid_probabilities_as_a_verdict(
    answer, mode, tmp_path
):
    from magistrate.store import Recorder, Store

    recorder = Recorder(Store(tmp_path / "log.db"))  # every decision must be recordable too
    for policies in (["spam"], ["hate", "violence"]):
        judge = Judge(
            [load_policy(p) for p in policies], Anything(answer), mode=mode, recorder=recorder
        )
        judgement = asyncio.run(judge.judge("x"))  # never raises
        for decision in judgement.decisions:
            verdict = decision.verdict
            if not decision.ok:
                assert decision.flagged is None and verdict.violation is None
                continue
            assert verdict.violation in (True, False)
            if verdict.score is not None:
                assert math.isfinite(verdict.score) and 0.0 <= verdict.score <= 1.0
            for value in (verdict.label_probs or {}).values():
                assert isinstance(value, float | int) and math.isfinite(value)
                assert 0.0 <= value <= 1.0 + 1e-9


def test_model_output_with_nul_or_lone_surrogates_is_recorded_in_every_log(store_url):
    from magistrate.store import Recorder, Store

    store = Store(store_url)
    answer = Completion(
        text='{"violation": 1, "policy_category": null, "rule_ids": [], '
        '"rationale": "bad\x00byte \ud800 here"}',
        model="anything",
        reasoning="thinking\x00 aloud",
        usage=Usage(prompt_tokens=3),
    )
    judge = Judge([load_policy("spam")], Anything(answer), mode="reason", recorder=Recorder(store))
    decision = asyncio.run(judge.judge("x")).decisions[0]  # used to fail: "NOT recorded"
    assert decision.ok and decision.verdict.violation is True
    stored = store.decision(decision.id).decision
    assert stored.reasoning == "thinking\ufffd aloud"
    assert stored.verdict.rationale is not None and "\x00" not in stored.verdict.rationale
    assert store.verify().ok
    store.close()
