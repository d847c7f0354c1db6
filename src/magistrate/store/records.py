"""Rows of the decision log: Decision <-> row, the hash chain, and what queries return.

A decision row holds plain columns and canonical JSON text (sorted keys, no spaces), so the
row hash is the same whichever database stored it. The hash of row `n` covers every column of
the row, the content when it was kept, and the previous row's hash:

    row_hash(n) = SHA-256(canonical JSON of row n's columns, prev_hash = row_hash(n-1))

with `GENESIS` as the previous hash of the first row. Editing, deleting or re-ordering rows
therefore breaks the chain at the first row touched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from magistrate.completion import Usage
from magistrate.decision import Decision
from magistrate.verdict import ParseStatus, Verdict

GENESIS = "0" * 64
"""The `prev_hash` of the first decision in a log."""

READABLE_METADATA_DEPTH = 128
"""Stored metadata nested deeper than this reads as `{"_unreadable": reason}`. The service
takes 32 levels; older versions recorded any depth, and JSON encoders stop near 255 levels,
so one such row would break every page of the log that holds it."""


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: one text per value, on every database."""
    if not value and isinstance(value, list | dict):  # most rule id lists, metadata, ...
        return "[]" if isinstance(value, list) else "{}"
    return _CANONICAL(value)


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
"""One encoder for every call (`json.dumps` with options builds a new one each time)."""


def timestamp(when: datetime) -> str:
    """UTC ISO 8601 with microseconds; sorts as text."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def decision_row(
    decision: Decision, *, content: str | None, options_json: str | None = None
) -> dict[str, Any]:
    """The columns of a decision row, without `seq`, `prev_hash` and `row_hash`
    (`options_json`: the options' canonical JSON, when the caller already has it)."""
    v = decision.verdict
    return {
        "id": decision.id,
        "created_at": timestamp(decision.created_at),
        "item_id": decision.item_id,
        "item_hash": decision.item_hash,
        "content": content,
        "policy_hash": decision.policy_hash,
        "policy_id": decision.policy_id,
        "policy_version": decision.policy_version,
        "backend": decision.backend,
        "model": decision.model,
        "effort": decision.effort,
        "mode": decision.mode,
        "options": options_json or canonical_json(dict(decision.options)),
        "status": v.status.value,
        "label": v.label,
        "violation": v.violation,
        "category": v.category,
        "rule_ids": canonical_json(list(v.rule_ids)),
        "unknown_rule_ids": canonical_json(list(v.unknown_rule_ids)),
        "score": v.score,
        "confidence": v.confidence,
        "rationale": v.rationale,
        "answer": v.answer,
        "label_probs": canonical_json(dict(v.label_probs)),
        "abstain_reason": None if v.ok else (v.detail or v.status.value),
        "reasoning": decision.reasoning,
        "prompt_tokens": decision.usage.prompt_tokens,
        "cached_tokens": decision.usage.cached_tokens,
        "completion_tokens": decision.usage.completion_tokens,
        "reasoning_tokens": decision.usage.reasoning_tokens,
        "latency_s": float(decision.latency_s),
        "error": decision.error,
        "metadata": canonical_json(dict(decision.metadata)),
        "run_id": None,
    }


def row_hash(row: Mapping[str, Any]) -> str:
    """The chain hash of a row: every column but `row_hash` itself, `prev_hash` included."""
    # Floats go in by repr so that 0.1 hashes the same after a round trip through any
    # database that stores IEEE doubles; integers stay integers (a bool is not an int here).
    body = {
        key: repr(value) if isinstance(value, float) else value
        for key, value in row.items()
        if key != "row_hash"
    }
    return hashlib.sha256(canonical_json(body).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class StoredDecision:
    """A decision as the log holds it.

    Attributes:
        seq: Position in the log's hash chain (1 for the first decision).
        decision: The decision, rebuilt from its row.
        content: The content judged, or None when it was redacted.
        prev_hash: The previous row's hash (`GENESIS` for the first row).
        row_hash: This row's hash.
        run_id: The eval run or batch job this decision belongs to, if any.
    """

    seq: int
    decision: Decision
    content: str | None
    prev_hash: str
    row_hash: str
    run_id: str | None = None

    @property
    def id(self) -> str:
        return self.decision.id

    def to_dict(self) -> dict[str, Any]:
        """The decision's JSON (as `classify --json` prints it) plus what the log adds."""
        return {
            **self.decision.to_dict(),
            "content": self.content,
            "log": {
                "seq": self.seq,
                "prev_hash": self.prev_hash,
                "row_hash": self.row_hash,
                "run_id": self.run_id,
            },
        }


def stored_decision(row: Mapping[str, Any]) -> StoredDecision:
    """Rebuild a `StoredDecision` from a row of the decisions table."""
    verdict = Verdict(
        status=ParseStatus(row["status"]),
        label=row["label"],
        violation=row["violation"],
        category=row["category"],
        rule_ids=tuple(json.loads(row["rule_ids"])),
        unknown_rule_ids=tuple(json.loads(row["unknown_rule_ids"])),
        score=row["score"],
        confidence=row["confidence"],
        rationale=row["rationale"],
        answer=row["answer"],
        detail=row["abstain_reason"],
        label_probs=json.loads(row["label_probs"]),
    )
    decision = Decision(
        id=row["id"],
        created_at=datetime.fromisoformat(row["created_at"]),
        item_id=row["item_id"],
        item_hash=row["item_hash"],
        policy_id=row["policy_id"],
        policy_version=row["policy_version"],
        policy_hash=row["policy_hash"],
        backend=row["backend"],
        model=row["model"],
        effort=row["effort"],
        mode=row["mode"],
        options=json.loads(row["options"]),
        verdict=verdict,
        reasoning=row["reasoning"],
        usage=Usage(
            prompt_tokens=row["prompt_tokens"],
            cached_tokens=row["cached_tokens"],
            completion_tokens=row["completion_tokens"],
            reasoning_tokens=row["reasoning_tokens"],
        ),
        latency_s=row["latency_s"],
        error=row["error"],
        metadata=readable_metadata(row["metadata"]),
    )
    return StoredDecision(
        seq=row["seq"],
        decision=decision,
        content=row["content"],
        prev_hash=row["prev_hash"],
        row_hash=row["row_hash"],
        run_id=row["run_id"],
    )


def readable_metadata(stored: str) -> dict[str, Any]:
    """A row's metadata as a JSON object any reader can encode again, or the marker
    `{"_unreadable": reason}` in its place. The stored text stays as it is (the chain hashes
    it), so `verify` still checks the row.

    Example:
        >>> readable_metadata('{"source": "forum"}')
        {'source': 'forum'}
        >>> readable_metadata("[1")
        {'_unreadable': 'not valid JSON'}
    """
    try:
        value = json.loads(stored)
    except RecursionError:
        return _unreadable(f"nested deeper than {READABLE_METADATA_DEPTH} levels")
    except (TypeError, ValueError):
        return _unreadable("not valid JSON")
    if not isinstance(value, dict):
        return _unreadable("not a JSON object")
    if json_depth(value) > READABLE_METADATA_DEPTH:
        return _unreadable(f"nested deeper than {READABLE_METADATA_DEPTH} levels")
    return value


def _unreadable(reason: str) -> dict[str, Any]:
    return {"_unreadable": reason}


def json_depth(value: Any) -> int:
    """How many objects and arrays nest at the deepest point of a JSON value (0 for a scalar).

    Example:
        >>> json_depth({"a": [1, {"b": 2}]})
        3
    """
    deepest = 0
    pending = [(value, 1)]
    while pending:  # a loop, not recursion: the depth is whatever was stored
        node, depth = pending.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in node)
    return deepest


@dataclass(frozen=True)
class PolicyVersion:
    """One distinct text of a policy, as first seen by the log.

    Attributes:
        number: 1 for the first text seen under this policy id, 2 for the next, ...
        hash: SHA-256 of the text.
        policy_id: The policy's id.
        version: The version label the text carried (not necessarily unique).
        title: The policy's title.
        first_seen: When the log first recorded a decision under this text.
        text: The exact text.
        decisions: How many decisions in the log were made under this text.
    """

    number: int
    hash: str
    policy_id: str
    version: str
    title: str
    first_seen: str
    text: str
    decisions: int = 0

    def to_dict(self, *, text: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "number": self.number,
            "hash": self.hash,
            "policy_id": self.policy_id,
            "version": self.version,
            "title": self.title,
            "first_seen": self.first_seen,
            "decisions": self.decisions,
        }
        if text:
            data["text"] = self.text
        return data


@dataclass(frozen=True)
class VerifyReport:
    """What `Store.verify` found.

    Attributes:
        ok: True when every row and policy checked out.
        decisions: Decision rows checked.
        policies: Policy texts checked.
        problem: The first mismatch, in words; None when ok.
        seq: Chain position of the first row that does not match.
        decision_id: Id of that row.
    """

    ok: bool
    decisions: int
    policies: int
    problem: str | None = None
    seq: int | None = None
    decision_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "decisions": self.decisions,
            "policies": self.policies,
            "problem": self.problem,
            "seq": self.seq,
            "decision_id": self.decision_id,
        }
