"""A fitted read-out: a linear probe on the model's hidden state under one policy's prompt.

The zero-shot judge reads one thing at the label position: the probability of each label's
first token. The hidden state at that same position carries far more of the model's reading
of the item; a regularised logistic regression fitted on a few hundred labelled items ranks
much better, while the policy still defines what is asked. A read-out is a versioned
artefact bound to what its features depend on:

- the policy's exact text (`policy_hash`): an edited policy changes what is asked;
- the model file (`model_sha256`): other weights give other hidden states;
- the prompt layout (`layout`): the chat template, format block and prefill around the
  content, hashed with a placeholder for the content.

A read-out whose binding does not match the judge it is given to is refused with a message
(`ReadOutMismatch`); it is never applied to features it was not fitted on.

Example:
    >>> readout = ReadOut.load("toxic.readout.json")
    >>> readout.check(policy, backend.representation(prompt))
    >>> readout.score(decision_features, zero_shot=0.12)
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from magistrate.errors import ConfigError, ReadOutMismatch
from magistrate.verdict import ParseStatus, Verdict, failed, violation_score

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from magistrate.backends.base import Representation
    from magistrate.policy import Policy

SCHEMA: Final = "magistrate.readout/1"
FeatureSet = Literal["hidden", "hidden+score"]
_CLIP = 1e-6


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Binding(_Model):
    """What the read-out's features depend on (see the module docstring)."""

    policy_id: str
    policy_version: str
    policy_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    model: str
    model_sha256: str = Field(min_length=1)
    layout: str = Field(pattern=r"^[0-9a-f]{64}$")
    kind: str
    size: int = Field(gt=0)


class OperatingPoint(_Model):
    """Where the read-out decides, chosen on out-of-fold scores of the fitted items.

    Attributes:
        target: `f1` (best F1), `precision=P` or `recall=R`.
        threshold: Violating when the read-out's score is at least this.
        precision, recall, f1: Out of fold at the threshold.
        band: `[low, high)`: the scores where the read-out is unsure (a cascade sends them
            to its next tier, or to review; a band reaching 1 holds 1); None when no band
            was fitted.
        band_share: Share of the fitted items whose out-of-fold score fell in the band.
        f1_outside_band: Out-of-fold F1 on the items outside the band.
    """

    target: str
    threshold: float = Field(ge=0.0, le=1.0)
    precision: float
    recall: float
    f1: float
    band: tuple[float, float] | None = None
    band_share: float | None = None
    f1_outside_band: float | None = None

    @model_validator(mode="after")
    def _band_holds_threshold(self) -> OperatingPoint:
        if self.band is not None:
            low, high = self.band
            if not (0.0 <= low <= self.threshold <= high <= 1.0 + 1e-9):
                raise ValueError("the band must be an interval in [0, 1] holding the threshold")
        return self


class Candidate(_Model):
    """One configuration tried by cross-validation, with its out-of-fold PR-AUC.

    `kind` is the state tried; documents written before fits compared states have none (they
    all read `final-norm@label`), and it is left out of their JSON so their SHA-256 stays.
    """

    kind: str | None = None
    features: FeatureSet
    c: float
    pr_auc: float

    @model_serializer(mode="wrap")
    def _without_missing_kind(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("kind") is None:
            data.pop("kind", None)
        return data


class CrossValidation(_Model):
    """How the read-out was chosen, and how it ranked out of fold next to the zero-shot score
    on the same items."""

    folds: int
    seed: int
    features: FeatureSet
    c: float
    roc_auc: float
    pr_auc: float
    best_f1: float
    zero_shot_roc_auc: float
    zero_shot_pr_auc: float
    zero_shot_best_f1: float
    candidates: list[Candidate]


class TrainingData(_Model):
    """The labelled items the read-out was fitted on (hashes of their contents)."""

    dataset: str
    source: str
    dataset_hash: str
    items: int
    positive: int
    item_hashes: list[str]


class ReadOutDocument(_Model):
    """The read-out file (`magistrate.readout/1`) and the stored row's document."""

    schema_: Literal["magistrate.readout/1"] = Field(default=SCHEMA, alias="schema")
    id: str
    created_at: str
    package_version: str
    binding: Binding
    features: FeatureSet
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    point: OperatingPoint
    cv: CrossValidation
    trained_on: TrainingData
    judge_seconds: float
    fit_seconds: float

    @model_validator(mode="after")
    def _shapes(self) -> ReadOutDocument:
        width = self.binding.size + (1 if self.features == "hidden+score" else 0)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == width):
            raise ValueError(
                f"mean, scale and coef must each hold {width} numbers for "
                f"{self.features!r} features of size {self.binding.size}"
            )
        numbers = [*self.mean, *self.scale, *self.coef, self.intercept]
        if not all(math.isfinite(x) for x in numbers) or any(s <= 0 for s in self.scale):
            raise ValueError("the coefficients must be finite and every scale positive")
        return self


class ReadOut:
    """A fitted read-out, ready to score hidden states.

    Args:
        document: The validated document (`ReadOut.load`, `ReadOut.from_json`).
    """

    def __init__(self, document: ReadOutDocument) -> None:
        self.document = document

    # -- reading and writing -------------------------------------------------------------

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "the read-out") -> ReadOut:
        """Parse and validate a read-out document.

        Raises:
            ConfigError: Not JSON, not a read-out, or values that do not fit (named).
        """
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(
                f"{source} is not JSON; pass a file written by `magistrate fit`."
            ) from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ConfigError(f"{source} is not a {SCHEMA} document (written by `magistrate fit`).")
        try:
            return cls(ReadOutDocument.model_validate(data))
        except ValidationError as exc:
            where = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}"
                for e in exc.errors()[:3]
            )
            raise ConfigError(f"{source} does not hold a valid read-out ({where}).") from None

    @classmethod
    def load(cls, path: str | Path) -> ReadOut:
        """Read a read-out file.

        Raises:
            ConfigError: The file is missing, unreadable or not a valid read-out.
        """
        file = Path(path).expanduser()
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"Cannot read the read-out file {str(file)!r}: {exc.strerror}."
            ) from None
        return cls.from_json(raw, source=f"The file {str(file)!r}")

    def to_json(self) -> str:
        """The document as canonical JSON (sorted keys): what is stored and hashed."""
        data = self.document.model_dump(mode="json", by_alias=True)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def save(self, path: str | Path) -> None:
        """Write the document to `path` (through a temporary name, then renamed)."""
        file = Path(path).expanduser()
        partial = file.with_name(file.name + ".partial")
        partial.write_text(self.to_json() + "\n", encoding="utf-8")
        partial.replace(file)

    # -- identity ---------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.document.id

    @cached_property
    def hash(self) -> str:
        """SHA-256 of the canonical document."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    @property
    def binding(self) -> Binding:
        return self.document.binding

    @property
    def point(self) -> OperatingPoint:
        return self.document.point

    @property
    def name(self) -> str:
        """How decisions and messages name it: `<id>` (policy id@version, features)."""
        b = self.binding
        return f"{self.id} ({b.policy_id}@{b.policy_version}, {self.document.features})"

    def trained_hashes(self) -> frozenset[str]:
        """Content hashes of the items it was fitted on."""
        return frozenset(self.document.trained_on.item_hashes)

    # -- binding ------------------------------------------------------------------------------

    def check(self, policy: Policy, representation: Representation | None) -> None:
        """Refuse to be used with another policy text, model or prompt layout.

        Raises:
            ReadOutMismatch: What differs, and how to get a read-out that fits.
        """
        b = self.binding
        refit = f"Fit a new one with `magistrate fit -p {policy.id}`, or pass --readout none."
        if policy.hash != b.policy_hash:
            what = "another policy" if policy.id != b.policy_id else "another text of it"
            raise ReadOutMismatch(
                f"Read-out {self.id} was fitted on policy {b.policy_id}@{b.policy_version} "
                f"(sha256 {b.policy_hash[:12]}), but the judge has {what} "
                f"({policy.id}@{policy.version}, sha256 {policy.hash[:12]}). {refit}"
            )
        if representation is None:
            raise ReadOutMismatch(
                f"Read-out {self.id} reads hidden states, which this backend does not return; "
                "use the model it was fitted on through llama.cpp, or pass --readout none."
            )
        if representation.model_sha256 != b.model_sha256:
            raise ReadOutMismatch(
                f"Read-out {self.id} was fitted on model {b.model} (sha256 "
                f"{b.model_sha256[:12]}), but the judge runs other weights (sha256 "
                f"{representation.model_sha256[:12]}). {refit}"
            )
        if b.kind not in representation.kinds or representation.size != b.size:
            raise ReadOutMismatch(
                f"Read-out {self.id} reads {b.kind} states of size {b.size}; this backend "
                f"gives {representation.describe_kinds()} of size {representation.size}. {refit}"
            )
        if representation.layout != b.layout:
            raise ReadOutMismatch(
                f"Read-out {self.id} was fitted with another prompt layout (chat template, "
                f"format block or prefill differ: {b.layout[:12]} vs "
                f"{representation.layout[:12]}). {refit}"
            )

    # -- scoring ------------------------------------------------------------------------------

    @cached_property
    def _weights(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]:
        import numpy as np

        d = self.document
        scale = np.asarray(d.scale, dtype=np.float64)
        coef = np.asarray(d.coef, dtype=np.float64) / scale
        offset = d.intercept - float(np.dot(np.asarray(d.mean, dtype=np.float64), coef))
        return coef, scale, offset

    def score(self, features: Sequence[float], zero_shot: float | None = None) -> float:
        """The read-out's probability that the item violates the policy.

        Raises:
            ValueError: Features of the wrong length, non-finite values, or no zero-shot
                score where the read-out uses one.
        """
        import numpy as np

        x = np.asarray(features, dtype=np.float64)
        if x.shape != (self.binding.size,):
            raise ValueError(f"expected {self.binding.size} features, got {len(features)}")
        if self.document.features == "hidden+score":
            if zero_shot is None:
                raise ValueError("this read-out also reads the zero-shot score")
            x = np.append(x, zero_shot_logit(zero_shot))
        if not np.all(np.isfinite(x)):
            raise ValueError("the hidden state holds values that are not finite")
        coef, _, offset = self._weights
        return _sigmoid(float(np.dot(x, coef)) + offset)

    def in_band(self, score: float) -> bool:
        """True when `score` falls in the review band (see `in_band`); never without one."""
        return self.point.band is not None and in_band(self.point.band, score)

    def apply(self, verdict: Verdict, features: Sequence[float] | None, policy: Policy) -> Verdict:
        """The verdict with the read-out's score and label in place of the zero-shot ones.

        The zero-shot label probabilities stay in `label_probs`. An abstention stays one.
        Without a usable hidden state the verdict is an abstention: never the zero-shot
        label silently standing in for the read-out's.
        """
        if not verdict.ok:
            return verdict
        if features is None:
            return failed(
                ParseStatus.ERROR,
                detail=f"the backend returned no hidden state for read-out {self.id}",
            )
        zero_shot = violation_score(verdict.label_probs, policy) if verdict.label_probs else None
        try:
            score = self.score(features, zero_shot)
        except ValueError as exc:
            return failed(ParseStatus.MALFORMED, detail=f"read-out {self.id}: {exc}")
        violation = score >= self.point.threshold
        side = [label for label in policy.labels if label.violation == violation]
        probs: Mapping[str, float] = verdict.label_probs
        best = max(side, key=lambda label: probs.get(label.name, 0.0))
        return replace(verdict, label=best.name, violation=violation, score=score, answer=best.name)


TOP = 1.0 + 1e-9
"""The upper end of a band that reaches the top: past every score, 1 included."""


def in_band(band: tuple[float, float], score: float) -> bool:
    """True when `score` is in the band `[low, high)`; a band whose upper end is past 1
    (`TOP`, or an explicit `[low, 1]`) holds 1 too."""
    low, high = band
    return low <= score and (score < high or (high >= 1.0 and score >= 1.0))


def zero_shot_logit(p: float) -> float:
    """Log-odds of a zero-shot score, clipped so 0 and 1 stay finite."""
    q = min(1.0 - _CLIP, max(_CLIP, p))
    return math.log(q / (1.0 - q))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


__all__ = [
    "SCHEMA",
    "Binding",
    "CrossValidation",
    "OperatingPoint",
    "ReadOut",
    "ReadOutDocument",
    "ReadOutMismatch",
    "TrainingData",
    "in_band",
    "zero_shot_logit",
]
