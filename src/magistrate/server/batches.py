"""Batch jobs in the service: `/v1/batches`, run by the same `BatchJob` as `magistrate batch`.

Each job has a folder of its own under the batch folder (`batch_dir/<id>/`):
- `batch.json`: the job as created: its owner (the API key's id), the policies with their
  texts (so a later policy version never changes a job), the input files and the options.
  Written once, whole, before the job is acknowledged.
- `input.<ext>`: the uploaded input (absent when the job reads a server-side path).
- `output.jsonl` or `output.parquet`, its manifest and its parts, exactly as `magistrate
  batch` writes them: progress, counts and failures are the manifest's.
- `cancelled` once the job was cancelled, `error.txt` when it stopped on an error the
  manifest could not hold.

The disk is the truth. Every read comes from these files, so every server process answers
alike, and a restarted server finds the jobs that were queued or running and resumes them
(`BatchJob` continues from its manifest: no row lost, none judged twice). In memory there is
only the queue and the running tasks. Where several processes share the folder, a job runs
in one of them at a time (`OUTPUT.lock`); a cancel written by any of them is noticed by the
one running it within `CANCEL_POLL_S`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from magistrate.backends import Backend
from magistrate.batch import BatchJob, Columns, Manifest, expand_inputs, job_spec, load_manifest
from magistrate.batch.inputs import check_columns
from magistrate.batch.manifest import Counts, manifest_path, replace_whole
from magistrate.engine import Judge
from magistrate.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    InputError,
    JobLocked,
    MagistrateError,
    NotFound,
    Overloaded,
    TooLarge,
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
ERROR = "error.txt"
CANCEL_POLL_S = 1.0
"""How often the process running a job looks for a cancel written by another process."""
WRITE_CHUNK = 1 << 20
"""Upload bytes gathered before one write to disk (in a worker thread)."""
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
    """A job's files, read together."""

    record: BatchRecord
    manifest: Manifest | None
    cancelled: bool
    error: str | None


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
        self._running: dict[str, asyncio.Task[Manifest]] = {}
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
        """Stop the workers and the running jobs; each job saves its manifest as it stops,
        and the next start resumes it."""
        tasks = [*self._workers, *self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()

    def _unfinished(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for folder in sorted(self.root.iterdir()):
            if not ID_PATTERN.match(folder.name):
                continue
            try:
                snap = self._snapshot(folder.name)
            except MagistrateError:  # another log's job, or an unreadable folder
                continue
            manifest = snap.manifest
            finished = manifest is not None and manifest.state in ("done", "failed")
            if not (snap.cancelled or snap.error or finished):
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
            Overloaded: `batch_max_jobs` jobs are queued or running in this process.
            Forbidden: A server-side path where the server takes none.
            InputError: No input or two inputs, an empty upload, a path outside the input
                root or matching no file, a first row without the content column.
            TooLarge: An upload over `batch_max_bytes`.
        """
        busy = len(self._waiting) + len(self._running)
        if busy >= self.settings.batch_max_jobs:
            raise Overloaded(
                f"{busy} batch jobs are queued or running, the most this server holds. Retry "
                "later, or cancel a job.",
                retry_after=60,
                code="batch_queue_full",
            )
        if (upload is None) == (request.input_path is None):
            raise InputError(
                "Give the input one way: upload it as the body (Content-Type "
                "application/x-ndjson, options as query parameters), or send JSON with "
                "`input_path`."
            )
        job_id = f"batch_{new_ulid()}"
        folder = self.root / job_id
        await asyncio.to_thread(folder.mkdir, parents=True)
        try:
            if upload is not None:
                fmt = request.input_format or "jsonl"
                path = folder / UPLOAD_NAMES[fmt]
                size = await self._receive(upload, path)
                inputs, shown = [str(path)], ["upload"]
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
            await asyncio.to_thread(self._check, record)
            text = record.model_dump_json(by_alias=True, indent=2)
            await asyncio.to_thread(replace_whole, folder / RECORD, text)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, folder, True)
            raise
        self._enqueue(job_id)
        return self._out(_Snapshot(record, None, False, None))

    async def _receive(self, chunks: AsyncIterator[bytes], path: Path) -> int:
        """Stream an upload to `path` (a temporary name, flushed, renamed); returns its size.

        Raises:
            TooLarge: Over `batch_max_bytes`.
            InputError: Nothing but white space was sent.
        """
        limit = self.settings.batch_max_bytes
        tmp = path.with_name(path.name + ".part")
        handle: BinaryIO = await asyncio.to_thread(open, tmp, "wb")
        size, content, buffer = 0, False, bytearray()
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(
                        f"The upload is over {limit:,} bytes, the most this server takes in one "
                        "batch. Split the input into several jobs."
                    )
                content = content or bool(chunk.strip())
                buffer += chunk
                if len(buffer) >= WRITE_CHUNK:
                    await asyncio.to_thread(handle.write, bytes(buffer))
                    buffer.clear()
            await asyncio.to_thread(_finish, handle, bytes(buffer))
        finally:
            await asyncio.to_thread(handle.close)
        if not content:
            raise InputError(
                "The upload is empty. Send the input as the body: JSON Lines, one item per "
                'line, such as {"id": "1", "text": "..."}.'
            )
        await asyncio.to_thread(os.replace, tmp, path)
        return size

    def _server_side(
        self, input_path: str, input_format: str | None
    ) -> tuple[list[str], list[str], int]:
        """The files a server-side `input_path` names: every one must lie under the input
        root, symbolic links resolved. Messages show paths relative to the root only."""
        root = self.input_root
        if root is None:
            raise Forbidden(
                "This server takes no server-side batch inputs. Upload the input as the body "
                "(Content-Type application/x-ndjson), or start the server with "
                "--batch-input-root DIR."
            )
        wanted = Path(os.path.normpath(root / input_path))
        outside = InputError(
            f"input_path {input_path!r} is outside the server's batch input root; give a "
            "path relative to it."
        )
        if not wanted.is_relative_to(root):
            raise outside
        try:
            sources = expand_inputs([str(wanted)], format=input_format)
        except InputError:
            raise InputError(
                f"input_path {input_path!r} matches no input under the server's batch input "
                "root (give a file, a glob or a folder of .jsonl, .csv, .tsv, .parquet or "
                ".txt files)."
            ) from None
        files, shown, size = [], [], 0
        for source in sources:
            real = Path(source.path).resolve()
            if not real.is_relative_to(root):
                raise outside
            files.append(str(real))
            shown.append(str(real.relative_to(root)))
            size += real.stat().st_size
        return files, shown, size

    def _check(self, record: BatchRecord) -> None:
        """Build the job as a worker will, and read each file's first row: a missing
        content column is a 422 now, not a failed job later."""
        job = self._job(record)
        try:
            check_columns(job.sources, job.columns)
        except ConfigError as exc:
            message = str(exc)
            for full, shown in zip(record.inputs, record.shown_inputs, strict=True):
                message = message.replace(full, shown)
            message = message.replace("--id-col", "id_col").replace("--text-col", "text_col")
            raise InputError(message) from None

    def _job(self, record: BatchRecord) -> BatchJob:
        """The `BatchJob` a record describes (the same one at every start: same spec)."""
        policies = []
        for stored in record.policies:
            policy = parse_policy(stored.text, source=stored.source, default_id=stored.id)
            if policy.hash != stored.hash:  # pragma: no cover - the record was edited
                raise ConfigError(f"Batch {record.id}: policy {stored.id} no longer matches.")
            policies.append(policy)
        request, settings = record.request, self.settings
        judge = Judge(
            policies,
            self.backend,
            strategy=request.strategy,
            mode=request.mode or settings.mode,
            effort=request.effort or settings.effort,
            max_chars=settings.max_chars,
            timeout_s=settings.timeout_s,
            on_abstain=settings.on_abstain,
            concurrency=settings.batch_concurrency,
        )
        sources = expand_inputs(record.inputs, format=request.input_format)
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
            keep_content=settings.log_content,
            max_errors=request.max_errors,
        )

    def _output(self, record: BatchRecord) -> Path:
        return self.root / record.id / f"output.{record.request.output_format}"

    # -- running --------------------------------------------------------------------------

    def _enqueue(self, job_id: str) -> None:
        if self._queue is None:
            raise RuntimeError("BatchJobs.start() was not awaited")  # pragma: no cover
        if job_id in self._waiting:  # still queued (a retry right after a cancel)
            return
        self._waiting.add(job_id)
        self._queue.put_nowait(job_id)

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            job_id = await self._queue.get()
            self._waiting.discard(job_id)
            try:
                await self._run(job_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a worker never dies of one job
                log.error("batch job %s stopped on an unexpected %s", job_id, type(exc).__name__)
                message = f"Internal error ({type(exc).__name__}); POST .../retry resumes the job."
                await asyncio.to_thread(self._fail, job_id, message)

    async def _run(self, job_id: str) -> None:
        folder = self.root / job_id
        snap = await asyncio.to_thread(self._snapshot, job_id)
        if snap.cancelled or snap.error:
            return
        job = await asyncio.to_thread(self._job, snap.record)
        task = asyncio.create_task(job.run(), name=f"magistrate-{job_id}")
        self._running[job_id] = task
        watcher = asyncio.create_task(self._watch(folder / CANCELLED, task))
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the server is stopping: the job resumes at the next start
        except JobLocked:
            pass  # another server process runs it
        except MagistrateError as exc:
            await asyncio.to_thread(self._fail, job_id, str(exc))
        finally:
            watcher.cancel()
            self._running.pop(job_id, None)

    async def _watch(self, marker: Path, task: asyncio.Task[Manifest]) -> None:
        """Cancel `task` once `marker` exists (a cancel from any server process)."""
        while not task.done():
            await asyncio.sleep(CANCEL_POLL_S)
            if await asyncio.to_thread(marker.exists):
                task.cancel()
                return

    def _fail(self, job_id: str, message: str) -> None:
        folder = self.root / job_id
        if folder.is_dir():
            replace_whole(folder / ERROR, message)

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
        except (FileNotFoundError, NotADirectoryError):
            raise missing from None
        except ValidationError:
            raise missing from None
        if record.database != self.store.location:
            raise missing
        manifest = load_manifest(manifest_path(self._output(record)))
        try:
            error: str | None = (folder / ERROR).read_text("utf-8")
        except FileNotFoundError:
            error = None
        return _Snapshot(record, manifest, (folder / CANCELLED).exists(), error)

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
        if job_id in self._running:
            return "running"
        if job_id in self._waiting:
            return "queued"
        if snap.error is not None:
            return "failed"
        # Another process's job (or one a stopped server left, queued again at its start).
        return manifest.state if manifest is not None else "queued"

    def _out(self, snap: _Snapshot) -> BatchOut:
        record, manifest = snap.record, snap.manifest
        state = self._state(snap)
        counts = manifest.counts if manifest is not None else Counts()
        error = snap.error
        if error is None and manifest is not None and state == "failed":
            error = manifest.error
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
                BatchFailure(
                    row=f.row,
                    item_id=f.item_id,
                    policy_id=f.policy_id,
                    status=f.status,
                    reason=f.reason,
                )
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
                except MagistrateError:
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
        """Cancel a queued or running job (what it committed stays; retry resumes it).

        Raises:
            NotFound: As `get`.
            Conflict: The job is already done.
        """
        snap = await self._visible(job_id, caller)
        if self._state(snap) == "done":
            raise Conflict(
                f"Batch {job_id} is done; there is nothing to cancel.", code="batch_done"
            )
        marker = self.root / job_id / CANCELLED
        await asyncio.to_thread(marker.touch)
        task = self._running.get(job_id)
        if task is not None:  # stop it now; it saves its manifest as it stops
            task.cancel()
            await asyncio.wait({task}, timeout=10)
        return self._out(await asyncio.to_thread(self._snapshot, job_id))

    async def retry(self, job_id: str, caller: ApiKey) -> BatchOut:
        """Queue a failed or cancelled job again; it resumes from its last committed row.

        Raises:
            NotFound: As `get`.
            Conflict: The job is queued, running or done.
            Overloaded: As `create`.
        """
        snap = await self._visible(job_id, caller)
        state = self._state(snap)
        if state not in ("failed", "cancelled"):
            raise Conflict(
                f"Batch {job_id} is {state}; only a failed or cancelled job can be retried.",
                code="batch_not_stopped",
            )
        if len(self._waiting) + len(self._running) >= self.settings.batch_max_jobs:
            raise Overloaded(
                "The batch queue is full; retry later.", retry_after=60, code="batch_queue_full"
            )
        folder = self.root / job_id

        def clear() -> None:
            (folder / CANCELLED).unlink(missing_ok=True)
            (folder / ERROR).unlink(missing_ok=True)

        await asyncio.to_thread(clear)
        self._enqueue(job_id)
        return self._out(await asyncio.to_thread(self._snapshot, job_id))

    async def delete(self, job_id: str, caller: ApiKey) -> None:
        """Remove a stopped job's files (its upload, output and manifest); its decisions
        stay in the log.

        Raises:
            NotFound: As `get`.
            Conflict: The job is queued or running (cancel it first).
        """
        snap = await self._visible(job_id, caller)
        state = self._state(snap)
        if state in ("queued", "running"):
            raise Conflict(
                f"Batch {job_id} is {state}; cancel it before deleting it.",
                code="batch_not_stopped",
            )
        await asyncio.to_thread(shutil.rmtree, self.root / job_id)


def _may_see(caller: ApiKey, record: BatchRecord) -> bool:
    return record.owner == caller.id or "admin" in caller.scopes


def _finish(handle: BinaryIO, tail: bytes) -> None:
    handle.write(tail)
    handle.flush()
    os.fsync(handle.fileno())


__all__ = ["BatchJobs", "BatchRecord", "default_batch_dir"]
