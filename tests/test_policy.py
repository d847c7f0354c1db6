from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from magistrate.errors import PolicyError
from magistrate.policy import OutputFormat, SectionKind, load_policy, parse_policy


def test_bundled_spam_policy_parses(spam):
    assert spam.id == "spam"
    assert spam.version == "1.0.0"
    assert spam.output is OutputFormat.JSON
    assert {"SP2.a", "SP3.c", "SP4.a", "SP0.d", "SP2"} <= spam.rule_ids
    assert "SP0" in spam.known_rule_ids  # parent of SP0.a
    kinds = [s.kind for s in spam.sections]
    assert kinds == [
        SectionKind.INSTRUCTIONS,
        SectionKind.DEFINITIONS,
        SectionKind.VIOLATES,
        SectionKind.SAFE,
        SectionKind.EXAMPLES,
    ]
    assert len(spam.examples) == 5
    assert [lab.name for lab in spam.labels] == ["0", "1"]


def test_hash_is_of_the_exact_text(tmp_path: Path):
    text = "# P\n\n## INSTRUCTIONS\nAnswer 0 or 1.\n"
    path = tmp_path / "p.md"
    path.write_text(text, encoding="utf-8")
    policy = load_policy(path)
    assert policy.hash == hashlib.sha256(text.encode()).hexdigest()
    assert policy.id == "p"
    path.write_text(text + " ", encoding="utf-8")
    assert load_policy(path).hash != policy.hash


def test_rule_lines_point_into_the_file(spam):
    lines = spam.text.splitlines()
    for rule in spam.rules:
        assert rule.id in lines[rule.line - 1]


def test_severity_labels(severity):
    assert severity.output is OutputFormat.LABELS
    assert [lab.violation for lab in severity.labels] == [False, True, True]
    assert severity.version == "2"
    assert severity.rule_ids == {"SV2.a", "SV4.a", "SV0.a"}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("   \n\n", "empty"),
        ("---\nid: x\n", "never closed"),
        ("---\nid: [x\n---\n# P\n", "YAML front matter is broken"),
        ("---\n- a\n- b\n---\n# P\n", "must be a YAML mapping"),
        ("---\ncolour: red\n---\n# P\n", "colour"),
        ("---\noutput: xml\n---\n# P\n", "output"),
        ("---\nthreshold: 2\n---\n# P\n", "threshold"),
        ("---\noutput: labels\nlabels: [{name: A, violation: true}]\n---\n# P\n", "two labels"),
        (
            "---\noutput: labels\nlabels: [{name: A, violation: true}, {name: B, violation: true}]"
            "\n---\n# P\n",
            "non-violating",
        ),
        (
            "---\noutput: json\nlabels: [{name: A, violation: true}, {name: B, violation: false}]"
            "\n---\n# P\n",
            "must be '0' and '1'",
        ),
        ("# P\x00\n", "NUL"),
    ],
)
def test_bad_policies_are_refused_with_a_reason(text, needle):
    with pytest.raises(PolicyError, match=needle):
        parse_policy(text, source="bad.md")


def test_missing_and_undecodable_files(tmp_path: Path):
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope.md")
    with pytest.raises(PolicyError, match="not a file"):
        load_policy(tmp_path)
    latin = tmp_path / "latin.md"
    latin.write_bytes("# Politique d'été\n".encode("latin-1"))
    with pytest.raises(PolicyError, match="not valid UTF-8"):
        load_policy(latin)
    empty = tmp_path / "empty.md"
    empty.write_bytes(b"")
    with pytest.raises(PolicyError, match="empty"):
        load_policy(empty)
