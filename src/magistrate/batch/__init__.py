"""Batch jobs: large inputs judged through the one fan-out, exactly once, resumable.

Example:
    >>> from magistrate import Judge
    >>> from magistrate.batch import BatchJob, JobSpec, expand_inputs, job_spec
    >>> judge = Judge(["spam"], mode="score")
    >>> sources = expand_inputs(["posts.jsonl"])
    >>> job = BatchJob(sources, Path("labels.parquet"), judge, job_spec(sources, judge))
    >>> manifest = asyncio.run(job.run())
"""

from __future__ import annotations

from magistrate.batch.inputs import Columns, Row, Source, expand_inputs, read_rows
from magistrate.batch.job import BatchJob
from magistrate.batch.manifest import JobSpec, Manifest, PolicyRef, load_manifest, manifest_path
from magistrate.batch.output import COLUMNS, INVALID_INPUT
from magistrate.engine import Judge


def job_spec(
    sources: list[Source],
    judge: Judge,
    *,
    columns: Columns | None = None,
    input_format: str | None = None,
    model: str | None = None,
) -> JobSpec:
    """The identity of a job that runs `judge` over `sources` (see `JobSpec`).

    `model` is what the user named (the backend's name by default): a changed model string
    is a changed job.
    """
    columns = columns or Columns()
    return JobSpec(
        inputs=[s.fingerprint() for s in sources],
        input_format=input_format,
        text_col=columns.text,
        id_col=columns.id,
        policies=[PolicyRef(id=p.id, version=p.version, hash=p.hash) for p in judge.policies],
        model=model or judge.backend.name,
        strategy=judge.strategy.value,
        mode=judge.mode.value,
        effort=judge.effort.value,
        calibrate=judge.calibrated,
        fallback=judge.fallback,
        on_abstain=judge.on_abstain.value,
        max_chars=judge.max_chars,
        max_tokens=judge.max_tokens,
        readouts=[r.id for r in judge.readouts.values()],
    )


__all__ = [
    "COLUMNS",
    "INVALID_INPUT",
    "BatchJob",
    "Columns",
    "JobSpec",
    "Manifest",
    "Row",
    "Source",
    "expand_inputs",
    "job_spec",
    "load_manifest",
    "manifest_path",
    "read_rows",
]
