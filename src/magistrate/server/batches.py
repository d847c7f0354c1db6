"""Batch jobs in the service: `/v1/batches`, run by the same `BatchJob` as `magistrate batch`.

Each job has a folder of its own under the batch folder (`batch_dir/<id>/`):
- `batch.json`: the job as created: its owner (the API key's id), the policies with their
  texts (so a later policy version never changes a job), the model and judge settings, the
  input files and the options. Written once, whole; a new job's folder is assembled under
  `.incoming/` and renamed into place, so a crash never leaves half a job.
- `input.<ext>`: the uploaded input (absent when the job reads a server-side path).
- `output.jsonl` or `output.parquet`, its manifest, parts and lock, exactly as `magistrate
  batch` writes them: progress, counts and failures are the manifest's.
- Markers: `cancelled` once cancelled, `queued` while a retry waits, `error.txt` when the
  job stopped on an error the manifest could not hold.

State is read from these files, plus what this process is doing itself (its queue and its
running jobs); a job another process runs shows as running while that process holds the
job's lock. A restarted server finds the jobs that were queued or running and resumes them:
`BatchJob` continues from its manifest, so no row is lost and none is committed or recorded
twice. Where several processes share the folder (`--workers N`), a job runs in one of them
at a time (the lock; the others try again every `LOCKED_RETRY_S`, so one takes over if the
runner dies), and a cancel written by any of them reaches the runner within `CANCEL_POLL_S`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from magistrate.backends import Backend
from magistrate.batch import (
    BatchJob,
    Columns,
    Manifest,
    expand_inputs,
    job_spec,
    load_manifest,
    read_rows,
)
from magistrate.batch.inputs import check_columns
from magistrate.batch.job import job_lock
from magistrate.batch.manifest import Counts, manifest_path, replace_whole
from magistrate.decision import OnAbstain
from magistrate.engine import Judge
from magistrate.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    InputError,
    JobLocked,
    MagistrateError,
    MissingDependency,
    NotFound,
    Overloaded,
    TooLarge,
    Unavailable,
)
from magistrate.ids import new_ulid
from magistrate.policy import Policy, parse_policy
from magistrate.server.schemas import (
    BatchCounts,
    BatchCreate,
    BatchFailure,
    BatchInput,
    BatchList,
    BatchOut,
    BatchState,
    PolicyRef,
    ServerSettings,
)
from magistrate.store import Store
from magistrate.store.keys import ApiKey

log = logging.getLogger("magistrate.server")

RECORD = "batch.json"
CANCELLED = "cancelled"
QUEUED = "queued"
ERROR = "error.txt"
INCOMING = ".incoming"
TRASH = ".trash"
CANCEL_POLL_S = 1.0
"""How often the process running a job looks for a cancel written by another process."""
LOCKED_RETRY_S = 5.0
"""How long a process waits before trying again a job another process holds."""
WRITE_CHUNK = 1 << 20
"""Upload bytes gathered before one write to disk (in a worker thread)."""
PROBE_ROWS = 20
"""A new job's first rows that must not all be unreadable (a gzip or CSV body sent as JSON
Lines is refused at once instead of becoming a job of `invalid_input` rows)."""
ID_PATTERN = re.compile(r"^batch_[0-9A-HJKMNP-TV-Z]{26}$")
UPLOAD_NAMES = {
    "jsonl": "input.jsonl",
    "csv": "input.csv",
    "tsv": "input.tsv",
    "parquet": "input.parquet",
    "text": "input.txt",
}
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}


BATCH_DIR_ENV = "MAGISTRATE_BATCH_DIR"


def default_batch_dir() -> Path:
    """`$MAGISTRATE_BATCH_DIR`, else `batches/` in the user data folder (beside the default
    decision log)."""
    if folder := os.environ.get(BATCH_DIR_ENV):
        return Path(folder)
    return platformdirs.user_data_path("magistrate", appauthor=False) / "batches"


class StoredPolicy(BaseModel):
    """A policy as a job keeps it: its whole text, so the job never depends on what the
    catalog holds later."""

    model_config = ConfigDict(extra="forbid")
    id: str
    version: str
    hash: str
    source: str | None
    text: str


class BatchRecord(BaseModel):
    """What `batch.json` holds: the job as created (never changed afterwards)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_: Literal["magistrate.service-batch/1"] = Field(
        default="magistrate.service-batch/1", alias="schema"
    )
    id: str
    owner: str
    """The id of the API key that created the job (`anonymous` without keys)."""
    created_at: datetime
    database: str
    """The log the job records into; a server on another log does not see the job."""
    model: str
    """The server's model string when the job was created: it resumes only on that model."""
    max_chars: int
    on_abstain: OnAbstain
    timeout_s: float | None
    request: BatchCreate
    """The request, with mode and effort filled in from the server's defaults."""
    policies: list[StoredPolicy]
    inputs: list[str]
    """The input files, absolute, as expanded when the job was created."""
    shown_inputs: list[str]
    """The inputs as callers see them (`upload`, or paths under the input root)."""
    input_bytes: int
    upload: bool


@dataclass(frozen=True)
class _Snapshot:
    """A job's files, read together (and whether another process holds its lock)."""

    record: BatchRecord
    manifest: Manifest | None
    cancelled: bool
    queued: bool
    error: str | None
    locked: bool


class BatchJobs:
    """The service's batch jobs: created, queued, run, cancelled, retried, read, deleted.

    Args:
        settings: The server's settings (batch folder, input root, limits).
        store: The decision log every job records into.
        backend: The backend every job judges with (shared with interactive requests).
    """

    def __init__(self, settings: ServerSettings, store: Store, backend: Backend) -> None:
        self.settings = settings
        self.store = store
        self.backend = backend
        self.root = Path(settings.batch_dir) if settings.batch_dir else default_batch_dir()
        root = settings.batch_input_root
        self.input_root = Path(root).resolve() if root else None
        self._queue: asyncio.Queue[str] | None = None
        self._waiting: set[str] = set()
        self._active: dict[str, asyncio.Task[Manifest] | None] = {}
        """Jobs this process took from the queue: None while starting, then the task."""
        self._reserved = 0
        """Jobs being created (their upload still arriving) in this process."""
        self._later: set[asyncio.TimerHandle] = set()
        self._workers: list[asyncio.Task[None]] = []

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the workers, and queue every job a previous server left unfinished (oldest
        first): queued ones, and running ones, which resume from their manifests."""
        self._queue = asyncio.Queue()
        self._workers = [
            asyncio.create_task(self._work(), name=f"magistrate-batch-{n}")
            for n in range(self.settings.batch_workers)
        ]
        for job_id in await asyncio.to_thread(self._unfinished):
            self._enqueue(job_id)

    async def aclose(self) -> None:
        """Stop the workers and the running jobs; each job commits the rows it finished as
        it stops, and the next start resumes it."""
        for handle in self._later:
            handle.cancel()
        tasks = [*self._workers, *(t for t in self._active.values() if t is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()

    def _unfinished(self) -> list[str]:
        """Jobs to queue at start; also clears what a crash left (half-created jobs, half-
        deleted ones)."""
        if not self.root.is_dir():
            return []
        for leftover in (self.root / INCOMING, self.root / TRASH):
            shutil.rmtree(leftover, ignore_errors=True)
        found = []
        for folder in sorted(self.root.iterdir()):
            if not ID_PATTERN.match(folder.name):
                continue
            try:
                snap = self._snapshot(folder.name)
            except Exception:  # another log's job, or an unreadable folder
                continue
            manifest = snap.manifest
            finished = manifest is not None and manifest.state in ("done", "failed")
            if snap.queued or not (snap.cancelled or snap.error or finished):
                found.append(folder.name)
        return found

    # -- creating -------------------------------------------------------------------------

    async def create(
        self,
        request: BatchCreate,
        policies: Sequence[Policy],
        caller: ApiKey,
        upload: AsyncIterator[bytes] | None = None,
    ) -> BatchOut:
        """Check, store and queue a new job; the answer is its state (queued).

        Args:
            request: The job's options; `input_path` names a server-side input.
            policies: The policies it names, resolved by the service.
            caller: Who creates it (only they, and admin keys, see it afterwards).
            upload: The uploaded input's bytes, streamed to disk as they arrive.

        Raises:
            Overloaded: `batch_max_jobs` jobs are queued, running or arriving here.
            Forbidden: A server-side path where the server takes none.
            InputError: No input or two inputs, an empty or unreadable upload, a path
                outside the input root or matching no file, a first row without the
                content column.
            TooLarge: An upload over `batch_max_bytes`.
            MissingDependency: Parquet without pyarrow installed.
            Unavailable: The upload could not be stored (disk full, permissions).
        """
        if (upload is None) == (request.input_path is None):
            raise InputError(
                "Give the input one way: upload it as the body (Content-Type "
                "application/x-ndjson, options as query parameters), or send JSON with "
                "`input_path`."
            )
        if "parquet" in (request.input_format, request.output_format):
            _need_pyarrow()
        self._reserve()
        try:
            return await self._create(request, policies, caller, upload)
        finally:
            self._reserved -= 1

    def _reserve(self) -> None:
        self._check_room()
        self._reserved += 1

    def _check_room(self) -> None:
        """Raises Overloaded when `batch_max_jobs` jobs are queued, running or arriving."""
        busy = len(self._waiting) + len(self._active) + self._reserved
        if busy >= self.settings.batch_max_jobs:
            raise Overloaded(
                f"{busy} batch jobs are queued, running or arriving, the most this server "
                "holds. Retry later, or cancel a job.",
                retry_after=60,
                code="batch_queue_full",
            )

    async def _create(
        self,
        request: BatchCreate,
        policies: Sequence[Policy],
        caller: ApiKey,
        upload: AsyncIterator[bytes] | None,
    ) -> BatchOut:
        job_id = f"batch_{new_ulid()}"
        staging = self.root / INCOMING / job_id
        await asyncio.to_thread(staging.mkdir, parents=True)
        try:
            if upload is not None:
                fmt = request.input_format or "jsonl"
                name = UPLOAD_NAMES[fmt]
                size = await self._receive(upload, staging / name)
                inputs, shown = [str(self.root / job_id / name)], ["upload"]
            else:
                assert request.input_path is not None
                inputs, shown, size = await asyncio.to_thread(
                    self._server_side, request.input_path, request.input_format
                )
            record = BatchRecord(
                id=job_id,
                owner=caller.id,
                created_at=datetime.now(UTC),
                database=self.store.location,
                model=self.settings.model,
                max_chars=self.settings.max_chars,
                on_abstain=self.settings.on_abstain,
                timeout_s=self.settings.timeout_s,
                request=request.model_copy(
                    update={
                        "mode": request.mode or self.settings.mode,
                        "effort": request.effort or self.settings.effort,
                    }
                ),
                policies=[
                    StoredPolicy(
                        id=p.id, version=p.version, hash=p.hash, source=p.source, text=p.text
                    )
                    for p in policies
                ],
                inputs=inputs,
                shown_inputs=shown,
                input_bytes=size,
                upload=upload is not None,
            )
            await asyncio.to_thread(self._check, record, staging)
            text = record.model_dump_json(by_alias=True, indent=2)
            await asyncio.to_thread(replace_whole, staging / RECORD, text)
            await asyncio.to_thread(os.replace, staging, self.root / job_id)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, staging, True)
            raise
        self._enqueue(job_id)
        return self._out(_Snapshot(record, None, False, False, None, False))

    async def _receive(self, chunks: AsyncIterator[bytes], path: Path) -> int:
        """Stream an upload to `path` (a temporary name, flushed, renamed); returns its size.

        Raises:
            TooLarge: Over `batch_max_bytes`.
            InputError: Nothing but white space was sent.
            Unavailable: The disk refused it.
        """
        limit = self.settings.batch_max_bytes
        tmp = path.with_name(path.name + ".part")
        size, content, buffer = 0, False, bytearray()
        try:
            handle: BinaryIO = await asyncio.to_thread(open, tmp, "wb")
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(
                            f"The upload is over {limit:,} bytes, the most this server takes "
                            "in one batch. Split the input into several jobs."
                        )
                    content = content or bool(chunk.strip())
                    buffer += chunk
                    if len(buffer) >= WRITE_CHUNK:
                        await asyncio.to_thread(handle.write, bytes(buffer))
                        buffer.clear()
                await asyncio.to_thread(_finish, handle, bytes(buffer))
            finally:
                await asyncio.to_thread(handle.close)
            if content:
                await asyncio.to_thread(os.replace, tmp, path)
        except OSError as exc:
            raise Unavailable(
                f"The server could not store the upload ({exc.strerror or type(exc).__name__})"
                "; try again later.",
                code="batch_storage",
            ) from None
        if not content:
            raise InputError(
                "The upload is empty. Send the input as the body: JSON Lines, one item per "
                'line, such as {"id": "1", "text": "..."}.'
            )
        return size

    def _server_side(
        self, input_path: str, input_format: str | None
    ) -> tuple[list[str], list[str], int]:
        """The files a server-side `input_path` names: every one must lie under the input
        root (symbolic links resolved) and outside the batch folder. Messages show paths
        relative to the root only."""
        root = self.input_root
        if root is None:
            raise Forbidden(
                "This server takes no server-side batch inputs. Upload the input as the body "
                "(Content-Type application/x-ndjson), or start the server with "
                "--batch-input-root DIR."
            )
        jobs = self.root.resolve()
        outside = InputError(
            f"input_path {input_path!r} is outside the server's batch input root; give a "
            "path relative to it."
        )
        wanted = Path(os.path.normpath(root / input_path))
        if not wanted.is_relative_to(root) or wanted.is_relative_to(jobs):
            raise outside
        try:
            sources = expand_inputs([str(wanted)], format=input_format)
            files, shown, size = [], [], 0
            for source in sources:
                real = Path(source.path).resolve()
                if not real.is_relative_to(root) or real.is_relative_to(jobs):
                    raise outside
                files.append(str(real))
                shown.append(str(real.relative_to(root)))
                size += real.stat().st_size
        except (InputError, OSError) as exc:
            if exc is outside:
                raise
            raise InputError(
                f"input_path {input_path!r} matches no readable input under the server's "
                "batch input root (give a file, a glob or a folder of .jsonl, .csv, .tsv, "
                ".parquet or .txt files)."
            ) from None
        return files, shown, size

    def _check(self, record: BatchRecord, folder: Path) -> None:
        """Build the job as a worker will, and read its first rows: a missing content
        column or an unreadable input is a 422 now, not a failed job later."""
        try:
            job = self._job(record, folder=folder)
            check_columns(job.sources, job.columns)
            first = list(islice(read_rows(job.sources, job.columns), PROBE_ROWS))
        except MagistrateError as exc:
            raise InputError(self._for_caller(str(exc), record)) from None
        if first and all(row.item is None for row in first):
            raise InputError(
                f"None of the first {len(first)} rows can be judged ({first[0].problem}). "
                "Check the format: JSON Lines need one JSON object per line (not gzipped); "
                "set input_format, or the Content-Type, to what the input is."
            )

    def _for_caller(self, message: str, record: BatchRecord) -> str:
        """A message with server paths replaced by the caller's names, CLI flags by fields."""
        for full, shown in zip(record.inputs, record.shown_inputs, strict=True):
            message = message.replace(full, shown)
        message = message.replace(str(self.root / INCOMING / record.id), "")
        for flag, name in (("--id-col", "id_col"), ("--text-col", "text_col")):
            message = message.replace(flag, name)
        return message

    def _job(self, record: BatchRecord, *, folder: Path | None = None) -> BatchJob:
        """The `BatchJob` a record describes: the same at every start (same spec), built
        from the record's own settings.

        Raises:
            ConfigError: The server now runs another model than the job was made for.
        """
        if record.model != self.settings.model:
            raise ConfigError(
                f"Batch {record.id} was created for model {record.model!r}; this server runs "
                f"{self.settings.model!r}. Resume it on a server started with --model "
                f"{record.model} (POST .../retry there), or DELETE it."
            )
        policies = []
        for stored in record.policies:
            policy = parse_policy(stored.text, source=stored.source, default_id=stored.id)
            if policy.hash != stored.hash:  # pragma: no cover - the record was edited
                raise ConfigError(f"Batch {record.id}: policy {stored.id} no longer matches.")
            policies.append(policy)
        request = record.request
        judge = Judge(
            policies,
            self.backend,
            strategy=request.strategy,
            mode=request.mode or self.settings.mode,
            effort=request.effort or self.settings.effort,
            max_chars=record.max_chars,
            timeout_s=record.timeout_s,
            on_abstain=record.on_abstain,
            concurrency=self.settings.batch_concurrency,
        )
        paths = record.inputs
        if folder is not None and record.upload:  # still being created
            paths = [str(folder / Path(p).name) for p in paths]
        found = expand_inputs(paths, format=request.input_format)
        sources = [
            replace(source, label=shown)
            for source, shown in zip(found, record.shown_inputs, strict=True)
        ]
        columns = Columns(text=request.text_col, id=request.id_col)
        spec = job_spec(
            sources, judge, columns=columns, input_format=request.input_format, model=record.model
        )
        return BatchJob(
            sources,
            self._output(record),
            judge,
            spec,
            store=self.store,
            name=record.id,
            columns=columns,
            keep_content=self.settings.log_content,
            max_errors=request.max_errors,
        )

    def _output(self, record: BatchRecord) -> Path:
        return self.root / record.id / f"output.{record.request.output_format}"

    # -- running --------------------------------------------------------------------------

    def _enqueue(self, job_id: str) -> None:
        if self._queue is None:
            raise RuntimeError("BatchJobs.start() was not awaited")  # pragma: no cover
        if job_id in self._waiting or job_id in self._active:
            return
        self._waiting.add(job_id)
        self._queue.put_nowait(job_id)

    def _retry_later(self, job_id: str) -> None:
        loop = asyncio.get_running_loop()

        def again() -> None:
            self._later.discard(handle)
            self._enqueue(job_id)

        handle = loop.call_later(LOCKED_RETRY_S, again)
        self._later.add(handle)

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            job_id = await self._queue.get()
            if job_id not in self._waiting:
                continue
            self._active[job_id] = None
            self._waiting.discard(job_id)
            try:
                await self._run(job_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a worker never dies of one job
                log.error("batch job %s stopped on an unexpected %s", job_id, type(exc).__name__)
                message = f"Internal error ({type(exc).__name__}); POST .../retry resumes the job."
                await asyncio.to_thread(self._fail, job_id, message)
            finally:
                self._active.pop(job_id, None)

    async def _run(self, job_id: str) -> None:
        folder = self.root / job_id
        try:
            snap = await asyncio.to_thread(self._snapshot, job_id)
        except NotFound:
            return  # deleted while it waited
        if snap.cancelled or snap.error:
            return
        try:
            job = await asyncio.to_thread(self._job, snap.record)
        except MagistrateError as exc:
            await asyncio.to_thread(self._fail, job_id, str(exc))
            return
        await asyncio.to_thread((folder / QUEUED).unlink, missing_ok=True)
        task = asyncio.create_task(job.run(), name=f"magistrate-{job_id}")
        self._active[job_id] = task
        watcher = asyncio.create_task(self._watch(folder / CANCELLED, task))
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the server is stopping: the job resumes at the next start
        except JobLocked:
            self._retry_later(job_id)  # another process runs it; take over if it dies
        except MagistrateError as exc:
            await asyncio.to_thread(self._fail, job_id, self._for_caller(str(exc), snap.record))
        finally:
            watcher.cancel()

    async def _watch(self, marker: Path, task: asyncio.Task[Manifest]) -> None:
        """Cancel `task` once `marker` exists (a cancel from any server process)."""
        while not task.done():
            if await asyncio.to_thread(marker.exists):
                task.cancel()
                return
            await asyncio.sleep(CANCEL_POLL_S)

    def _fail(self, job_id: str, message: str) -> None:
        folder = self.root / job_id
        try:
            if (folder / RECORD).is_file():  # not for a job deleted meanwhile
                replace_whole(folder / ERROR, message)
        except OSError as exc:
            log.error("batch job %s: its error could not be saved (%s)", job_id, exc.strerror)

    # -- reading --------------------------------------------------------------------------

    def _snapshot(self, job_id: str) -> _Snapshot:
        """A job's files.

        Raises:
            NotFound: No such job (or one that records into another log).
            InputError: Its manifest cannot be read.
        """
        missing = NotFound(f"No batch job {job_id!r}. GET /v1/batches lists yours.")
        if not ID_PATTERN.match(job_id):
            raise missing
        folder = self.root / job_id
        try:
            record = BatchRecord.model_validate_json((folder / RECORD).read_bytes())
        except (OSError, ValidationError):
            raise missing from None
        if record.database != self.store.location:
            raise missing
        output = self._output(record)
        manifest = load_manifest(manifest_path(output))
        try:
            error: str | None = (folder / ERROR).read_text("utf-8")
        except FileNotFoundError:
            error = None
        running = manifest is not None and manifest.state == "running"
        locked = running and job_id not in self._active and _held(output)
        return _Snapshot(
            record,
            manifest,
            cancelled=(folder / CANCELLED).exists(),
            queued=(folder / QUEUED).exists(),
            error=error,
            locked=locked,
        )

    async def _visible(self, job_id: str, caller: ApiKey) -> _Snapshot:
        snap = await asyncio.to_thread(self._snapshot, job_id)
        if not _may_see(caller, snap.record):
            raise NotFound(f"No batch job {job_id!r}. GET /v1/batches lists yours.")
        return snap

    def _state(self, snap: _Snapshot) -> BatchState:
        manifest, job_id = snap.manifest, snap.record.id
        if manifest is not None and manifest.state == "done":
            return "done"
        if snap.cancelled:
            return "cancelled"
        if job_id in self._active or snap.locked:
            return "running"
        if job_id in self._waiting or snap.queued:
            return "queued"
        if snap.error is not None or (manifest is not None and manifest.state == "failed"):
            return "failed"
        # New, or stopped with its server: it runs (or resumes) when a server takes it.
        return "queued"

    def _busy(self, snap: _Snapshot) -> bool:
        """Whether some process has the job queued or running (cancelled ones included,
        while they stop)."""
        job_id = snap.record.id
        return job_id in self._active or job_id in self._waiting or snap.locked

    def _out(self, snap: _Snapshot) -> BatchOut:
        record, manifest = snap.record, snap.manifest
        state = self._state(snap)
        counts = manifest.counts if manifest is not None else Counts()
        error = snap.error
        if error is None and manifest is not None and state == "failed":
            error = self._for_caller(manifest.error or "", record) or None
        return BatchOut(
            id=record.id,
            name=record.request.name,
            state=state,
            created_at=record.created_at.isoformat(),
            updated_at=manifest.updated_at.isoformat() if manifest else None,
            finished_at=(
                manifest.finished_at.isoformat() if manifest and manifest.finished_at else None
            ),
            model=record.model,
            mode=record.request.mode or self.settings.mode,
            effort=record.request.effort or self.settings.effort,
            strategy=record.request.strategy,
            policies=[PolicyRef(id=p.id, version=p.version, hash=p.hash) for p in record.policies],
            input=BatchInput(
                kind="upload" if record.upload else "path",
                files=record.shown_inputs,
                bytes=record.input_bytes,
            ),
            output_format=record.request.output_format,
            rows_total=manifest.rows_total if manifest else None,
            counts=BatchCounts(**counts.model_dump()),
            attempts=manifest.attempts if manifest else 0,
            elapsed_s=round(manifest.elapsed_s, 3) if manifest else 0.0,
            failure_kinds=dict(manifest.failure_kinds) if manifest else {},
            failures=[
                BatchFailure(**f.model_dump(exclude={"source"}))
                for f in (manifest.failures if manifest else ())
            ],
            error=error,
            run_id=manifest.run_id if manifest else None,
            results_url=f"/v1/batches/{record.id}/results" if state == "done" else None,
        )

    async def get(self, job_id: str, caller: ApiKey) -> BatchOut:
        """A job's state, counts and first failures.

        Raises:
            NotFound: No such job, or the caller's key did not create it (and is not admin).
        """
        return self._out(await self._visible(job_id, caller))

    async def list_jobs(self, caller: ApiKey, *, limit: int, before: str | None) -> BatchList:
        """The caller's jobs (every job for admin keys), newest first."""

        def read() -> tuple[list[_Snapshot], bool]:
            if not self.root.is_dir():
                return [], False
            names = sorted(
                (p.name for p in self.root.iterdir() if ID_PATTERN.match(p.name)), reverse=True
            )
            found: list[_Snapshot] = []
            for name in names:
                if before is not None and name >= before:
                    continue
                try:
                    snap = self._snapshot(name)
                except Exception:  # one unreadable job never hides the rest
                    continue
                if _may_see(caller, snap.record):
                    if len(found) == limit:
                        return found, True
                    found.append(snap)
            return found, False

        snaps, more = await asyncio.to_thread(read)
        return BatchList(data=[self._out(s) for s in snaps], has_more=more)

    async def results(self, job_id: str, caller: ApiKey) -> tuple[Path, str]:
        """The finished output file and its media type.

        Raises:
            NotFound: As `get`.
            Conflict: The job is not done.
        """
        snap = await self._visible(job_id, caller)
        state = self._state(snap)
        if state != "done":
            raise Conflict(
                f"Batch {job_id} is {state}; its results are ready once it is done (GET "
                f"/v1/batches/{job_id} shows its progress).",
                code="batch_not_done",
            )
        fmt = snap.record.request.output_format
        return self._output(snap.record), MEDIA_TYPES[fmt]

    # -- changing -------------------------------------------------------------------------

    async def cancel(self, job_id: str, caller: ApiKey) -> BatchOut:
        """Cancel a queued or running job: it commits the rows it finished and stops;
        retry resumes it.

        Raises:
            NotFound: As `get`.
            Conflict: The job is already done.
        """
        snap = await self._visible(job_id, caller)
        if self._state(snap) == "done":
            raise Conflict(
                f"Batch {job_id} is done; there is nothing to cancel.", code="batch_done"
            )
        folder = self.root / job_id

        def mark() -> None:
            (folder / CANCELLED).touch()
            (folder / QUEUED).unlink(missing_ok=True)

        await asyncio.to_thread(mark)
        self._waiting.discard(job_id)  # the worker skips it
        task = self._active.get(job_id)
        if task is not None:  # stop it now (another process's notices the marker)
            task.cancel()
            await asyncio.wait({task}, timeout=10)
        return self._out(await asyncio.to_thread(self._snapshot, job_id))

    async def retry(self, job_id: str, caller: ApiKey) -> BatchOut:
        """Queue a failed or cancelled job again; it resumes after its last committed row
        (here, or at the next start if this server stops first).

        Raises:
            NotFound: As `get`.
            Conflict: The job is queued, running (or still stopping) or done.
            Overloaded: As `create`.
        """
        snap = await self._visible(job_id, caller)
        state = self._state(snap)
        if state not in ("failed", "cancelled") or self._busy(snap):
            doing = "still stopping" if state == "cancelled" else state
            raise Conflict(
                f"Batch {job_id} is {doing}; only a stopped failed or cancelled job can be "
                "retried.",
                code="batch_not_stopped",
            )
        self._check_room()
        folder = self.root / job_id

        def requeue() -> None:
            (folder / QUEUED).touch()
            (folder / CANCELLED).unlink(missing_ok=True)
            (folder / ERROR).unlink(missing_ok=True)

        await asyncio.to_thread(requeue)
        self._enqueue(job_id)
        return self._out(await asyncio.to_thread(self._snapshot, job_id))

    async def delete(self, job_id: str, caller: ApiKey) -> None:
        """Remove a stopped job's files (its upload, output and manifest); its decisions
        stay in the log.

        Raises:
            NotFound: As `get`.
            Conflict: The job is queued or running, or still stopping (cancel it first).
        """
        snap = await self._visible(job_id, caller)
        state = self._state(snap)
        if state in ("queued", "running") or self._busy(snap):
            raise Conflict(
                f"Batch {job_id} is {state}{' (stopping)' if state == 'cancelled' else ''}; "
                "cancel it and wait for it to stop before deleting it.",
                code="batch_not_stopped",
            )
        output = self._output(snap.record)

        def remove() -> None:
            # Holding the job's lock while the folder moves away: no process starts it now.
            try:
                with job_lock(output, create=False):
                    trash = self.root / TRASH / f"{job_id}-{new_ulid()}"
                    trash.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(self.root / job_id, trash)
            except JobLocked:
                raise Conflict(
                    f"Batch {job_id} is running in another server process; cancel it and "
                    "wait for it to stop before deleting it.",
                    code="batch_not_stopped",
                ) from None
            shutil.rmtree(trash, ignore_errors=True)

        await asyncio.to_thread(remove)


def _held(output: Path) -> bool:
    """Whether some process holds the job's lock (runs it) right now."""
    try:
        with job_lock(output, create=False):
            return False
    except JobLocked:
        return True


def _may_see(caller: ApiKey, record: BatchRecord) -> bool:
    return record.owner == caller.id or "admin" in caller.scopes


def _need_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise MissingDependency(
            "Parquet needs pyarrow, which this server lacks: install 'magistrate[parquet]', "
            "or use JSON Lines."
        ) from None


def _finish(handle: BinaryIO, tail: bytes) -> None:
    handle.write(tail)
    handle.flush()
    os.fsync(handle.fileno())


__all__ = ["BatchJobs", "BatchRecord", "default_batch_dir"]
