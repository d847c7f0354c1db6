from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magistrate.verdict import ParseStatus, parse_verdict, verdict_from_scores, with_scores


def test_json_answer(spam):
    v = parse_verdict(
        '{"violation": 1, "policy_category": "SP3", "rule_ids": ["SP3.a", "SP9.z"], '
        '"confidence": "high", "rationale": "Prize lure."}',
        spam,
    )
    assert v.ok and v.violation is True and v.label == "1"
    assert v.rule_ids == ("SP3.a", "SP3")
    assert v.unknown_rule_ids == ("SP9.z",)
    assert v.confidence == "high" and v.rationale == "Prize lure."


@pytest.mark.parametrize(
    "answer",
    [
        '```json\n{"violation": 0, "rule_ids": []}\n```',
        'Here is my answer: {"violation": "0", "rationale": "fine"} hope it helps',
        '{"violation": false, "rationale": "line one\nline two"}',
        '{"violation": 0, "policy_category": null}',
    ],
)
def test_json_tolerates_fences_prose_and_raw_newlines(spam, answer):
    v = parse_verdict(answer, spam)
    assert v.ok and v.violation is False


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        ("", ParseStatus.NO_FINAL_ANSWER),
        ("   \n", ParseStatus.NO_FINAL_ANSWER),
        (None, ParseStatus.NO_FINAL_ANSWER),
        ('{"violation": 1, "rationale": "cut off', ParseStatus.MALFORMED),
        ('{"rule_ids": ["SP2.a"]}', ParseStatus.MALFORMED),
        ('{"violation": "maybe"}', ParseStatus.UNKNOWN_LABEL),
        ("I think this is spam.", ParseStatus.MALFORMED),
    ],
)
def test_json_failures_are_statuses_not_safe(spam, answer, status):
    v = parse_verdict(answer, spam)
    assert v.status is status
    assert v.violation is None and v.label is None


def test_truncated_answer_is_reported_as_truncated(spam):
    v = parse_verdict('{"violation": 1, "rationale": "cut', spam, truncated=True)
    assert v.status is ParseStatus.TRUNCATED and v.violation is None


def test_binary_answers():
    from magistrate.policy import parse_policy

    policy = parse_policy("# B\n\n## VIOLATES (1)\n- **B1**: bad\n", source="b.md")
    assert parse_verdict("1", policy).violation is True
    assert parse_verdict("0\nRationale: fine under B1", policy).rule_ids == ("B1",)
    assert parse_verdict("**1**", policy).violation is True
    assert parse_verdict("Answer: 0", policy).violation is False
    assert parse_verdict("2", policy).status is ParseStatus.UNKNOWN_LABEL
    assert parse_verdict("10", policy).status is ParseStatus.UNKNOWN_LABEL
    assert parse_verdict("the answer is yes", policy).status is ParseStatus.MALFORMED


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("VALID", "VALID"),
        ("INVALID", "INVALID"),
        ("INVALID + ESCALATE", "INVALID + ESCALATE"),
        ("INVALID+ESCALATE", "INVALID + ESCALATE"),
        ("invalid", "INVALID"),
        ("**VALID**\nRationale: personal message (SV0.a)", "VALID"),
        ("Label: INVALID", "INVALID"),
        ("Let me think.\nINVALID", "INVALID"),
    ],
)
def test_severity_labels_avoid_the_substring_trap(severity, answer, label):
    v = parse_verdict(answer, severity)
    assert v.ok and v.label == label
    assert v.violation is (label != "VALID")


def test_severity_unknown_label(severity):
    assert parse_verdict("ESCALATE", severity).status is ParseStatus.UNKNOWN_LABEL
    assert parse_verdict("VALIDATED", severity).status is ParseStatus.UNKNOWN_LABEL


def test_scores(spam, severity):
    v = verdict_from_scores({"0": 0.2, "1": 0.8}, spam)
    assert v.ok and v.violation and v.label == "1" and v.score == pytest.approx(0.8)
    v = verdict_from_scores({"VALID": 0.5, "INVALID": 0.3, "INVALID + ESCALATE": 0.2}, severity)
    assert v.violation is True and v.label == "INVALID" and v.score == pytest.approx(0.5)
    assert verdict_from_scores(None, spam).status is ParseStatus.NO_FINAL_ANSWER
    assert verdict_from_scores({"2": 1.0}, spam).status is ParseStatus.UNKNOWN_LABEL
    v = with_scores(parse_verdict('{"violation": 0}', spam), {"0": 0.9, "1": 0.1}, spam)
    assert v.score == pytest.approx(0.1) and v.violation is False


# Property-based tests: whatever the model writes, the parser never crashes and never
# reports "safe" without a readable answer.


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_gives_a_verdict_or_a_status(spam, text):
    v = parse_verdict(text, spam)
    if v.ok:
        assert v.violation is not None and v.label in {"0", "1"}
    else:
        assert v.violation is None and v.label is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_severity_parser_never_crashes(severity, text):
    v = parse_verdict(text, severity)
    assert v.ok == (v.label is not None)


@settings(max_examples=200, deadline=None)
@given(
    violation=st.sampled_from([0, 1]),
    rules=st.lists(st.sampled_from(["SP2.a", "SP3.c", "SP0.a", "XX9", "SP7.q"]), max_size=4),
    rationale=st.text(max_size=120),
    prefix=st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=40),
    suffix=st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=40),
)
def test_json_round_trips_through_prose(spam, violation, rules, rationale, prefix, suffix):
    payload = json.dumps({"violation": violation, "rule_ids": rules, "rationale": rationale})
    v = parse_verdict(f"{prefix}{payload}{suffix}", spam)
    assert v.ok and v.violation is bool(violation)
    assert set(v.rule_ids) | set(v.unknown_rule_ids) == {r.strip() for r in rules if r.strip()}
    assert set(v.unknown_rule_ids) == {r for r in rules if r in ("XX9", "SP7.q")}


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["VALID", "INVALID", "INVALID + ESCALATE"]), st.text(max_size=80))
def test_labels_followed_by_anything_on_the_next_line(severity, label, tail):
    v = parse_verdict(label + "\n" + tail, severity)
    assert v.label == label
