"""`magistrate batch`: streamed inputs, Parquet/JSONL output, manifests, exactly-once resume.

Jobs run as real `magistrate batch` processes against a real OpenAI-compatible server on
loopback (`FaultServer`, scenario `keyword`: a violation when the content mentions a prize),
with a real SQLite decision log; one small job runs on the embedded model. The crash test
kills a running job with SIGKILL at 20 random moments, then completes it, and checks every
input row against the output and the log.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faultserver import FaultServer

from magistrate.backends import backend_for
from magistrate.batch import BatchJob, Columns, expand_inputs, job_spec, read_rows
from magistrate.batch.manifest import load_manifest
from magistrate.engine import Judge, judge_all
from magistrate.errors import ConfigError, InputError
from magistrate.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server() -> Any:
    with FaultServer() as s:
        yield s


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MAGISTRATE_DATABASE_URL": str(tmp_path / "log.db"),
        "NO_COLOR": "1",
        "MAGISTRATE_MODEL": "",
    }


def _batch(
    tmp_path: Path, *args: str, server: Any = None, scenario: str = "keyword", **kw: Any
) -> subprocess.CompletedProcess[str]:
    model = ["--model", f"openai/gpt-oss-{scenario}", "--base-url", server.url] if server else []
    return subprocess.run(
        [sys.executable, "-m", "magistrate", "batch", *args, *model],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        cwd=tmp_path,
        timeout=300,
        **kw,
    )


def _posts(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """n posts, a third of them prize lures, with some contents repeated."""
    rng = random.Random(seed)
    posts = []
    for i in range(n):
        k = rng.randrange(max(2, n // 2))  # repeats: identical content, other ids
        text = f"Claim your free prize #{k} now" if k % 3 == 0 else f"Meeting notes, item {k}"
        posts.append({"id": f"p{i}", "text": text})
    return posts


def _write_jsonl(path: Path, rows: list[dict[str, Any]], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra, encoding="utf-8")
    return path


def _job_decisions(db: Path, run_id: str) -> Counter[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "select item_hash, policy_hash from decisions where run_id = ?", (run_id,)
        ).fetchall()
    return Counter((a, b) for a, b in rows)


# -- inputs ------------------------------------------------------------------------------------


def test_inputs_stream_every_format_and_turn_bad_rows_into_problems(tmp_path):
    _write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"id": "j1", "text": "hello"},
            {"id": "j2", "messages": [{"role": "user", "content": "hi"}]},
            {"id": "j3", "text": ""},
            {"id": "j4", "text": 5},
        ],
        extra='not json\n[1, 2]\n\n{"id": "j7", "text": "last"}\n',
    )
    (tmp_path / "b.csv").write_bytes(b'id,body\nc1,first\nc2,\xff\xfe bad\nc3,"multi\nline"\n')
    (tmp_path / "c.tsv").write_text("text\tid\ttab one\tt1\n", encoding="utf-8")
    pq.write_table(
        pa.table({"content": ["pq one", "pq two"], "id": [1, 2]}), tmp_path / "d.parquet"
    )
    with gzip.open(tmp_path / "e.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    (tmp_path / "f.txt").write_text("line one\n\nline two\n", encoding="utf-8")
    (tmp_path / "ignored.md").write_text("not an input", encoding="utf-8")

    sources = expand_inputs([str(tmp_path)])
    assert [Path(s.path).name for s in sources] == [
        "a.jsonl", "b.csv", "c.tsv", "d.parquet", "e.jsonl.gz", "f.txt",
    ]  # fmt: skip
    rows = list(read_rows(sources))
    assert [r.number for r in rows] == list(range(len(rows)))
    by_id = {r.id: r for r in rows}
    assert by_id["j1"].item is not None and by_id["j1"].item.text == "hello"
    assert by_id["j2"].item is not None and by_id["j2"].item.turns[0].content == "hi"
    assert "empty" in (by_id["j3"].problem or "")
    assert "int" in (by_id["j4"].problem or "")
    assert "not JSON" in (by_id["a.jsonl:5"].problem or "")
    assert "not an object" in (by_id["a.jsonl:6"].problem or "")
    assert by_id["j7"].item is not None
    assert by_id["c1"].item is not None and by_id["c1"].item.text == "first"
    assert by_id["c2"].item is None and "surrogate" in (by_id["c2"].problem or "").lower()
    assert by_id["c3"].item is not None and by_id["c3"].item.text == "multi\nline"
    assert by_id["1"].item is not None and by_id["1"].item.text == "pq one"
    assert by_id["e.jsonl.gz:1"].item is not None
    assert [r.item.text for r in rows if r.source.endswith("f.txt") and r.item] == [
        "line one", "line two",
    ]  # fmt: skip

    assert [Path(s.path).name for s in expand_inputs([str(tmp_path / "*.csv")])] == ["b.csv"]
    with pytest.raises(InputError, match="does not exist"):
        expand_inputs([str(tmp_path / "missing.jsonl")])
    with pytest.raises(InputError, match="No file matches"):
        expand_inputs([str(tmp_path / "*.xml")])
    with pytest.raises(InputError, match="unknown file type"):
        expand_inputs([str(tmp_path / "ignored.md")])
    with pytest.raises(InputError, match="only once"):
        expand_inputs(["-", "-"])


def test_text_column_mapping_and_a_missing_column_fail_before_judging(tmp_path, server):
    _write_jsonl(tmp_path / "in.jsonl", [{"post": "hello", "key": "k1"}])
    rows = list(read_rows(expand_inputs([str(tmp_path / "in.jsonl")]), Columns("post", "key")))
    assert rows[0].id == "k1" and rows[0].item is not None
    out = _batch(tmp_path, "in.jsonl", "-p", "spam", "-o", "out.parquet", server=server)
    assert out.returncode == 1 and "--text-col" in out.stderr and "post" in out.stderr
    assert not (tmp_path / "out.parquet.manifest.json").exists()
    bad = _batch(tmp_path, "in.jsonl", "-p", "spam", "-o", "out.csv", server=server)
    assert bad.returncode == 1 and ".parquet or .jsonl" in bad.stderr


# -- jobs --------------------------------------------------------------------------------------


def test_batch_writes_one_row_per_input_row_and_resumes_as_done(tmp_path, server):
    posts = _posts(40)
    posts[5] = {"id": "p5", "text": "   "}
    _write_jsonl(tmp_path / "in.jsonl", posts, extra="{broken\n")
    out = _batch(
        tmp_path, "in.jsonl", "-p", "spam", "-o", "out.parquet", "--part-rows", "7", "--json",
        server=server,
    )  # fmt: skip
    assert out.returncode == 3, out.stderr  # two rows could not be judged
    summary = json.loads(out.stdout)
    assert summary["state"] == "done" and summary["counts"]["rows"] == 41
    assert summary["counts"]["invalid"] == 2 and summary["failure_kinds"] == {"invalid_input": 2}

    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["row"] for r in table] == list(range(41))
    assert [r["item_id"] for r in table[:40]] == [p["id"] for p in posts]
    for post, row in zip(posts, table, strict=False):
        if row["status"] == "invalid_input":
            assert row["violation"] is None and row["flagged"] is None and row["label"] is None
            continue
        assert row["status"] == "ok" and row["violation"] == ("prize" in post["text"])
        assert row["policy_id"] == "spam" and row["decision_id"]
        assert ("SP3.a" in row["rule_ids"]) is row["violation"]
    assert table[40]["status"] == "invalid_input" and "not JSON" in table[40]["abstain_reason"]
    assert not (tmp_path / "out.parquet.parts").exists()

    # Identical content is judged once: one decision per distinct text, the rest reused.
    distinct = {p["text"] for p in posts if p["text"].strip()}
    made = _job_decisions(tmp_path / "log.db", summary["run_id"])
    assert len(made) == len(distinct) and set(made.values()) == {1}
    assert summary["counts"]["decisions_made"] == len(distinct)
    assert summary["counts"]["decisions_cached"] == 39 - len(distinct)

    again = _batch(
        tmp_path, "in.jsonl", "-p", "spam", "-o", "out.parquet", "--part-rows", "7", "--json",
        server=server,
    )  # fmt: skip
    assert json.loads(again.stdout)["run_id"] == summary["run_id"]
    assert _job_decisions(tmp_path / "log.db", summary["run_id"]) == made


def test_a_changed_policy_is_a_new_job_never_a_silent_reuse(tmp_path, server):
    _write_jsonl(tmp_path / "in.jsonl", _posts(6))
    policy = tmp_path / "spam.md"
    policy.write_text(
        (ROOT / "src/magistrate/policies/spam.md").read_text(encoding="utf-8"), encoding="utf-8"
    )
    first = _batch(tmp_path, "in.jsonl", "-p", "./spam.md", "-o", "o.jsonl", server=server)
    assert first.returncode == 0, first.stderr
    policy.write_text(policy.read_text(encoding="utf-8") + "\nAlso: chain letters.\n")
    refused = _batch(tmp_path, "in.jsonl", "-p", "./spam.md", "-o", "o.jsonl", server=server)
    assert (
        refused.returncode == 1 and "policies" in refused.stderr and "--restart" in refused.stderr
    )
    other_model = _batch(
        tmp_path, "in.jsonl", "-p", "./spam.md", "-o", "o.jsonl", server=server,
        scenario="keyword:1",
    )  # fmt: skip
    assert other_model.returncode == 1 and "model" in other_model.stderr
    redone = _batch(
        tmp_path, "in.jsonl", "-p", "./spam.md", "-o", "o.jsonl", "--restart", "--json",
        server=server,
    )  # fmt: skip
    assert redone.returncode == 0, redone.stderr
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    new_hash = json.loads(redone.stdout)["spec"]["policies"][0]["hash"]
    assert len(rows) == 6 and {r["policy_hash"] for r in rows} == {new_hash}


def test_stdin_and_several_policies_in_separate_calls(tmp_path, server):
    posts = _posts(8, seed=3)
    data = "".join(json.dumps(p) + "\n" for p in posts)
    _copy_policy(tmp_path, "spam2")
    out = _batch(
        tmp_path, "-", "-p", "spam", "-p", "./spam2.md", "-o", "o.jsonl", "--strategy",
        "separate", "--json", server=server, input=data,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [(r["row"], r["policy_id"]) for r in rows] == [
        (i, p) for i in range(8) for p in ("spam", "spam2")
    ]
    # Running a finished job again judges nothing.
    again = _batch(
        tmp_path, "-", "-p", "spam", "-p", "./spam2.md", "-o", "o.jsonl", "--strategy",
        "separate", server=server, input=data,
    )  # fmt: skip
    assert again.returncode == 0 and "done" in again.stderr


def _copy_policy(tmp_path: Path, new_id: str) -> Path:
    text = (ROOT / "src/magistrate/policies/spam.md").read_text(encoding="utf-8")
    path = tmp_path / f"{new_id}.md"
    path.write_text(text.replace("id: spam", f"id: {new_id}", 1), encoding="utf-8")
    return path


def test_an_input_that_changed_under_an_unfinished_job_is_refused(tmp_path, server):
    path = _write_jsonl(tmp_path / "in.jsonl", _posts(30))
    sources = expand_inputs([str(path)])
    judge = Judge(["spam"], backend_for("openai/gpt-oss-keyword", base_url=server.url))
    spec = job_spec(sources, judge)
    store = Store(tmp_path / "log.db")

    def stop_at_12(done: int, total: int | None) -> None:
        if done == 12:
            raise KeyboardInterrupt

    job = BatchJob(
        sources, tmp_path / "o.parquet", judge, spec, store=store, part_rows=5, part_seconds=3600
    )
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(job.run(on_progress=stop_at_12))
    manifest = load_manifest(tmp_path / "o.parquet.manifest.json")
    assert manifest is not None and manifest.rows_committed == 10 and manifest.state == "running"
    lines = path.read_text().splitlines()
    lines[3] = json.dumps({"id": "p3", "text": "edited after the job started"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="changed since it started"):
        asyncio.run(BatchJob(sources, tmp_path / "o.parquet", judge, spec, store=store).run())
    with pytest.raises(ConfigError, match="no batch job manifest"):
        (tmp_path / "x.parquet").write_bytes(b"user data")
        BatchJob(sources, tmp_path / "x.parquet", judge, spec, store=store).prepare()
    store.close()


def test_sigkill_at_20_random_points_then_every_row_exactly_once(tmp_path, server):
    """The crash test: kill -9 a running job 20 times, then let it finish."""
    posts = _posts(1000, seed=11)
    _write_jsonl(tmp_path / "in.jsonl", posts)
    args = [
        sys.executable, "-m", "magistrate", "batch", "in.jsonl", "-p", "spam", "-o",
        "out.parquet", "--part-rows", "5", "--concurrency", "2", "--model",
        "openai/gpt-oss-keyword:100", "--base-url", server.url,
    ]  # fmt: skip
    manifest_file = tmp_path / "out.parquet.manifest.json"
    rng = random.Random(2026)
    kills = 0
    while kills < 20:
        proc = subprocess.Popen(
            args, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # Wait until this attempt has started the job (start-up takes a second or more on a
        # busy machine), then kill it at a random moment of its judging and committing.
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            found = load_manifest(manifest_file)
            if found is not None and found.attempts == kills + 1:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        assert proc.poll() is None, "the job finished before 20 kills: make it longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    manifest = load_manifest(tmp_path / "out.parquet.manifest.json")
    assert manifest is not None and manifest.attempts >= kills >= 10
    done = subprocess.run([*args, "--json"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["row"] for r in table] == list(range(len(posts)))  # each row once, in order
    assert [r["item_id"] for r in table] == [p["id"] for p in posts]
    for post, row in zip(posts, table, strict=True):
        assert row["status"] == "ok" and row["violation"] == ("prize" in post["text"])
    made = _job_decisions(tmp_path / "log.db", summary["run_id"])
    distinct = {p["text"] for p in posts}
    assert len(made) == len(distinct) and set(made.values()) == {1}  # no second decision
    assert summary["counts"]["rows"] == len(posts)
    assert not (tmp_path / "out.parquet.parts").exists()


def test_embedded_model_batch_matches_judge_many(tmp_path, embedded_backend):
    """A small job on the real embedded model gives the scores the engine gives in process."""
    posts = [
        {"id": "a", "text": "WIN a FREE iPhone!!! Click http://bit.ly/x now"},
        {"id": "b", "text": "Are we still on for lunch tomorrow?"},
        {"id": "c", "text": "Cheap followers, 10k for $5, DM me"},
        {"id": "d", "text": "The quarterly report is attached."},
    ]
    _write_jsonl(tmp_path / "in.jsonl", posts)
    out = _batch(
        tmp_path, "in.jsonl", "-p", "spam", "-o", "out.parquet", "--mode", "score", "--json",
        "--model", "llamacpp/embedded",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    judge = Judge(["spam"], embedded_backend, mode="score")  # type: ignore[arg-type]
    expected = asyncio.run(judge_all(judge, [p["text"] for p in posts]))
    # Equal up to llama.cpp's noise between a KV-cached policy prefix and a fresh one (the
    # session's model may have judged other items first).
    assert [r["score"] for r in table] == pytest.approx(
        [j.decisions[0].verdict.score for j in expected], abs=0.005
    )
    assert [r["label"] for r in table] == [j.decisions[0].verdict.label for j in expected]


def test_a_running_job_is_locked_and_resumes_only_with_its_own_log(tmp_path, server):
    from magistrate.batch.job import job_lock

    _write_jsonl(tmp_path / "in.jsonl", _posts(6))
    args = ("in.jsonl", "-p", "spam", "-o", "o.jsonl")
    with job_lock(tmp_path / "o.jsonl"):  # as if another process were running the job
        busy = _batch(tmp_path, *args, server=server)
    assert busy.returncode == 1 and "Another process is running" in busy.stderr
    assert not (tmp_path / "o.jsonl.manifest.json").exists()

    path = tmp_path / "in.jsonl"
    sources = expand_inputs([str(path)])
    judge = Judge(["spam"], backend_for("openai/gpt-oss-keyword", base_url=server.url))
    spec = job_spec(sources, judge)
    with Store(tmp_path / "first.db") as first:
        job = BatchJob(sources, tmp_path / "p.jsonl", judge, spec, store=first, part_rows=2)
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(job.run(on_progress=_stop_at(4)))
    with Store(tmp_path / "other.db") as other:
        again = BatchJob(sources, tmp_path / "p.jsonl", judge, spec, store=other)
        with pytest.raises(ConfigError, match="started with the decision log"):
            asyncio.run(again.run())
    with pytest.raises(ConfigError, match="started with the decision log"):
        asyncio.run(BatchJob(sources, tmp_path / "p.jsonl", judge, spec, store=None).run())


def _stop_at(n: int) -> Any:
    def stop(done: int, total: int | None) -> None:
        if done == n:
            raise KeyboardInterrupt

    return stop


def test_the_error_budget_counts_judged_rows_only_and_commits_first(tmp_path, server):
    rows = [{"id": f"b{i}", "text": ""} for i in range(5)] + _posts(30)
    _write_jsonl(tmp_path / "in.jsonl", rows)
    fine = _batch(tmp_path, "in.jsonl", "-p", "spam", "-o", "a.jsonl", "--max-errors", "1",
                  "--json", server=server)  # fmt: skip
    assert fine.returncode == 3 and json.loads(fine.stdout)["counts"]["invalid"] == 5

    failing = _batch(tmp_path, "in.jsonl", "-p", "spam", "-o", "b.jsonl", "--max-errors", "3",
                     "--part-rows", "1000", server=server, scenario="http500")  # fmt: skip
    assert failing.returncode == 1 and "max-errors" in failing.stderr
    manifest = load_manifest(tmp_path / "b.jsonl.manifest.json")
    assert manifest is not None and manifest.state == "failed"
    assert manifest.rows_committed == 9  # five unreadable rows, then four failed calls
    assert manifest.failure_kinds == {"invalid_input": 5, "error": 4}


def test_a_headerless_csv_is_refused_without_quoting_its_content(tmp_path, server):
    (tmp_path / "in.csv").write_text("secret words here,1\nmore secrets,0\n", encoding="utf-8")
    out = _batch(tmp_path, "in.csv", "-p", "spam", "-o", "o.jsonl", server=server)
    assert out.returncode == 1 and "header row" in out.stderr
    assert "secret" not in out.stderr


def test_a_parts_tally_counts_what_the_manifest_counts():
    from dataclasses import fields

    from magistrate.batch.job import _Tally
    from magistrate.batch.manifest import Counts

    assert [f.name for f in fields(_Tally)] == list(Counts.model_fields)
