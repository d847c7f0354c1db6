"""Batch output: one row per input row and policy, written in committed parts, then assembled.

A job writes its rows into numbered part files next to the output (`OUTPUT.parts/`), each
made whole before it is renamed into place, so a part on disk is always complete. When every
input row is done, the parts are joined into OUTPUT (Parquet or JSON Lines by its extension)
through a temporary file and one rename, and the parts are removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from magistrate.batch.inputs import Row, parquet_module
from magistrate.decision import Decision
from magistrate.errors import ConfigError
from magistrate.policy import Policy

OUTPUT_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
INVALID_INPUT = "invalid_input"
"""The status of a row that could not be judged (see `Row.problem`)."""

COLUMNS: tuple[tuple[str, str], ...] = (
    ("row", "int64"),
    ("source", "string"),
    ("item_id", "string"),
    ("item_hash", "string"),
    ("policy_id", "string"),
    ("policy_version", "string"),
    ("policy_hash", "string"),
    ("label", "string"),
    ("violation", "bool"),
    ("flagged", "bool"),
    ("score", "float64"),
    ("category", "string"),
    ("rule_ids", "list<string>"),
    ("rationale", "string"),
    ("status", "string"),
    ("abstain_reason", "string"),
    ("decision_id", "string"),
    ("cached", "bool"),
    ("latency_s", "float64"),
    ("prompt_tokens", "int64"),
    ("cached_tokens", "int64"),
    ("completion_tokens", "int64"),
    ("reasoning_tokens", "int64"),
)
"""The output columns and their types (the Parquet schema; JSON Lines uses the same keys)."""


def output_format(path: Path) -> str:
    """`parquet` or `jsonl`, from the output's extension.

    Raises:
        ConfigError: Another extension.
    """
    kind = OUTPUT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"Output {str(path)!r}: name it .parquet or .jsonl (the extension picks the format)."
        )
    return kind


def decision_row(row: Row, decision: Decision, cached: bool) -> dict[str, Any]:
    """The output row of one input row under one policy."""
    v = decision.verdict
    return {
        "row": row.number,
        "source": row.source,
        "item_id": row.id,
        "item_hash": decision.item_hash,
        "policy_id": decision.policy_id,
        "policy_version": decision.policy_version,
        "policy_hash": decision.policy_hash,
        "label": v.label,
        "violation": v.violation if v.ok else None,
        "flagged": decision.flagged,
        "score": v.score,
        "category": v.category,
        "rule_ids": list(v.rule_ids),
        "rationale": v.rationale,
        "status": v.status.value,
        "abstain_reason": None if v.ok else (v.detail or decision.error or v.status.value),
        "decision_id": decision.id,
        "cached": cached,
        "latency_s": 0.0 if cached else round(decision.latency_s, 6),
        "prompt_tokens": 0 if cached else decision.usage.prompt_tokens,
        "cached_tokens": 0 if cached else decision.usage.cached_tokens,
        "completion_tokens": 0 if cached else decision.usage.completion_tokens,
        "reasoning_tokens": 0 if cached else decision.usage.reasoning_tokens,
    }


def invalid_row(row: Row, policy: Policy) -> dict[str, Any]:
    """The output row of an input row that could not be judged: no label, never "safe"."""
    out: dict[str, Any] = dict.fromkeys(name for name, _ in COLUMNS)
    out.update(
        row=row.number,
        source=row.source,
        item_id=row.id,
        policy_id=policy.id,
        policy_version=policy.version,
        policy_hash=policy.hash,
        rule_ids=[],
        status=INVALID_INPUT,
        abstain_reason=row.problem,
        cached=False,
        latency_s=0.0,
        prompt_tokens=0,
        cached_tokens=0,
        completion_tokens=0,
        reasoning_tokens=0,
    )
    return out


def _schema() -> Any:
    import pyarrow as pa

    types = {
        "int64": pa.int64(),
        "string": pa.string(),
        "bool": pa.bool_(),
        "float64": pa.float64(),
        "list<string>": pa.list_(pa.string()),
    }
    return pa.schema([(name, types[kind]) for name, kind in COLUMNS])


def write_part(path: Path, rows: Sequence[Mapping[str, Any]], kind: str) -> None:
    """Write one part whole: to a temporary name, flushed to disk, then renamed."""
    tmp = path.with_name(path.name + ".tmp")
    if kind == "parquet":
        import pyarrow as pa

        pq = parquet_module()
        pq.write_table(pa.Table.from_pylist(list(rows), schema=_schema()), tmp)
        _fsync(tmp)
    else:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def assemble(parts: Iterable[Path], output: Path, kind: str) -> None:
    """Join the parts, in order, into `output` (written whole, then renamed into place)."""
    tmp = output.with_name(output.name + ".tmp")
    if kind == "parquet":
        pq = parquet_module()
        with pq.ParquetWriter(tmp, _schema()) as writer:
            for part in parts:
                writer.write_table(pq.read_table(part, schema=_schema()))
        _fsync(tmp)
    else:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 20):
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    os.replace(tmp, output)
    _fsync(output.parent)


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename), to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
