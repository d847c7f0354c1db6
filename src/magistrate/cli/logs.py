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


KeyOption = Annotated[
    Path | None,
    typer.Option(
        "--key",
        envvar="MAGISTRATE_CHECKPOINT_KEY",
        help="The Ed25519 key file (default: checkpoint-ed25519.pem in the user config "
        "folder). Keep it outside the database, readable only by whoever signs checkpoints.",
        show_default=False,
    ),
]
PublicKeyOption = Annotated[
    str | None,
    typer.Option(
        help="The signer's public key (base64, as `logs keygen` prints it) to pin; without "
        "it the key inside the checkpoint is used, which only shows it was not altered.",
        show_default=False,
    ),
]


@logs_app.command("verify")
def verify(
    checkpoint: Annotated[
        str | None,
        typer.Option(
            help="Also prove that the log extends this signed checkpoint (a file, or the "
            "URL of a server's /v1/checkpoint): no row it covers was changed or removed.",
            show_default=False,
        ),
    ] = None,
    public_key: PublicKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    database: DatabaseOption = None,
) -> None:
    """Recompute the hash chain and every policy hash; exit 4 naming the first bad row.

    With --checkpoint, also check the log against a signed checkpoint: the chain alone
    cannot see rows rewritten together with every later hash, or rows cut off the end.
    """
    from magistrate.store.checkpoints import check_checkpoint

    signed = _load_checkpoint(checkpoint) if checkpoint else None
    with Store(database) as store:
        report = store.verify()
        extends = check_checkpoint(store, signed, public_key=public_key) if signed else None
    ok = report.ok and (extends is None or extends.ok)
    if as_json:
        data: dict[str, Any] = {"log": store.location, **report.to_dict()}
        if extends is not None and signed is not None:
            data["checkpoint"] = {**extends.to_dict(), "signed": signed.size, "key": signed.key_id}
        data["ok"] = ok
        out_console.out(json.dumps(data), highlight=False)
    else:
        if report.ok:
            out_console.print(
                f"[green]OK[/]: {report.decisions} decisions and {report.policies} policy texts "
                f"in {escape(store.location)} match their hashes."
            )
        else:
            err_console.print(
                f"[bold red]FAILED[/]: {escape(str(report.problem))}. {report.decisions} rows "
                "before it check out."
            )
        if extends is not None and signed is not None:
            if extends.ok:
                pinned = "" if public_key else " (key not pinned: pass --public-key)"
                out_console.print(
                    f"[green]OK[/]: the log extends the checkpoint of {signed.created_at} "
                    f"({signed.size} rows, key {signed.key_id}){pinned}."
                )
            else:
                err_console.print(f"[bold red]FAILED[/]: {escape(str(extends.problem))}.")
    if not ok:
        raise typer.Exit(EXIT_VERIFY_FAILED)


def _load_checkpoint(where: str) -> Any:
    from magistrate.store.checkpoints import read_checkpoint

    if where.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(where, timeout=30) as answer:
                body = answer.read(1_000_000)
        except (urllib.error.URLError, OSError) as exc:
            raise ConfigError(f"Cannot fetch the checkpoint at {where}: {exc}.") from None
        return read_checkpoint(body, where=where)
    try:
        return read_checkpoint(Path(where).read_bytes(), where=where)
    except OSError as exc:
        raise ConfigError(f"Cannot read the checkpoint {where}: {exc.strerror}.") from None


@logs_app.command("keygen")
def keygen(
    key: KeyOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
) -> None:
    """Create the Ed25519 key that signs checkpoints; prints its public half."""
    from magistrate.store.checkpoints import (
        default_key_path,
        generate_key,
        key_id,
        public_key_text,
    )

    path = key or default_key_path()
    public = public_key_text(generate_key(path, force=force))
    out_console.out(public, highlight=False)
    err_console.print(
        f"Wrote {escape(str(path))} (mode 600), key {key_id(public)}. Keep it outside the "
        "database; give auditors the public key above (`logs verify --public-key`)."
    )


@logs_app.command("checkpoint")
def checkpoint_(
    key: KeyOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here instead of stdout."),
    ] = None,
    database: DatabaseOption = None,
) -> None:
    """Sign the log as it is now: its size, Merkle root and last row hash (JSON).

    Store checkpoints where the database's writers cannot change them; `logs verify
    --checkpoint` then proves that no row they cover was later changed or removed.
    """
    from magistrate.batch.manifest import replace_whole
    from magistrate.store.checkpoints import default_key_path, load_key, make_checkpoint

    signing = load_key(key or default_key_path())
    with Store(database) as store:
        signed = make_checkpoint(store, signing)
    if output is None:
        out_console.out(signed.to_json(), end="", highlight=False)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        replace_whole(output, signed.to_json())
        err_console.print(
            f"Signed {signed.size} rows (root {signed.root[:16]}..., key {signed.key_id}) "
            f"into {escape(str(output))}."
        )


@logs_app.command("prove")
def prove(
    decision_id: Annotated[str, typer.Argument(help="The decision's full ULID.")],
    checkpoint: Annotated[
        str | None,
        typer.Option(help="Prove against this checkpoint's size (default: the log now)."),
    ] = None,
    database: DatabaseOption = None,
) -> None:
    """Print an inclusion proof for one decision: its row and the hashes leading to the
    tree root of a checkpoint. `logs check-proof` verifies it without the database."""
    from magistrate.store.checkpoints import inclusion_proof

    size = _load_checkpoint(checkpoint).size if checkpoint else None
    with Store(database) as store:
        proof = inclusion_proof(store, decision_id, size=size)
    out_console.out(json.dumps(proof, ensure_ascii=False, indent=2), highlight=False)


@logs_app.command("check-proof")
def check_proof(
    proof: Annotated[Path, typer.Argument(help="The JSON `logs prove` printed.")],
    checkpoint: Annotated[str, typer.Option(help="The signed checkpoint (file or URL).")],
    public_key: PublicKeyOption = None,
) -> None:
    """Check an inclusion proof against a signed checkpoint, without the database; exit 4
    when the decision is not in the log the checkpoint signed (or was changed)."""
    from magistrate.store.checkpoints import check_inclusion, check_signature

    signed = _load_checkpoint(checkpoint)
    try:
        data = json.loads(proof.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read the proof {proof}: {exc}.") from None
    problem = check_signature(signed, public_key) or check_inclusion(data, signed)
    if problem is not None:
        err_console.print(f"[bold red]FAILED[/]: {escape(problem)}.")
        raise typer.Exit(EXIT_VERIFY_FAILED)
    row = data["row"]
    out_console.print(
        f"[green]OK[/]: decision {escape(str(row.get('id')))} is row {data['index'] + 1} of "
        f"the {signed.size} rows the checkpoint of {signed.created_at} signed (key "
        f"{signed.key_id})."
    )
