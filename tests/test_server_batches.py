"""`/v1/batches`: batch jobs in the service, under real uvicorn on loopback, judged by a real
OpenAI-compatible server (`FaultServer`, scenario `keyword`: a violation when the content
mentions a prize), recorded in a real SQLite log. One test kills a real `magistrate serve`
process with SIGKILL in the middle of a job and checks that the restarted server finishes it
exactly once."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from faultserver import FaultServer
from serving import serving

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - where the openai client still uses httpx
    import httpx  # type: ignore[no-redef]

from magistrate.server import ServerSettings, create_app
from magistrate.store import Store

NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture(scope="module")
def backend() -> Any:
    with FaultServer() as s:
        yield s


def _settings(tmp_path: Path, backend: Any, scenario: str = "keyword", **kw: Any) -> ServerSettings:
    fields: dict[str, Any] = {
        "model": f"openai/gpt-oss-{scenario}",
        "base_url": backend.url,
        "database": str(tmp_path / "log.db"),
        "batch_dir": str(tmp_path / "batches"),
        "mode": "reason",
        **kw,
    }
    return ServerSettings(**fields)


def _posts(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"p{i}", "text": f"Claim your free prize #{i}" if i % 3 == 0 else f"Notes {i}"}
        for i in range(n)
    ]


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _wait(url: str, job_id: str, states: tuple[str, ...], headers: Any = None) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/batches/{job_id}", headers=headers).json()
        if job["state"] in states:
            return job  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def _decisions(db: Path, run_id: str) -> Counter[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "select item_hash, policy_hash from decisions where run_id = ?", (run_id,)
        ).fetchall()
    return Counter((a, b) for a, b in rows)


def _results(url: str, job_id: str) -> list[dict[str, Any]]:
    got = httpx.get(f"{url}/v1/batches/{job_id}/results")
    assert got.status_code == 200, got.text
    assert got.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in got.text.splitlines()]


def test_an_uploaded_job_runs_to_results_with_every_row_once(tmp_path, backend):
    posts = _posts(30)
    posts.append(posts[0] | {"id": "again"})  # identical content: judged once, two rows
    body = _jsonl(posts) + b"not json\n"
    with serving(create_app(_settings(tmp_path, backend))) as srv:
        made = httpx.post(
            f"{srv.url}/v1/batches?policies=spam&name=nightly", content=body, headers=NDJSON
        )
        assert made.status_code == 202, made.text
        job = made.json()
        assert job["state"] in ("queued", "running") and job["name"] == "nightly"
        assert job["input"] == {"kind": "upload", "files": ["upload"], "bytes": len(body)}
        assert job["policies"][0]["id"] == "spam" and job["mode"] == "reason"
        early = httpx.get(f"{srv.url}/v1/batches/{job['id']}/results")
        if early.status_code != 200:  # a fast job may be done already
            assert early.status_code == 409 and early.json()["error"]["code"] == "batch_not_done"

        done = _wait(srv.url, job["id"], ("done", "failed"))
        assert done["state"] == "done", done
        assert done["counts"]["rows"] == 32 and done["counts"]["invalid"] == 1
        assert done["counts"]["decisions_made"] == 30  # "again" reused p0's decision
        assert done["failure_kinds"] == {"invalid_input": 1}
        assert done["results_url"] == f"/v1/batches/{job['id']}/results"

        rows = _results(srv.url, job["id"])
        assert [r["item_id"] for r in rows[:31]] == [p["id"] for p in posts]
        assert rows[31]["status"] == "invalid_input"
        for post, row in zip(posts, rows, strict=False):
            assert row["violation"] is ("prize" in post["text"]), row
        listed = httpx.get(f"{srv.url}/v1/batches").json()
        assert [j["id"] for j in listed["data"]] == [job["id"]] and not listed["has_more"]

    judged = _decisions(tmp_path / "log.db", done["run_id"])
    assert len(judged) == 30 and set(judged.values()) == {1}


def test_a_server_side_input_must_lie_under_the_input_root(tmp_path, backend):
    root = tmp_path / "inputs"
    (root / "day1").mkdir(parents=True)
    (root / "day1" / "a.jsonl").write_bytes(_jsonl(_posts(4)))
    (root / "day1" / "b.csv").write_text("id,body\nc1,win a prize\nc2,hello\n", "utf-8")
    secret = tmp_path / "secret.jsonl"
    secret.write_bytes(_jsonl(_posts(2)))
    (root / "escape.jsonl").symlink_to(secret)
    settings = _settings(tmp_path, backend, batch_input_root=str(root))
    with serving(create_app(settings)) as srv:

        def post(**body: Any) -> Any:
            return httpx.post(f"{srv.url}/v1/batches", json={"policies": ["spam"], **body})

        made = post(input_path="day1", output_format="parquet", text_col=None)
        assert made.status_code == 202, made.text
        assert made.json()["input"]["files"] == ["day1/a.jsonl", "day1/b.csv"]
        done = _wait(srv.url, made.json()["id"], ("done", "failed"))
        assert done["state"] == "done" and done["counts"]["rows"] == 6
        got = httpx.get(f"{srv.url}/v1/batches/{done['id']}/results")
        assert got.headers["content-type"] == "application/vnd.apache.parquet"
        (tmp_path / "out.parquet").write_bytes(got.content)
        table = pq.read_table(tmp_path / "out.parquet")
        assert table.column("item_id").to_pylist() == ["p0", "p1", "p2", "p3", "c1", "c2"]
        assert table.column("violation").to_pylist() == [True, False, False, True, True, False]

        for path in ("../secret.jsonl", "escape.jsonl", str(secret), "day1/../../secret.jsonl"):
            refused = post(input_path=path)
            assert refused.status_code == 422, path
            assert "outside the server's batch input root" in refused.json()["error"]["message"]
            assert str(root) not in refused.json()["error"]["message"]
        missing = post(input_path="nothing/*.jsonl")
        assert missing.status_code == 422 and "matches no readable input" in missing.text
        no_column = post(input_path="day1/b.csv", text_col="content")
        assert no_column.status_code == 422, no_column.text
        assert "day1/b.csv" in no_column.text and str(root) not in no_column.text
    jobs = (tmp_path / "batches").iterdir()
    assert sorted(p.name for p in jobs if not p.name.startswith(".")) == [done["id"]]
    assert list((tmp_path / "batches" / ".incoming").iterdir()) == []  # refused: nothing kept

    # An input root that holds the batch folder: other jobs' uploads stay out of reach.
    nested = _settings(tmp_path, backend, batch_input_root=str(tmp_path))
    with serving(create_app(nested)) as srv:
        for path in (f"batches/{done['id']}", "batches", "batches/*/*.jsonl"):
            body = {"policies": ["spam"], "input_path": path}
            refused = httpx.post(f"{srv.url}/v1/batches", json=body)
            assert refused.status_code == 422, (path, refused.text)

    with serving(create_app(_settings(tmp_path / "noroot", backend))) as srv:
        body = {"policies": ["spam"], "input_path": "day1"}
        refused = httpx.post(f"{srv.url}/v1/batches", json=body)
        assert refused.status_code == 403 and "--batch-input-root" in refused.text


def test_bad_batch_requests_get_clear_errors_and_leave_nothing(tmp_path, backend):
    settings = _settings(tmp_path, backend, batch_max_bytes=4096)
    with serving(create_app(settings)) as srv:
        url = f"{srv.url}/v1/batches"
        rows = _jsonl(_posts(3))
        cases = [
            (httpx.post(url + "?policies=spam", content=rows), 415, "Content-Type"),
            (
                httpx.post(url + "?policies=spam", content=rows, headers={"Content-Type": "x/y"}),
                415,
                "application/x-ndjson",
            ),
            (httpx.post(url + "?policies=spam", content=b" \n\n", headers=NDJSON), 422, "empty"),
            (httpx.post(url + "?policies=nope", content=rows, headers=NDJSON), 404, "nope"),
            (httpx.post(url, content=rows, headers=NDJSON), 422, "policies"),
            (
                httpx.post(url + "?policies=spam&mode=loud", content=rows, headers=NDJSON),
                422,
                "mode",
            ),
            (
                httpx.post(url + "?policies=spam&bogus=1", content=rows, headers=NDJSON),
                422,
                "bogus",
            ),
            (
                httpx.post(url + "?policies=spam&text_col=body", content=rows, headers=NDJSON),
                422,
                "body",
            ),
            (
                httpx.post(url + "?policies=spam", content=b"x" * 5000, headers=NDJSON),
                413,
                "Split the input",
            ),
            (httpx.post(url + "?policies=spam", json={"policies": ["spam"]}), 422, "query string"),
            (httpx.post(url, json={"policies": ["spam"]}), 422, "input_path"),
            (
                httpx.post(url, content=b"{bad", headers={"Content-Type": "application/json"}),
                422,
                "not valid JSON",
            ),
        ]
        for response, status, phrase in cases:
            assert response.status_code == status, (status, response.text)
            assert phrase in response.json()["error"]["message"], (phrase, response.text)

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit acts mid-stream
            for _ in range(10):
                yield b'{"text": "' + b"y" * 900 + b'"}\n'

        streamed = httpx.post(url + "?policies=spam", content=chunks(), headers=NDJSON)
        assert streamed.status_code == 413 and "Split the input" in streamed.text
        zipped = httpx.post(url + "?policies=spam", content=gzip.compress(rows), headers=NDJSON)
        assert zipped.status_code == 422 and "None of the first" in zipped.text
        encoded = httpx.post(
            url + "?policies=spam",
            content=gzip.compress(rows),
            headers={**NDJSON, "Content-Encoding": "gzip"},
        )
        assert encoded.status_code == 415 and "uncompressed" in encoded.text
        assert httpx.get(f"{url}/batch_01ARZ3NDEKTSV4RRFFQ69G5FAV").status_code == 404
        assert httpx.get(f"{url}/batch_notanid").status_code == 422
        assert httpx.get(f"{url}/batch_..%2F..%2Fbatch.json").status_code == 404
    leftovers = [p for p in (tmp_path / "batches").rglob("*") if p.is_file()]
    assert leftovers == []


def test_batch_keys_see_their_own_jobs_and_admin_sees_all(tmp_path, backend):
    store = Store(tmp_path / "log.db")
    _, admin = store.create_api_key("ops", ["admin"])
    _, alice = store.create_api_key("alice", ["batch"])
    _, bob = store.create_api_key("bob", ["batch"])
    _, app_key = store.create_api_key("app", ["classify"])
    store.close()
    settings = _settings(tmp_path, backend, require_keys=True)

    def auth(secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    with serving(create_app(settings)) as srv:
        url = f"{srv.url}/v1/batches?policies=spam"
        body = _jsonl(_posts(3))
        assert httpx.post(url, content=body, headers=NDJSON).status_code == 401
        denied = httpx.post(url, content=body, headers={**NDJSON, **auth(app_key)})
        assert denied.status_code == 403 and "batch" in denied.text
        made = httpx.post(url, content=body, headers={**NDJSON, **auth(alice)})
        assert made.status_code == 202
        job_id = made.json()["id"]
        _wait(srv.url, job_id, ("done",), headers=auth(alice))
        mine = f"{srv.url}/v1/batches/{job_id}"
        assert httpx.get(mine, headers=auth(bob)).status_code == 404
        assert httpx.get(mine + "/results", headers=auth(bob)).status_code == 404
        assert httpx.post(mine + "/cancel", headers=auth(bob)).status_code == 404
        assert httpx.get(f"{srv.url}/v1/batches", headers=auth(bob)).json()["data"] == []
        assert httpx.post(mine + "/retry", headers=auth(bob)).status_code == 404
        assert httpx.delete(mine, headers=auth(bob)).status_code == 404
        assert httpx.get(mine, headers=auth(admin)).status_code == 200
        everyone = httpx.get(f"{srv.url}/v1/batches", headers=auth(admin)).json()["data"]
        assert [j["id"] for j in everyone] == [job_id]
        assert httpx.get(mine + "/results", headers=auth(alice)).status_code == 200
        assert httpx.delete(mine, headers=auth(alice)).status_code == 204
        assert httpx.get(mine, headers=auth(admin)).status_code == 404


def test_cancel_commits_what_is_done_and_retry_finishes_exactly_once(tmp_path, backend):
    posts = _posts(60)  # 60 calls of 50 ms, one at a time: 3 s of work
    scenario = "keyword:50:1"
    settings = _settings(tmp_path, backend, scenario=scenario, batch_concurrency=1)
    calls_before = backend.hits[scenario]
    with serving(create_app(settings)) as srv:
        url = f"{srv.url}/v1/batches"
        made = httpx.post(f"{url}?policies=spam", content=_jsonl(posts), headers=NDJSON)
        job_id = made.json()["id"]
        _wait(srv.url, job_id, ("running",))
        for refused in (httpx.delete(f"{url}/{job_id}"), httpx.post(f"{url}/{job_id}/retry")):
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"]["code"] == "batch_not_stopped"
        time.sleep(0.5)
        cancelled = httpx.post(f"{url}/{job_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        kept = cancelled.json()["counts"]["rows"]
        assert 0 < kept < len(posts)  # the rows finished before the cancel are committed
        time.sleep(0.5)
        assert httpx.get(f"{url}/{job_id}").json()["counts"]["rows"] == kept  # it stopped
        assert httpx.get(f"{url}/{job_id}/results").status_code == 409

    with serving(create_app(settings)) as srv:  # a cancelled job stays cancelled on restart
        url = f"{srv.url}/v1/batches"
        assert httpx.get(f"{url}/{job_id}").json()["state"] == "cancelled"
        retried = httpx.post(f"{url}/{job_id}/retry")
        assert retried.status_code == 202, retried.text
        done = _wait(srv.url, job_id, ("done", "failed"))
        assert done["state"] == "done" and done["attempts"] == 2, done
        rows = _results(srv.url, job_id)
        assert httpx.post(f"{url}/{job_id}/cancel").status_code == 409
    assert [r["item_id"] for r in rows] == [p["id"] for p in posts]
    assert set(_decisions(tmp_path / "log.db", done["run_id"]).values()) == {1}
    # Every content reached the backend once, but for the one call in flight at the cancel.
    calls = backend.hits[scenario] - calls_before
    assert len(posts) <= calls <= len(posts) + 1


def test_a_retried_job_stays_queued_across_a_restart(tmp_path, backend):
    settings = _settings(tmp_path, backend, scenario="keyword:50:1", batch_concurrency=1)
    with serving(create_app(settings)) as srv:
        url = f"{srv.url}/v1/batches"

        def create(n: int) -> str:
            made = httpx.post(f"{url}?policies=spam", content=_jsonl(_posts(n)), headers=NDJSON)
            return str(made.json()["id"])

        slow, small = create(400), create(5)  # one worker: small waits behind slow
        assert httpx.get(f"{url}/{small}").json()["state"] == "queued"
        assert httpx.post(f"{url}/{small}/cancel").json()["state"] == "cancelled"
        assert httpx.post(f"{url}/{small}/retry").json()["state"] == "queued"
    with serving(create_app(settings)) as srv:
        url = f"{srv.url}/v1/batches"
        assert httpx.get(f"{url}/{small}").json()["state"] == "queued"
        httpx.post(f"{url}/{slow}/cancel")  # let the small one run now
        done = _wait(srv.url, small, ("done", "failed"))
        assert done["state"] == "done" and done["counts"]["rows"] == 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(tmp_path: Path, backend: Any, port: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "magistrate", "serve", "--port", str(port),
        "--model", "openai/gpt-oss-keyword:100:1", "--base-url", backend.url,
        "--mode", "reason", "--database", str(tmp_path / "log.db"),
        "--batch-dir", str(tmp_path / "batches"),
    ]  # fmt: skip
    env = {**os.environ, "NO_COLOR": "1"}
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    raise AssertionError("magistrate serve did not start")


def test_a_job_survives_a_killed_server_and_finishes_exactly_once(tmp_path, backend):
    """SIGKILL the server after its first committed part; the restarted server resumes the
    job from its manifest: every row in the results once, one decision per item."""
    posts = _posts(150)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(tmp_path, backend, port)
    try:
        made = httpx.post(f"{url}/v1/batches?policies=spam", content=_jsonl(posts), headers=NDJSON)
        job_id = made.json()["id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v1/batches/{job_id}").json()["counts"]["rows"] == 0:
            assert time.monotonic() < deadline, "no part was committed"
            time.sleep(0.2)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    with pytest.raises(httpx.TransportError):  # the server is gone
        httpx.get(f"{url}/healthz")

    server = _serve(tmp_path, backend, port)
    try:
        job = httpx.get(f"{url}/v1/batches/{job_id}").json()
        assert 0 < job["counts"]["rows"] < len(posts), job
        done = _wait(url, job_id, ("done", "failed"))
        assert done["state"] == "done" and done["attempts"] == 2, done
        rows = _results(url, job_id)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert [r["item_id"] for r in rows] == [p["id"] for p in posts]
    assert [r["violation"] for r in rows] == ["prize" in p["text"] for p in posts]
    judged = _decisions(tmp_path / "log.db", done["run_id"])
    assert len(judged) == len(posts) and set(judged.values()) == {1}
