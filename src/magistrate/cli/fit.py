"""`magistrate fit`: fit a read-out on labelled data; `fit list`, `fit show` the stored ones."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from magistrate.backends import DEFAULT_MODEL, backend_for
from magistrate.cli.app import app, counting_progress, err_console, out_console
from magistrate.cli.eval import (
    DataDirOption,
    DatasetOption,
    LabelColOption,
    LimitOption,
    PartOption,
    PositiveOption,
    SampleOption,
    SeedOption,
    _load,
)
from magistrate.cli.options import DatabaseOption, IdColOption, ModelOption, TextColOption
from magistrate.engine import Judgement
from magistrate.errors import ConfigError
from magistrate.evaluate.datasets import BUILTIN, Columns, Dataset, load_dataset
from magistrate.item import Item
from magistrate.policy import load_policy
from magistrate.readout.artefact import ReadOut
from magistrate.readout.collect import FitResult, fit_readout
from magistrate.readout.fit import Target
from magistrate.store import Store

fit_app = typer.Typer(
    help="Fit a read-out (a probe on the model's hidden state under a policy) on labelled "
    "data, or list and show the stored ones.",
    invoke_without_command=True,
)
app.add_typer(fit_app, name="fit")

REPORT = "report"


@fit_app.callback()
def run(
    ctx: typer.Context,
    policy: Annotated[
        str | None,
        typer.Option("--policy", "-p", help="A bundled policy name or a policy file."),
    ] = None,
    dataset: DatasetOption = None,
    data_dir: DataDirOption = None,
    text_col: TextColOption = None,
    label_col: LabelColOption = None,
    id_col: IdColOption = None,
    positive: PositiveOption = None,
    part: PartOption = None,
    sample: SampleOption = None,
    limit: LimitOption = None,
    seed: SeedOption = 0,
    target: Annotated[
        str,
        typer.Option(help="Operating point: f1 (best F1), precision=P or recall=R."),
    ] = "f1",
    review_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Fit a review band around the threshold holding this share of the items "
            "(where the read-out is unsure; a pipeline sends them on). 0 for none.",
        ),
    ] = 0.1,
    band: Annotated[
        str | None,
        typer.Option(help="An explicit review band LOW,HIGH instead of --review-share."),
    ] = None,
    folds: Annotated[int, typer.Option(min=2, max=20, help="Cross-validation folds.")] = 5,
    state: Annotated[
        list[str] | None,
        typer.Option(
            help="A hidden state to try (repeatable): final-norm@label, or layer-K@label for "
            "the residual stream after block K (0-based). Default: the final output and "
            "blocks at 45, 55, 65 and 75% of the depth; the best out of fold is kept."
        ),
    ] = None,
    drop_overlap: Annotated[
        bool,
        typer.Option(
            help="Leave out items whose content is also in the dataset's report part "
            "(otherwise such overlap is refused)."
        ),
    ] = False,
    model: ModelOption = DEFAULT_MODEL,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the read-out to this file.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    database: DatabaseOption = None,
) -> None:
    """Judge labelled items in score mode, keep the hidden state at the label position, and
    fit a regularised logistic regression on it (chosen by cross-validation).

    The read-out is stored in the decision log with the policy's versions, bound to the
    policy text, the model file and the prompt layout; classify, eval, batch and serve use
    it in score mode from then on (`--readout` to choose or turn it off).
    """
    if ctx.invoked_subcommand is not None:
        return
    if policy is None or dataset is None:
        raise ConfigError("Give --policy and --dataset (or a subcommand: list, show).")
    if part == REPORT:
        raise ConfigError(
            "Refusing to fit on --part report: figures are reported on that part, so a "
            "read-out fitted there would be measured on what it learnt. Fit on --part tune "
            "or another split (e.g. toxicchat:train)."
        )
    goal = Target.parse(target)
    explicit_band = _band(band)
    pol = load_policy(policy)
    columns = Columns(
        text=text_col,
        label=label_col[0] if label_col else None,
        id=id_col,
        positive=frozenset(positive or ()),
    )
    data = _load(dataset, data_dir, columns, 1, part, sample, limit, seed)
    held_out, held_name = _report_part(dataset, data_dir)
    backend = backend_for(model)
    store = Store(database)
    try:
        result = _fit(
            pol, data, backend, store, goal, review_share, explicit_band, folds, seed,
            held_out, held_name, drop_overlap, tuple(state or ()),
        )  # fmt: skip
        store.readouts.add(result.readout, pol)
    finally:
        store.close()
    if output is not None:
        result.readout.save(output)
    if as_json:
        payload: dict[str, Any] = {
            "readout": json.loads(result.readout.to_json()),
            "abstained": result.abstained,
            "dropped": result.dropped,
            "run_id": result.run_id,
            "file": str(output) if output else None,
        }
        payload["readout"]["trained_on"].pop("item_hashes")
        for key in ("mean", "scale", "coef"):
            payload["readout"].pop(key)
        out_console.out(json.dumps(payload, indent=2), highlight=False)
        return
    _print(result, output)


def _fit(
    policy: Any,
    data: Dataset,
    backend: Any,
    store: Store,
    goal: Target,
    review_share: float,
    band: tuple[float, float] | None,
    folds: int,
    seed: int,
    held_out: frozenset[str],
    held_name: str,
    drop_overlap: bool,
    kinds: tuple[str, ...],
) -> FitResult:
    with counting_progress() as progress:
        task = progress.add_task(f"fit {policy.id} on {data.name}", total=len(data))

        def advance(_: Judgement) -> None:
            progress.update(task, advance=1)

        return asyncio.run(
            fit_readout(
                policy,
                data,
                backend,
                target=goal,
                review_share=0.0 if band else review_share,
                band=band,
                folds=folds,
                seed=seed,
                held_out=held_out,
                held_out_name=held_name,
                drop_overlap=drop_overlap,
                store=store,
                on_result=advance,
                kinds=kinds,
            )
        )


def _band(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--band is LOW,HIGH with two numbers (e.g. 0.2,0.7), not {text!r}."
        ) from None
    if not 0.0 <= low < high <= 1.0:
        raise ConfigError(f"--band needs 0 <= LOW < HIGH <= 1, not {text!r}.")
    return (low, high)


def _report_part(dataset: str, data_dir: Path | None) -> tuple[frozenset[str], str]:
    """Content hashes of the report part of a built-in dataset (for a split such as
    `toxicchat:train`, of the evaluation file's report part); none for files."""
    base = dataset.partition(":")[0]
    if base not in BUILTIN or Path(dataset).exists():
        return frozenset(), ""
    report = load_dataset(base, data_dir_path=data_dir).labelled().part(REPORT)
    hashes = frozenset(Item.of(e.text, id=e.id).hash for e in report.examples if e.text.strip())
    return hashes, report.name


def _print(result: FitResult, output: Path | None) -> None:
    ro = result.readout
    d = ro.document
    cv, point = d.cv, d.point
    table = Table("", "read-out (out of fold)", "zero-shot (same items)", box=None)
    table.add_row("ROC-AUC", f"{cv.roc_auc:.3f}", f"{cv.zero_shot_roc_auc:.3f}")
    table.add_row("PR-AUC", f"{cv.pr_auc:.3f}", f"{cv.zero_shot_pr_auc:.3f}")
    table.add_row("best F1", f"{cv.best_f1:.3f}", f"{cv.zero_shot_best_f1:.3f}")
    err_console.print(table)
    t = d.trained_on
    lines = [
        f"Read-out {ro.id}: {escape(d.binding.policy_id)}@{escape(d.binding.policy_version)} "
        f"on {escape(t.dataset)}, {t.items} items ({t.positive} violating), "
        f"{d.binding.kind} {d.features} features, C={cv.c:g}, {cv.folds}-fold.",
        f"Operating point ({point.target}): threshold {point.threshold:.4f}, out of fold "
        f"P {point.precision:.3f} R {point.recall:.3f} F1 {point.f1:.3f}.",
    ]
    if point.band is not None:
        outside = f"{point.f1_outside_band:.3f}" if point.f1_outside_band is not None else "-"
        lines.append(
            f"Review band [{point.band[0]:.4f}, {min(point.band[1], 1.0):.4f}): "
            f"{(point.band_share or 0):.1%} of the items; F1 outside it {outside}."
        )
    lines.append(
        f"Judging took {d.judge_seconds:.1f} s, fitting {d.fit_seconds:.1f} s. "
        f"{result.abstained} abstentions left out"
        + (
            f", {result.dropped} items overlapping the report part dropped."
            if result.dropped
            else "."
        )
    )
    lines.append(
        "Stored in the decision log; classify, eval, batch and serve use it in score mode."
        + (f" Written to {escape(str(output))}." if output else "")
    )
    for line in lines:
        err_console.print(line)
    out_console.print(ro.id)


@fit_app.command("list")
def list_readouts(
    policy: Annotated[
        str | None, typer.Option("--policy", "-p", help="Only this policy id.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    database: DatabaseOption = None,
) -> None:
    """The stored read-outs, newest first."""
    store = Store(database)
    try:
        readouts = store.readouts.list(policy)
    finally:
        store.close()
    if as_json:
        for ro in readouts:
            out_console.out(json.dumps(_summary(ro)), highlight=False)
        return
    table = Table(
        "id",
        "policy",
        "model",
        "trained on",
        "features",
        "PR-AUC (cv)",
        "threshold",
        "band",
        box=None,
    )
    for ro in readouts:
        d = ro.document
        band = d.point.band
        table.add_row(
            ro.id,
            escape(f"{d.binding.policy_id}@{d.binding.policy_version}"),
            escape(d.binding.model),
            escape(f"{d.trained_on.dataset} ({d.trained_on.items})"),
            f"{d.binding.kind} {d.features}",
            f"{d.cv.pr_auc:.3f}",
            f"{d.point.threshold:.3f}",
            f"[{band[0]:.3f}, {min(band[1], 1.0):.3f})" if band else "-",
        )
    out_console.print(table)


@fit_app.command("show")
def show(
    readout: Annotated[str, typer.Argument(help="A read-out id, or a read-out file.")],
    database: DatabaseOption = None,
) -> None:
    """One read-out's binding, operating point and cross-validation, as JSON."""
    if readout.endswith(".json") or Path(readout).exists():
        ro = ReadOut.load(readout)
    else:
        store = Store(database)
        try:
            ro = store.readouts.get(readout)
        finally:
            store.close()
    out_console.out(json.dumps(_summary(ro), indent=2), highlight=False)


def _summary(ro: ReadOut) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ro.to_json())
    for key in ("mean", "scale", "coef"):
        data.pop(key)
    data["trained_on"]["item_hashes"] = len(data["trained_on"]["item_hashes"])
    data["sha256"] = ro.hash
    return data
