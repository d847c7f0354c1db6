"""The eval report format: `magistrate.eval/2` for one policy, `magistrate.eval-multi/2` for
several, and the `eval_runs` rows of the decision log.

What `magistrate eval` writes is these models dumped to JSON: an `EvalReport` per policy
(`<run id>.json`: the `EvalSpec` that says what was run, the `Metrics`, one `ItemRow` per
item) and, for several policies, a `MultiReport` (`<run id>.multi.json`: `MultiMetrics` and
one `AnyPolicyRow` per item). The `eval_runs` table keeps each run's spec and metrics
(`SingleRunRecord`, `MultiRunRecord`). Every model refuses keys it does not define, so what
is written always matches its schema.

Reading is tolerant of what older versions wrote. `load_result` takes a `magistrate.eval/2`
file or a `magistrate.eval/1` one (the same keys, written from plain dicts): a /1 document is
validated into the /2 models with `TOLERANT` as the validation context, which drops keys no
model defines, and optional fields it lacks take their defaults. `read_run` reads
`eval_runs` rows of any version the same way.

Example:
    >>> report = load_result("eval-runs/01J0000000000000000000000.json")
    >>> report.metrics.f1, report.spec.policy.hash[:12], report.items[0].pred
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from magistrate.errors import ConfigError
from magistrate.prompt import Effort, Mode
from magistrate.verdict import ParseStatus

RESULT_SCHEMA: Final = "magistrate.eval/2"
"""The schema of one policy's result (`<run id>.json`)."""
MULTI_SCHEMA: Final = "magistrate.eval-multi/2"
"""The schema of a multi-policy summary (`<run id>.multi.json`)."""
RESULT_SCHEMA_V1: Final = "magistrate.eval/1"
"""The schema older versions wrote; `load_result` still reads it."""

TOLERANT: Final[Mapping[str, bool]] = {"tolerant": True}
"""Validation context for documents from older versions: unknown keys are dropped."""

JSONValue: TypeAlias = JsonValue
"""Any JSON value (null, bool, number, string, list or object of JSON values)."""

Interval: TypeAlias = tuple[float, float]
"""A 95% interval, low and high (a two-item list in JSON)."""

Strategy: TypeAlias = Literal["separate", "combined"]
"""How several policies were judged: one call per policy, or one call for all."""


class ReportModel(BaseModel):
    """Base of the report models: unknown keys are refused, unless read with `TOLERANT`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_unknown_keys(cls, data: object, info: ValidationInfo) -> object:
        if not (isinstance(data, dict) and info.context and info.context.get("tolerant")):
            return data
        known = set(cls.model_fields)
        known |= {f.alias for f in cls.model_fields.values() if f.alias is not None}
        return {k: v for k, v in data.items() if k in known}

    def document(self) -> dict[str, JSONValue]:
        """The model as the JSON object written to files and rows (by field alias)."""
        return self.model_dump(mode="json", by_alias=True)

    def __getitem__(self, key: str) -> object:
        """Deprecated dict-style reading (`metrics["f1"]`), kept for code written against
        the `magistrate.eval/1` dicts; read attributes (`metrics.f1`) instead."""
        warnings.warn(
            f"Reading eval results by key ([{key!r}]) is deprecated; use attributes.",
            DeprecationWarning,
            stacklevel=2,
        )
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


# -- metrics ------------------------------------------------------------------------------


class Confusion(ReportModel):
    """Counts over the items with a verdict, and the abstentions."""

    tp: int
    fp: int
    fn: int
    tn: int
    abstained: int


class BinaryMetrics(ReportModel):
    """What `metrics.binary_metrics` computes (violating class; abstentions apart).

    Attributes:
        kappa: Cohen's kappa over answered items; None when undefined.
        mcc: Matthews correlation over answered items; None when undefined.
        strict_precision: Figures with every abstention counted as a wrong answer
            (`strict_recall`, `strict_f1`, `strict_accuracy` too).
    """

    n: int
    positives: int
    predicted_positives: int
    precision: float
    recall: float
    f1: float
    accuracy: float
    kappa: float | None
    mcc: float | None
    abstain_rate: float
    strict_precision: float
    strict_recall: float
    strict_f1: float
    strict_accuracy: float
    confusion: Confusion


class ScoreMetrics(ReportModel):
    """What `metrics.score_metrics` computes over the scored items."""

    n_scored: int
    pr_auc: float
    roc_auc: float
    best_threshold: float
    best_f1: float


class ReliabilityBin(ReportModel):
    """One equal-width score bin: its items, their mean score and their violating share."""

    lo: float
    hi: float
    n: int
    mean_score: float
    positive_rate: float


class Reliability(ReportModel):
    """Calibration (`metrics.reliability`): the non-empty bins and the expected calibration
    error."""

    bins: list[ReliabilityBin]
    ece: float


class HeldOut(ReportModel):
    """The figures of the held-out items of a threshold transfer."""

    precision: float
    recall: float
    f1: float
    accuracy: float
    confusion: Confusion


class ThresholdTransfer(ReportModel):
    """A best-F1 threshold chosen on a stratified part of the items, applied to the rest."""

    fraction: float
    seed: int
    threshold: float
    tune_items: int
    tune_f1: float
    test_items: int
    test: HeldOut
    test_ci95_f1: Interval


class Intervals(ReportModel):
    """Bootstrap 95% intervals of the headline figures."""

    f1: Interval
    precision: Interval
    recall: Interval


class Latency(ReportModel):
    """Seconds per item judged in this run (cached items left out); None when none was."""

    p50: float | None
    p95: float | None


class TokensPerItem(ReportModel):
    """Mean prompt and completion tokens per item, cached items included."""

    prompt: float
    completion: float


class ZeroShot(ReportModel):
    """The zero-shot figures of a run judged by a fitted read-out, on the same items: the
    label-token score at the policy's own threshold, as if no read-out had been fitted.

    Attributes:
        readout: The read-out the run's verdicts came from.
        threshold: The policy's threshold the zero-shot verdicts are taken at.
    """

    readout: str
    threshold: float
    precision: float
    recall: float
    f1: float
    ci95_f1: Interval
    scores: ScoreMetrics | None = None


class Metrics(BinaryMetrics):
    """Every metric of one policy's run.

    Attributes:
        statuses: Items per parse status (`ok`, `malformed`, ...).
        parse_rate: Share of items whose answer gave a verdict.
        scores: PR-AUC, ROC-AUC and the best-F1 threshold, when the items have scores.
        pr_curve: (recall, precision) points, when scored (not kept in `eval_runs`).
        reliability: Calibration of the scores, when scored.
        threshold_transfer: With `--threshold-split`, when scored.
        cached_items: Items whose verdict came from the decision log.
        zero_shot: For a run judged by a fitted read-out, the zero-shot figures beside it.
    """

    statuses: dict[str, int]
    parse_rate: float
    ci95: Intervals
    scores: ScoreMetrics | None = None
    pr_curve: list[tuple[float, float]] | None = None
    reliability: Reliability | None = None
    threshold_transfer: ThresholdTransfer | None = None
    latency_s: Latency
    tokens_per_item: TokensPerItem
    cached_items: int
    zero_shot: ZeroShot | None = None


# -- one policy's result ------------------------------------------------------------------


class ItemRow(ReportModel):
    """One item of a run: its gold label, the verdict on it and what it cost.

    Attributes:
        gold: The label this policy is scored on (True: violating).
        labels: The item's further gold labels by name (None: unknown).
        pred: The verdict's violation flag; None for an abstention.
        label: The policy label chosen; None when no verdict was reached.
        status: Whether a verdict was reached, and if not, why.
        decision_id: The decision in the log (`magistrate logs show`).
        cached: The verdict came from the decision log.
    """

    id: str
    text: str
    gold: bool
    labels: dict[str, bool | None] = Field(default_factory=dict)
    pred: bool | None
    label: str | None = None
    status: ParseStatus
    score: float | None = None
    category: str | None = None
    rule_ids: list[str] = Field(default_factory=list)
    unknown_rule_ids: list[str] = Field(default_factory=list)
    rationale: str | None = None
    reasoning: str | None = None
    detail: str | None = None
    decision_id: str
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    zero_shot_score: float | None = None


class DatasetRef(ReportModel):
    """The dataset a run judged: its name, where it came from, and the hash of its rows."""

    name: str
    source: str = ""
    hash: str
    items: int
    positive: str | None = None
    """What the positive class means in this dataset."""


class PolicyRef(ReportModel):
    """A policy by id, version label and the hash of its exact text."""

    id: str
    version: str
    hash: str


class BundleRef(ReportModel):
    """The policies judged together in one prompt (`PolicyBundle`)."""

    id: str
    hash: str


class EvalSpec(ReportModel):
    """What one policy's run was: enough to reproduce it and to tell runs apart.

    Attributes:
        options: The completion options its decisions record (the cache matches on them).
        strategy: `combined` when the policy was judged in one prompt with others.
        bundle: Those policies together, when combined.
    """

    dataset: DatasetRef
    policy: PolicyRef
    backend: str
    model: str
    effort: Effort
    mode: Mode
    options: dict[str, JSONValue] = Field(default_factory=dict)
    package_version: str | None = None
    git_revision: str | None = None
    created_at: str
    elapsed_s: float | None = None
    strategy: Strategy | None = None
    bundle: BundleRef | None = None


class EvalReport(ReportModel):
    """One policy's result: `<run id>.json` (schema `magistrate.eval/2`)."""

    schema_: Literal["magistrate.eval/2"] = Field(default=RESULT_SCHEMA, alias="schema")
    id: str
    spec: EvalSpec
    metrics: Metrics
    items: list[ItemRow]


# -- several policies ---------------------------------------------------------------------


class PolicyFigures(ReportModel):
    """One policy's headline figures on its own label."""

    f1: float
    precision: float
    recall: float
    parse_rate: float


class AnyMetrics(BinaryMetrics):
    """The any-policy answer (flagged when any policy flags) against the overall label.

    Attributes:
        items: Items with an overall label that every policy judged.
        scores: Ranked by the highest policy score, when every policy scored.
        threshold_transfer: One threshold on that score, with `--threshold-split`.
    """

    items: int
    ci95_f1: Interval
    scores: ScoreMetrics | None = None
    threshold_transfer: ThresholdTransfer | None = None


class MultiMetrics(ReportModel):
    """Several policies judged on one dataset.

    Attributes:
        exact_match: Share of items whose every policy label is right (abstentions wrong),
            over the items with every policy's label known.
        per_policy: The figures of each policy that has a label of its own, by policy id.
        calls_per_item: Backend calls per item (1 when combined).
        seconds_per_item: Recorded latency per item, cached items included.
        any: The any-policy answer, when the dataset has an overall label.
    """

    exact_match: float
    exact_match_items: int
    per_policy: dict[str, PolicyFigures]
    calls_per_item: int
    seconds_per_item: float
    tokens_per_item: float
    any: AnyMetrics | None = None


class AnyPolicyRow(ReportModel):
    """One item's any-policy answer (`runner.any_policy_items`).

    Attributes:
        gold: The item's overall label.
        flagged: True when any policy flags it; None when none does and one abstained.
        score: The highest policy score; None when a policy has none.
        flagged_by: The ids of the policies that flag it.
        decisions: The decision id under each policy, in policy order.
    """

    id: str
    gold: bool
    flagged: bool | None
    score: float | None
    flagged_by: list[str]
    decisions: list[str]


class MultiReport(ReportModel):
    """Several policies' run: `<run id>.multi.json` (schema `magistrate.eval-multi/2`).

    Attributes:
        labels: The dataset label each policy was scored on (None: any-policy answer only).
        runs: The run id of each policy's result.
        results: The paths of those results, when written.
    """

    schema_: Literal["magistrate.eval-multi/2"] = Field(default=MULTI_SCHEMA, alias="schema")
    id: str
    strategy: Strategy
    policies: list[PolicyRef]
    labels: list[str | None]
    runs: list[str]
    metrics: MultiMetrics
    results: list[str] = Field(default_factory=list)
    items: list[AnyPolicyRow] = Field(default_factory=list)


# -- the eval_runs rows ---------------------------------------------------------------------


class MultiDatasetRef(ReportModel):
    """The dataset of a multi-policy run."""

    name: str
    hash: str
    items: int


class MultiSpec(ReportModel):
    """What a multi-policy run was (the spec of its `eval_runs` row)."""

    kind: Literal["multi"] = "multi"
    strategy: Strategy
    dataset: MultiDatasetRef
    policies: list[PolicyRef]
    labels: list[str | None]
    runs: list[str]
    backend: str
    model: str
    package_version: str | None = None
    created_at: str


class RunRecord(ReportModel):
    """The columns of an `eval_runs` row that say which run it is."""

    id: str
    created_at: str
    dataset: str
    dataset_hash: str
    policy_id: str
    policy_hash: str
    backend: str
    effort: str
    mode: str
    result_path: str | None = None


class SingleRunRecord(RunRecord):
    """One policy's run in `eval_runs` (its metrics without the PR curve)."""

    spec: EvalSpec
    metrics: Metrics

    def row(self) -> dict[str, JSONValue]:
        """The row `Store.add_run` takes."""
        return self.model_dump(mode="json", by_alias=True, exclude={"metrics": {"pr_curve"}})


class MultiRunRecord(RunRecord):
    """A multi-policy run in `eval_runs` (the exact-match column of `eval report-table`)."""

    spec: MultiSpec
    metrics: MultiMetrics

    def row(self) -> dict[str, JSONValue]:
        """The row `Store.add_run` takes."""
        return self.document()


def read_run(row: Mapping[str, object]) -> SingleRunRecord | MultiRunRecord:
    """An `eval_runs` row as `Store.runs` returns it, from any version, typed.

    Raises:
        ConfigError: The row is not one `magistrate eval` wrote.
    """
    spec = row.get("spec")
    multi = isinstance(spec, dict) and spec.get("kind") == "multi"
    model: type[SingleRunRecord] | type[MultiRunRecord] = (
        MultiRunRecord if multi else SingleRunRecord
    )
    try:
        return model.model_validate(dict(row), context=TOLERANT)
    except ValidationError as exc:
        raise ConfigError(
            f"Eval run {row.get('id')} in the decision log is not one `magistrate eval` "
            f"wrote ({_problem(exc)})."
        ) from None


# -- reading files ----------------------------------------------------------------------------


def parse_result(data: object, *, source: str = "the document") -> EvalReport:
    """One policy's result from its decoded JSON, schema `magistrate.eval/2` or `/1`.

    A /1 document is read tolerantly (see the module docstring); a /2 one must match.

    Raises:
        ConfigError: Not an eval result, or not a valid one (the message names the field).
    """
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(data, dict) or schema not in (RESULT_SCHEMA, RESULT_SCHEMA_V1):
        raise ConfigError(
            f"{source} is not a {RESULT_SCHEMA} (or /1) result written by `magistrate eval`."
        )
    try:
        if schema == RESULT_SCHEMA:
            return EvalReport.model_validate(data)
        return EvalReport.model_validate({**data, "schema": RESULT_SCHEMA}, context=TOLERANT)
    except ValidationError as exc:
        raise ConfigError(f"{source} is not a valid {schema} result ({_problem(exc)}).") from None


def load_result(path: str | Path) -> EvalReport:
    """One policy's result file written by `magistrate eval`, this version's or an older one.

    Raises:
        ConfigError: The file is missing, not JSON, or not a valid eval result.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"No eval result at {path}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not an eval result (not JSON: {exc}).") from None
    return parse_result(data, source=str(path))


def _problem(exc: ValidationError) -> str:
    """Where validation failed and why, naming fields, never values."""
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "top level"
    more = f"; {exc.error_count() - 1} more" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


__all__ = [
    "MULTI_SCHEMA",
    "RESULT_SCHEMA",
    "RESULT_SCHEMA_V1",
    "TOLERANT",
    "AnyMetrics",
    "AnyPolicyRow",
    "BinaryMetrics",
    "BundleRef",
    "Confusion",
    "DatasetRef",
    "EvalReport",
    "EvalSpec",
    "HeldOut",
    "Interval",
    "Intervals",
    "ItemRow",
    "JSONValue",
    "Latency",
    "Metrics",
    "MultiDatasetRef",
    "MultiMetrics",
    "MultiReport",
    "MultiRunRecord",
    "MultiSpec",
    "PolicyFigures",
    "PolicyRef",
    "Reliability",
    "ReliabilityBin",
    "ReportModel",
    "RunRecord",
    "ScoreMetrics",
    "SingleRunRecord",
    "Strategy",
    "ThresholdTransfer",
    "TokensPerItem",
    "load_result",
    "parse_result",
    "read_run",
]
