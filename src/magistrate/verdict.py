"""The one verdict parser: a model's final answer (or label scores) -> Verdict.

Formats understood (see `OutputFormat`):
  * binary: `0` / `1`, optionally followed by a `Rationale:` line;
  * JSON: `violation`, `policy_category`, `rule_ids`, `confidence`, `rationale`, tolerating
    code fences, surrounding prose and raw newlines inside strings;
  * labels: the policy's own labels (`SP0`...`SP4`, `VALID` / `INVALID` / `INVALID + ESCALATE`),
    matched longest first and as whole words, so `VALID` is never read out of `INVALID`.

A parse failure is a status (`no_final_answer`, `truncated`, `malformed`, `unknown_label`),
with `violation` left as None: never a "safe" label.

Example:
    >>> v = parse_verdict('{"violation": 1, "rule_ids": ["SP3.a"]}', load_policy("spam"))
    >>> v.status, v.violation, v.rule_ids
    (<ParseStatus.OK: 'ok'>, True, ('SP3.a',))
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from magistrate.policy import Label, OutputFormat, Policy, PolicyBundle, find_rule_ids

_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*|\s*```\s*$")
_RATIONALE_RE = re.compile(r"(?im)^\s*(?:\*\*)?(?:rationale|reason|because)(?:\*\*)?\s*:\s*(.+)$")
_TRUE = {"1", "true", "yes", "violation", "violating"}
_FALSE = {"0", "false", "no", "safe", "none", "non-violating"}


class ParseStatus(StrEnum):
    """Whether a verdict was reached, and if not, why."""

    OK = "ok"
    NO_FINAL_ANSWER = "no_final_answer"
    """The model produced no answer at all (empty, or reasoning only)."""
    TRUNCATED = "truncated"
    """The answer was cut off by the token limit before it could be read."""
    MALFORMED = "malformed"
    """An answer was there but not in the policy's format."""
    UNKNOWN_LABEL = "unknown_label"
    """The answer used a label the policy does not define."""
    ERROR = "error"
    """The backend failed; see the decision's error."""
    NEEDS_REVIEW = "needs_review"
    """A cascade could not decide: the last tier was unsure (its score fell in its review
    band) or every tier abstained. A person should look."""


@dataclass(frozen=True)
class Verdict:
    """A parsed answer under one policy.

    Attributes:
        status: `ok` when a label was reached; anything else is an abstention.
        label: The policy label chosen (`"1"`, `"INVALID"`), None when not reached.
        violation: Whether the label is a violating one; None when not reached.
        category: `policy_category` from a JSON answer.
        rule_ids: Cited rule ids that the policy defines.
        unknown_rule_ids: Cited rule ids the policy does not define (the model made them up).
        score: Probability of the violating labels, from the label token's logprobs.
        confidence: The model's stated confidence, if it gave one.
        rationale: The model's short reason, if it gave one.
        answer: The final answer text as parsed.
        detail: What went wrong, for failed parses.
    """

    status: ParseStatus
    label: str | None = None
    violation: bool | None = None
    category: str | None = None
    rule_ids: tuple[str, ...] = ()
    unknown_rule_ids: tuple[str, ...] = ()
    score: float | None = None
    confidence: str | None = None
    rationale: str | None = None
    answer: str = ""
    detail: str | None = None
    label_probs: Mapping[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when a label was reached."""
        return self.status is ParseStatus.OK

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "status": self.status.value,
            "label": self.label,
            "violation": self.violation,
            "category": self.category,
            "rule_ids": list(self.rule_ids),
            "unknown_rule_ids": list(self.unknown_rule_ids),
            "score": self.score,
            "confidence": self.confidence,
            "rationale": self.rationale,
            "answer": self.answer,
            "detail": self.detail,
            "label_probs": dict(self.label_probs),
        }


def failed(status: ParseStatus, answer: str = "", detail: str | None = None) -> Verdict:
    """A verdict that reached no label."""
    return Verdict(status=status, answer=answer, detail=detail)


def parse_verdict(text: str | None, policy: Policy, *, truncated: bool = False) -> Verdict:
    """Parse a final answer under `policy`.

    Args:
        text: The final answer (not the reasoning). None or blank means no answer.
        policy: The policy the answer was given under.
        truncated: The backend stopped at its token limit; a parse failure is then reported
            as `truncated` rather than `malformed`.
    """
    answer = (text or "").strip()
    if not answer and truncated:
        return failed(
            ParseStatus.TRUNCATED,
            detail="the token limit was reached before a final answer (reasoning used it up); "
            "lower the effort or raise the budget",
        )
    if not answer:
        return failed(ParseStatus.NO_FINAL_ANSWER, detail="the model gave no final answer")
    answer_body = _FENCE_RE.sub("", answer).strip()
    if policy.output is OutputFormat.JSON or answer_body.startswith("{"):
        verdict = _parse_json(answer_body, policy)
    else:
        verdict = _parse_label(answer_body, policy)
    verdict = replace(verdict, answer=answer)
    if truncated and verdict.status is ParseStatus.MALFORMED:
        return replace(verdict, status=ParseStatus.TRUNCATED)
    return verdict


def parse_bundle_verdict(
    text: str | None, bundle: PolicyBundle, *, truncated: bool = False
) -> tuple[Verdict, ...]:
    """Parse a combined answer: one verdict per policy of the bundle, in bundle order.

    Each policy's answer is the line that starts with its id (`hate: 1`, `**hate**: 1`); a
    JSON object keyed by policy id is read too. A policy whose line is missing or unreadable
    gets its own failed verdict; the others keep theirs. Rule ids cited on the rationale line
    go to the policy that defines them; ids that no policy defines are kept as unknown.
    """
    answer = (text or "").strip()
    if not answer:
        status, detail = (
            (ParseStatus.TRUNCATED, "the token limit was reached before a final answer")
            if truncated
            else (ParseStatus.NO_FINAL_ANSWER, "the model gave no final answer")
        )
        return tuple(failed(status, detail=detail) for _ in bundle.policies)
    body = _FENCE_RE.sub("", answer).strip()
    obj = _first_json_object(body) if body.startswith("{") else None
    match = _RATIONALE_RE.search(answer)
    rationale = match.group(1).strip() if match else None
    cited = find_rule_ids(rationale or "")
    unknown = tuple(dict.fromkeys(c for c in cited if c not in bundle.known_rule_ids))
    verdicts = []
    for policy in bundle.policies:
        raw = _bundle_answer(body, obj, policy.id)
        if raw is None:
            status = ParseStatus.TRUNCATED if truncated else ParseStatus.MALFORMED
            verdicts.append(
                failed(status, answer=answer, detail=f"no `{policy.id}:` line in the answer")
            )
            continue
        flag = _as_flag(raw) if policy.output is OutputFormat.JSON else None
        if flag is not None:
            verdict = Verdict(ParseStatus.OK, label=_flag_label(policy, flag), violation=flag)
        else:
            verdict = _parse_label(raw, policy)
        if verdict.ok:
            own = tuple(dict.fromkeys(c for c in cited if c in policy.known_rule_ids))
            verdict = replace(
                verdict,
                rule_ids=tuple(dict.fromkeys(verdict.rule_ids + own)),
                unknown_rule_ids=unknown,
                rationale=rationale,
            )
        verdicts.append(replace(verdict, answer=answer))
    return tuple(verdicts)


def _bundle_answer(body: str, obj: dict[str, Any] | None, policy_id: str) -> str | None:
    """The text of one policy's answer in a combined reply, or None when it is missing."""
    if obj is not None:
        value = obj.get(policy_id)
        return None if value is None else str(value)
    pattern = re.compile(
        rf"(?im)^\s*[-*`]*\s*{re.escape(policy_id)}\s*[*`]*\s*[:=]\s*(?P<rest>.+?)\s*$"
    )
    found = pattern.search(body)
    return found.group("rest") if found else None


def probability_problem(probs: Mapping[str, float]) -> str | None:
    """Why label probabilities cannot be used, or None when they can: every value a finite
    real number in [0, 1] (a NaN or infinity from a remote server's logprobs, or NaN logits,
    must never be read as "0% violating")."""
    for name, value in probs.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"the probability of label {name!r} is not a number"
        as_float = float(value) if -1.0 <= value <= 2.0 else math.inf  # no overflow on huge
        if not math.isfinite(as_float) or not 0.0 <= as_float <= 1.0 + 1e-9:
            return f"the probability of label {name!r} is {value!r}, not a number in [0, 1]"
    return None


def with_scores(verdict: Verdict, probs: Mapping[str, float] | None, policy: Policy) -> Verdict:
    """Attach label probabilities (and the violation score they give) to a verdict.

    Probabilities that are not finite numbers in [0, 1] make the verdict an abstention: the
    label was chosen by them (the policy's threshold), so it cannot be trusted either.
    """
    if not probs:
        return verdict
    problem = probability_problem(probs)
    if problem is None and sum(probs.values()) <= 0.0:
        problem = "the label probabilities sum to zero"
    if problem is not None:
        return failed(ParseStatus.MALFORMED, answer=verdict.answer, detail=problem)
    return replace(verdict, score=violation_score(probs, policy), label_probs=dict(probs))


def verdict_from_scores(probs: Mapping[str, float] | None, policy: Policy) -> Verdict:
    """Score mode: a verdict from the probabilities of each label's first token.

    The violation flag is `score >= policy.threshold`; the label is the most likely label on
    that side of the threshold.
    """
    problem = probability_problem(probs) if probs else None
    if problem is not None:
        return failed(ParseStatus.MALFORMED, detail=problem)
    if not probs or sum(probs.values()) <= 0.0:
        return failed(ParseStatus.NO_FINAL_ANSWER, detail="the backend returned no label scores")
    unknown = [name for name in probs if policy.label(name) is None]
    if unknown:
        return failed(ParseStatus.UNKNOWN_LABEL, detail=f"scores for unknown labels {unknown}")
    score = violation_score(probs, policy)
    violation = score >= policy.threshold
    side = [label for label in policy.labels if label.violation == violation]
    best = max(side, key=lambda label: probs.get(label.name, 0.0))
    return Verdict(
        status=ParseStatus.OK,
        label=best.name,
        violation=violation,
        score=score,
        answer=best.name,
        label_probs=dict(probs),
    )


def violation_score(probs: Mapping[str, float], policy: Policy) -> float:
    """Probability mass on violating labels, normalised over the policy's labels."""
    total = sum(probs.values())
    bad = sum(p for name, p in probs.items() if (lab := policy.label(name)) and lab.violation)
    return min(1.0, max(0.0, bad / total)) if total > 0 else 0.0


def _parse_json(answer: str, policy: Policy) -> Verdict:
    obj = _first_json_object(answer)
    if obj is None:
        return failed(ParseStatus.MALFORMED, detail="no complete JSON object in the answer")
    raw = obj.get("violation", obj.get("label"))
    violation = _as_flag(raw)
    if violation is None:
        label = policy.label(str(raw)) if raw is not None else None
        if label is None:
            status = ParseStatus.MALFORMED if raw is None else ParseStatus.UNKNOWN_LABEL
            return failed(status, detail=f"'violation' is {raw!r}, expected 0 or 1")
        violation = label.violation
        name = label.name
    else:
        name = _flag_label(policy, violation)
    category = obj.get("policy_category")
    category = str(category) if category not in (None, "", "null") else None
    cited = _as_list(obj.get("rule_ids")) + ([category] if category else [])
    known, unknown = _check_rule_ids(cited, policy)
    confidence = obj.get("confidence")
    rationale = obj.get("rationale")
    return Verdict(
        status=ParseStatus.OK,
        label=name,
        violation=violation,
        category=category,
        rule_ids=known,
        unknown_rule_ids=unknown,
        confidence=str(confidence) if confidence is not None else None,
        rationale=str(rationale).strip() if rationale is not None else None,
    )


def _parse_label(answer: str, policy: Policy) -> Verdict:
    first = answer.splitlines()[0].strip().strip("*`\"'").strip()
    first = re.sub(r"(?i)^(?:answer|label|verdict|output)\s*[:：]\s*", "", first)
    label = _match_label(first, policy) or _match_label_line(answer, policy)
    if label is None:
        token = first.split()[0] if first.split() else first
        looks_like_label = bool(re.fullmatch(r"[A-Z0-9_+\- ]{1,40}", first))
        status = ParseStatus.UNKNOWN_LABEL if looks_like_label else ParseStatus.MALFORMED
        return failed(status, detail=f"answer starts with {token[:40]!r}, not a policy label")
    match = _RATIONALE_RE.search(answer)
    rationale = match.group(1).strip() if match else None
    # Rule ids cited anywhere after the label: "1 (SP2.a)" or a rationale line.
    after_label = answer.split(label.name, 1)[-1] if label.name in answer else answer
    known, unknown = _check_rule_ids(find_rule_ids(after_label), policy)
    return Verdict(
        status=ParseStatus.OK,
        label=label.name,
        violation=label.violation,
        rule_ids=known,
        unknown_rule_ids=unknown,
        rationale=rationale,
    )


def _match_label(text: str, policy: Policy) -> Label | None:
    """The longest label that `text` starts with as a whole word (`INVALID` before `VALID`)."""
    for label in sorted(policy.labels, key=lambda lab: len(lab.name), reverse=True):
        pattern = r"\s*".join(re.escape(part) for part in label.name.split())
        if re.match(rf"(?i){pattern}(?![\w+])", text):
            return label
    return None


def _match_label_line(answer: str, policy: Policy) -> Label | None:
    """A line that is exactly one label, for answers with a preamble line."""
    for line in answer.splitlines()[1:]:
        cleaned = line.strip().strip("*`\"'").strip()
        label = _match_label(cleaned, policy)
        if label is not None and len(cleaned) <= len(label.name) + 2:
            return label
    return None


def _flag_label(policy: Policy, violation: bool) -> str:
    label = next((lab for lab in policy.labels if lab.violation == violation), None)
    return label.name if label else ("1" if violation else "0")


_LENIENT = json.JSONDecoder(strict=False)
"""Tolerates raw newlines inside strings; holds no state, so one serves every call."""


def _first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text`; raw newlines in strings are tolerated."""
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = _LENIENT.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _as_flag(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None


def _as_list(value: object) -> list[str]:
    if isinstance(value, str):
        return find_rule_ids(value) or ([value] if value.strip() else [])
    if isinstance(value, list):
        return [str(v) for v in value if v is not None and str(v).strip()]
    return []


def _check_rule_ids(cited: list[str], policy: Policy) -> tuple[tuple[str, ...], tuple[str, ...]]:
    known_ids = policy.known_rule_ids
    cited = list(dict.fromkeys(c.strip() for c in cited if c.strip()))
    known = tuple(c for c in cited if c in known_ids)
    unknown = tuple(c for c in cited if c not in known_ids)
    return known, unknown
