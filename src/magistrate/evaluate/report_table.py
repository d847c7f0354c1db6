"""The technical report's Table 2 layout for the runs in the decision log, with the published
rows beside them for reference (published, not reproduced here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from magistrate.evaluate.report import (
    Interval,
    MultiRunRecord,
    ReportModel,
    SingleRunRecord,
    Strategy,
    read_run,
)

PUBLISHED = [
    # model, multi-policy accuracy %, OpenAI Moderation 2022 F1, ToxicChat F1
    ("gpt-oss-safeguard-120b", 46.3, 82.9, 79.3),
    ("gpt-oss-safeguard-20b", 43.6, 82.9, 79.9),
    ("internal Safety Reasoner", 52.2, 82.8, 81.3),
    ("gpt-5-thinking", 43.2, 79.8, 81.0),
    ("gpt-oss-120b", 32.5, 80.4, 76.7),
    ("gpt-oss-20b", 32.1, 78.7, 75.9),
]
"""gpt-oss-safeguard technical report, Tables 1 and 2 (OpenAI's prompts and harness)."""

COLUMNS = {"openai-moderation-2022": "oai_mod_f1", "toxicchat": "toxicchat_f1"}
"""The public sets with a column of their own, by dataset name (before any `~`, `[`, `:`)."""


class F1Cell(ReportModel):
    """One single-policy run in the table: its F1 with interval, on how many items."""

    f1: float
    ci95: Interval | None
    precision: float
    recall: float
    items: int
    dataset: str
    policy: str
    """`id@version` of the policy judged."""
    run: str


class MultiCell(ReportModel):
    """One multi-policy run in the table: its exact match, on how many items."""

    exact_match: float
    items: int
    strategy: Strategy
    dataset: str
    policies: int
    run: str


class TableRow(ReportModel):
    """One (backend, mode, effort): the newest run of each column; None where none ran."""

    backend: str
    mode: str
    effort: str
    multi_policy_accuracy: MultiCell | None = None
    oai_mod_f1: F1Cell | None = None
    toxicchat_f1: F1Cell | None = None


class PublishedRow(ReportModel):
    """A row of the technical report's tables (percentages)."""

    model: str
    multi_policy_accuracy: float
    oai_mod_f1: float
    toxicchat_f1: float


def table_rows(runs: Sequence[Mapping[str, object]]) -> list[TableRow]:
    """One row per (backend, mode, effort): the newest run on each public set.

    `runs` are eval runs as `Store.runs()` returns them (newest first), from any version.

    Raises:
        ConfigError: A run on a public set is not one `magistrate eval` wrote.
    """
    rows: dict[tuple[str, str, str], TableRow] = {}
    for raw in runs:
        column = _column(raw)
        if column is None:
            continue
        run = read_run(raw)
        key = (run.backend, run.mode, run.effort)
        row = rows.setdefault(key, TableRow(backend=run.backend, mode=run.mode, effort=run.effort))
        if isinstance(run, MultiRunRecord):
            if row.multi_policy_accuracy is None:
                row.multi_policy_accuracy = _multi_cell(run)
        elif getattr(row, column) is None:  # else an older run of the same set
            setattr(row, column, _f1_cell(run))
    return list(rows.values())


def _column(run: Mapping[str, object]) -> str | None:
    """The table column a stored run belongs in, or None for a run the table leaves out."""
    spec = run.get("spec")
    if isinstance(spec, dict) and spec.get("kind") == "multi":
        return "multi_policy_accuracy"
    base = str(run.get("dataset", "")).split("~")[0].split("[")[0].split(":")[0]
    return COLUMNS.get(base)


def _multi_cell(run: MultiRunRecord) -> MultiCell:
    return MultiCell(
        exact_match=run.metrics.exact_match,
        items=run.metrics.exact_match_items,
        strategy=run.spec.strategy,
        dataset=run.spec.dataset.name,
        policies=len(run.spec.policies),
        run=run.id,
    )


def _f1_cell(run: SingleRunRecord) -> F1Cell:
    metrics = run.metrics
    return F1Cell(
        f1=metrics.f1,
        ci95=metrics.ci95.f1,
        precision=metrics.precision,
        recall=metrics.recall,
        items=run.spec.dataset.items,
        dataset=run.dataset,
        policy=f"{run.policy_id}@{run.spec.policy.version}",
        run=run.id,
    )


def published_rows() -> list[PublishedRow]:
    """The published rows, for reference beside ours."""
    return [
        PublishedRow(model=m, multi_policy_accuracy=a, oai_mod_f1=o, toxicchat_f1=t)
        for m, a, o, t in PUBLISHED
    ]
