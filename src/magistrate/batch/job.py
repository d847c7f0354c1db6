"""A batch job: a streamed input judged through `Judge.judge_many`, exactly once, resumable.

How exactly-once holds (see docs/batch.md for the whole story):
- Output rows are committed in parts. A part is written whole and renamed into place, then
  the manifest is replaced whole with the part added and the count of input rows it covers
  (and a running hash of their ids and contents). Whatever the moment of a crash, the
  manifest names exactly the committed parts; files it does not name are removed on resume,
  and the input is read again from the first uncommitted row (the hash must match, or the
  input changed and the job refuses to continue).
- Decisions reach the log before the output rows that show them (`BufferedRecorder.aflush`
  runs before each part is written), tagged with the job's `run_id`. On resume the job looks
  up its own decisions by item hash first: an item decided before the crash but not yet
  committed is answered from the log, never judged a second time.
- Identical content inside a job is judged once: an item identical to one in flight shares
  its call (`share_identical`), one judged earlier is answered from a memo or the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import shutil
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, cast

from magistrate.batch.inputs import (
    Columns,
    Row,
    Source,
    check_columns,
    count_rows,
    input_hash,
    read_rows,
)
from magistrate.batch.manifest import (
    MAX_FAILURES_KEPT,
    Counts,
    Failure,
    JobSpec,
    Manifest,
    Part,
    load_manifest,
    manifest_path,
    parts_dir,
    save_manifest,
)
from magistrate.batch.output import (
    INVALID_INPUT,
    assemble,
    decision_row,
    invalid_row,
    output_format,
    write_part,
)
from magistrate.decision import Decision
from magistrate.engine import ErrorBudget, Judge, Judgement
from magistrate.errors import ConfigError, ErrorBudgetExceeded, InputError, JobLocked
from magistrate.ids import new_ulid
from magistrate.item import Item
from magistrate.store import BufferedRecorder, Store

LOOKUP_CHUNK = 256
"""Input rows read, and looked up in the decision log in one query, at a time."""
MEMO_SIZE = 4096
"""Recent contents whose decisions a job keeps in memory for identical later rows. Older
ones are found in the log: the recorder writes every `FLUSH_EVERY` calls, far fewer than
this, so a content has reached the log before the memo forgets it."""
FLUSH_EVERY = 512
assert FLUSH_EVERY < MEMO_SIZE

Progress = Callable[[int, int | None], None]
"""Called with (input rows done, input rows in all or None) as rows complete."""


class _Refused(Item):
    """A row that cannot be judged, carried through the fan-out in its place so that output
    stays in input order; the lookup answers it, so no call is ever made for it."""


@dataclass(slots=True)
class _Tally:
    """The open part's counts, as plain integers (added to the manifest's `Counts` at each
    commit; a pydantic model's attribute writes cost several times more per row)."""

    rows: int = 0
    output_rows: int = 0
    flagged: int = 0
    violations: int = 0
    no_verdict: int = 0
    invalid: int = 0
    decisions_made: int = 0
    decisions_cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class _Open:
    """What the current, not yet committed part holds."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    rows_in: int = 0
    first_row: int = 0
    input_hash: str = ""
    counts: _Tally = field(default_factory=lambda: _Tally())
    failures: list[Failure] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    since: float = field(default_factory=time.monotonic)


class BatchJob:
    """One batch job over `sources`, written to `output`, judged by `judge`.

    Args:
        sources: The inputs (`expand_inputs`).
        output: The output file, `.parquet` or `.jsonl`; the manifest and the part folder
            live beside it.
        judge: The judge to run; the job sets its recorder.
        spec: The job's identity (`JobSpec`).
        store: The decision log, or None to record nothing (then a resumed job judges
            again what was decided but not committed).
        name: The job's name (--job); default the spec hash's first 16 hex digits.
        columns: Where the content and id are in each row.
        use_cache: Reuse verdicts from the decision log made under the same policy text,
            model and options (the job's own decisions are always reused).
        keep_content: Store content in the log (False: only its hash).
        restart: Discard a previous job at this output (its manifest, parts and output).
        part_rows: Input rows per committed part at most.
        part_seconds: Commit at least this often while rows are coming.
        max_errors: Stop past this many rows judged without a verdict (a count, or a
            fraction from 20 rows on); rows that could not be read do not count. What was
            done is committed first, so the same command resumes.
        ray: Run on Ray Data (`RayOptions`) instead of in this process.
    """

    def __init__(
        self,
        sources: list[Source],
        output: Path,
        judge: Judge,
        spec: JobSpec,
        *,
        store: Store | None = None,
        name: str | None = None,
        columns: Columns | None = None,
        use_cache: bool = True,
        keep_content: bool = True,
        restart: bool = False,
        part_rows: int = 2000,
        part_seconds: float = 10.0,
        max_errors: float | None = None,
        ray: RayOptions | None = None,
    ) -> None:
        self.sources = sources
        self.output = output
        self.format = output_format(output)
        self.judge = judge
        self.spec = spec
        self.store = store
        self.name = name or spec.hash()[:16]
        self.columns = columns or Columns()
        self.use_cache = use_cache
        self.keep_content = keep_content
        self.restart = restart
        self.part_rows = max(1, part_rows)
        self.part_seconds = part_seconds
        self.max_errors = max_errors
        self.ray = ray
        self.manifest_file = manifest_path(output)
        self.parts = parts_dir(output)

    # -- the manifest --------------------------------------------------------------------

    def prepare(self) -> Manifest:
        """The job's manifest: the previous one when this is the same job, a new one
        otherwise; stray part files (written but never committed) are removed.

        Raises:
            ConfigError: A file's first row has no content column (or no --id-col column);
                the output belongs to another job (other inputs, policies, model or
                options), or is a file no job wrote (pass --restart to discard it).
        """
        check_columns(self.sources, self.columns)
        if self.restart:
            self._discard()
        found = load_manifest(self.manifest_file)
        if found is None:
            if self.output.exists():
                raise ConfigError(
                    f"{self.output} exists and no batch job manifest describes it. Choose "
                    "another output, or pass --restart to replace it."
                )
            return self._new_manifest()
        if found.job != self.name or found.spec_hash != self.spec.hash():
            differs = found.spec.differences(self.spec)
            changed = ", ".join(differs) or "its name"
            hint = (
                f" It was started with read-outs {found.spec.readouts or 'none'}: pass "
                f"--readout {' --readout '.join(found.spec.readouts) or 'none'} to resume it."
                if differs == ["readouts"]
                else ""
            )
            raise ConfigError(
                f"{self.output} belongs to job {found.job!r} ({found.rows_committed:,} rows "
                f"done, {found.state}), which differs from this one in: {changed}. A changed "
                "input, policy, model or option is a new job: write it to another output, "
                f"or pass --restart to discard the old job's results.{hint}"
            )
        self._check_log(found)
        self._remove_strays(found)
        return found

    def _check_log(self, manifest: Manifest) -> None:
        """A resumed job records into the log it started with: elsewhere its own decisions
        would not be found, and uncommitted rows would be judged a second time."""
        here = self.store.location if self.store is not None else None
        if manifest.state != "done" and manifest.database != here:
            raise ConfigError(
                f"Job {manifest.job!r} started with the decision log {manifest.database or 'off'}"
                f", not {here or 'off'}. Resume it with that log (--database, or --log), or "
                "pass --restart to start over."
            )

    def _new_manifest(self) -> Manifest:
        now = datetime.now(UTC)
        manifest = Manifest(
            job=self.name,
            spec_hash=self.spec.hash(),
            spec=self.spec,
            run_id=new_ulid(),
            output=str(self.output),
            output_format=self.format,
            created_at=now,
            updated_at=now,
            database=self.store.location if self.store is not None else None,
        )
        self.output.parent.mkdir(parents=True, exist_ok=True)
        save_manifest(manifest, self.manifest_file)
        return manifest

    def _discard(self) -> None:
        shutil.rmtree(self.parts, ignore_errors=True)
        for path in (self.manifest_file, self.output):
            path.unlink(missing_ok=True)

    def _remove_strays(self, manifest: Manifest) -> None:
        if manifest.state == "done":
            shutil.rmtree(self.parts, ignore_errors=True)
            return
        if not self.parts.is_dir():
            return
        kept = {p.name for p in manifest.parts}
        for path in self.parts.iterdir():
            if path.name not in kept:
                path.unlink()
        missing = [p.name for p in manifest.parts if not (self.parts / p.name).is_file()]
        if missing:
            raise ConfigError(
                f"Committed part {missing[0]} of job {manifest.job!r} is missing from "
                f"{self.parts}; its rows cannot be recovered. Pass --restart to start over."
            )

    # -- running -------------------------------------------------------------------------

    async def run(self, on_progress: Progress | None = None) -> Manifest:
        """Run (or resume) the job to the end; returns the final manifest.

        Raises:
            ConfigError: See `prepare`.
            InputError: The input changed since the job started (its committed rows no
                longer match), or a file cannot be read.
            StoreError: Decisions could not be recorded; committed rows stay committed and
                the same command resumes.
            ErrorBudgetExceeded: Past `max_errors`; resumable the same way.
        """
        with job_lock(self.output):
            return await self._run_locked(on_progress)

    async def _run_locked(self, on_progress: Progress | None) -> Manifest:
        # File work runs in worker threads: a service runs jobs on its event loop.
        manifest = await asyncio.to_thread(self.prepare)
        if manifest.state == "done":
            return manifest
        manifest.attempts += 1
        manifest.state, manifest.error = "running", None
        if manifest.rows_total is None:
            manifest.rows_total = await asyncio.to_thread(self._count_rows)
        await asyncio.to_thread(save_manifest, manifest, self.manifest_file)
        started = time.monotonic()
        try:
            if self.ray is not None:
                await _RayRun(self, manifest, on_progress, self.ray).go()
            else:
                await _Run(self, manifest, on_progress).go()
        except BaseException as exc:
            manifest.elapsed_s += time.monotonic() - started
            manifest.error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
                manifest.state = "failed"
            save_manifest(manifest, self.manifest_file)  # quick, and must not be cancelled
            raise
        manifest.elapsed_s += time.monotonic() - started
        # Shielded: once the output is being assembled, a cancellation lets it finish.
        await asyncio.shield(asyncio.to_thread(self._finish, manifest))
        return manifest

    def _count_rows(self) -> int | None:
        total = 0
        for source in self.sources:
            n = count_rows(source)
            if n is None:
                return None
            total += n
        return total

    def _finish(self, manifest: Manifest) -> None:
        assemble((self.parts / p.name for p in manifest.parts), self.output, self.format)
        manifest.state = "done"
        manifest.finished_at = datetime.now(UTC)
        manifest.rows_total = manifest.rows_committed
        save_manifest(manifest, self.manifest_file)
        shutil.rmtree(self.parts, ignore_errors=True)


class _Run:
    """One attempt at a job: skip the committed rows, judge the rest, commit in parts."""

    def __init__(self, job: BatchJob, manifest: Manifest, on_progress: Progress | None) -> None:
        self.job = job
        self.judge = job.judge
        self.manifest = manifest
        self.on_progress = on_progress
        self.recorder: BufferedRecorder | None = None
        if job.store is not None:
            self.recorder = BufferedRecorder(
                job.store,
                keep_content=job.keep_content,
                run_id=manifest.run_id,
                flush_every=FLUSH_EVERY,
            )
        self.judge.recorder = self.recorder
        self.rows: deque[Row] = deque()
        self.found: list[dict[str, Decision]] = [{} for _ in self.judge.policies]
        self.memo: OrderedDict[str, tuple[Decision, ...]] = OrderedDict()
        self.open = _Open(first_row=manifest.rows_committed, input_hash=manifest.input_hash)
        self.budget = ErrorBudget(job.max_errors)

    async def go(self) -> None:
        rows = read_rows(self.job.sources, self.job.columns, max_chars=self.judge.max_chars)
        await asyncio.to_thread(self._skip_committed, rows)
        stream = self.judge.judge_many(self._feed(rows), lookup=self._lookup, share_identical=True)
        try:
            async with aclosing(cast("AsyncGenerator[Judgement, None]", stream)) as judgements:
                async for judgement in judgements:
                    await self._take_and_commit(self.rows.popleft(), judgement)
        except asyncio.CancelledError:
            await self._keep_done()
            raise
        await self._commit()

    async def _keep_done(self) -> None:
        """On cancellation (a cancel, a server stopping, Ctrl-C), commit the rows already
        finished, so that a resumed job neither judges nor records them again. A failure
        here is left for the resume to sort out; the cancellation goes on."""
        with contextlib.suppress(Exception):
            await asyncio.shield(self._commit())

    async def _take_and_commit(self, row: Row, judgement: Judgement | None) -> None:
        """Take a finished row, count it against the error budget (rows that could not be
        read do not count), and commit when a part is full; past the budget, commit what
        is done, then stop."""
        self._take(row, judgement)
        try:
            if row.item is not None and judgement is not None:
                self.budget.count(judgement)
        except ErrorBudgetExceeded:
            await self._commit()
            raise
        await self._maybe_commit()

    async def _maybe_commit(self) -> None:
        if (
            self.open.rows_in >= self.job.part_rows
            or time.monotonic() - self.open.since >= self.job.part_seconds
        ):
            await self._commit()

    def _skip_committed(self, rows: Iterator[Row]) -> None:
        done = self.manifest.rows_committed
        digest = ""
        for row in islice(rows, done):
            digest = input_hash(digest, row)
        self._check_input(digest)

    def _check_input(self, digest: str) -> None:
        done = self.manifest.rows_committed
        if digest != self.manifest.input_hash:
            raise InputError(
                f"The input of job {self.manifest.job!r} changed since it started: its first "
                f"{done:,} rows no longer match what was committed. Restore the input, or "
                "pass --restart to judge the new input from the beginning."
            )
        if self.on_progress is not None:
            self.on_progress(done, self.manifest.rows_total)

    async def _feed(self, rows: Iterator[Row]) -> AsyncIterator[Item]:
        """The items for the fan-out, one per row, looked up in the log a chunk at a time."""
        while chunk := await asyncio.to_thread(lambda: list(islice(rows, LOOKUP_CHUNK))):
            await self._prefetch(chunk)
            for row in chunk:
                self.rows.append(row)
                if row.item is not None:
                    yield row.item
                else:
                    yield _Refused("", id=row.id, metadata={"problem": row.problem})

    async def _prefetch(self, chunk: list[Row]) -> None:
        store = self.job.store
        if store is None:
            return
        hashes = [r.item.hash for r in chunk if r.item is not None]
        keys = self.judge.cache_keys()

        def query() -> list[dict[str, Decision]]:
            own = store.log.reusable(keys, hashes, run_id=self.manifest.run_id)
            if not self.job.use_cache:
                return own
            cached = store.log.reusable(keys, hashes)
            return [{**c, **o} for c, o in zip(cached, own, strict=True)]

        self.found = await asyncio.to_thread(query)

    async def _lookup(self, item: Item) -> list[Decision | None] | None:
        if isinstance(item, _Refused):
            return list(self.judge.refused(item, str(item.metadata["problem"])))
        memo = self.memo.get(item.hash)
        if memo is not None:
            return list(memo)
        hits = [by_item.get(item.hash) for by_item in self.found]
        return None if all(h is None for h in hits) else hits

    def _take(self, row: Row, judgement: Judgement | None) -> None:
        """Add a finished row's output rows and counts to the open part (`judgement` is
        None for a row that could not be judged)."""
        part, counts = self.open, self.open.counts
        if row.item is None or judgement is None:
            part.rows.extend(invalid_row(row, p) for p in self.judge.policies)
            counts.invalid += 1
            counts.output_rows += len(self.judge.policies)
            self._failure(row, None, INVALID_INPUT, row.problem)
        else:
            self.memo[row.item.hash] = judgement.decisions
            self.memo.move_to_end(row.item.hash)
            if len(self.memo) > MEMO_SIZE:
                self.memo.popitem(last=False)
            for decision, cached in zip(judgement.decisions, judgement.cached, strict=True):
                part.rows.append(decision_row(row, decision, cached))
                self._count_decision(row, decision, cached)
            counts.flagged += 1 if judgement.flagged else 0
            counts.violations += 1 if judgement.violation else 0
            counts.no_verdict += 0 if judgement.ok else 1
        counts.rows += 1
        part.rows_in += 1
        part.input_hash = input_hash(part.input_hash, row)
        if self.on_progress is not None:
            self.on_progress(self.manifest.rows_committed + part.rows_in, self.manifest.rows_total)

    def _count_decision(self, row: Row, decision: Decision, cached: bool) -> None:
        counts = self.open.counts
        counts.output_rows += 1
        if cached:
            counts.decisions_cached += 1
        else:
            counts.decisions_made += 1
            counts.prompt_tokens += decision.usage.prompt_tokens
            counts.completion_tokens += decision.usage.completion_tokens
        if not decision.ok:
            v = decision.verdict
            self._failure(row, decision.policy_id, v.status.value, v.detail or decision.error)

    def _failure(self, row: Row, policy_id: str | None, status: str, reason: str | None) -> None:
        part = self.open
        part.kinds[status] = part.kinds.get(status, 0) + 1
        if len(self.manifest.failures) + len(part.failures) < MAX_FAILURES_KEPT:
            part.failures.append(Failure(
                row=row.number, source=row.source, item_id=row.id,
                policy_id=policy_id, status=status, reason=reason,
            ))  # fmt: skip

    async def _commit(self) -> None:
        """Make the open part durable: decisions to the log, the part file, the manifest."""
        part, manifest = self.open, self.manifest
        if part.rows_in == 0:
            return
        if self.recorder is not None:
            await self.recorder.aflush()
        name = f"part-{len(manifest.parts) + 1:06d}.{self.job.format}"
        self.job.parts.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(write_part, self.job.parts / name, part.rows, self.job.format)
        manifest.parts.append(
            Part(name=name, first_row=part.first_row, rows_in=part.rows_in, rows_out=len(part.rows))
        )
        manifest.rows_committed += part.rows_in
        manifest.input_hash = part.input_hash
        _add_counts(manifest.counts, part.counts)
        manifest.failures.extend(part.failures)
        for kind, n in part.kinds.items():
            manifest.failure_kinds[kind] = manifest.failure_kinds.get(kind, 0) + n
        await asyncio.to_thread(save_manifest, manifest, self.job.manifest_file)
        self.open = _Open(first_row=manifest.rows_committed, input_hash=manifest.input_hash)
        if self.on_progress is not None:
            self.on_progress(manifest.rows_committed, manifest.rows_total)


class _RayRun(_Run):
    """An attempt on Ray Data: actors judge, this driver numbers, records and commits.

    The driver is the log's one writer: it records each row's new decisions (those neither
    the job nor the cache already holds) through the same buffered recorder as the local
    engine, flushed before each part is committed. Actors are told which contents already
    have decisions (this job's, and the cache's), so resumed rows cost no calls.
    """

    def __init__(
        self, job: BatchJob, manifest: Manifest, on_progress: Progress | None, options: RayOptions
    ) -> None:
        super().__init__(job, manifest, on_progress)
        self.options = options
        self.judge.recorder = None  # actors judge; only this driver records

    async def go(self) -> None:
        from magistrate.batch import ray as on_ray

        known = await asyncio.to_thread(self._known)
        dataset = on_ray.build_dataset(
            self.job.sources,
            self.options.config,
            self.job.columns,
            actors=self.options.actors,
            actor_cpus=self.options.actor_cpus,
            batch_rows=self.options.batch_rows,
            known=known,
        )
        sources = {on_ray._key(s.path): s for s in self.job.sources}
        batches = iter(dataset.iter_batches(batch_size=LOOKUP_CHUNK, batch_format="pyarrow"))
        try:
            await self._consume(batches, sources)
        finally:
            close = getattr(batches, "close", None)
            if close is not None:  # stop the plan's execution when the driver stops early
                close()

    async def _consume(self, batches: Iterator[Any], sources: dict[str, Source]) -> None:
        from magistrate.batch import ray as on_ray

        number, digest, skip = 0, "", self.manifest.rows_committed
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            results = []
            for values in batch.to_pylist():
                row, made = on_ray.result_row(number, values, sources)
                number += 1
                if row.number < skip:  # committed before: check it is the same input
                    digest = input_hash(digest, row)
                    if row.number == skip - 1:
                        self._check_input(digest)
                    continue
                results.append((row, made))
            await self._prefetch([row for row, _ in results])
            for row, made in results:
                await self._take_and_commit(row, await self._resolve(row, made))
        if number < skip:
            self._check_input("")  # the input got shorter
        await self._commit()

    def _known(self) -> set[str]:
        """Contents this job already has a decision for under every policy (a resumed
        job's): actors make no call for them. Only their hashes are read; cached verdicts
        from other runs are applied here, on the driver (an actor's call for such content
        is then not used)."""
        store = self.job.store
        if store is None:
            return set()
        hashes = {p.hash for p in self.judge.policies}
        return store.log.decided_items(self.manifest.run_id, hashes)

    async def _resolve(self, row: Row, made: list[Decision] | None) -> Judgement | None:
        """The row's judgement: decisions the job or the cache already holds win over the
        actor's (which are then not recorded: one decision per item and policy)."""
        if row.item is None:
            return None
        known = await self._lookup(row.item) or [None] * len(self.judge.policies)
        decisions: list[Decision] = []
        cached: list[bool] = []
        fresh = []
        for position, policy in enumerate(self.judge.policies):
            hit = known[position]
            if hit is None and made is None:
                raise ConfigError(
                    f"Row {row.number} ({row.id}): the actors skipped it as already decided, "
                    "but the log has no decision for it. Run the job again to judge it."
                )
            decision = hit if hit is not None else made[position]  # type: ignore[index]
            decisions.append(decision)
            cached.append(hit is not None)
            if hit is None:
                fresh.append((decision, policy))
        if fresh and self.recorder is not None:
            await self.recorder.arecord_all(fresh, row.item)
        return Judgement(row.item, tuple(decisions), tuple(cached), row.number)


@dataclass(frozen=True)
class RayOptions:
    """How a job runs on Ray Data (`--engine ray`).

    Attributes:
        config: The judge each actor builds (`magistrate.batch.ray.JudgeConfig`).
        address: The cluster to join (`ray://...`, `host:port`, `auto`); None starts a
            local Ray instance in this process.
        actors: Actors in the pool, each with one loaded backend.
        actor_cpus: CPUs Ray reserves per actor (fractional for actors that wait on a
            server; leave room for the read tasks).
        batch_rows: Rows per batch handed to an actor.
    """

    config: Any
    address: str | None = None
    actors: int = 2
    actor_cpus: float = 0.5
    batch_rows: int = 64


@contextmanager
def job_lock(output: Path, *, create: bool = True) -> Iterator[None]:
    """Hold `OUTPUT.lock` for the block: a job holds it while it runs (two processes on one
    job would judge the same rows twice and overwrite each other's parts), and the service
    holds it to see whether a job runs and while it deletes one.

    Args:
        output: The job's output file.
        create: Create the output's folder when missing; otherwise a missing folder means
            no job there, and the block runs without a lock.

    Raises:
        JobLocked: Another process holds it.
    """
    if create:
        output.parent.mkdir(parents=True, exist_ok=True)
    elif not output.parent.is_dir():
        yield
        return
    with open(output.with_name(output.name + ".lock"), "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobLocked(
                f"Another process is running the job writing {output} right now. Wait for it "
                "to finish (then this command reports the result), or stop it first."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _add_counts(total: Counts, more: _Tally) -> None:
    for name in Counts.model_fields:
        setattr(total, name, getattr(total, name) + getattr(more, name))
