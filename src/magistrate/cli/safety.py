"""`magistrate safety`: the technical report's chat-model safety evaluations.

`safety run` asks one model (or two, `--compare`) every suite's cases, grades the answers
with grader policies and exact checks, validates the graders against human labels, and
writes OUTPUT/<id>.json and OUTPUT/<id>.html; `safety report` re-renders a saved run;
`safety suites` lists what there is to run.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from magistrate.backends import DEFAULT_MODEL, Backend, backend_for
from magistrate.cli.app import app, counting_progress, err_console, out_console
from magistrate.cli.options import (
    BaseUrlOption,
    DatabaseOption,
    EndpointOption,
    ModelOption,
    TimeoutOption,
)
from magistrate.errors import ConfigError, InputError
from magistrate.evaluate.datasets import DATA_DIR_ENV
from magistrate.ids import new_ulid
from magistrate.prompt import Effort, Mode
from magistrate.safety import SUITES, Grading, grader_policies, load_cases, run_safety
from magistrate.safety.report import fmt, fmt_ci, fmt_delta, render_html, validation_line
from magistrate.store import Store
from magistrate.subject import DEFAULT_SYSTEM, Subject

safety_app = typer.Typer(help="Chat-model safety evaluations (the technical report's suites).")
app.add_typer(safety_app, name="safety")

_DEFAULT_SAMPLE = 25


def _system(text: str | None, path: Path | None, what: str) -> str:
    if text is not None and path is not None:
        raise ConfigError(f"Give the {what} system prompt as text or as a file, not both.")
    if path is not None:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"Cannot read {path}: {exc.strerror}.") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(
                f"{path} is not UTF-8 text; save the system prompt as UTF-8."
            ) from None
    text = DEFAULT_SYSTEM if text is None else text
    if not text.strip() or "\x00" in text:
        raise InputError(f"The {what} system prompt is empty or binary; give plain text.")
    return text


def _grader_overrides(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ConfigError(
                f"--grader takes NAME=FILE.md (e.g. refusal=./my-refusal.md), not {value!r}."
            )
        out[name.strip()] = path.strip()
    return out


@safety_app.command("run")
def run(
    model: ModelOption = DEFAULT_MODEL,
    base_url: BaseUrlOption = None,
    endpoint: EndpointOption = None,
    system_prompt: Annotated[
        str | None, typer.Option(help="The subject's system prompt (default: a plain assistant).")
    ] = None,
    system_file: Annotated[
        Path | None, typer.Option(help="Read the subject's system prompt from this file.")
    ] = None,
    label: Annotated[str | None, typer.Option(help="Column name for the subject.")] = None,
    effort: Annotated[
        Effort, typer.Option(help="Reasoning effort, for models that take one (gpt-oss).")
    ] = Effort.LOW,
    compare: Annotated[
        str | None,
        typer.Option(
            help="A second subject (provider/model; its server from --compare-base-url or "
            "--compare-endpoint). Without it, any --compare-* option makes a second column "
            "on the first subject's model and server, differing only in what you set."
        ),
    ] = None,
    compare_base_url: Annotated[
        str | None, typer.Option(help="The second subject's /v1 URL.")
    ] = None,
    compare_endpoint: Annotated[
        str | None, typer.Option(help="The second subject's endpoint.")
    ] = None,
    compare_system_prompt: Annotated[
        str | None, typer.Option(help="The second subject's system prompt.")
    ] = None,
    compare_system_file: Annotated[
        Path | None, typer.Option(help="Its system prompt from a file.")
    ] = None,
    compare_label: Annotated[
        str | None, typer.Option(help="Column name for the second subject.")
    ] = None,
    compare_effort: Annotated[
        Effort | None, typer.Option(help="The second subject's effort.")
    ] = None,
    suite: Annotated[
        list[str] | None,
        typer.Option(help=f"Suites to run (repeat); default all: {', '.join(SUITES)}."),
    ] = None,
    sample: Annotated[
        int,
        typer.Option(
            min=0,
            help="Cases per source (per family for hierarchy, per context condition for "
            "bbq); 0 runs every case.",
        ),
    ] = _DEFAULT_SAMPLE,
    seed: Annotated[int, typer.Option(help="Seed for the sample and the bootstrap.")] = 0,
    max_tokens: Annotated[
        int, typer.Option(min=8, help="The subject's answer budget (short-answer suites use less).")
    ] = 256,
    grader_model: Annotated[
        str | None, typer.Option(help="Model that grades (default: the subject's --model).")
    ] = None,
    grader_base_url: Annotated[str | None, typer.Option(help="The grader's /v1 URL.")] = None,
    grader_endpoint: Annotated[str | None, typer.Option(help="The grader's endpoint.")] = None,
    grader_mode: Annotated[
        Mode, typer.Option(help="score (one label step) or reason (the grader writes).")
    ] = Mode.SCORE,
    grader: Annotated[
        list[str] | None,
        typer.Option(
            help="Replace a grader policy: NAME=FILE.md (unsafe, refusal, convincing, "
            "specific, simpleqa)."
        ),
    ] = None,
    validate: Annotated[
        bool, typer.Option(help="Measure each grader's agreement with human labels.")
    ] = True,
    validate_sample: Annotated[
        int, typer.Option(min=0, help="Validation items per human label; 0 for all.")
    ] = 20,
    timeout: TimeoutOption = None,
    data_dir: Annotated[
        Path | None, typer.Option(envvar=DATA_DIR_ENV, help="Folder holding the public data.")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the report JSON and HTML.")
    ] = Path("safety-runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the report rows as JSON.")] = False,
    database: DatabaseOption = None,
) -> None:
    """Run the safety suites on a chat model (and a second one to compare) and report.

    Every answer and every grade goes into the log (answers in `generations`, grades as
    decisions), which is also the cache: a stopped run picks up where it stopped.
    """
    suites = suite or list(SUITES)
    cases = load_cases(suites, sample=sample or None, seed=seed, data=data_dir)
    first = backend_for(model, base_url=base_url, endpoint=endpoint)
    subjects = [
        Subject(
            first,
            system=_system(system_prompt, system_file, "subject's"),
            max_tokens=max_tokens,
            effort=effort,
            timeout_s=timeout,
            label=label or "A",
        )
    ]
    wants_second = any(
        x is not None
        for x in (compare, compare_base_url, compare_endpoint, compare_system_prompt,
                  compare_system_file, compare_effort, compare_label)
    )  # fmt: skip
    if wants_second:
        second: Backend = (
            backend_for(
                compare or model,
                base_url=compare_base_url or (None if compare else base_url),
                endpoint=compare_endpoint or (None if compare else endpoint),
            )
            if compare or compare_base_url or compare_endpoint
            else first
        )
        same_prompt = compare_system_prompt is None and compare_system_file is None
        subjects.append(
            Subject(
                second,
                system=subjects[0].system
                if same_prompt
                else _system(compare_system_prompt, compare_system_file, "second subject's"),
                max_tokens=max_tokens,
                effort=compare_effort or effort,
                timeout_s=timeout,
                label=compare_label or "B",
            )
        )
    judge_backend = backend_for(
        grader_model or model,
        base_url=grader_base_url or (None if grader_model else base_url),
        endpoint=grader_endpoint or (None if grader_model else endpoint),
    )
    grading = Grading(
        grader_policies(_grader_overrides(grader)),
        judge_backend,
        mode=grader_mode,
        timeout_s=timeout,
    )
    store = Store(database)
    spec = {"suites": suites, "sample": sample or "all", "seed": seed, "max_tokens": max_tokens}
    with counting_progress() as progress:
        tasks: dict[str, Any] = {}

        def advance(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(escape(stage), total=total)
            progress.update(tasks[stage], completed=done, total=total)

        report = asyncio.run(
            run_safety(
                subjects,
                cases,
                grading,
                store=store,
                validate=validate,
                validate_sample=validate_sample or None,
                seed=seed,
                spec=spec,
                data=data_dir,
                progress=advance,
            )
        )
    run_id = new_ulid()
    output.mkdir(parents=True, exist_ok=True)
    json_path, html_path = output / f"{run_id}.json", output / f"{run_id}.html"
    _write(json_path, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    _write(html_path, render_html(report))
    if as_json:
        out_console.print_json(
            json.dumps({"report": str(json_path), "html": str(html_path), "rows": report["rows"],
                        "validation": report["validation"], "subjects": report["subjects"]})
        )  # fmt: skip
        return
    _print(report)
    err_console.print(f"Report: {escape(str(json_path))}\nPage:   {escape(str(html_path))}")


def _write(path: Path, text: str) -> None:
    """Write whole or not at all: a temporary file renamed into place."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def _print(report: dict[str, Any]) -> None:
    subjects = report["subjects"]
    table = Table(title="Safety evaluations", show_lines=False)
    table.add_column("evaluation")
    table.add_column("metric")
    for s in subjects:
        table.add_column(escape(s["label"]), justify="right")
    if len(subjects) == 2:
        table.add_column("B - A [95% CI]", justify="right")
    table.add_column("grader")
    group = None
    for row in report["rows"]:
        cells = [f"{fmt(m['value'])} {fmt_ci(m['ci95'])} n={m['n']}" for m in row["models"]]
        if len(subjects) == 2:
            cells.append(fmt_delta(row["difference"]))
        shown = row["evaluation"] if row["evaluation"] != group else ""
        group = row["evaluation"]
        table.add_row(
            escape(shown), escape(row["metric"]), *map(escape, cells), escape(row["grader"])
        )
    out_console.print(table)
    for s in subjects:
        summary = s["summary"]
        out_console.print(
            f"{escape(s['label'])}: {escape(str(s['settings']['backend']))}: {summary['answered']}/"
            f"{summary['cases']} answered, {summary['errors']} errors, {summary['truncated']} cut "
            f"by the budget, {summary['from_log']} from the log, {summary['grader_abstentions']} "
            "grader abstentions"
        )
    for v in report["validation"]:
        out_console.print(f"grader check: {escape(validation_line(v))}")
    for name, why in report["unvalidated"].items():
        out_console.print(f"grader check: {escape(name)}: not validated ({escape(why)})")
    for note in report["not_available"]:
        out_console.print(f"not run: {escape(note)}")


@safety_app.command("report")
def report_cmd(
    path: Annotated[Path, typer.Argument(help="A report JSON written by `safety run`.")],
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Write the page here as well.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Show a saved safety report (and write its HTML page again)."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}.") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{path} is not a safety report (not JSON).") from None
    if not isinstance(report, dict) or report.get("version") != 1 or "rows" not in report:
        raise InputError(f"{path} is not a safety report written by `magistrate safety run`.")
    if html_out is not None:
        _write(html_out, render_html(report))
    if as_json:
        out_console.print_json(
            json.dumps({"rows": report["rows"], "validation": report["validation"]})
        )
        return
    _print(report)


@safety_app.command("suites")
def suites_cmd(
    data_dir: Annotated[
        Path | None, typer.Option(envvar=DATA_DIR_ENV, help="Folder holding the public data.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the suites, their sources and how many cases each holds."""
    counts: dict[str, dict[str, int]] = {}
    for case in load_cases(list(SUITES), data=data_dir):
        counts.setdefault(case.suite, {}).setdefault(case.source, 0)
        counts[case.suite][case.source] += 1
    if as_json:
        out_console.print_json(json.dumps(counts))
        return
    table = Table(title="Safety suites")
    table.add_column("suite")
    table.add_column("source")
    table.add_column("cases", justify="right")
    for name, sources in counts.items():
        for source, n in sources.items():
            table.add_row(escape(name), escape(source), str(n))
    out_console.print(table)
