"""`magistrate batch --engine ray` on a real local Ray cluster (`ray start --head`, 2 CPUs).

Jobs against a loopback OpenAI-compatible server give the local engine's output row for
row; an interrupted Ray job resumes without judging committed rows again and leaves one
decision per item in the log; the embedded model runs inside an actor. `JudgeBatches` also
works in a user's own pipeline.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from faultserver import FaultServer
from test_batch import _job_decisions, _posts, _write_jsonl

from magistrate.backends import backend_for
from magistrate.batch import BatchJob, expand_inputs, job_spec
from magistrate.batch.job import RayOptions
from magistrate.batch.manifest import load_manifest
from magistrate.batch.ray import JudgeConfig, connect, decode_decisions
from magistrate.engine import Judge, judge_all
from magistrate.ray import JudgeBatches
from magistrate.store import Store

RAY = str(Path(sys.executable).with_name("ray"))
COMPARED = ("row", "source", "item_id", "item_hash", "policy_id", "label", "violation",
            "flagged", "status", "rule_ids", "abstain_reason")  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real Ray head on this machine (2 CPUs, a small object store), stopped afterwards."""
    temp = tmp_path_factory.mktemp("ray")
    started = subprocess.run(
        [RAY, "start", "--head", "--port=0", "--num-cpus=2", "--node-ip-address=127.0.0.1",
         "--include-dashboard=false", "--disable-usage-stats",
         "--object-store-memory=200000000", f"--temp-dir={temp}"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    found = re.search(r"--address='([^']+)'", started.stdout + started.stderr)
    assert found, started.stdout
    yield found.group(1)
    import ray

    if ray.is_initialized():
        ray.shutdown()
    subprocess.run([RAY, "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def server() -> Any:
    with FaultServer() as s:
        yield s


def _env(tmp_path: Path, db: str) -> dict[str, str]:
    return {**os.environ, "MAGISTRATE_DATABASE_URL": str(tmp_path / db), "NO_COLOR": "1"}


def _run(tmp_path: Path, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "magistrate", "batch", *args, "--json"],
        capture_output=True, text=True, env=_env(tmp_path, db), cwd=tmp_path, timeout=600,
    )  # fmt: skip


def test_ray_job_gives_the_local_engines_rows(tmp_path, cluster, server):
    posts = _posts(60, seed=5)
    _write_jsonl(tmp_path / "a.jsonl", posts[:35], extra="{not json\n\n")
    _write_jsonl(tmp_path / "b.jsonl", posts[35:])
    model = ["--model", "openai/gpt-oss-keyword:5", "--base-url", server.url]
    local = _run(tmp_path, "local.db", "*.jsonl", "-p", "spam", "-o", "local.parquet", *model)
    on_ray = _run(
        tmp_path, "ray.db", "*.jsonl", "-p", "spam", "-o", "ray.parquet", *model,
        "--engine", "ray", "--address", cluster, "--actors", "2",
    )  # fmt: skip
    assert local.returncode == on_ray.returncode == 3, on_ray.stderr[-3000:]  # one bad line
    a = pq.read_table(tmp_path / "local.parquet").to_pylist()
    b = pq.read_table(tmp_path / "ray.parquet").to_pylist()
    assert len(a) == len(b) == 61
    assert [{k: r[k] for k in COMPARED} for r in a] == [{k: r[k] for k in COMPARED} for r in b]
    summary = json.loads(on_ray.stdout)
    made = _job_decisions(tmp_path / "ray.db", summary["run_id"])
    assert len(made) == len({p["text"] for p in posts}) and set(made.values()) == {1}
    assert Store(tmp_path / "ray.db").verify().ok  # the driver kept the chain whole


def test_an_interrupted_ray_job_resumes_without_judging_committed_rows(tmp_path, cluster, server):
    posts = _posts(80, seed=9)
    path = _write_jsonl(tmp_path / "in.jsonl", posts)
    sources = expand_inputs([str(path)])
    judge = Judge(["spam"], backend_for("openai/gpt-oss-keyword:5", base_url=server.url))
    config = JudgeConfig.of(judge, "openai/gpt-oss-keyword:5", base_url=server.url)
    spec = job_spec(sources, judge, model="openai/gpt-oss-keyword:5")
    store = Store(tmp_path / "log.db")
    connect(cluster)

    def stop_at_50(done: int, total: int | None) -> None:
        if done == 50:
            raise KeyboardInterrupt

    def job() -> BatchJob:
        on_ray = RayOptions(config, address=cluster, actors=2)
        return BatchJob(sources, tmp_path / "o.jsonl", judge, spec, store=store, part_rows=20,
                        part_seconds=3600, ray=on_ray)  # fmt: skip

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(job().run(on_progress=stop_at_50))
    first = load_manifest(tmp_path / "o.jsonl.manifest.json")
    assert first is not None and first.rows_committed == 40
    calls_before = server.hits["keyword:5"]
    manifest = asyncio.run(job().run())
    assert manifest.state == "done" and manifest.attempts == 2
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(80))
    assert [r["item_id"] for r in rows] == [p["id"] for p in posts]
    made = _job_decisions(tmp_path / "log.db", manifest.run_id)
    distinct = {p["text"] for p in posts}
    assert len(made) == len(distinct) and set(made.values()) == {1}
    done_before = {p["text"] for p in posts[:50]}
    # The second attempt asked only for contents the first had not decided (the first got
    # past row 50 before it stopped, and actors may work ahead of the driver: at most that).
    assert server.hits["keyword:5"] - calls_before <= len(distinct - done_before) + 2 * 64
    store.close()


def test_judge_batches_in_a_users_own_pipeline_and_on_the_embedded_model(cluster, embedded_backend):
    import ray

    connect(cluster)
    texts = ["WIN a FREE iPhone!!! Click http://bit.ly/x now", "Lunch at noon tomorrow?"]
    spam = (Path(__file__).resolve().parents[1] / "src/magistrate/policies/spam.md").read_text()
    config = JudgeConfig(policies=(spam,), model="llamacpp/embedded", mode="score")
    ds = ray.data.from_items([{"body": t, "post": f"x{i}"} for i, t in enumerate(texts)])
    out = ds.map_batches(
        JudgeBatches,
        fn_constructor_kwargs={"config": config, "columns": {"text": "body", "id": "post"}},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=8,
        batch_format="pyarrow",
        num_cpus=1,
    ).take_all()
    assert [r["item_id"] for r in out] == ["x0", "x1"]
    decisions = [decode_decisions(r["decisions"])[0] for r in out]
    assert all(d.ok and d.policy_id == "spam" and d.mode == "score" for d in decisions)
    here = asyncio.run(judge_all(Judge(["spam"], embedded_backend, mode="score"), texts))
    # Within llama.cpp's own noise: a score differs in the fourth decimal when the policy
    # prefix came from the KV cache (this process) rather than with the item in one batch
    # (the actor's fresh model).
    assert [d.verdict.score for d in decisions] == pytest.approx(
        [j.decisions[0].verdict.score for j in here], abs=0.005
    )
    assert [r["flagged"] for r in out] == [j.flagged for j in here]
