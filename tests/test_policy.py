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


def test_a_bare_name_is_always_the_bundled_policy(tmp_path: Path, monkeypatch, spam):
    """A file in the working directory never replaces a bundled policy; paths say so."""
    monkeypatch.chdir(tmp_path)
    shadow = spam.text.replace("threshold: 0.75", "threshold: 0.05")
    assert shadow != spam.text
    (tmp_path / "spam").write_text(shadow, encoding="utf-8")
    (tmp_path / "spam.md").write_text(shadow, encoding="utf-8")
    bundled = load_policy("spam")
    assert (bundled.hash, bundled.threshold, bundled.source) == (spam.hash, 0.75, "builtin:spam")
    for path in ("./spam", "spam.md", str(tmp_path / "spam"), Path("spam")):
        assert load_policy(path).threshold == 0.05, path  # a path (or any Path) is a file
    (tmp_path / "mine").write_text(shadow, encoding="utf-8")
    with pytest.raises(PolicyError, match=r"No bundled policy 'mine'.*\./mine"):
        load_policy("mine")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_policy("~/spam.md").threshold == 0.05


def test_parsing_is_linear_in_the_number_of_headings():
    """12,000 headings once stalled the server for seconds (quadratic section scans). Count
    Python calls, not seconds: doubling the headings must about double the work."""
    import sys

    def calls(n: int) -> int:
        text = "---\nid: big\n---\n# Big\n" + "".join(f"## H{i}\n- H{i}.a rule\n" for i in range(n))
        count = 0

        def tally(frame: object, event: str, arg: object) -> None:
            nonlocal count
            count += 1

        sys.setprofile(tally)
        try:
            parse_policy(text, source="big")
        finally:
            sys.setprofile(None)
        return count

    small, large = calls(1000), calls(2000)
    assert large < 2.5 * small, (small, large)
