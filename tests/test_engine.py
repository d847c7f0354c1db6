"""Engine unit tests on the scripted mock backend (the only place it is used)."""

from __future__ import annotations

import asyncio

import pytest

from magistrate.backends.mock import MockBackend, Scripted
from magistrate.engine import Judge, judge_all
from magistrate.errors import BackendError, BackendTimeout, ConfigError, InputError
from magistrate.verdict import ParseStatus

GOOD = '{"violation": 1, "policy_category": "SP3", "rule_ids": ["SP3.a"], "rationale": "lure"}'


def run(coro):
    return asyncio.run(coro)


def one(judge, content, **kwargs):
    """The decision of a judge of one policy on one item."""
    return asyncio.run(judge.judge(content, **kwargs)).decisions[0]


def test_decision_records_what_is_needed_to_audit(spam):
    clf = Judge(spam, MockBackend(script=[GOOD]))
    d = one(clf, "Win a prize", id="m1")
    assert d.ok and d.violation is True and d.verdict.rule_ids == ("SP3.a", "SP3")
    assert d.item_id == "m1" and len(d.item_hash) == 64 and len(d.id) == 26
    assert d.policy_hash == spam.hash and d.policy_id == "spam"
    assert d.backend == "mock/scripted" and d.mode == "reason" and d.effort == "medium"
    assert d.options["label_threshold"] == spam.threshold
    assert "Win a prize" not in str(d.to_dict())  # content is not part of the decision


def test_unparseable_answer_falls_back_to_constrained_decoding(spam):
    backend = MockBackend(script=["I think it is spam", GOOD])
    d = one(Judge(spam, backend), "x")
    assert d.ok and d.violation is True
    assert [o.constrained for o in backend.options] == [False, True]
    assert d.options["constrained"] is True
    assert d.usage.prompt_tokens == 20  # both attempts counted


def test_no_fallback_gives_a_status_never_safe(spam):
    d = one(Judge(spam, MockBackend(script=["maybe?"]), fallback=False), "x")
    assert d.verdict.status is ParseStatus.MALFORMED
    assert d.violation is None and not d.ok


def test_truncated_answer_after_fallback_is_truncated(spam):
    cut = Scripted('{"violation": 0, "rationale": "long', finish_reason="length")
    d = one(Judge(spam, MockBackend(script=[cut, cut])), "x")
    assert d.verdict.status is ParseStatus.TRUNCATED and d.violation is None


@pytest.mark.parametrize("error", [BackendError("boom"), BackendTimeout("slow")])
def test_backend_failures_become_error_decisions(spam, error):
    d = one(Judge(spam, MockBackend(script=[error])), "x")
    assert d.verdict.status is ParseStatus.ERROR and d.violation is None
    assert d.error == str(error)


def test_engine_timeout_guard(spam):
    backend = MockBackend(script=[GOOD], delay_s=3.0)
    d = one(Judge(spam, backend, timeout_s=0.1), "x")
    assert d.verdict.status is ParseStatus.ERROR and "did not answer" in (d.error or "")


def test_score_mode_uses_label_probabilities(spam):
    backend = MockBackend(script=[Scripted("1", label_probs={"0": 0.1, "1": 0.9})])
    d = one(Judge(spam, backend, mode="score"), "x")
    assert d.ok and d.violation is True and d.verdict.score == pytest.approx(0.9)
    assert backend.options[0].max_tokens == 1 and backend.options[0].constrain_label


def test_score_mode_below_threshold_is_not_a_violation(spam):
    backend = MockBackend(script=[Scripted("1", label_probs={"0": 0.45, "1": 0.55})])
    d = one(Judge(spam, backend, mode="score"), "x")
    assert spam.threshold > 0.55 and d.violation is False and d.verdict.label == "0"


def test_judge_many_keeps_order_and_bounds_concurrency(spam):
    answers = [f'{{"violation": {i % 2}}}' for i in range(12)]
    backend = MockBackend(script=answers, max_concurrency=3, delay_s=0.01)
    seen = []
    js = run(
        judge_all(Judge(spam, backend), [f"item {i}" for i in range(12)], on_result=seen.append)
    )
    assert [j.decisions[0].violation for j in js] == [bool(i % 2) for i in range(12)]
    assert [j.index for j in js] == list(range(12))
    assert backend.peak_in_flight == 3 and len(seen) == 12


def test_a_bad_item_stops_the_run(spam):
    backend = MockBackend(script=[GOOD, GOOD])
    with pytest.raises(InputError, match="empty"):
        run(judge_all(Judge(spam, backend), ["fine", "   "]))
    assert backend.prompts == []  # the first item's call was cancelled before it started


def test_bad_settings(spam):
    with pytest.raises(ConfigError, match="effort"):
        Judge(spam, MockBackend(), effort="extreme")
    with pytest.raises(ConfigError, match="mode"):
        Judge(spam, MockBackend(), mode="vibes")
    with pytest.raises(ConfigError, match="Unknown model"):
        Judge(spam, "nosuch/model")


def test_every_decision_is_recorded_including_abstentions(spam, tmp_path):
    from magistrate.store import Recorder, Store

    store = Store(tmp_path / "log.db")
    backend = MockBackend(script=[GOOD, BackendTimeout("slow")])
    clf = Judge(spam, backend, fallback=False, recorder=Recorder(store))
    decisions = [j.decisions[0] for j in run(judge_all(clf, ["Win a prize", "Dinner at 7?"]))]
    rows = {r.id: r for r in store.decisions()}
    assert set(rows) == {d.id for d in decisions}
    assert {r.decision.verdict.status for r in rows.values()} == {
        ParseStatus.OK,
        ParseStatus.ERROR,
    }
    assert {r.content for r in rows.values()} == {"Win a prize", "Dinner at 7?"}
    assert all(rows[d.id].decision == d for d in decisions)  # recording changes nothing


def test_redacting_recorder_and_a_failing_store(spam, tmp_path):
    from magistrate.errors import StoreError
    from magistrate.store import Recorder, Store

    store = Store(tmp_path / "log.db")
    clf = Judge(
        spam, MockBackend(script=[GOOD, GOOD]), recorder=Recorder(store, keep_content=False)
    )
    d = one(clf, "Win a prize")
    assert store.decision(d.id).content is None
    with store.engine.begin() as conn:  # make the next write fail
        conn.exec_driver_sql("DROP TABLE decisions")
    with pytest.raises(StoreError, match="was made but NOT recorded"):
        one(clf, "Win again")
