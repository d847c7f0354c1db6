"""`magistrate policy ...`: inspect and lint policies."""

from __future__ import annotations

import difflib
import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from magistrate.cli.app import EXIT_USER_ERROR, app, out_console
from magistrate.cli.options import DatabaseOption
from magistrate.errors import NotFound
from magistrate.lint import Severity, count_tokens, lint_policy, output_summary
from magistrate.policy import Policy, builtin_policy_names, load_policy
from magistrate.store import Store

policy_app = typer.Typer(
    help="Inspect, lint and list policies; show and diff their recorded versions.",
    no_args_is_help=True,
)
app.add_typer(policy_app, name="policy")

SOURCE_HELP = "A bundled policy name (spam), or a policy file's path (./spam, my-policy.md)."

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "dim"}


@policy_app.command("lint")
def lint(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP)],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    strict: Annotated[bool, typer.Option(help="Fail on warnings too.")] = False,
) -> None:
    """Report problems in a policy, with line numbers. Exit 1 on errors (or warnings, --strict)."""
    policy = load_policy(source)
    findings = lint_policy(policy)
    if as_json:
        out_console.out(
            json.dumps(
                {"policy": _identity(policy), "findings": [f.to_dict() for f in findings]}, indent=2
            )
        )
    else:
        where = policy.source or policy.id
        for f in findings:
            line = f":{f.line}" if f.line else ""
            out_console.print(
                f"{escape(where)}{line}: [{_STYLE[f.severity]}]{f.severity.value}[/] "
                f"[bold]{f.code}[/] {escape(f.message)}"
            )
    failing = {Severity.ERROR, Severity.WARNING} if strict else {Severity.ERROR}
    if any(f.severity in failing for f in findings):
        raise typer.Exit(EXIT_USER_ERROR)


@policy_app.command("show")
def show(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP)],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print a policy's parsed structure: id, hash, labels, sections, rule ids, examples."""
    policy = load_policy(source)
    data = _structure(policy)
    if as_json:
        out_console.out(json.dumps(data, indent=2, ensure_ascii=False))
        return
    out_console.print(f"[bold]{escape(policy.title)}[/]  id={policy.id} version={policy.version}")
    out_console.print(f"hash    {policy.hash}")
    out_console.print(f"source  {escape(policy.source or '-')}")
    out_console.print(f"output  {policy.output.value}: {escape(output_summary(policy))}")
    out_console.print(f"tokens  {data['tokens']} (o200k_base)   threshold {policy.threshold}")
    table = Table("label", "violation", "description", title="Labels", title_justify="left")
    for label in policy.labels:
        table.add_row(
            escape(label.name), "yes" if label.violation else "no", escape(label.description)
        )
    out_console.print(table)
    table = Table("line", "kind", "heading", title="Sections", title_justify="left")
    for s in policy.sections:
        table.add_row(f"{s.start_line}-{s.end_line}", s.kind.value, escape(s.title))
    out_console.print(table)
    table = Table("rule", "line", "text", title="Rules", title_justify="left")
    for r in policy.rules:
        table.add_row(r.id, str(r.line), escape(r.text[:90]))
    out_console.print(table)
    out_console.print(f"examples: {len(policy.examples)}")


@policy_app.command("list")
def list_policies() -> None:
    """List the bundled policies."""
    for name in builtin_policy_names():
        policy = load_policy(name)
        out_console.print(
            f"{name:<16} {policy.version:<10} {policy.short_hash}  {escape(policy.title)}"
        )


@policy_app.command("history")
def history(
    policy_id: Annotated[str, typer.Argument(help="Policy id, as decisions recorded it.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    database: DatabaseOption = None,
) -> None:
    """Every distinct text of a policy the decision log has seen, oldest first."""
    with Store(database) as store:
        versions = store.policy_versions(policy_id)
        known = store.policy_ids() if not versions else []
    if not versions:
        hint = f" It has: {', '.join(known)}." if known else ""
        raise NotFound(f"The log at {store.location} has no policy {policy_id!r}.{hint}")
    if as_json:
        out_console.out(json.dumps([v.to_dict() for v in versions], indent=2), highlight=False)
        return
    table = Table("ref", "version", "hash", "first seen (UTC)", "decisions", "title", box=None)
    for v in versions:
        table.add_row(
            f"@{v.number}",
            escape(v.version),
            v.hash[:12],
            v.first_seen[:19].replace("T", " "),
            str(v.decisions),
            escape(v.title),
        )
    out_console.print(table)


@policy_app.command("diff")
def diff(
    policy_id: Annotated[str, typer.Argument(help="Policy id.")],
    old: Annotated[str, typer.Argument(help="Older version: @N, hash prefix or version label.")],
    new: Annotated[str, typer.Argument(help="Newer version, the same ways.")],
    database: DatabaseOption = None,
) -> None:
    """A unified diff between two recorded texts of a policy."""
    with Store(database) as store:
        a = store.policy_version(policy_id, old)
        b = store.policy_version(policy_id, new)
    lines = difflib.unified_diff(
        a.text.splitlines(keepends=True),
        b.text.splitlines(keepends=True),
        fromfile=f"{policy_id}@{a.number} version {a.version} ({a.hash[:12]})",
        tofile=f"{policy_id}@{b.number} version {b.version} ({b.hash[:12]})",
    )
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    if not text:
        out_console.print("The two versions have the same text.")
        return
    if out_console.is_terminal:
        out_console.print(Syntax(text, "diff", theme="ansi_dark", background_color="default"))
    else:
        out_console.out(text, highlight=False, end="")


def _identity(policy: Policy) -> dict[str, Any]:
    return {
        "id": policy.id,
        "version": policy.version,
        "hash": policy.hash,
        "source": policy.source,
    }


def _structure(policy: Policy) -> dict[str, Any]:
    return {
        **_identity(policy),
        "title": policy.title,
        "output": policy.output.value,
        "threshold": policy.threshold,
        "tokens": count_tokens(policy.body),
        "labels": [
            {"name": lab.name, "violation": lab.violation, "description": lab.description}
            for lab in policy.labels
        ],
        "sections": [
            {
                "kind": s.kind.value,
                "title": s.title,
                "start_line": s.start_line,
                "end_line": s.end_line,
            }
            for s in policy.sections
        ],
        "rules": [{"id": r.id, "line": r.line, "text": r.text} for r in policy.rules],
        "examples": [
            {"line": e.line, "answer": e.answer, "content": e.content} for e in policy.examples
        ],
    }
