"""The openai backend against a real server: `python -m llama_cpp.server` serving the embedded
model on 127.0.0.1, started and stopped by a fixture."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from llamaserver import LlamaServer

from magistrate.backends.openai_compat import OpenAIBackend
from magistrate.embedded import model_path
from magistrate.engine import Judge, judge_all
from magistrate.item import Item


def decide(judge, content):
    """The one decision of a judge of one policy on one item."""
    return asyncio.run(judge.judge(content)).decisions[0]


def decide_all(judge, items):
    """The decisions of a judge of one policy on many items, in order."""
    return [j.decisions[0] for j in asyncio.run(judge_all(judge, items))]


ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def served():
    """The embedded GGUF behind llama-cpp-python's OpenAI-compatible server."""
    try:
        with LlamaServer(model_path()) as server:
            yield server.url
    except RuntimeError as exc:
        pytest.fail(str(exc))


def examples() -> list[Item]:
    rows = [json.loads(line) for line in (ROOT / "examples" / "spam.jsonl").open()]
    return [Item.of(r["text"], id=r["id"]) for r in rows]


def test_score_mode_gives_the_in_process_verdicts(served, spam, embedded_backend):
    items = examples()
    local = decide_all(Judge(spam, embedded_backend, mode="score"), items)
    remote_backend = OpenAIBackend("embedded", base_url=served, max_concurrency=1)
    remote = decide_all(Judge(spam, remote_backend, mode="score"), items)
    assert all(d.ok for d in remote), [d.verdict.detail for d in remote if not d.ok]
    for here, there in zip(local, remote, strict=True):
        assert there.verdict.score == pytest.approx(here.verdict.score, abs=0.03), here.item_id
        if abs(here.verdict.score - spam.threshold) > 0.03:
            assert there.verdict.label == here.verdict.label, here.item_id
    same = sum(h.verdict.label == t.verdict.label for h, t in zip(local, remote, strict=True))
    assert same >= len(items) - 1


def test_reason_mode_over_http(served, spam):
    backend = OpenAIBackend("embedded", base_url=served)
    d = decide(Judge(spam, backend), "WINNER!! Claim your FREE cruise: call 09061701461")
    assert d.ok and d.violation is True and d.verdict.rationale
    assert set(d.verdict.rule_ids) <= spam.known_rule_ids and d.verdict.score is not None
    assert d.backend == "openai/embedded" and d.usage.completion_tokens > 5


def test_concurrent_requests_all_answer(served, spam):
    items = examples()[:6]
    backend = OpenAIBackend("embedded", base_url=served, max_concurrency=3)
    clf = Judge(spam, backend, mode="score")
    together = decide_all(clf, items)
    assert all(d.ok for d in together)
    alone = [decide(clf, item) for item in items[:2]]
    assert [d.verdict.label for d in alone] == [d.verdict.label for d in together[:2]]


def test_cli_against_the_server(served, spam, tmp_path):
    env = {**os.environ, "NO_COLOR": "1", "MAGISTRATE_DATABASE_URL": str(tmp_path / "log.db")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "magistrate",
            "classify",
            "--model",
            "openai/embedded",
            "--base-url",
            served,
            "--policy",
            "spam",
            "--mode",
            "score",
            "--json",
            "WIN a FREE iPhone!!! Click http://bit.ly/x to claim",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["violation"] is True and record["backend"] == "openai/embedded"
    assert record["policy"]["hash"] == spam.hash


def test_a_safety_run_compares_the_in_process_model_with_the_served_one(
    served, embedded_backend, tmp_path
):
    """Two subjects, one in process and one behind an OpenAI-compatible endpoint, side by
    side in one table; exact-check suites only, so no grader is needed."""
    from safetydata import make_data

    from magistrate.safety import Grading, grader_policies, load_cases, run_safety
    from magistrate.store import Store
    from magistrate.subject import Subject

    cases = load_cases(["hierarchy"], sample=1, data=make_data(tmp_path / "data"))
    remote = OpenAIBackend("embedded", base_url=served, max_concurrency=1)
    subjects = [
        Subject(embedded_backend, max_tokens=24, label="here"),
        Subject(remote, max_tokens=24, label="served"),
    ]
    store = Store(tmp_path / "log.db")
    report = asyncio.run(
        run_safety(
            subjects,
            cases,
            Grading(grader_policies(), embedded_backend),
            store=store,
            validate=False,
        )
    )
    assert [s["settings"]["backend"] for s in report["subjects"]] == [
        embedded_backend.name,
        "openai/embedded",
    ]
    assert all(o["answered"] for run in report["outcomes"] for o in run), report["outcomes"]
    held = next(r for r in report["rows"] if r["key"] == "hierarchy.held")
    assert [m["n"] for m in held["models"]] == [4, 4] and held["difference"]["cases"] == 4
    assert store.generations.count() == 2 * len(cases)
    store.close()
