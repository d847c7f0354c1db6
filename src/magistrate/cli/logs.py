"""`magistrate logs ...`: read, export and verify the decision log."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from magistrate.cli.app import EXIT_VERIFY_FAILED, app, err_console, out_console
from magistrate.cli.options import DatabaseOption
from magistrate.errors import ConfigError, MissingDependency
from magistrate.store import DecisionFilter, Store, StoredDecision, parse_since

logs_app = typer.Typer(
    help="Read, export and verify the decision log (every decision is recorded by default).",
    no_args_is_help=True,
)
app.add_typer(logs_app, name="logs")

PolicyOption = Annotated[str | None, typer.Option("--policy", "-p", help="Only this policy id.")]
LabelOption = Annotated[str | None, typer.Option("--label", "-l", help="Only this label.")]
SinceOption = Annotated[
    str | None, typer.Option(help="Only decisions since: 30m, 2h, 7d, 1w or an ISO date/time.")
]
ViolationsOption = Annotated[bool, typer.Option("--violations", help="Only violations.")]
AbstainedOption = Annotated[
    bool, typer.Option("--abstained", help="Only decisions without a verdict.")
]


def _filter(
    policy: str | None, label: str | None, since: str | None, violations: bool, abstained: bool
) -> DecisionFilter:
    return DecisionFilter(
        policy_id=policy,
        label=label,
        since=parse_since(since) if since else None,
        violations=violations,
        abstained=abstained,
    )


@logs_app.command("list")
def list_(
    policy: PolicyOption = None,
    label: LabelOption = None,
    since: SinceOption = None,
    violations: ViolationsOption = False,
    abstained: AbstainedOption = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    database: DatabaseOption = None,
) -> None:
    """Recorded decisions, newest first."""
    where = _filter(policy, label, since, violations, abstained)  # a bad --since opens no log
    with Store(database) as store:
        rows = store.decisions(where, limit=limit)
    if as_json:
        for row in rows:
            out_console.out(json.dumps(row.to_dict(), ensure_ascii=False), highlight=False)
        return
    if not rows:
        err_console.print(f"No decisions match in {escape(store.location)}.")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("id", "time (UTC)", "policy", "model", "label", "rules", "score", "item"):
        table.add_column(column, no_wrap=column != "item", overflow="fold")
    for row in rows:
        table.add_row(*_summary(row))
    out_console.print(table)


def _summary(row: StoredDecision) -> list[str]:
    d, v = row.decision, row.decision.verdict
    if v.ok:
        color = "red" if v.violation else "green"
        label = f"[{color}]{escape(str(v.label))}[/]"
    else:
        label = f"[yellow]abstain:{v.status.value}[/]"
    item = d.item_id or d.item_hash[:12]
    if row.content is not None:
        preview = " ".join(row.content.split())
        item += f" {preview[:60]}{'…' if len(preview) > 60 else ''}"
    return [
        d.id,
        d.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        escape(f"{d.policy_id}@{d.policy_version} {d.policy_hash[:8]}"),
        escape(d.model),
        label,
        escape(",".join(v.rule_ids)) or "-",
        f"{v.score:.3f}" if v.score is not None else "-",
        escape(item),
    ]


@logs_app.command("show")
def show(
    decision_id: Annotated[str, typer.Argument(help="Decision ULID (or its first 6+ chars).")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    database: DatabaseOption = None,
) -> None:
    """One decision in full: verdict, reasons, content and the exact policy text."""
    with Store(database) as store:
        row = store.decision(decision_id)
        policy_text = store.policy_text(row.decision.policy_hash)
    if as_json:
        data = {**row.to_dict(), "policy_text": policy_text}
        out_console.out(json.dumps(data, ensure_ascii=False, indent=2), highlight=False)
        return
    d, v = row.decision, row.decision.verdict
    fields: list[tuple[str, Any]] = [
        ("decision", d.id),
        ("recorded", f"{d.created_at.isoformat()} (row {row.seq})"),
        ("item", f"{d.item_id or '-'}  sha256 {d.item_hash}"),
        ("policy", f"{d.policy_id} version {d.policy_version}  sha256 {d.policy_hash}"),
        ("model", f"{d.backend} ({d.model}), mode {d.mode}, effort {d.effort}"),
        ("status", v.status.value + (f": {v.detail}" if v.detail else "")),
        ("label", v.label),
        ("violation", v.violation),
        ("category", v.category),
        ("rules", ", ".join(v.rule_ids) or "-"),
        ("unknown rules", ", ".join(v.unknown_rule_ids) or None),
        ("score", f"{v.score:.4f}" if v.score is not None else None),
        ("rationale", v.rationale),
        ("error", d.error),
        (
            "tokens",
            f"{d.usage.prompt_tokens} prompt ({d.usage.cached_tokens} cached), "
            f"{d.usage.completion_tokens} completion",
        ),
        ("latency", f"{d.latency_s:.3f} s"),
    ]
    for name, value in fields:
        if value is not None:
            out_console.print(f"[bold]{name:>13}[/] {escape(str(value))}")
    if row.content is not None:
        out_console.print("\n[bold]Content[/]")
        out_console.out(row.content, highlight=False)
    else:
        out_console.print("\n[bold]Content[/] [dim](redacted: only its hash was kept)[/]")
    if d.reasoning:
        out_console.print("\n[bold]Reasoning[/]")
        out_console.out(d.reasoning, highlight=False)
    if v.answer:
        out_console.print("\n[bold]Answer[/]")
        out_console.out(v.answer, highlight=False)
    out_console.print(f"\n[bold]Policy text[/] [dim](sha256 {d.policy_hash})[/]")
    out_console.out(policy_text, highlight=False)


@logs_app.command("export")
def export(
    format: Annotated[str, typer.Option("--format", help="jsonl or parquet.")] = "jsonl",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write (required for parquet; jsonl: stdout)."),
    ] = None,
    policy: PolicyOption = None,
    label: LabelOption = None,
    since: SinceOption = None,
    violations: ViolationsOption = False,
    abstained: AbstainedOption = False,
    database: DatabaseOption = None,
) -> None:
    """Every matching decision, oldest first, as JSON lines or a Parquet file."""
    if format not in ("jsonl", "parquet"):
        raise ConfigError(f"--format {format!r} is not supported; use jsonl or parquet.")
    if format == "parquet" and output is None:
        raise ConfigError("Parquet is binary: give --output FILE.parquet.")
    where = _filter(policy, label, since, violations, abstained)
    with Store(database) as store:
        total = store.count(where)
        columns = (TextColumn("exporting"), BarColumn(), MofNCompleteColumn())
        show = output is not None and sys.stderr.isatty()
        with Progress(*columns, console=err_console, transient=True, disable=not show) as bar:
            task = bar.add_task("export", total=total)
            if format == "jsonl":
                written = _export_jsonl(store, where, output, lambda: bar.advance(task))
            else:
                assert output is not None
                written = _export_parquet(store, where, output, lambda: bar.advance(task))
    if output is not None:
        err_console.print(f"Wrote {written} decisions to {escape(str(output))}.")


def _export_jsonl(store: Store, where: DecisionFilter, output: Path | None, tick: Any) -> int:
    target = output.with_name(output.name + ".partial") if output else None
    handle = target.open("w", encoding="utf-8") if target else sys.stdout
    written = 0
    try:
        for row in store.iter_decisions(where):
            handle.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
            written += 1
            tick()
    finally:
        if target is not None:
            handle.close()
    if target is not None and output is not None:
        target.replace(output)  # only a complete export takes the file's name
    return written


def _export_parquet(store: Store, where: DecisionFilter, output: Path, tick: Any) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependency(
            "Parquet export needs pyarrow: pip install 'magistrate[parquet]'"
        ) from None
    schema = pa.schema([(c.name, _arrow_type(pa, c.type)) for c in store.tables["decisions"].c])
    target = output.with_name(output.name + ".partial")
    written, chunk = 0, []
    with pq.ParquetWriter(str(target), schema) as writer:
        for row in store.iter_rows(where):
            chunk.append(row)
            tick()
            if len(chunk) == 5000:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                written, chunk = written + len(chunk), []
        if chunk or not written:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
            written += len(chunk)
    target.replace(output)
    return written


def _arrow_type(pa: Any, sql_type: Any) -> Any:
    python = sql_type.python_type
    if python is bool:
        return pa.bool_()
    if python is int:
        return pa.int64()
    if python is float:
        return pa.float64()
    return pa.string()


@logs_app.command("path")
def path(database: DatabaseOption = None) -> None:
    """Where the log is: the SQLite file, or the database URL without its password."""
    with Store(database) as store:
        out_console.out(store.location, highlight=False)


@logs_app.command("verify")
def verify(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    database: DatabaseOption = None,
) -> None:
    """Recompute the hash chain and every policy hash; exit 4 naming the first bad row."""
    with Store(database) as store:
        report = store.verify()
    if as_json:
        out_console.out(json.dumps({"log": store.location, **report.to_dict()}), highlight=False)
    elif report.ok:
        out_console.print(
            f"[green]OK[/]: {report.decisions} decisions and {report.policies} policy texts in "
            f"{escape(store.location)} match their hashes."
        )
    else:
        err_console.print(
            f"[bold red]FAILED[/]: {escape(str(report.problem))}. {report.decisions} rows "
            "before it check out."
        )
    if not report.ok:
        raise typer.Exit(EXIT_VERIFY_FAILED)
