"""`magistrate policy ...`: inspect and lint policies."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from magistrate.cli.app import EXIT_USER_ERROR, app, out_console
from magistrate.lint import Severity, count_tokens, lint_policy, output_summary
from magistrate.policy import Policy, builtin_policy_names, load_policy

policy_app = typer.Typer(help="Inspect, lint and list policies.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "dim"}


@policy_app.command("lint")
def lint(
    source: Annotated[str, typer.Argument(help="Policy file or bundled policy name.")],
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
    source: Annotated[str, typer.Argument(help="Policy file or bundled policy name.")],
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
