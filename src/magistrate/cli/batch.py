"""`magistrate batch`: judge large inputs into a Parquet or JSON Lines file, resumably."""

from __future__ import annotations

import asyncio
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from magistrate.backends import DEFAULT_MODEL, backend_for
from magistrate.batch import BatchJob, Columns, Manifest, expand_inputs, job_spec
from magistrate.batch.job import RayOptions
from magistrate.batch.ray import JudgeConfig, connect
from magistrate.cli.app import EXIT_NO_VERDICT, app, err_console, out_console
from magistrate.cli.options import (
    BaseUrlOption,
    CacheOption,
    CalibrateOption,
    DatabaseOption,
    EffortOption,
    EndpointOption,
    FallbackOption,
    IdColOption,
    LogContentOption,
    LogOption,
    MaxCharsOption,
    MaxErrorsOption,
    ModelOption,
    ModeOption,
    OnAbstainOption,
    ReadoutOption,
    StrategyOption,
    TextColOption,
    TimeoutOption,
)
from magistrate.decision import OnAbstain
from magistrate.engine import Judge, Strategy
from magistrate.errors import ConfigError
from magistrate.item import DEFAULT_MAX_CHARS
from magistrate.policy import load_policy
from magistrate.prompt import Effort, Mode
from magistrate.readout.select import choose_readouts
from magistrate.store import Store

InputsArgument = Annotated[
    list[str],
    typer.Argument(
        help="Input files (.jsonl, .csv, .tsv, .parquet, .txt; .gz too), globs "
        "('data/*.jsonl'), folders, or '-' for JSON Lines on stdin.",
        show_default=False,
    ),
]
PoliciesOption = Annotated[
    list[str],
    typer.Option(
        "--policy",
        "-p",
        help="A bundled policy name or a policy file's path; repeat for several (one output "
        "row per input row and policy).",
    ),
]
OutputArgument = Annotated[
    Path,
    typer.Option(
        "--output",
        "-o",
        help="Where the results go: a .parquet or .jsonl file. The job's manifest is written "
        "beside it (OUTPUT.manifest.json), its parts in OUTPUT.parts/ until it is done.",
    ),
]
JobOption = Annotated[
    str | None,
    typer.Option(
        "--job",
        help="Name the job (default: a hash of its inputs, policies, model and options). "
        "Running the same command again resumes it.",
        show_default=False,
    ),
]
InputFormatOption = Annotated[
    str | None,
    typer.Option(
        help="Read every input as this format (jsonl, csv, tsv, parquet, text) instead of "
        "by extension; stdin is jsonl unless this says otherwise.",
        show_default=False,
    ),
]
RestartOption = Annotated[
    bool,
    typer.Option(
        "--restart",
        help="Discard an earlier job's manifest, parts and output at OUTPUT and start over "
        "(its decisions stay in the log, and are reused as the cache allows).",
    ),
]
ConcurrencyOption = Annotated[
    int | None,
    typer.Option(min=1, help="Backend calls in flight (default: what the backend allows)."),
]


class Engine(StrEnum):
    LOCAL = "local"
    RAY = "ray"


EngineOption = Annotated[
    Engine,
    typer.Option(
        help="local: judge in this process. ray: on Ray Data, a pool of actors each holding "
        "one loaded backend (needs magistrate[ray]).",
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        envvar="RAY_ADDRESS",
        help="--engine ray: the cluster to join (auto, host:port, ray://...); default a "
        "local Ray instance in this process.",
        show_default=False,
    ),
]
ActorsOption = Annotated[
    int, typer.Option(min=1, help="--engine ray: actors in the pool (one backend each).")
]
ActorCpusOption = Annotated[
    float,
    typer.Option(
        min=0.01,
        help="--engine ray: CPUs Ray reserves per actor (use 1 or more for the embedded "
        "model; a fraction for actors that wait on a server).",
    ),
]
PartRowsOption = Annotated[
    int,
    typer.Option(min=1, help="Commit output every this many input rows (and every 10 s)."),
]


@app.command()
def batch(
    inputs: InputsArgument,
    policy: PoliciesOption,
    output: OutputArgument,
    job: JobOption = None,
    model: ModelOption = DEFAULT_MODEL,
    base_url: BaseUrlOption = None,
    endpoint: EndpointOption = None,
    mode: ModeOption = Mode.REASON,
    effort: EffortOption = Effort.MEDIUM,
    strategy: StrategyOption = Strategy.COMBINED,
    text_col: TextColOption = None,
    id_col: IdColOption = None,
    input_format: InputFormatOption = None,
    max_chars: MaxCharsOption = DEFAULT_MAX_CHARS,
    timeout: TimeoutOption = None,
    fallback: FallbackOption = True,
    calibrate: CalibrateOption = True,
    on_abstain: OnAbstainOption = OnAbstain.ERROR,
    max_errors: MaxErrorsOption = None,
    concurrency: ConcurrencyOption = None,
    cache: CacheOption = True,
    log: LogOption = True,
    log_content: LogContentOption = True,
    database: DatabaseOption = None,
    restart: RestartOption = False,
    part_rows: PartRowsOption = 2000,
    engine: EngineOption = Engine.LOCAL,
    address: AddressOption = None,
    actors: ActorsOption = 2,
    actor_cpus: ActorCpusOption = 0.5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job summary as JSON.")] = False,
    readout: ReadoutOption = None,
) -> None:
    """Judge every row of large inputs under one or more policies, exactly once.

    In score mode with one policy per prompt (`--strategy separate`, or one policy), a
    fitted read-out stored for the policy, model and prompt layout judges the rows
    (`--readout` to choose or turn it off); it is part of the job's identity.

    Writes one row per input row and policy (label, violation, flagged, score, rule ids,
    rationale, status, decision id, latency, tokens) to OUTPUT, and a manifest beside it.
    Killed at any moment, the same command resumes where the job stopped: every input row
    appears in the output once, and the decision log holds one decision per item. A changed
    policy, model or option is a new job.

    Exit status 0 when every row got a verdict (or was routed by --on-abstain), 3 when some
    did not (an unreadable row, or no verdict), 1 on bad input or options.
    """
    columns = Columns(text=text_col, id=id_col)
    sources = expand_inputs(inputs, format=input_format)
    # Open the log (a bad --database fails in a second) and check the output before loading
    # the model.
    store = Store(database) if log else None
    backend = backend_for(model, base_url=base_url, endpoint=endpoint)
    policies = [load_policy(p) for p in policy]
    combined = len(policies) > 1 and strategy is Strategy.COMBINED
    readouts = choose_readouts(readout, policies, backend, store, mode=mode, combined=combined)
    if readouts and engine is Engine.RAY:
        raise ConfigError(
            f"Read-out {readouts[0].id} applies to this job, but Ray actors do not load "
            "read-outs yet; run it with --engine local, or pass --readout none."
        )
    judge = Judge(
        policies,
        backend,
        readouts=readouts,
        strategy=strategy,
        mode=mode,
        effort=effort,
        max_chars=max_chars,
        timeout_s=timeout,
        fallback=fallback,
        calibrated=calibrate,
        concurrency=concurrency,
        on_abstain=on_abstain,
    )
    spec = job_spec(sources, judge, columns=columns, input_format=input_format, model=model)
    on_ray = None
    if engine is Engine.RAY:
        config = JudgeConfig.of(judge, model, base_url=base_url, endpoint=endpoint)
        on_ray = RayOptions(config, address=address, actors=actors, actor_cpus=actor_cpus)
    job_ = BatchJob(
        sources,
        output,
        judge,
        spec,
        store=store,
        name=job,
        columns=columns,
        use_cache=cache,
        keep_content=log_content,
        restart=restart,
        part_rows=part_rows,
        max_errors=max_errors,
        ray=on_ray,
    )
    try:
        if on_ray is not None:
            connect(address)
        manifest = _run(job_, show=not as_json)
    except KeyboardInterrupt:
        err_console.print(f"Interrupted. Run the same command to resume job {escape(job_.name)}.")
        raise
    finally:
        if store is not None:
            store.close()
    if as_json:
        out_console.out(json.dumps(manifest.summary(), ensure_ascii=False), highlight=False)
    else:
        _summary(manifest)
    c = manifest.counts
    if c.invalid or (c.no_verdict and judge.on_abstain is OnAbstain.ERROR):
        raise typer.Exit(EXIT_NO_VERDICT)


def _run(job: BatchJob, *, show: bool) -> Manifest:
    """Run the job under a progress bar (rows, rate, ETA) on stderr."""
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True, disable=not show) as progress:
        task = progress.add_task(f"batch {job.name}", total=None, rate="")

        def advance(done: int, total: int | None) -> None:
            speed = progress.tasks[0].speed
            rate = f"{speed:,.1f} rows/s" if speed else ""
            progress.update(task, completed=done, total=total, rate=rate)

        return asyncio.run(job.run(on_progress=advance))


def _summary(manifest: Manifest) -> None:
    c = manifest.counts
    lines = [
        f"Job {manifest.job}: {manifest.state}, {c.rows:,} rows -> {manifest.output} "
        f"({c.output_rows:,} output rows; manifest {manifest.output}.manifest.json)",
        f"  {c.flagged:,} flagged, {c.violations:,} with a violation, {c.no_verdict:,} "
        f"without a verdict, {c.invalid:,} unreadable",
        f"  {c.decisions_made:,} decisions made, {c.decisions_cached:,} reused · "
        f"{manifest.elapsed_s:,.1f} s over {manifest.attempts} attempt(s)",
    ]
    if manifest.failure_kinds:
        kinds = ", ".join(f"{k}: {n:,}" for k, n in sorted(manifest.failure_kinds.items()))
        lines.append(f"  failures by kind: {kinds} (the first are listed in the manifest)")
    if manifest.database:
        lines.append(f"  decisions recorded in {manifest.database} (run {manifest.run_id})")
    for line in lines:
        err_console.print(escape(line))
