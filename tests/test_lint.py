from __future__ import annotations

import pytest

from magistrate.lint import Severity, count_tokens, lint_policy
from magistrate.policy import parse_policy

BAD = """\
# Sloppy Policy

## VIOLATES (1)
- **SL1.a**: content that is generally harmful.
- **SL1.b**: things that are usually rude, etc.

## EXAMPLES
Content: "you are dumb"
Answer: 1 (SL9.q)

Content: "hello"
Answer: MAYBE
"""


def codes(findings):
    return {(f.code, f.line) for f in findings}


def test_sloppy_policy_findings_with_lines():
    findings = lint_policy(parse_policy(BAD, source="bad.md"))
    got = codes(findings)
    assert ("vague-word", 4) in got
    assert ("vague-word", 5) in got  # usually
    assert sum(1 for f in findings if f.code == "vague-word") == 3  # generally, usually, etc
    assert ("undefined-rule", 9) in got
    assert ("undefined-label", 12) in got
    missing = {f.message for f in findings if f.code == "missing-section"}
    assert any("instructions" in m for m in missing)
    assert any("definitions" in m for m in missing)
    assert any("safe" in m for m in missing)
    assert any(f.code == "format-not-at-top" for f in findings)
    assert any(f.code == "label-without-example" and "'0'" in f.message for f in findings)
    length = next(f for f in findings if f.code == "length")
    assert length.severity is Severity.WARNING and "short" in length.message


def test_bundled_policies_have_no_errors(spam, severity):
    for policy in (spam, severity):
        findings = lint_policy(policy)
        assert not [f for f in findings if f.severity is Severity.ERROR], findings
        assert not {
            "format-not-at-top",
            "format-not-at-bottom",
            "missing-section",
            "label-without-example",
            "vague-word",
        } & {f.code for f in findings}


def test_token_count_uses_o200k():
    assert count_tokens("hello world") == 2


STARTER_PACK = [
    "harmful-content",
    "toxic-prompt",
    "prompt-injection",
    "spam",
    "sexual",
    "sexual-minors",
    "hate",
    "hate-threatening",
    "violence",
    "violence-graphic",
    "harassment",
    "self-harm",
    "chat-sexual",
    "chat-harm",
    "chat-abuse",
    "chat-jailbreak",
]


@pytest.mark.parametrize("name", STARTER_PACK)
def test_starter_pack_policies_are_clean_and_sized(name):
    from magistrate.policy import builtin_policy_names, load_policy

    assert name in builtin_policy_names()
    policy = load_policy(name)
    assert not [f for f in lint_policy(policy) if f.severity is Severity.ERROR]
    assert policy.output.value == "json" and len(policy.examples) >= 3
    answers = " ".join(e.answer for e in policy.examples)
    assert '"violation": 1' in answers and '"violation": 0' in answers  # both labels shown
    tokens = count_tokens(policy.body)
    assert name == "spam" or 300 <= tokens <= 600, tokens
