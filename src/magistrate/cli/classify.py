"""`magistrate classify`: judge content under a policy, or under several in one prompt."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from magistrate.backends import DEFAULT_MODEL, backend_for
from magistrate.cli.app import EXIT_NO_VERDICT, app, counting_progress, err_console, out_console
from magistrate.cli.options import (
    BaseUrlOption,
    CalibrateOption,
    DatabaseOption,
    EffortOption,
    EndpointOption,
    FallbackOption,
    LogContentOption,
    LogOption,
    MaxCharsOption,
    ModelOption,
    ModeOption,
    OnAbstainOption,
    ReadoutOption,
    TimeoutOption,
)
from magistrate.decision import Decision, OnAbstain
from magistrate.engine import Judge, Judgement, judge_all
from magistrate.errors import InputError
from magistrate.item import DEFAULT_MAX_CHARS, Item, decode_content, parse_jsonl
from magistrate.pipeline import Cascade, CascadeResult, load_pipeline
from magistrate.policy import Policy, load_policy
from magistrate.prompt import Effort, Mode
from magistrate.readout.select import choose_readouts
from magistrate.store import Recorder, Store

PolicyOption = Annotated[
    list[str] | None,
    typer.Option(
        "--policy",
        "-p",
        help="A bundled policy name (spam), or a policy file's path (./spam, my-policy.md); a "
        "bare name never reads the working directory. Repeat to judge several policies in "
        "one prompt (one call per item, one decision per policy; the item is flagged "
        "when any policy flags it).",
    ),
]
TextArgument = Annotated[
    str | None, typer.Argument(help="Content to classify, or '-' to read it from stdin.")
]
FileOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help="Many items: a .jsonl file ({'text', 'id', 'label'} per line) or a text file "
        "with one item per line.",
    ),
]


@app.command()
def classify(
    policy: PolicyOption = None,
    text: TextArgument = None,
    file: FileOption = None,
    model: ModelOption = DEFAULT_MODEL,
    base_url: BaseUrlOption = None,
    endpoint: EndpointOption = None,
    mode: ModeOption = Mode.REASON,
    effort: EffortOption = Effort.MEDIUM,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    max_chars: MaxCharsOption = DEFAULT_MAX_CHARS,
    timeout: TimeoutOption = None,
    fallback: FallbackOption = True,
    calibrate: CalibrateOption = True,
    on_abstain: OnAbstainOption = OnAbstain.ERROR,
    log: LogOption = True,
    log_content: LogContentOption = True,
    database: DatabaseOption = None,
    readout: ReadoutOption = None,
    pipeline: Annotated[
        Path | None,
        typer.Option(
            help="Judge with a cascade (a pipeline TOML file naming the policy and its tiers) "
            "instead of --policy; the final decision names the tier that decided.",
        ),
    ] = None,
) -> None:
    """Classify content under a policy: label, rule ids, score and rationale on stdout.

    In score mode, a fitted read-out stored for the policy, model and prompt layout judges
    the item (`magistrate fit`; `--readout none` for the zero-shot score).

    With several --policy options every item is judged under all of them in one prompt
    (score mode reads each policy's label where its answer line begins and applies that
    policy's threshold); --json then prints one object per item with its decisions.

    Exit status 0 when every item got a verdict (or was routed by --on-abstain), 3 when at
    least one did not, 1 on bad input.
    """
    if (pipeline is None) == (not policy):
        # a usage error (exit 2), like any missing option
        raise typer.BadParameter(
            "Give --policy (repeatable) or --pipeline: one of the two.", param_hint="--policy"
        )
    items = _read_items(text, file, max_chars)
    # Open the log before loading the model, so a bad --database fails in a second.
    store = Store(database) if log else None
    if pipeline is not None:
        _classify_pipeline(pipeline, items, store, log_content, as_json)
        return
    settings: dict[str, Any] = {
        "effort": effort,
        "mode": mode,
        "max_chars": max_chars,
        "timeout_s": timeout,
        "fallback": fallback,
        "on_abstain": on_abstain,
        "recorder": Recorder(store, keep_content=log_content) if store else None,
    }
    backend = backend_for(model, base_url=base_url, endpoint=endpoint)
    started = time.perf_counter()
    policies = [load_policy(p) for p in policy or ()]
    readouts = choose_readouts(
        readout, policies, backend, store, mode=mode, combined=len(policies) > 1
    )
    judge = Judge(policies, backend, calibrated=calibrate, readouts=readouts, **settings)
    results = _judge_all(judge, items, as_json)
    elapsed = time.perf_counter() - started
    if store is not None:
        store.close()
    if len(items) > 1:
        _summary([j.violation for j in results], items, judge.policy, elapsed, store)
    if any(d.flagged is None for j in results for d in j.decisions):
        raise typer.Exit(EXIT_NO_VERDICT)


def _classify_pipeline(
    path: Path, items: list[Item], store: Store | None, log_content: bool, as_json: bool
) -> None:
    """Judge the items with a cascade, one line (or JSON object) per final decision."""
    recorder = Recorder(store, keep_content=log_content) if store else None
    cascade = Cascade(load_pipeline(path), store=store, recorder=recorder)
    for tier in cascade.tiers:
        tier.judge.recorder = recorder

    def show(result: CascadeResult) -> None:
        if as_json:
            out_console.out(json.dumps(result.final.to_dict(), ensure_ascii=False), highlight=False)
        else:
            tier = f"[cyan]{escape(result.decided_by or 'review')}[/]  "
            out_console.print(tier + format_decision(result.final))

    try:
        results = asyncio.run(cascade.judge_all(items, on_result=show))
    finally:
        if store is not None:
            store.close()
    if any(r.final.flagged is None for r in results):
        raise typer.Exit(EXIT_NO_VERDICT)


def _read_items(text: str | None, file: Path | None, max_chars: int) -> list[Item]:
    if (text is None) == (file is None):
        raise InputError(
            "Give the content as an argument, '-' for stdin, or --file PATH (exactly one)."
        )
    if file is not None:
        return _read_file(file, max_chars)
    if text == "-":
        return [
            Item.of(decode_content(sys.stdin.buffer.read(), where="stdin"), max_chars=max_chars)
        ]
    return [Item.of(text or "", max_chars=max_chars)]


def _read_file(path: Path, max_chars: int) -> list[Item]:
    if not path.is_file():
        raise InputError(f"Input file {str(path)!r} does not exist or is not a file.")
    data = decode_content(path.read_bytes(), where=f"file {str(path)!r}")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        items = parse_jsonl(data, max_chars=max_chars, where=f"file {str(path)!r}")
    else:
        items = [
            Item.of(line, id=str(n), max_chars=max_chars)
            for n, line in enumerate(data.splitlines(), 1)
            if line.strip()
        ]
    if not items:
        raise InputError(f"File {str(path)!r} holds no items to classify.")
    return items


def _show(judgement: Judgement, as_json: bool) -> None:
    """Print an item's verdict as it comes: one line per policy, and with several policies
    the any-policy answer; reasoning dimmed on stderr."""
    decisions = judgement.decisions
    if len(decisions) == 1:
        if as_json:
            out_console.out(json.dumps(decisions[0].to_dict(), ensure_ascii=False), highlight=False)
        else:
            out_console.print(format_decision(decisions[0]))
    elif as_json:
        out_console.out(json.dumps(judgement.to_dict(), ensure_ascii=False), highlight=False)
    else:
        for d in decisions:
            out_console.print(f"[cyan]{escape(d.policy_id)}[/]  " + format_decision(d))
        word = {True: "[bold red]FLAGGED[/]", False: "[bold green]OK[/]", None: "NO ANSWER"}
        by = ", ".join(judgement.flagged_by)
        out_console.print(f"  -> {word[judgement.flagged]}" + (f" by {escape(by)}" if by else ""))
    if decisions[0].reasoning and not as_json:
        err_console.print(f"[dim]{escape(decisions[0].reasoning)}[/dim]")


def _judge_all(judge: Judge, items: list[Item], as_json: bool) -> list[Judgement]:
    """Judge the items through `judge_many`, showing each result as it comes; with more than
    one item, under a progress bar on stderr."""
    if len(items) == 1:
        result = asyncio.run(judge_all(judge, items))
        _show(result[0], as_json)
        return result
    with counting_progress() as progress:
        task = progress.add_task("classifying", total=len(items))

        def advance(judgement: Judgement) -> None:
            _show(judgement, as_json)
            progress.advance(task)

        return asyncio.run(judge_all(judge, items, on_result=advance))


def format_decision(decision: Decision) -> str:
    """One human line: id, label, category, rule ids, score, rationale (rich markup)."""
    v = decision.verdict
    parts = [f"[bold]{escape(decision.item_id)}[/]"] if decision.item_id else []
    if not v.ok:
        parts.append(f"[bold yellow]NO VERDICT[/] ({v.status.value}) {escape(v.detail or '')}")
        if decision.flagged is not None:
            routed = "FLAGGED" if decision.flagged else "ALLOWED"
            parts.append(f"[bold]-> {routed}[/] ({decision.on_abstain.value})")
        return "  ".join(parts)
    word = "[bold red]VIOLATION[/]" if v.violation else "[bold green]OK[/]       "
    parts.append(f"{word} label={escape(str(v.label))}")
    if v.category:
        parts.append(f"category={escape(v.category)}")
    parts.append(f"rules={escape(','.join(v.rule_ids)) or '-'}")
    if v.unknown_rule_ids:
        parts.append(f"[yellow]unknown-rules={escape(','.join(v.unknown_rule_ids))}[/]")
    if v.score is not None:
        parts.append(f"score={v.score:.3f}")
    if v.rationale:
        parts.append(f"[dim]{escape(v.rationale)}[/]")
    return "  ".join(parts)


def _gold(value: Any, policy: Policy) -> bool | None:
    """A gold label from a JSONL `label` field: 0/1, true/false, or a policy label name."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        label = policy.label(value)
        if label is not None:
            return label.violation
        if value.strip().lower() in ("0", "1", "true", "false"):
            return value.strip().lower() in ("1", "true")
    return None


def _summary(
    verdicts: list[bool | None],
    items: list[Item],
    policy: Policy,
    elapsed: float,
    store: Store | None,
) -> None:
    """Counts, speed and, where the items carry labels, accuracy; `verdicts` holds each
    item's violation flag (None: no verdict), under any policy when there are several."""
    n = len(verdicts)
    flagged = sum(1 for f in verdicts if f)
    missing = sum(1 for f in verdicts if f is None)
    line = (
        f"{n} items: {flagged} violations, {n - flagged - missing} not, {missing} without a "
        f"verdict · {elapsed / n:.2f} s/item"
    )
    gold = [_gold(item.metadata.get("label"), policy) for item in items]
    pairs = [(f, g) for f, g in zip(verdicts, gold, strict=True) if g is not None]
    if pairs:
        right = sum(1 for f, g in pairs if f is g)
        line += f" · accuracy {right}/{len(pairs)} = {right / len(pairs):.1%} against the labels"
    if store is not None:
        line += f" · recorded in {store.location}"
    err_console.print(escape(line))
