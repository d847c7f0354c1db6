"""Cascades: pipeline files, routing at band edges, failing tiers, recording, evaluation.

Scripted backends drive the routing (each tier's answers are fixed); a test marked `model`
runs a two-tier cascade on the real embedded model.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from magistrate.backends.mock import MockBackend, Scripted
from magistrate.errors import BackendUnavailable, ConfigError
from magistrate.evaluate.cascade import evaluate_pipeline
from magistrate.evaluate.datasets import Dataset, Example
from magistrate.pipeline import Cascade, load_pipeline
from magistrate.store import Recorder, Store
from magistrate.verdict import ParseStatus

POLICY = """\
---
id: bait
version: "1"
threshold: 0.5
---
# Bait

## VIOLATES (1)
- **B1**: click bait.

## SAFE (0)
- **B0**: anything else.
"""
YES = '{"violation": 1, "rule_ids": ["B1"], "rationale": "bait"}'
NO = '{"violation": 0, "rule_ids": [], "rationale": "fine"}'


def _score(p: float) -> Scripted:
    return Scripted("1" if p >= 0.5 else "0", label_probs={"0": 1 - p, "1": p})


def _pipeline(tmp_path: Path, tiers: str, name: str = "p.toml") -> Path:
    (tmp_path / "bait.md").write_text(POLICY)
    path = tmp_path / name
    path.write_text(f'id = "bait-cascade"\npolicy = "./bait.md"\n\n{tiers}')
    return path


TWO = """
[[tiers]]
name = "fast"
model = "mock/fast"
mode = "score"
readout = "none"
band = [0.3, 0.7]

[[tiers]]
name = "slow"
model = "mock/slow"
mode = "reason"
"""


def test_pipeline_files_are_checked(tmp_path: Path) -> None:
    spec = load_pipeline(_pipeline(tmp_path, TWO))
    assert [t.name for t in spec.tiers] == ["fast", "slow"] and spec.load_policy().id == "bait"
    assert len(spec.sha256) == 64
    for bad, message in [
        ("[[tiers]]\nname = 'a'\nmode = 'score'\nband = [0.8, 0.2]\n", "a band is"),
        ("[[tiers]]\nname = 'a'\nmode = 'guess'\n", "tiers.0.mode"),
        ("[[tiers]]\nname = 'a'\nmode = 'score'\ncolour = 'red'\n", "colour"),
        (
            "[[tiers]]\nname = 'a'\nmode = 'score'\n[[tiers]]\nname = 'a'\nmode = 'reason'\n",
            "differ",
        ),
        ("tiers = 3 [", "not valid TOML"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_pipeline(_pipeline(tmp_path, bad, "bad.toml"))
    with pytest.raises(ConfigError, match="Cannot read"):
        load_pipeline(tmp_path / "missing.toml")


def test_routing_at_the_band_edges(tmp_path: Path) -> None:
    fast = MockBackend(script=[_score(p) for p in (0.29, 0.3, 0.69, 0.7, 0.99)], max_concurrency=1)
    slow = MockBackend(script=[NO, YES], max_concurrency=1)
    cascade = Cascade(
        load_pipeline(_pipeline(tmp_path, TWO)), backends={"mock/fast": fast, "mock/slow": slow}
    )
    results = asyncio.run(cascade.judge_all(["a", "b", "c", "d", "e"]))
    assert [r.decided_by for r in results] == ["fast", "slow", "slow", "fast", "fast"]
    # [low, high): 0.3 is unsure, 0.7 is not
    assert [r.final.violation for r in results] == [False, False, True, True, True]
    assert len(slow.prompts) == 2
    second = results[1]
    assert [name for name, _, _ in second.tiers] == ["fast", "slow"]
    assert second.final.options["tier_decisions"] == [d.id for _, d, _ in second.tiers]
    assert (
        second.final.options["tier"] == "slow" and second.final.backend == "pipeline/bait-cascade"
    )


def test_a_failing_tier_never_becomes_safe(tmp_path: Path) -> None:
    three = TWO + '\n[[tiers]]\nname = "last"\nmodel = "mock/last"\nmode = "reason"\n'
    fast = MockBackend(script=[_score(0.5), _score(0.5)], max_concurrency=1)
    slow = MockBackend(
        script=[BackendUnavailable("down"), "no label here at all"], max_concurrency=1
    )
    last = MockBackend(script=[NO, YES], max_concurrency=1)
    spec = load_pipeline(_pipeline(tmp_path, three))
    results = asyncio.run(
        Cascade(spec, backends={"mock/fast": fast, "mock/slow": slow, "mock/last": last}).judge_all(
            ["a", "b"]
        )
    )
    assert [r.decided_by for r in results] == ["last", "last"]
    assert [r.final.violation for r in results] == [False, True]
    # With the failing tier last, the items need review: no verdict, never "safe".
    fast = MockBackend(script=[_score(0.5), _score(0.6)], max_concurrency=1)
    slow = MockBackend(
        script=[BackendUnavailable("down"), "no label here at all"], max_concurrency=1
    )
    results = asyncio.run(
        Cascade(
            load_pipeline(_pipeline(tmp_path, TWO)), backends={"mock/fast": fast, "mock/slow": slow}
        ).judge_all(["a", "b"])
    )
    for r in results:
        assert r.decided_by is None and r.final.verdict.status is ParseStatus.NEEDS_REVIEW
        assert r.final.violation is None and r.final.flagged is None
        assert "the last tier abstained" in (r.final.verdict.detail or "")


def test_a_band_on_the_last_tier_sends_items_to_review(tmp_path: Path) -> None:
    one = (
        '[[tiers]]\nname = "only"\nmodel = "mock/fast"\nmode = "score"\nreadout = "none"\n'
        "band = [0.4, 0.6]\n"
    )
    fast = MockBackend(script=[_score(0.45), _score(0.9)], max_concurrency=1)
    results = asyncio.run(
        Cascade(load_pipeline(_pipeline(tmp_path, one)), backends={"mock/fast": fast}).judge_all(
            ["a", "b"]
        )
    )
    assert results[0].final.verdict.status is ParseStatus.NEEDS_REVIEW
    assert "was unsure (score 0.450" in (results[0].final.verdict.detail or "")
    assert results[1].final.violation is True


def test_every_tier_decision_is_recorded_and_linked(tmp_path: Path) -> None:
    fast = MockBackend(script=[_score(p) for p in (0.1, 0.5, 0.9, 0.55)], max_concurrency=1)
    slow = MockBackend(script=[YES, NO, YES, NO], max_concurrency=1)
    examples = tuple(
        Example(f"x{i}", text, gold)
        for i, (text, gold) in enumerate([("a", False), ("b", True), ("c", True), ("d", False)])
    )
    with Store(str(tmp_path / "log.db")) as store:
        cascade = Cascade(
            load_pipeline(_pipeline(tmp_path, TWO)),
            store=store,
            backends={"mock/fast": fast, "mock/slow": slow},
        )
        result = asyncio.run(
            evaluate_pipeline(Dataset("d", "memory", examples, "gold"), cascade, store=store)
        )
        report = result.report
        finals = [r.final for r in result.results]
        for final in finals:
            for linked in final.options["tier_decisions"]:
                assert store.log.decision(linked).decision.policy_id == "bait"
            assert store.log.decision(final.id).decision.options["pipeline"] == "bait-cascade"
    fast_row, slow_row = report.tiers
    assert (fast_row.reached, fast_row.decided, slow_row.reached, slow_row.decided) == (4, 2, 2, 2)
    assert fast_row.share_decided == 0.5 and fast_row.f1 == 1.0 and slow_row.f1 == 1.0
    assert report.cascade.f1 == 1.0 and report.cascade.abstained == 0
    # The baseline (the last tier on every item) reused the two decisions the cascade made
    # and judged the other two: YES on "a" (wrong) and NO on "c" (wrong).
    assert len(slow.prompts) == 4
    assert report.baseline is not None and report.baseline.f1 == pytest.approx(0.5)
    assert json.loads(json.dumps(report.document()))["schema"] == "magistrate.eval-pipeline/1"


def test_tiers_that_cannot_run_as_written_are_refused(tmp_path: Path) -> None:
    bad = '[[tiers]]\nname = "r"\nmodel = "mock/slow"\nmode = "reason"\nreadout = "01SOMEREADOUT"\n'
    with pytest.raises(ConfigError, match="a read-out needs mode"):
        Cascade(load_pipeline(_pipeline(tmp_path, bad)), backends={"mock/slow": MockBackend()})


def test_a_score_tier_without_a_band_before_the_last_is_refused(tmp_path: Path) -> None:
    # readout = "auto" with no read-out fitted yet: tier 1 would decide everything.
    unbanded = TWO.replace("band = [0.3, 0.7]\n", "").replace(
        'readout = "none"', 'readout = "auto"'
    )
    with pytest.raises(ConfigError, match="has no review band"):
        Cascade(
            load_pipeline(_pipeline(tmp_path, unbanded)),
            backends={"mock/fast": MockBackend(), "mock/slow": MockBackend()},
        )


@pytest.mark.model
def test_a_cascade_on_the_embedded_model(tmp_path: Path, embedded_backend) -> None:
    tiers = """
[[tiers]]
name = "score"
mode = "score"
readout = "none"
band = [0.2, 0.8]

[[tiers]]
name = "reason"
mode = "reason"
effort = "low"
"""
    path = tmp_path / "spam.toml"
    path.write_text(f'id = "spam-cascade"\npolicy = "spam"\n{tiers}')
    texts = [
        "WIN a FREE iPhone!!! Click http://bit.ly/x to claim",
        "Are we still meeting for lunch tomorrow?",
        "Your account needs attention, see the link",
    ]
    with Store(str(tmp_path / "log.db")) as store:
        cascade = Cascade(
            load_pipeline(path), store=store, backends={"llamacpp/embedded": embedded_backend}
        )
        recorder = Recorder(store)
        cascade.recorder = recorder
        for tier in cascade.tiers:
            tier.judge.recorder = recorder
        results = asyncio.run(cascade.judge_all(texts))
        for r in results:
            assert (
                r.decided_by in ("score", "reason")
                or r.final.verdict.status is ParseStatus.NEEDS_REVIEW
            )
            first = r.tiers[0][1]
            # the score tier decides exactly when its score is outside [0.2, 0.8)
            outside = first.verdict.score is not None and not 0.2 <= first.verdict.score < 0.8
            assert (r.decided_by == "score") == (first.ok and outside)
            stored = store.log.decision(r.final.id).decision
            assert stored.options["tier_decisions"] == [d.id for _, d, _ in r.tiers]
            for linked in stored.options["tier_decisions"]:
                assert store.log.decision(linked).decision.backend.startswith("llamacpp/")
    assert results[0].final.violation is True and results[1].final.violation is False
