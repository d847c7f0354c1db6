"""Cascades: a cheap tier first, and reasoning only where it is unsure.

A pipeline file (TOML) names one policy and tiers in order. Each tier is a model and a mode
(score mode may carry a fitted read-out) with a review band: the scores where that tier is
unsure. A tier decides the items that reach it when it reaches a verdict outside its band;
the rest (in the band, or an abstention of any kind) go to the next tier. What the last tier
does not decide becomes a `needs_review` abstention: never a silent "safe".

```toml
id = "toxic-cascade"
policy = "toxic-prompt"          # a bundled name, or a file next to the pipeline file

[[tiers]]
name = "probe"
mode = "score"
readout = "auto"                 # the stored read-out's band is the tier's band

[[tiers]]
name = "reasoner"
mode = "reason"
model = "llamacpp/embedded"      # or openai/gpt-oss-safeguard-20b with base_url
```

Every tier judges through its own `Judge.judge_many` (the one fan-out), so each tier's
decisions are recorded like any other; the cascade then records one final decision per
item whose options name the pipeline, the deciding tier and every tier decision made on
the item (`tier_decisions`, in tier order).

Example:
    >>> spec = load_pipeline("cascade.toml")
    >>> cascade = Cascade(spec, store=store)
    >>> results = asyncio.run(cascade.judge_all(["some text"]))
    >>> results[0].final.verdict.status, results[0].decided_by
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from magistrate.backends import DEFAULT_MODEL, Backend, backend_for
from magistrate.completion import Usage
from magistrate.decision import Decision, Recorder
from magistrate.engine import Content, Judge, Judgement, Lookup, _aiter
from magistrate.errors import ConfigError
from magistrate.ids import new_ulid
from magistrate.item import Item
from magistrate.policy import Policy, load_policy
from magistrate.prompt import Effort, Mode
from magistrate.readout.artefact import ReadOut, in_band
from magistrate.verdict import ParseStatus, Verdict, failed

if TYPE_CHECKING:
    from magistrate.store import Store

CHUNK = 64
"""Items a cascade takes through all its tiers at a time (memory stays bounded)."""


class TierSpec(BaseModel):
    """One tier of a pipeline file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1, max_length=64)
    model: str = DEFAULT_MODEL
    base_url: str | None = None
    endpoint: str | None = None
    mode: Mode
    effort: Effort = Effort.MEDIUM
    readout: str = "auto"
    band: tuple[float, float] | None = None
    """`[low, high)` where the tier is unsure; default: its read-out's band, else none."""
    timeout_s: float | None = Field(default=None, gt=0)

    @field_validator("band")
    @classmethod
    def _band(cls, band: tuple[float, float] | None) -> tuple[float, float] | None:
        if band is not None and not 0.0 <= band[0] < band[1] <= 1.0:
            raise ValueError("a band is [low, high) with 0 <= low < high <= 1")
        return band


class PipelineSpec(BaseModel):
    """A pipeline file: one policy, tiers in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    policy: str
    tiers: list[TierSpec] = Field(min_length=1, max_length=8)
    sha256: str = ""
    """Of the file's text (set by `load_pipeline`)."""
    folder: str = "."
    """Where the file is: a policy path in it is read from there."""

    @field_validator("tiers")
    @classmethod
    def _distinct(cls, tiers: list[TierSpec]) -> list[TierSpec]:
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError("tier names must differ")
        return tiers

    def load_policy(self) -> Policy:
        """The pipeline's policy (a path is read relative to the pipeline file)."""
        text = self.policy
        if text.endswith(".md") or "/" in text or "\\" in text or text.startswith("."):
            return load_policy(Path(self.folder, text))
        return load_policy(text)


def load_pipeline(path: str | Path) -> PipelineSpec:
    """Read and check a pipeline file.

    Raises:
        ConfigError: Missing, not TOML, or not a pipeline (the message names the field).
    """
    file = Path(path).expanduser()
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"Cannot read the pipeline file {str(file)!r}: {exc.strerror}.") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"The pipeline file {str(file)!r} is not valid TOML: {exc}.") from None
    try:
        return PipelineSpec.model_validate(
            {**data, "sha256": hashlib.sha256(raw).hexdigest(), "folder": str(file.parent)}
        )
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise ConfigError(
            f"The pipeline file {str(file)!r} does not hold a pipeline ({where})."
        ) from None


@dataclass
class Tier:
    """A tier ready to judge: its spec, its judge, and the band it is unsure in."""

    spec: TierSpec
    judge: Judge
    band: tuple[float, float] | None
    readout: ReadOut | None

    @property
    def name(self) -> str:
        return self.spec.name

    def decides(self, decision: Decision) -> bool:
        """True when this tier's decision stands: a verdict, outside the band."""
        if not decision.ok:
            return False
        if self.band is None:
            return True
        score = decision.verdict.score
        if score is None:  # a band needs a score; without one the tier cannot be sure
            return False
        return not in_band(self.band, score)


@dataclass(frozen=True)
class CascadeResult:
    """One item through the cascade.

    Attributes:
        final: The recorded final decision (the deciding tier's verdict, or `needs_review`).
        tiers: Every tier decision made on the item, in tier order (later tiers only when
            the earlier ones did not decide).
        decided_by: The deciding tier's name; None when the item needs review.
    """

    item: Item
    index: int
    final: Decision
    tiers: tuple[tuple[str, Decision, bool], ...] = field(default=())
    """(tier name, decision, from the cache) per tier the item reached."""
    decided_by: str | None = None


class Cascade:
    """Runs a pipeline's tiers over items; see the module docstring.

    Args:
        spec: The pipeline (`load_pipeline`).
        store: The decision log: each tier's read-out is chosen from it (`readout = "auto"`)
            and, with `record`, every tier decision and the final ones are recorded there.
        backends: Ready backends by model string (tests, or to share one); default from
            the registry.
        recorder: Where decisions go (default: the store's, when `record`).

    Raises:
        ConfigError: A tier that cannot run as written (a read-out in reason mode, a band
            on a tier that gives no scores).
        ReadOutMismatch: A tier's read-out was fitted on another policy text or model.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        store: Store | None = None,
        backends: dict[str, Backend] | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        from magistrate.readout.select import choose_readouts

        self.spec = spec
        self.policy = spec.load_policy()
        self.recorder = recorder
        self.tiers: list[Tier] = []
        for t in spec.tiers:
            backend = (backends or {}).get(t.model) or backend_for(
                t.model, base_url=t.base_url, endpoint=t.endpoint
            )
            readouts = (
                choose_readouts([t.readout], [self.policy], backend, store, mode=t.mode)
                if t.mode is Mode.SCORE
                else []
            )
            if t.mode is not Mode.SCORE and t.readout not in ("auto", "none"):
                raise ConfigError(f'Tier {t.name!r}: a read-out needs mode = "score".')
            judge = Judge(
                self.policy,
                backend,
                mode=t.mode,
                effort=t.effort,
                timeout_s=t.timeout_s,
                readouts=readouts,
                recorder=recorder,
            )
            readout = readouts[0] if readouts else None
            band = t.band or (readout.point.band if readout is not None else None)
            if band is not None and not backend.capabilities.label_scores:
                raise ConfigError(
                    f"Tier {t.name!r} has a band, but {backend.name} gives no scores to place "
                    "an item in it; drop the band or use a backend with label scores."
                )
            self.tiers.append(Tier(t, judge, band, readout))
        for tier in self.tiers[:-1]:
            # A reason tier without a band decides whatever it reaches a verdict on and hands
            # on only its abstentions (a fallback); a score tier without one is a mistake.
            if tier.band is None and tier.spec.mode is Mode.SCORE:
                raise ConfigError(
                    f"Score tier {tier.name!r} has no review band, so it would decide every "
                    "item and the tiers after it would never run: fit a read-out first "
                    f'(`magistrate fit -p {self.policy.id} ...`; readout = "auto" takes its '
                    "band), or set band = [low, high) in the pipeline file."
                )

    @property
    def name(self) -> str:
        return f"pipeline/{self.spec.id}"

    def options(self) -> dict[str, Any]:
        """What every final decision records about the pipeline (besides its tier links)."""
        return {
            "pipeline": self.spec.id,
            "pipeline_sha256": self.spec.sha256,
            "tiers": [
                {
                    "name": t.name,
                    "backend": t.judge.backend.name,
                    "mode": t.judge.mode.value,
                    "readout": t.readout.id if t.readout else None,
                    "band": list(t.band) if t.band else None,
                }
                for t in self.tiers
            ],
        }

    async def judge_many(
        self,
        items: Iterable[Content] | AsyncIterable[Content],
        *,
        lookups: Sequence[Lookup | None] | None = None,
        on_result: Callable[[CascadeResult], None] | None = None,
    ) -> AsyncIterator[CascadeResult]:
        """Take items through the tiers, `CHUNK` at a time, yielding results in input order.

        Args:
            lookups: One decision cache per tier (None for none), as `judge_many` takes.
        """
        chunk: list[Item] = []
        start = 0
        async for content in _aiter(items):
            chunk.append(self.tiers[0].judge.item(content))
            if len(chunk) >= CHUNK:
                for result in await self._chunk(chunk, start, lookups):
                    if on_result is not None:
                        on_result(result)
                    yield result
                start += len(chunk)
                chunk = []
        if chunk:
            for result in await self._chunk(chunk, start, lookups):
                if on_result is not None:
                    on_result(result)
                yield result

    async def judge_all(
        self,
        items: Iterable[Content] | AsyncIterable[Content],
        *,
        lookups: Sequence[Lookup | None] | None = None,
        on_result: Callable[[CascadeResult], None] | None = None,
    ) -> list[CascadeResult]:
        """Every result of `judge_many`, in input order."""
        return [r async for r in self.judge_many(items, lookups=lookups, on_result=on_result)]

    async def _chunk(
        self, items: list[Item], start: int, lookups: Sequence[Lookup | None] | None
    ) -> list[CascadeResult]:
        made: list[list[tuple[str, Decision, bool]]] = [[] for _ in items]
        decided: list[str | None] = [None] * len(items)
        pending = list(range(len(items)))
        for position, tier in enumerate(self.tiers):
            if not pending:
                break
            lookup = lookups[position] if lookups else None
            judgements: list[Judgement] = [
                j async for j in tier.judge.judge_many([items[i] for i in pending], lookup=lookup)
            ]
            still = []
            for i, judgement in zip(pending, judgements, strict=True):
                decision = judgement.decisions[0]
                made[i].append((tier.name, decision, judgement.cached[0]))
                if tier.decides(decision):
                    decided[i] = tier.name
                else:
                    still.append(i)
            pending = still
        results = []
        for i, item in enumerate(items):
            final = self._final(item, made[i], decided[i])
            if self.recorder is not None:
                await self.recorder.arecord_all([(final, self.policy)], item)
            results.append(CascadeResult(item, start + i, final, tuple(made[i]), decided[i]))
        return results

    def _final(
        self, item: Item, made: list[tuple[str, Decision, bool]], decided_by: str | None
    ) -> Decision:
        """The item's final decision: the deciding tier's verdict, or `needs_review`."""
        last_name, last, _ = made[-1]
        if decided_by is not None:
            verdict: Verdict = last.verdict
        else:
            tier = self.tiers[len(made) - 1]
            all_abstained = all(not d.ok for _, d, _ in made)
            why = (
                f"every tier abstained (last: {last.verdict.status.value})"
                if all_abstained
                else f"the last tier abstained ({last.verdict.status.value})"
                if not last.ok
                else f"tier {last_name!r} was unsure (score {last.verdict.score:.3f} in its "
                f"review band)"
                if tier.band is not None and last.verdict.score is not None
                else f"tier {last_name!r} did not decide"
            )
            verdict = replace(
                failed(ParseStatus.NEEDS_REVIEW, detail=f"needs review: {why}"),
                score=last.verdict.score,
                label_probs=last.verdict.label_probs,
            )
        usage = Usage()
        for _, d, cached in made:
            if not cached:
                usage = usage + d.usage
        return Decision(
            id=new_ulid(),
            created_at=datetime.now(UTC),
            item_id=item.id,
            item_hash=item.hash,
            policy_id=self.policy.id,
            policy_version=self.policy.version,
            policy_hash=self.policy.hash,
            backend=self.name,
            model=last.model,
            effort=last.effort,
            mode=last.mode,
            options={
                **self.options(),
                "tier": decided_by,
                "tier_decisions": [d.id for _, d, _ in made],
            },
            verdict=verdict,
            reasoning=last.reasoning,
            usage=usage,
            latency_s=sum(d.latency_s for _, d, cached in made if not cached),
            error=None if decided_by is not None or last.ok else last.error,
            metadata=dict(item.metadata),
        )


__all__ = ["CHUNK", "Cascade", "CascadeResult", "PipelineSpec", "Tier", "TierSpec", "load_pipeline"]
