"""The one prompt builder: Policy + Item -> Prompt.

Layout (a performance feature as much as a correctness one):

    system     the policy text, then Magistrate's output-format block (same for every item)
    user       the item's content, and nothing else (content is untrusted)
    assistant  an optional prefill where the label begins (`{"violation": ` for JSON policies)

Everything before the content depends only on the policy and the backend's capabilities, so
it is byte-identical across the items of one policy and a backend's KV prefix (or a server's
prefix cache) is reused. Nothing per-item (ids, dates) ever goes before the content.

Example:
    >>> prompt = build_prompt(load_policy("spam"), Item.of("Win a prize!"))
    >>> [m.role for m in prompt.messages], prompt.prefill
    (['system', 'user'], '{"violation": ')
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from magistrate.item import Item
from magistrate.policy import OutputFormat, Policy, PolicyBundle

RATIONALE_MAX_WORDS = 30
RATIONALE_MAX_CHARS = 300


class Mode(StrEnum):
    """How a verdict is produced."""

    REASON = "reason"
    """The model writes its answer in the policy's format, with a bounded rationale."""
    SCORE = "score"
    """One constrained label token; the score is the probability of the violating labels."""


class Effort(StrEnum):
    """Reasoning effort: harmony's `Reasoning:` level, and the output budget elsewhere."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    content: str


@dataclass(frozen=True)
class LabelSlot:
    """One place in a combined answer where a policy's label is read (score mode).

    Attributes:
        lead: Text written before the label: the prefill for the first slot, a newline and
            the policy id for the others (`"\\nhate: "`).
        candidates: The policy's label strings; their first tokens are compared.
        violating: For each candidate, whether it is a violating label.
    """

    lead: str
    candidates: tuple[str, ...]
    violating: tuple[bool, ...]


@dataclass(frozen=True)
class Prompt:
    """What a backend is asked.

    Attributes:
        messages: System (policy + format block) then user (the content).
        prefill: Text the assistant's answer starts with, for backends that can continue a
            raw prompt; where the label token is read in score mode.
        candidates: The label strings that may follow `prefill`; their first tokens are
            compared in score mode.
        violating: For each candidate, whether it is a violating label.
        schema: JSON schema of a valid answer, for constrained decoding (JSON policies).
        grammar: GBNF grammar of a valid answer, for constrained decoding (other formats).
        effort: Reasoning effort, for backends that take one.
        native_reasoning: Whether the format block assumed the model reasons on its own
            channel (harmony) instead of writing a rationale in the answer.
        slots: Combined prompts only: one label position per policy, in answer order, for
            backends that read several labels in one pass (`Capabilities.label_slots`).
    """

    messages: tuple[Message, ...]
    prefill: str
    candidates: tuple[str, ...]
    violating: tuple[bool, ...]
    effort: Effort
    schema: dict[str, Any] | None = field(default=None, compare=False)
    grammar: str | None = None
    native_reasoning: bool = False
    slots: tuple[LabelSlot, ...] = ()

    @property
    def system(self) -> str:
        """The system message: everything the model reads before the content."""
        return self.messages[0].content

    @property
    def prefix_hash(self) -> str:
        """Hash of everything before the content: equal for every item of one policy."""
        return hashlib.sha256(self.system.encode("utf-8")).hexdigest()


def build_prompt(
    policy: Policy,
    item: Item,
    *,
    effort: Effort | str = Effort.MEDIUM,
    native_reasoning: bool = False,
) -> Prompt:
    """Build the prompt for one item under one policy.

    Args:
        policy: The parsed policy.
        item: The checked content; it goes into the user message and nowhere else.
        effort: Reasoning effort.
        native_reasoning: True for models that reason on a separate channel (gpt-oss); the
            answer is then asked for in the policy's exact format, without a rationale line.
    """
    static = _policy_parts(policy, native_reasoning)
    return Prompt(
        messages=(Message("system", static.system), Message("user", item.text)),
        prefill=static.prefill,
        candidates=static.candidates,
        violating=static.violating,
        effort=Effort(effort),
        schema=static.schema,
        grammar=static.grammar,
        native_reasoning=native_reasoning,
    )


@dataclass(frozen=True)
class _PolicyParts:
    """What a policy's prompt holds before the content: the same for every item."""

    system: str
    prefill: str
    candidates: tuple[str, ...]
    violating: tuple[bool, ...]
    schema: dict[str, Any] | None
    grammar: str | None


_PARTS: dict[tuple[str, bool], _PolicyParts] = {}
_PARTS_KEPT = 256
_PARTS_MAX_CHARS = 32 * 1024 * 1024
"""Policy texts kept at most, in characters (a server takes inline policies of up to its
body limit each)."""
_parts_chars = 0


def _policy_parts(policy: Policy, native_reasoning: bool) -> _PolicyParts:
    """A policy's prompt parts, built once per policy text (its hash) and kept while fewer
    than `_PARTS_KEPT` texts and `_PARTS_MAX_CHARS` characters are (then forgotten all at
    once: plain dict operations stay safe across threads): a batch job builds millions of
    prompts from one policy."""
    key = (policy.hash, native_reasoning)
    parts = _PARTS.get(key)
    if parts is None:
        json_output = policy.output is OutputFormat.JSON
        parts = _PolicyParts(
            system=policy.body.rstrip("\n") + "\n\n" + format_block(policy, native_reasoning),
            prefill='{"violation": ' if json_output else "",
            candidates=tuple(label.name for label in policy.labels),
            violating=tuple(label.violation for label in policy.labels),
            schema=answer_schema(policy) if json_output else None,
            grammar=None if json_output else answer_grammar(policy),
        )
        global _parts_chars
        if len(_PARTS) >= _PARTS_KEPT or _parts_chars + len(parts.system) > _PARTS_MAX_CHARS:
            _PARTS.clear()
            _parts_chars = 0
        _PARTS[key] = parts
        _parts_chars += len(parts.system)
    return parts


def build_bundle_prompt(
    bundle: PolicyBundle,
    item: Item,
    *,
    effort: Effort | str = Effort.MEDIUM,
    native_reasoning: bool = False,
) -> Prompt:
    """Build one prompt that asks for a label under every policy of a bundle.

    The system message holds each policy's text under its own numbered heading, then one
    output-format block that replaces the policies' own formats: one `id: label` line per
    policy in bundle order, then a rationale line. For score mode the prompt also lists one
    `LabelSlot` per policy: the backend reads each policy's label distribution where its line
    begins, writing the likelier label before moving to the next line.

    Args:
        bundle: The policies, in the order their answer lines are asked for.
        item: The checked content; it goes into the user message and nowhere else.
        effort: Reasoning effort.
        native_reasoning: True for models that reason on a separate channel (gpt-oss).
    """
    n = len(bundle.policies)
    parts = [
        f"You apply {n} separate policies to the content in the user message. Judge the "
        "content under each policy on its own terms: a label under one policy says nothing "
        "about another. Each policy's own OUTPUT FORMAT section is replaced by the one at "
        "the end."
    ]
    for i, policy in enumerate(bundle.policies, 1):
        parts.append(f"# POLICY {i} OF {n}: {policy.id}\n\n{policy.body.strip()}")
    parts.append(bundle_format_block(bundle, native_reasoning))
    system = "\n\n".join(parts) + "\n"
    return Prompt(
        messages=(Message("system", system), Message("user", item.text)),
        prefill="" if native_reasoning else f"{bundle.ids[0]}: ",
        candidates=(),
        violating=(),
        effort=Effort(effort),
        grammar=bundle_grammar(bundle),
        native_reasoning=native_reasoning,
        slots=tuple(
            LabelSlot(
                lead=(f"{p.id}: " if i == 0 else f"\n{p.id}: "),
                candidates=tuple(label.name for label in p.labels),
                violating=tuple(label.violation for label in p.labels),
            )
            for i, p in enumerate(bundle.policies)
        ),
    )


def bundle_format_block(bundle: PolicyBundle, native_reasoning: bool) -> str:
    """The combined output-format block: one `id: label` line per policy."""
    lines = [f"{p.id}: " + " or ".join(label.name for label in p.labels) for p in bundle.policies]
    block = (
        "## OUTPUT FORMAT (all policies)\n"
        f"Reply with exactly {len(lines)} lines, one per policy, in this order, each the "
        "policy id, a colon and exactly one of its labels:\n" + "\n".join(lines) + "\n"
    )
    if native_reasoning:
        return block + "No other text.\n"
    rules = ", ".join(sorted(bundle.known_rule_ids)) or "none"
    return (
        block + f"Then a last line: `Rationale:` then one sentence of at most "
        f"{RATIONALE_MAX_WORDS} words that names the rule ids that apply.\n"
        f"Valid rule ids: {rules}.\n"
    )


def bundle_grammar(bundle: PolicyBundle) -> str:
    """GBNF grammar of a valid combined answer: the label lines, then a rationale line."""
    rules = []
    root = []
    for i, policy in enumerate(bundle.policies):
        labels = " | ".join(json.dumps(label.name) for label in policy.labels)
        rules.append(f"label{i} ::= {labels}")
        root.append(f"{json.dumps(policy.id + ': ')} label{i} " + r'"\n"')
    return (
        "root ::= " + " ".join(root) + ' "Rationale: " text\n' + "\n".join(rules) + "\n"
        f"text ::= [^\\n]{{1,{RATIONALE_MAX_CHARS}}}\n"
    )


def format_block(policy: Policy, native_reasoning: bool) -> str:
    """Magistrate's output-format reminder, appended after the policy text."""
    rules = ", ".join(sorted(policy.rule_ids)) or "none"
    if policy.output is OutputFormat.JSON:
        return (
            "## OUTPUT FORMAT\n"
            "Reply with one JSON object on one line and nothing else, keys in this order: "
            '{"violation": 0 or 1, "policy_category": the rule id that fits best or null, '
            '"rule_ids": [every rule id that applies], "confidence": "low", "medium" or "high", '
            f'"rationale": one sentence of at most {RATIONALE_MAX_WORDS} words}}.\n'
            f"Valid rule ids: {rules}.\n"
        )
    answers = " or ".join(label.name for label in policy.labels)
    if native_reasoning:
        return f"## OUTPUT FORMAT\nReply with exactly one of: {answers}. No other text.\n"
    return (
        "## OUTPUT FORMAT\n"
        f"First line: exactly one of {answers}.\n"
        f"Second line: `Rationale:` then one sentence of at most {RATIONALE_MAX_WORDS} words "
        "that names the rule ids that apply.\n"
        f"Valid rule ids: {rules}.\n"
    )


def answer_schema(policy: Policy) -> dict[str, Any]:
    """JSON schema of a valid JSON answer: rule ids limited to those the policy defines."""
    known = sorted(policy.known_rule_ids)
    rule: dict[str, Any] = {"type": "string", "enum": known} if known else {"type": "string"}
    return {
        "type": "object",
        "properties": {
            "violation": {"type": "integer", "enum": [0, 1]},
            "policy_category": {"anyOf": [rule, {"type": "null"}]},
            "rule_ids": {"type": "array", "items": rule, "maxItems": 8},
            "confidence": {"type": "string", "enum": ["low", "medium", "high"]},
            "rationale": {"type": "string", "maxLength": RATIONALE_MAX_CHARS},
        },
        "required": ["violation", "policy_category", "rule_ids", "confidence", "rationale"],
        "additionalProperties": False,
    }


def answer_grammar(policy: Policy) -> str:
    """GBNF grammar of a valid label-first answer: a label line, then a rationale line."""
    labels = " | ".join(json.dumps(label.name) for label in policy.labels)
    return (
        f'root ::= label "\\nRationale: " text\n'
        f"label ::= {labels}\n"
        f"text ::= [^\\n]{{1,{RATIONALE_MAX_CHARS}}}\n"
    )
