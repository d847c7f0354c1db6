"""The job manifest: what a batch job is, how far it got, and what went wrong.

The manifest lives beside the output (`OUTPUT.manifest.json`) and is replaced whole (written
to a temporary name, flushed, renamed) after every committed part, so after a crash it names
exactly the parts on disk and how many input rows they cover. A job is identified by its
spec (inputs, policy hashes, model, options): the same command resumes it; a changed policy
or model is another job and never reuses its results.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from magistrate.errors import InputError

SCHEMA: Final = "magistrate.batch/1"
MAX_FAILURES_KEPT = 100
"""The manifest lists the first failures in full; the rest are counted by kind."""


class PolicyRef(BaseModel):
    """A policy as a job names it: enough to know it is the same text."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    version: str
    hash: str


class JobSpec(BaseModel):
    """Everything that decides a job's results. Two runs with equal specs are one job."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    inputs: list[str]
    input_format: str | None = None
    text_col: str | None = None
    id_col: str | None = None
    policies: list[PolicyRef]
    model: str
    strategy: str
    mode: str
    effort: str
    calibrate: bool
    fallback: bool
    on_abstain: str
    max_chars: int
    max_tokens: int | None = None
    readouts: list[str] = []
    """Ids of the fitted read-outs that judge the rows (a job without any hashes as before)."""

    def hash(self) -> str:
        """SHA-256 of the spec's canonical JSON (without `readouts` when there are none)."""
        data = self.model_dump(mode="json")
        if not data["readouts"]:
            del data["readouts"]
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def differences(self, other: JobSpec) -> list[str]:
        """The fields in which `other` differs from this spec."""
        mine, theirs = self.model_dump(), other.model_dump()
        return [name for name in mine if mine[name] != theirs[name]]


class Part(BaseModel):
    """One committed part file: which input rows it covers."""

    model_config = ConfigDict(extra="forbid")
    name: str
    first_row: int
    rows_in: int
    rows_out: int


class Counts(BaseModel):
    """What a job has done so far (over every attempt)."""

    model_config = ConfigDict(extra="forbid")
    rows: int = 0
    """Input rows done (each has one output row per policy)."""
    output_rows: int = 0
    flagged: int = 0
    """Input rows flagged under some policy (abstentions as --on-abstain routes them)."""
    violations: int = 0
    """Input rows with a violation verdict under some policy."""
    no_verdict: int = 0
    """Input rows where some policy reached no verdict (judged, but no label)."""
    invalid: int = 0
    """Input rows that could not be judged (bad JSON, no text, too long, not UTF-8)."""
    decisions_made: int = 0
    decisions_cached: int = 0
    """Decisions reused from the decision log, or from identical content in this job."""
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Failure(BaseModel):
    """An input row that got no verdict under some policy."""

    model_config = ConfigDict(extra="forbid")
    row: int
    source: str
    item_id: str
    policy_id: str | None
    status: str
    reason: str | None


class Manifest(BaseModel):
    """The state of one batch job (`OUTPUT.manifest.json`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_: Literal["magistrate.batch/1"] = Field(default=SCHEMA, alias="schema")
    job: str
    """The job's name (--job) or the first 16 hex digits of its spec hash."""
    spec_hash: str
    spec: JobSpec
    run_id: str
    """The ULID the job's decisions carry in the decision log (`run_id`)."""
    output: str
    output_format: str
    state: Literal["running", "done", "failed"] = "running"
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    attempts: int = 0
    elapsed_s: float = 0.0
    """Seconds spent judging, over every attempt."""
    rows_total: int | None = None
    """Input rows, when known before the end (for progress); None for stdin."""
    rows_committed: int = 0
    input_hash: str = ""
    """Running hash over the ids and content hashes of the committed input rows."""
    parts: list[Part] = Field(default_factory=list)
    counts: Counts = Field(default_factory=Counts)
    failures: list[Failure] = Field(default_factory=list)
    failure_kinds: dict[str, int] = Field(default_factory=dict)
    database: str | None = None

    def summary(self) -> dict[str, Any]:
        """The `--json` summary: the manifest without its part list."""
        data = self.model_dump(mode="json", by_alias=True, exclude={"parts"})
        data["parts"] = len(self.parts)
        return data


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".manifest.json")


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def load_manifest(path: Path) -> Manifest | None:
    """The manifest at `path`, or None when there is none.

    Raises:
        InputError: The file exists but is not a manifest this version can read.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise InputError(
            f"{path} is not a batch manifest this version can read ({exc.error_count()} "
            "problems). Move it away, or pass --restart to start the job over."
        ) from None


def save_manifest(manifest: Manifest, path: Path) -> None:
    """Replace the manifest whole (`replace_whole`)."""
    manifest.updated_at = datetime.now(UTC)
    replace_whole(path, manifest.model_dump_json(by_alias=True, indent=2))


def replace_whole(path: Path, text: str) -> None:
    """Replace the file at `path` with `text` whole: written to a temporary name of its own,
    flushed to disk, renamed; a crash leaves the old file or the new one, never a mix.

    The temporary name is unique: a save still running in a worker thread when a job was
    interrupted must not share (and truncate) the one the interrupt handler writes.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
