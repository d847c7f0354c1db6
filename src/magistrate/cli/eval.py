"""`magistrate eval`: measure a policy on a labelled dataset; `eval compare` two runs."""

from __future__ import annotations

import asyncio
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from magistrate.backends import DEFAULT_MODEL, Backend, backend_for
from magistrate.cli.app import app, counting_progress, err_console, out_console
from magistrate.cli.options import (
    BaseUrlOption,
    CacheOption,
    CalibrateOption,
    DatabaseOption,
    EffortOption,
    EndpointOption,
    IdColOption,
    MaxErrorsOption,
    ModelOption,
    ModeOption,
    ReadoutOption,
    TextColOption,
    TimeoutOption,
)
from magistrate.decision import Decision, OnAbstain
from magistrate.engine import Judge, Judgement
from magistrate.errors import ConfigError
from magistrate.evaluate.cascade import PipelineReport, evaluate_pipeline
from magistrate.evaluate.compare import compare as compare_results
from magistrate.evaluate.datasets import DATA_DIR_ENV, Columns, Dataset, load_dataset
from magistrate.evaluate.report import (
    AnyMetrics,
    EvalReport,
    Interval,
    JSONValue,
    Metrics,
    load_result,
)
from magistrate.evaluate.report_html import render_compare_html, render_html
from magistrate.evaluate.report_table import (
    F1Cell,
    MultiCell,
    PublishedRow,
    TableRow,
    published_rows,
    table_rows,
)
from magistrate.evaluate.runner import (
    EvalResult,
    EvalRun,
    MultiEvalResult,
    evaluate,
    examples_to_judge,
    labels_for,
)
from magistrate.pipeline import Cascade, load_pipeline
from magistrate.policy import load_policy
from magistrate.prompt import Effort, Mode
from magistrate.readout.select import choose_readouts
from magistrate.store import Store


class Strategy(StrEnum):
    """How several policies are judged."""

    SEPARATE = "separate"
    COMBINED = "combined"
    BOTH = "both"


eval_app = typer.Typer(
    help="Evaluate a policy on labelled data (run with --dataset/--policy), or compare runs.",
    invoke_without_command=True,
)
app.add_typer(eval_app, name="eval")


DatasetOption = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="Built-in name (openai-moderation-2022, toxicchat[:human|:train], sms-spam) "
        "or a .jsonl/.csv/.tsv/.parquet file.",
    ),
]
PoliciesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--policy",
        "-p",
        help="A bundled policy name (hate), or a policy file's path (./hate, my.md). Repeat "
        "for several policies, each judged on "
        "the dataset label of its name (multi-policy exact match); one whose name is no "
        "label counts only towards the any-policy answer on the overall label.",
    ),
]
StrategyOption = Annotated[
    Strategy,
    typer.Option(
        help="Several policies: one call per policy (separate), one prompt for all "
        "(combined; in score mode each policy's label is read where its line begins), or "
        "both side by side.",
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(envvar=DATA_DIR_ENV, help="Folder holding the built-in datasets."),
]
LabelColOption = Annotated[
    list[str] | None,
    typer.Option(
        help="Column with the gold label. Repeat to keep several labels by name, one per "
        "policy judged (the first is the single-policy gold).",
    ),
]
PositiveOption = Annotated[
    list[str] | None,
    typer.Option(help="A label value that means violating (repeat for several)."),
]
ShapeOption = Annotated[
    str,
    typer.Option(
        help="File shape: rows (a text and a label per row) or teen-safety (a prompt, a "
        "response and a label for each per row).",
    ),
]
TargetOption = Annotated[
    str, typer.Option(help="teen-safety shape: judge the prompt or the response.")
]
PartOption = Annotated[
    str | None,
    typer.Option(
        help="Only one fixed half of the dataset (stratified by gold, by a hash of each "
        "item id): choose thresholds and wording on 'tune', report figures on 'report'.",
    ),
]
LimitOption = Annotated[int | None, typer.Option(min=1, help="Only the first N items.")]
SampleOption = Annotated[
    int | None, typer.Option(min=1, help="A stratified random sample of N items.")
]
SeedOption = Annotated[int, typer.Option(help="Seed for --sample and the threshold split.")]
ThresholdSplitOption = Annotated[
    float | None,
    typer.Option(
        min=0.05, max=0.95, help="Choose the threshold on this fraction, report on the rest."
    ),
]
EvalOnAbstainOption = Annotated[
    OnAbstain,
    typer.Option(
        help="What an item without a verdict counts as when routed (error, fail-closed, "
        "fail-open); recorded with each decision, so it is part of the cache key.",
    ),
]
OutputOption = Annotated[Path, typer.Option("--output", "-o", help="Folder for the result JSON.")]


@eval_app.callback()
def run(
    ctx: typer.Context,
    dataset: DatasetOption = None,
    policy: PoliciesOption = None,
    strategy: StrategyOption = Strategy.SEPARATE,
    model: ModelOption = DEFAULT_MODEL,
    base_url: BaseUrlOption = None,
    endpoint: EndpointOption = None,
    mode: ModeOption = Mode.SCORE,
    effort: EffortOption = Effort.MEDIUM,
    data_dir: DataDirOption = None,
    text_col: TextColOption = None,
    label_col: LabelColOption = None,
    id_col: IdColOption = None,
    positive: PositiveOption = None,
    shape: ShapeOption = "rows",
    target: TargetOption = "prompt",
    part: PartOption = None,
    limit: LimitOption = None,
    sample: SampleOption = None,
    seed: SeedOption = 0,
    max_errors: MaxErrorsOption = None,
    threshold_split: ThresholdSplitOption = None,
    calibrate: CalibrateOption = True,
    cache: CacheOption = True,
    timeout: TimeoutOption = None,
    on_abstain: EvalOnAbstainOption = OnAbstain.ERROR,
    output: OutputOption = Path("eval-runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    database: DatabaseOption = None,
    readout: ReadoutOption = None,
    pipeline: Annotated[
        Path | None,
        typer.Option(
            help="Evaluate a cascade (a pipeline TOML file) instead of a policy: per tier the "
            "share decided, F1 and cost, and the whole against its last tier alone.",
        ),
    ] = None,
    baseline: Annotated[
        bool, typer.Option(help="With --pipeline: also run the last tier on every item.")
    ] = True,
) -> None:
    """Judge every labelled item of a dataset under a policy and report P/R/F1 and more.

    In score mode a fitted read-out bound to the policy is used when one is stored
    (`--readout` to choose or turn it off); the zero-shot figures are reported beside its
    own. A read-out fitted on any of the items is refused.

    Writes OUTPUT/<run id>.json (spec, metrics, per-item rows). Every decision goes into the
    decision log, which is also the cache: a re-run only judges what changed.
    """
    if ctx.invoked_subcommand is not None:
        return
    columns = Columns(
        text=text_col,
        label=label_col[0] if label_col else None,
        labels=tuple(label_col or ())[1:] if len(label_col or ()) > 1 else (),
        id=id_col,
        positive=frozenset(positive or ()),
        shape=shape,
        target=target,
    )
    if pipeline is not None:
        if dataset is None or policy or readout:
            raise ConfigError(
                "Give --dataset with --pipeline; the pipeline file names the policy, and each "
                "tier its model, mode and read-out (no --policy or --readout)."
            )
        data = _load(dataset, data_dir, columns, 1, part, sample, limit, seed)
        _eval_pipeline(pipeline, data, database, cache, baseline, seed, output, as_json)
        return
    if dataset is None or not policy:
        raise ConfigError("Give --dataset and --policy (or a subcommand: compare, report).")
    data = _load(dataset, data_dir, columns, len(policy), part, sample, limit, seed)
    store = Store(database)
    backend = backend_for(model, base_url=base_url, endpoint=endpoint)
    output.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "mode": mode,
        "effort": effort,
        "timeout_s": timeout,
        "on_abstain": on_abstain,
        "calibrated": calibrate,
    }
    try:
        plans = _plans(policy, backend, strategy, settings, store, readout)
        runs = [
            _evaluate(data, judges, store, cache, max_errors, threshold_split, seed)
            for judges in plans
        ]
    finally:
        store.close()
    if len(policy) > 1:
        _report_multi([r.multi for r in runs if r.multi is not None], output, as_json)
        return
    _report_single(runs[0].runs[0], output, as_json)


def _eval_pipeline(
    path: Path,
    data: Dataset,
    database: str | None,
    cache: bool,
    baseline: bool,
    seed: int,
    output: Path,
    as_json: bool,
) -> None:
    """Run a cascade over the dataset, write `<id>.pipeline.json`, print the tiers."""
    spec = load_pipeline(path)
    store = Store(database)
    try:
        cascade = Cascade(spec, store=store)
        n = len([e for e in data.examples if e.gold is not None])
        with counting_progress() as progress:
            task = progress.add_task(f"{spec.id} on {data.name}", total=n * (2 if baseline else 1))

            def advance(_: object) -> None:
                progress.update(task, advance=1)

            result = asyncio.run(
                evaluate_pipeline(
                    data, cascade, store=store, use_cache=cache, baseline=baseline, seed=seed,
                    on_result=advance,
                )
            )  # fmt: skip
    finally:
        store.close()
    report = result.report
    output.mkdir(parents=True, exist_ok=True)
    written = output / f"{report.id}.pipeline.json"
    _write_json(written, report.document())
    if as_json:
        summary = report.model_dump(mode="json", by_alias=True, exclude={"items"})
        out_console.out(json.dumps({**summary, "result": str(written)}, indent=2), highlight=False)
        return
    _print_pipeline(report)
    err_console.print(f"Result: {escape(str(written))}")


def _print_pipeline(report: PipelineReport) -> None:
    out_console.print(
        f"[bold]{escape(report.dataset.name)}[/] ({report.dataset.items} items) · pipeline "
        f"{escape(report.pipeline)} · policy {escape(report.policy)}"
    )
    table = Table(
        "tier",
        "mode",
        "band",
        "reached",
        "decided",
        "F1 on decided",
        "s / item",
        "tokens / item",
        box=None,
    )
    for t in report.tiers:
        band = f"[{t.band[0]:.3f}, {min(t.band[1], 1.0):.3f})" if t.band else "-"
        table.add_row(
            escape(t.name),
            t.mode + (" + read-out" if t.readout else ""),
            band,
            str(t.reached),
            f"{t.decided} ({t.share_decided:.1%})",
            _num(t.f1),
            f"{t.cost.seconds_per_item:.2f}",
            f"{t.cost.tokens_per_item:.0f}",
        )
    rows = [("cascade", report.cascade)]
    if report.baseline is not None:
        rows.append((f"last tier alone ({report.tiers[-1].name})", report.baseline))
    for name, fig in rows:
        table.add_row(
            f"[bold]{escape(name)}[/]", "", "", str(fig.n),
            f"{fig.abstained} to review" if name == "cascade" else f"{fig.abstained} abstained",
            f"{_ci(fig.f1, fig.ci95_f1)}", f"{fig.cost.seconds_per_item:.2f}",
            f"{fig.cost.tokens_per_item:.0f}",
        )  # fmt: skip
    out_console.print(table)
    if report.speedup is not None:
        out_console.print(
            f"Seconds per item: the last tier alone costs {report.speedup:.1f}x the cascade."
        )


def _load(
    dataset: str,
    data_dir: Path | None,
    columns: Columns,
    policies: int,
    part: str | None,
    sample: int | None,
    limit: int | None,
    seed: int,
) -> Dataset:
    """The dataset, cut to the part, sample and limit asked for (for a single policy, only
    the items with a gold label)."""
    data = load_dataset(dataset, data_dir_path=data_dir, columns=columns)
    if policies == 1:
        data = data.labelled()
    if part is not None:
        data = data.part(part)
    if sample is not None:
        data = data.sample(sample, seed=seed)
    if limit is not None:
        data = data.limit(limit)
    if not len(data):
        raise ConfigError(f"Dataset {dataset!r} has no items with a gold label.")
    return data


def _plans(
    policies: list[str],
    backend: Backend,
    strategy: Strategy,
    settings: dict[str, Any],
    store: Store | None = None,
    readout: list[str] | None = None,
) -> list[list[Judge]]:
    """The judges of each strategy asked for: one judge per policy (a single policy, or
    `separate`, each with its read-out when one applies), and one judge of all of them
    (`combined`)."""
    plans: list[list[Judge]] = []
    if len(policies) == 1 or strategy is not Strategy.COMBINED:
        loaded = [load_policy(p) for p in policies]
        readouts = choose_readouts(readout, loaded, backend, store, mode=settings["mode"])
        by_policy = {r.binding.policy_id: r for r in readouts}
        unused = [r.id for r in readouts if r.binding.policy_id not in {p.id for p in loaded}]
        if unused:
            raise ConfigError(f"Read-out {unused[0]} is for none of the policies given.")
        plans.append(
            [
                Judge(
                    p, backend, readouts=[by_policy[p.id]] if p.id in by_policy else (), **settings
                )
                for p in loaded
            ]
        )
    if len(policies) > 1 and strategy is not Strategy.SEPARATE:
        plans.append([Judge(policies, backend, strategy="combined", **settings)])
    return plans


def _report_single(result: EvalResult, output: Path, as_json: bool) -> None:
    """Write one policy's result and its page, then print its metrics."""
    path = _write_result(result, output)
    if not as_json:
        _print_summary(result, path)
        return
    summary = {
        "id": result.id,
        "result": str(path),
        "spec": result.spec.document(),
        "metrics": result.metrics.model_dump(mode="json", exclude={"pr_curve"}),
    }
    out_console.out(json.dumps(summary, indent=2), highlight=False)


def _evaluate(
    data: Dataset,
    judges: list[Judge],
    store: Store,
    cache: bool,
    max_errors: float | None,
    threshold_split: float | None,
    seed: int,
) -> EvalRun:
    """`evaluate` under a progress bar on stderr (running P/R/F1 for a single policy)."""
    ids = [p.id for j in judges for p in j.policies]
    policies = len(ids)
    items = len(examples_to_judge(data, [None] if policies == 1 else labels_for(ids, data)))
    if policies == 1:
        what = f"eval {data.name}"
    else:
        how = "combined" if judges[0].combined else "separate"
        what = f"{policies} policies x {items} items ({how})"
    gold = {e.id: e.gold for e in data.examples}
    tally = {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "abstained": 0}
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(what, total=items * len(judges), stats="")

        def advance(judgement: Judgement) -> None:
            stats = ""
            if policies == 1:
                _tally(tally, gold.get(judgement.item.id or ""), judgement.decisions[0])
                stats = _running_stats(tally)
            progress.update(task, advance=1, stats=stats)

        return asyncio.run(
            evaluate(
                data,
                judges,
                store=store,
                use_cache=cache,
                max_errors=max_errors,
                threshold_split=threshold_split,
                seed=seed,
                on_result=advance,
            )
        )


def _tally(counts: dict[str, int], gold: bool | None, decision: Decision) -> None:
    pred = decision.violation if decision.ok else None
    if pred is None:
        counts["abstained"] += 1
    elif gold is not None:
        counts["tp" if pred and gold else "fp" if pred else "fn" if gold else "tn"] += 1


def _running_stats(c: dict[str, int]) -> str:
    p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return f"P {p:.2f} R {r:.2f} F1 {f1:.3f} abstain {c['abstained']}"


def _write_result(result: EvalResult, output: Path) -> Path:
    path = output / f"{result.id}.json"
    report = result.report()
    _write_json(path, report.document())
    _write_html(report, path.with_suffix(".html"))
    return path


def _write_json(path: Path, payload: JSONValue) -> None:
    """Write-then-rename: a reader never sees half a file, a crash leaves none."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, ensure_ascii=False, indent=1), "utf-8")
    partial.replace(path)


def _report_multi(results: list[MultiEvalResult], output: Path, as_json: bool) -> None:
    """Write each strategy's per-policy results and `<id>.multi.json`, then print them."""
    written = []
    for multi in results:
        paths = [_write_result(run, output) for run in multi.runs]
        report = multi.report(results=[str(p) for p in paths])
        path = output / f"{multi.id}.multi.json"
        _write_json(path, report.document())
        written.append((report, path))
    if as_json:
        summaries = [
            {**report.model_dump(mode="json", by_alias=True, exclude={"items"}), "result": str(p)}
            for report, p in written
        ]
        payload = summaries[0] if len(summaries) == 1 else {"strategies": summaries}
        out_console.out(json.dumps(payload, indent=2), highlight=False)
        return
    for multi, (_, path) in zip(results, written, strict=True):
        _print_multi(multi)
        err_console.print(f"Result: {escape(str(path))}")


def _print_multi(multi: MultiEvalResult) -> None:
    table = Table(
        "policy",
        "label",
        "F1",
        "precision",
        "recall",
        "parse",
        "items",
        box=None,
        title="policies judged "
        + ("in one prompt" if multi.strategy == "combined" else "separately"),
        title_justify="left",
    )
    for run, label in zip(multi.runs, multi.label_names, strict=True):
        mtr = run.metrics
        if label is None:
            table.add_row(escape(run.spec.policy.id), "(none: counts in the any-policy answer)")
            continue
        table.add_row(
            escape(run.spec.policy.id),
            escape(label),
            _ci(mtr.f1, mtr.ci95.f1),
            f"{mtr.precision:.3f}",
            f"{mtr.recall:.3f}",
            f"{mtr.parse_rate:.3f}",
            str(run.spec.dataset.items),
        )
    out_console.print(table)
    mm = multi.metrics
    out_console.print(
        f"exact match {mm.exact_match:.3f} over {mm.exact_match_items} items with every "
        f"label known · {mm.calls_per_item} call(s), {mm.seconds_per_item:.2f} s and "
        f"{mm.tokens_per_item:.0f} tokens per item ({multi.strategy})"
    )
    if mm.any is not None:
        out_console.print(_any_line(mm.any))


def _any_line(anyone: AnyMetrics) -> str:
    """The any-policy answer of a multi-policy run, in one line."""
    line = (
        f"any policy flags vs the binary label: F1 {_ci(anyone.f1, anyone.ci95_f1)} "
        f"P {anyone.precision:.3f} R {anyone.recall:.3f} over {anyone.items} items"
    )
    if anyone.scores is not None:
        sc = anyone.scores
        line += (
            f" · max-score PR-AUC {sc.pr_auc:.3f}, best F1 {sc.best_f1:.3f} at "
            f"{sc.best_threshold:.3f} (chosen on these items)"
        )
    if anyone.threshold_transfer is not None:
        t = anyone.threshold_transfer
        line += (
            f" · threshold {t.threshold:.3f} on max score -> F1 "
            f"{_ci(t.test.f1, t.test_ci95_f1)} on {t.test_items}"
        )
    return line


def _write_html(report: EvalReport, path: Path) -> None:
    partial = path.with_suffix(".html.partial")
    partial.write_text(render_html(report), "utf-8")
    partial.replace(path)


@eval_app.command("report")
def report(
    result: Annotated[Path, typer.Argument(help="Result JSON written by `magistrate eval`.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file (default: beside it).")
    ] = None,
) -> None:
    """Write the HTML report of a result again (it opens in a browser with no server)."""
    target = output or result.with_suffix(".html")
    _write_html(load_result(result), target)
    err_console.print(f"Wrote {escape(str(target))}")


def _ci(value: float, ci: Interval | None) -> str:
    if not ci:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _print_summary(result: EvalResult, path: Path) -> None:
    mtr, spec = result.metrics, result.spec
    out_console.print(
        f"[bold]{escape(spec.dataset.name)}[/] ({spec.dataset.items} items, "
        f"{mtr.positives} positive) · policy {escape(spec.policy.id)}@"
        f"{escape(spec.policy.version)} {spec.policy.hash[:12]} · "
        f"{escape(spec.backend)} · {spec.mode} mode · effort {spec.effort}"
    )
    table = Table("metric", "value", box=None)
    table.add_row("F1 (95% CI)", _ci(mtr.f1, mtr.ci95.f1))
    table.add_row("precision", _ci(mtr.precision, mtr.ci95.precision))
    table.add_row("recall", _ci(mtr.recall, mtr.ci95.recall))
    table.add_row("accuracy", f"{mtr.accuracy:.3f}")
    table.add_row("kappa / MCC", f"{_num(mtr.kappa)} / {_num(mtr.mcc)}")
    table.add_row("parse rate", f"{mtr.parse_rate:.3f}")
    table.add_row("abstain rate", f"{mtr.abstain_rate:.3f} (strict F1 {mtr.strict_f1:.3f})")
    _add_score_rows(table, mtr)
    lat = mtr.latency_s
    if lat.p50 is not None and lat.p95 is not None:
        table.add_row("latency p50 / p95", f"{lat.p50:.2f} s / {lat.p95:.2f} s")
    tok = mtr.tokens_per_item
    table.add_row("tokens / item", f"{tok.prompt:.0f} prompt, {tok.completion:.1f} completion")
    table.add_row("from cache", f"{mtr.cached_items} of {spec.dataset.items}")
    if mtr.zero_shot is not None:
        z = mtr.zero_shot
        table.add_row(
            "read-out", f"{z.readout} (threshold {spec.options.get('readout_threshold', '-')})"
        )
        ranking = (
            f"; PR-AUC / ROC-AUC {z.scores.pr_auc:.3f} / {z.scores.roc_auc:.3f}" if z.scores else ""
        )
        table.add_row(
            "zero-shot, same items",
            f"F1 {_ci(z.f1, z.ci95_f1)} P {z.precision:.3f} R {z.recall:.3f} at the policy's "
            f"threshold {z.threshold:g}{ranking}",
        )
    out_console.print(table)
    err_console.print(
        f"Result: {escape(str(path))}  Report: {escape(str(path.with_suffix('.html')))}"
    )


def _add_score_rows(table: Table, mtr: Metrics) -> None:
    """The rows only a scored run has: ranking quality and thresholds."""
    if mtr.scores is not None:
        s = mtr.scores
        table.add_row("PR-AUC / ROC-AUC", f"{s.pr_auc:.3f} / {s.roc_auc:.3f}")
        table.add_row(
            "best-F1 threshold",
            f"{s.best_threshold:.3f} (F1 {s.best_f1:.3f}; chosen on these items: to use "
            "one, set `threshold:` in the policy's front matter)",
        )
    if mtr.threshold_transfer is not None:
        t = mtr.threshold_transfer
        table.add_row(
            "threshold transfer",
            f"t={t.threshold:.3f} from {t.tune_items} items -> F1 "
            f"{_ci(t.test.f1, t.test_ci95_f1)} on {t.test_items}",
        )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@eval_app.command("compare")
def compare(
    run_a: Annotated[Path, typer.Argument(help="Result JSON of the baseline run.")],
    run_b: Annotated[Path, typer.Argument(help="Result JSON of the new run.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
    html_path: Annotated[
        Path | None, typer.Option("--html", help="Also write the comparison as an HTML page.")
    ] = None,
    show: Annotated[int, typer.Option(help="Flipped items to print.")] = 20,
) -> None:
    """Metric deltas (B - A) with paired 95% intervals, and the items whose verdict flipped."""
    report = compare_results(load_result(run_a), load_result(run_b))
    if html_path is not None:
        partial = html_path.with_suffix(".html.partial")
        partial.write_text(render_compare_html(report), "utf-8")
        partial.replace(html_path)
        err_console.print(f"Wrote {escape(str(html_path))}")
    if as_json:
        dumped = report.model_dump(mode="json")
        out_console.out(json.dumps(dumped, ensure_ascii=False, indent=1), highlight=False)
        return
    sa, sb = report.a.spec, report.b.spec
    out_console.print(
        f"A: {escape(sa.policy.id)}@{escape(sa.policy.version)} "
        f"{sa.policy.hash[:12]} {escape(sa.backend)} {sa.mode}\n"
        f"B: {escape(sb.policy.id)}@{escape(sb.policy.version)} "
        f"{sb.policy.hash[:12]} {escape(sb.backend)} {sb.mode}\n"
        f"{report.shared_items} shared items"
    )
    table = Table("metric", "A", "B", "B - A (95% CI)", box=None)
    for name, d in report.deltas.items():
        lo, hi = d.ci95
        table.add_row(name, f"{d.a:.3f}", f"{d.b:.3f}", f"{d.delta:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    out_console.print(table)
    out_console.print(
        f"{len(report.flips)} flipped: {report.fixed} now right, {report.broken} now wrong"
    )
    for flip in report.flips[:show]:
        mark = "[green]fixed[/]" if flip.fixed else "[red]broken[/]"
        text = " ".join(flip.text.split())[:100]
        why = escape(str(flip.b.rationale or ""))
        out_console.print(
            f"{mark} {escape(flip.id)} gold={flip.gold} A={flip.a.pred} "
            f"B={flip.b.pred} {escape(text)}\n    B: {why}"
        )


@eval_app.command("report-table")
def report_table(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    database: DatabaseOption = None,
) -> None:
    """The technical report's Table 2 layout for your runs, beside the published rows."""
    with Store(database) as store:
        ours = table_rows(store.runs(limit=10_000))
    published = published_rows()
    if as_json:
        tables = {
            "ours": [r.model_dump(mode="json") for r in ours],
            "published": [p.model_dump(mode="json") for p in published],
        }
        out_console.out(json.dumps(tables, indent=2))
        return
    out_console.print(_ours_table(ours))
    out_console.print(_published_table(published))


def _ours_table(ours: list[TableRow]) -> Table:
    """The runs measured here, one row per backend, mode and effort."""
    table = Table(
        "model (mode, effort)",
        "multi-policy acc.",
        "OpenAI Mod 2022 F1",
        "ToxicChat F1",
        box=None,
        title="Measured here (F1 x100, 95% CI; items)",
        title_justify="left",
    )
    for row in ours:
        table.add_row(
            escape(f"{row.backend} ({row.mode}, {row.effort})"),
            _multi_cell(row.multi_policy_accuracy),
            _f1_cell(row.oai_mod_f1),
            _f1_cell(row.toxicchat_f1),
        )
    if not ours:
        table.add_row("(no runs on openai-moderation-2022 or toxicchat yet)", "", "", "")
    return table


def _f1_cell(entry: F1Cell | None) -> str:
    if entry is None:
        return "-"
    ci = entry.ci95
    interval = f" [{ci[0] * 100:.1f}, {ci[1] * 100:.1f}]" if ci else ""
    return f"{entry.f1 * 100:.1f}{interval} (n={entry.items}, {entry.policy})"


def _multi_cell(entry: MultiCell | None) -> str:
    if entry is None:
        return "-"
    return (
        f"{entry.exact_match * 100:.1f}% (n={entry.items}, {entry.policies} "
        f"policies {entry.strategy}, {escape(entry.dataset)})"
    )


def _published_table(published: list[PublishedRow]) -> Table:
    """The technical report's own rows, for reference."""
    ref = Table(
        "model",
        "multi-policy acc.",
        "OpenAI Mod 2022 F1",
        "ToxicChat F1",
        box=None,
        title="\nPublished in the gpt-oss-safeguard technical report (OpenAI's own "
        "prompts and harness; for reference, not reproduced here)",
        title_justify="left",
    )
    for p in published:
        ref.add_row(
            p.model,
            f"{p.multi_policy_accuracy:.1f}%",
            f"{p.oai_mod_f1:.1f}",
            f"{p.toxicchat_f1:.1f}",
        )
    return ref
