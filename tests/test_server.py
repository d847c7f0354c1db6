"""The HTTP service under a real uvicorn on loopback: scripted backend for behaviour, the
embedded model for a few real requests, the official openai client, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from serving import serving

from magistrate.backends.mock import MockBackend, Scripted
from magistrate.errors import BackendTimeout, Overloaded, TooLarge
from magistrate.policy import load_policy
from magistrate.server import ServerSettings, create_app
from magistrate.server.limits import Admission, RateLimiter, TTLCache
from magistrate.store import Store

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - where the openai client still uses httpx
    import httpx  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
SPAM_1 = Scripted("1", label_probs={"0": 0.1, "1": 0.9})
SPAM_0 = Scripted("0", label_probs={"0": 0.9, "1": 0.1})


def settings(tmp_path: Path, **kw: object) -> ServerSettings:
    return ServerSettings(database=str(tmp_path / "log.db"), **kw)


def scripted(*steps: object, cycle: bool = True, **kw: object) -> MockBackend:
    return MockBackend(script=list(steps), cycle=cycle, **kw)  # type: ignore[arg-type]


def classify_body(*texts: str, policies: tuple[str, ...] = ("spam",), **kw: object) -> dict:
    return {"items": [{"text": t, "id": f"m{i}"} for i, t in enumerate(texts)],
            "policies": list(policies), **kw}  # fmt: skip


# -- pieces without a server -------------------------------------------------------------------


def test_keys_are_required_off_loopback_by_default():
    assert not ServerSettings(host="127.0.0.1").keys_required
    assert not ServerSettings(host="::1").keys_required
    assert not ServerSettings(host="localhost").keys_required
    assert ServerSettings(host="0.0.0.0").keys_required
    assert ServerSettings(host="10.1.2.3").keys_required
    assert not ServerSettings(host="0.0.0.0", require_keys=False).keys_required


def test_admission_rate_limit_and_cache_with_a_fake_clock():
    now = [0.0]
    queue = Admission(concurrency=2, queue=2, clock=lambda: now[0])
    queue.admit(3)
    with pytest.raises(Overloaded) as full:
        queue.admit(2)
    assert full.value.retry_after >= 1
    with pytest.raises(TooLarge):  # can never fit: 413, not 429
        queue.admit(5)
    queue.release(3, 0.5)
    queue.admit(4)
    limiter = RateLimiter(60, clock=lambda: now[0])  # 1/s, bursts of 10
    assert [limiter.check("k") for _ in range(10)] == [0] * 10
    assert limiter.check("k") == 1 and limiter.check("other") == 0
    now[0] += 1.0
    assert limiter.check("k") == 0
    cache: TTLCache[int] = TTLCache(5, 2, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("c", 3)
    assert cache.get("a") is None and cache.get("c") == 3  # least recently used went
    now[0] += 6
    assert cache.get("c") is None


def test_caches_are_bounded_by_bytes_not_only_by_entries():
    cache: TTLCache[str] = TTLCache(60, 1000, max_bytes=100, size_of=len)
    for key in "abcdefghij":
        cache.put(key, key * 30)  # 30 bytes each: three fit
    assert len(cache) == 3 and cache.bytes == 90
    assert cache.get("a") is None and cache.get("j") == "j" * 30
    cache.put("big", "x" * 101)  # larger than the whole budget: not kept, nothing evicted
    assert cache.get("big") is None and len(cache) == 3
    cache.put("j", "j")  # replacing an entry gives its bytes back
    assert cache.bytes == 61


def test_idempotency_answers_stay_within_their_byte_budget():
    from magistrate.server.idempotency import IDEMPOTENCY_MAX_BYTES, Idempotency

    # One answer of 16 items x 4 policies measured about 95 KiB; by entry count alone (100,000)
    # the answers could take ~9 GiB.
    answer = {"decisions": [{"rationale": "r" * 1400, "metadata": {"k": "v" * 40}}] * 64}
    keys = Idempotency(max_bytes=1_000_000)

    async def fill() -> None:
        for n in range(100):

            async def make() -> dict[str, object]:
                return answer

            await keys.run("caller", f"key-{n}", "digest", make)

    asyncio.run(fill())
    assert 0 < keys._answers.bytes <= 1_000_000 and len(keys._answers) < 100
    assert keys._answers.get("caller:key-99") is not None  # the newest stay
    assert keys._answers.get("caller:key-0") is None
    assert IDEMPOTENCY_MAX_BYTES <= 512 * 1024 * 1024


def test_committed_openapi_document_matches_the_app():
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert create_app().openapi() == committed, (
        "docs/openapi.json is stale: run `magistrate openapi -o docs/openapi.json`"
    )


# -- the service over HTTP, scripted backend ---------------------------------------------------


def test_classify_records_caches_and_counts(tmp_path):
    backend = scripted(SPAM_1, SPAM_0)
    with serving(create_app(settings(tmp_path), backend=backend)) as srv:
        first = httpx.post(f"{srv.url}/v1/classify", json=classify_body("WIN NOW", "hi mum"))
        assert first.status_code == 200, first.text
        body = first.json()
        one, two = body["decisions"]
        assert (one["item_index"], one["item_id"], one["label"], one["flagged"]) == (
            0,
            "m0",
            "1",
            True,
        )
        assert one["score"] == pytest.approx(0.9) and one["policy"]["id"] == "spam"
        assert (two["violation"], two["cached"]) == (False, False)
        again = httpx.post(f"{srv.url}/v1/classify", json=classify_body("WIN NOW"))
        assert again.json()["decisions"][0]["cached"] is True
        assert again.json()["decisions"][0]["id"] == one["id"]  # the recorded decision
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert "magistrate_cache_hits_total 1.0" in metrics
        assert 'magistrate_decisions_total{label="1",policy="spam",status="ok"} 1.0' in metrics
        assert 'route="/v1/classify"' in metrics and 'status="200"' in metrics
        assert httpx.get(f"{srv.url}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{srv.url}/readyz")
        assert ready.status_code == 200 and ready.json()["store"] == "ok"
    with Store(tmp_path / "log.db") as store:
        assert store.count() == 2  # the cache hit was not judged or recorded again
        assert store.decision(one["id"]).content == "WIN NOW"


def test_bad_requests_get_clear_errors(tmp_path):
    app = create_app(
        settings(tmp_path, max_items=3, max_body_bytes=20_000), backend=scripted(SPAM_1)
    )
    with serving(app) as srv:

        def post(body: object, **kw: object) -> httpx.Response:
            return httpx.post(f"{srv.url}/v1/classify", json=body, **kw)

        cases = [
            (classify_body("x", policies=("nope",)), 404, "No policy 'nope'"),
            (classify_body("   "), 422, "items[0]"),
            ({"items": [{"text": "a", "turns": [{"role": "user", "content": "b"}]}],
              "policies": ["spam"]}, 422, "exactly one of"),
            (classify_body("a", "b", "c", "d"), 413, "at most 3"),
            (classify_body("a", policies=()), 422, "at least one policy"),
            (classify_body("a", policies=("spam", "spam")), 422, "twice"),
            ({"items": [], "policies": ["spam"]}, 422, "items"),
            ({"items": [{"text": "a"}], "policies": ["spam"], "mode": "guess"}, 422, "mode"),
            (classify_body("a", policy_text="# P\n"), 403, "inline"),
            (classify_body("x" * 30_000), 413, "over 20,000 bytes"),
        ]  # fmt: skip
        for body, status, needle in cases:
            got = post(body)
            assert got.status_code == status, (body if len(str(body)) < 300 else "", got.text)
            error = got.json()["error"]
            assert needle in error["message"] and error["type"], got.text
        streamed = httpx.post(
            f"{srv.url}/v1/classify",
            content=iter([b'{"items": [{"text": "', b"y" * 25_000, b'"}]}']),
            headers={"content-type": "application/json"},
        )
        assert streamed.status_code == 413
        broken = httpx.post(
            f"{srv.url}/v1/classify", content=b'{"items": [{"text": "\xff\xfe"}]}',
            headers={"content-type": "application/json"},
        )  # fmt: skip
        assert broken.status_code == 400 and "UTF-8" in broken.json()["error"]["message"]
        turns = post({"items": [{"turns": [{"role": "user", "content": "buy"},
                                           {"role": "assistant", "content": "no"}]}],
                      "policies": ["spam"]})  # fmt: skip
        assert turns.status_code == 200, turns.text


def test_backend_failure_is_never_a_silent_not_flagged(tmp_path):
    backend = scripted(BackendTimeout("mock/scripted did not answer within 5 s."), cycle=False)
    with serving(create_app(settings(tmp_path), backend=backend)) as srv:
        got = httpx.post(f"{srv.url}/v1/classify", json=classify_body("hello"))
        [decision] = got.json()["decisions"]
        assert got.status_code == 200 and decision["status"] == "error"
        assert decision["flagged"] is None and decision["violation"] is None
        assert decision["error"] == "backend_timeout"  # a code: the log keeps the message
        mod = httpx.post(f"{srv.url}/v1/moderations", json={"input": "hello"})
        assert mod.status_code == 503 and mod.json()["error"]["code"] == "verdict_unavailable"
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'magistrate_backend_errors_total{policy="spam"} 1.0' in metrics
        assert 'magistrate_abstentions_total{policy="spam",status="error"} 1.0' in metrics
    closed = settings(tmp_path, on_abstain="fail-closed", moderation_categories={"hate": "hate"})
    with serving(create_app(closed, backend=scripted(BackendTimeout("down")))) as srv:
        mod = httpx.post(f"{srv.url}/v1/moderations", json={"input": "hello"})
        assert mod.status_code == 200 and mod.json()["results"][0]["flagged"] is True
        # Routed as flagged, but no probability was made: none is shown (it was 1.0).
        assert mod.json()["results"][0]["category_scores"] == {}


def test_a_full_queue_answers_429_with_retry_after(tmp_path):
    backend = scripted(SPAM_1, delay_s=0.6, max_concurrency=1)
    app = create_app(settings(tmp_path, queue=1, cache_ttl_s=0), backend=backend)
    with serving(app) as srv:
        results: list[httpx.Response] = []

        def send(text: str) -> None:
            results.append(httpx.post(f"{srv.url}/v1/classify", json=classify_body(text)))

        threads = [threading.Thread(target=send, args=(f"msg {i}",)) for i in range(4)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
        codes = sorted(r.status_code for r in results)
        assert codes.count(200) == 2 and codes.count(429) == 2, codes
        busy = next(r for r in results if r.status_code == 429)
        assert int(busy.headers["retry-after"]) >= 1
        assert busy.json()["error"]["code"] == "queue_full"
        assert (
            'magistrate_rejected_requests_total{reason="queue"} 2.0'
            in httpx.get(f"{srv.url}/metrics").text
        )


def test_keys_scopes_revocation_and_rate_limits(tmp_path):
    store = Store(tmp_path / "log.db")
    _, reader = store.create_api_key("app", ["classify"])
    _, admin = store.create_api_key("ops", ["admin"])
    _, slow = store.create_api_key("slow", ["classify"], rate_per_minute=6)
    app = create_app(settings(tmp_path, host="0.0.0.0"), backend=scripted(SPAM_1), store=store)
    with serving(app) as srv:
        url = f"{srv.url}/v1/classify"
        body = classify_body("hello")

        def auth(secret: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {secret}"}

        missing = httpx.post(url, json=body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert httpx.post(url, json=body, headers=auth("mg_wrong")).status_code == 401
        assert httpx.post(url, json=body, headers=auth(reader)).status_code == 200
        policy = {"text": load_policy("spam").text.replace("id: spam", "id: spam2")}
        put = f"{srv.url}/v1/policies/spam2"
        assert httpx.put(put, json=policy, headers=auth(reader)).status_code == 403
        assert httpx.put(put, json=policy, headers=auth(admin)).status_code == 201
        assert httpx.get(f"{srv.url}/v1/decisions", headers=auth(reader)).status_code == 403
        assert httpx.get(f"{srv.url}/healthz").status_code == 200  # probes need no key
        assert httpx.post(url, json=body, headers=auth(slow)).status_code == 200
        limited = httpx.post(url, json=body, headers=auth(slow))
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        store.revoke_api_key("app")
        assert httpx.post(url, json=body, headers=auth(reader)).status_code == 401


def test_idempotency_keys_replay_or_refuse(tmp_path):
    with serving(create_app(settings(tmp_path), backend=scripted(SPAM_1, SPAM_0))) as srv:
        url = f"{srv.url}/v1/classify"
        first = httpx.post(url, json=classify_body("a"), headers={"Idempotency-Key": "k1"})
        again = httpx.post(url, json=classify_body("a"), headers={"Idempotency-Key": "k1"})
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        clash = httpx.post(url, json=classify_body("b"), headers={"Idempotency-Key": "k1"})
        assert clash.status_code == 409 and "different request body" in clash.text


def test_policies_are_versioned_linted_and_activated(tmp_path):
    spam = load_policy("spam")
    v1 = spam.text.replace("id: spam", "id: house-spam")
    v2 = v1.replace("threshold: 0.75", "threshold: 0.6")
    assert v1 != v2
    with serving(create_app(settings(tmp_path), backend=scripted(SPAM_1))) as srv:
        base = f"{srv.url}/v1/policies/house-spam"
        created = httpx.put(base, json={"text": v1})
        assert created.status_code == 201 and created.json()["active"] is True
        assert httpx.put(base, json={"text": v1}).json()["created"] is False
        assert httpx.put(base, json={"text": v2}).status_code == 201
        versions = httpx.get(f"{base}/versions").json()["versions"]
        assert [v["active"] for v in versions] == [False, True]
        back = httpx.put(f"{base}/active", json={"version": "@1"})
        assert back.status_code == 200 and back.json()["hash"] == versions[0]["hash"]
        judged = httpx.post(
            f"{srv.url}/v1/classify", json=classify_body("x", policies=("house-spam",))
        )
        assert judged.json()["decisions"][0]["policy"]["hash"] == versions[0]["hash"]
        wrong_id = httpx.put(f"{srv.url}/v1/policies/other", json={"text": v1})
        assert wrong_id.status_code == 422 and "make them match" in wrong_id.text
        bad = v1.replace('Answer: {"violation": 1', 'Answer: {"violation": 7', 1)
        linted = httpx.put(base, json={"text": bad})
        assert linted.status_code == 422 and "lint error" in linted.text
        listed = httpx.get(f"{srv.url}/v1/policies").json()["policies"]
        ids = {p["id"]: p["source"] for p in listed}
        assert ids["house-spam"] == "store" and ids["hate"] == "builtin"
        assert httpx.get(f"{srv.url}/v1/policies/nope").status_code == 404
        assert httpx.put(f"{base}/active", json={"version": "@9"}).status_code == 404


def test_policies_folder_is_activated_at_start(tmp_path):
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "mine.md").write_text(load_policy("spam").text.replace("id: spam", "id: mine"))
    app = create_app(settings(tmp_path, policies_dir=str(folder)), backend=scripted(SPAM_0))
    with serving(app) as srv:
        got = httpx.get(f"{srv.url}/v1/policies/mine")
        assert got.status_code == 200 and got.json()["source"] == "store"


def test_decisions_endpoints_and_content_stays_out_of_logs(tmp_path, caplog):
    canary = "canary-7f3a9 please do not log me"
    app = create_app(settings(tmp_path), backend=scripted(SPAM_1))
    with caplog.at_level(logging.DEBUG), serving(app) as srv:
        made = httpx.post(f"{srv.url}/v1/classify", json=classify_body(canary))
        decision_id = made.json()["decisions"][0]["id"]
        httpx.post(f"{srv.url}/v1/classify", json=classify_body(canary, policies=("x!",)))
        httpx.post(f"{srv.url}/v1/classify", json=classify_body(canary * 2000))
        listed = httpx.get(f"{srv.url}/v1/decisions", params={"policy": "spam"}).json()
        assert [d["decision"]["id"] for d in listed["decisions"]] == [decision_id]
        assert listed["decisions"][0]["content"] is None
        one = httpx.get(
            f"{srv.url}/v1/decisions/{decision_id}", params={"include_content": True}
        ).json()
        assert one["content"] == canary and one["decision"]["label"] == "1"
        assert httpx.get(f"{srv.url}/v1/decisions/01ZZZZZZZZ").status_code == 404
        older = httpx.get(f"{srv.url}/v1/decisions", params={"before": one["seq"]})
        assert older.json()["decisions"] == []
    assert "canary" not in caplog.text


def test_a_store_outage_answers_503_never_404(tmp_path):
    """A decision that exists must not read as "no such decision" while the log is down."""
    store = Store(tmp_path / "gone" / "log.db")
    app = create_app(ServerSettings(), backend=scripted(SPAM_1), store=store)
    with serving(app) as srv:
        made = httpx.post(f"{srv.url}/v1/classify", json=classify_body("WIN"))
        decision_id = made.json()["decisions"][0]["id"]
        assert httpx.get(f"{srv.url}/v1/decisions/{decision_id}").status_code == 200
        unknown = httpx.get(f"{srv.url}/v1/decisions/01ZZZZZZZZ")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["type"] == "not_found_error"
        shutil.rmtree(tmp_path / "gone")  # the log's disk goes away under the server
        store.engine.dispose()  # pooled connections are recycled, as they are over time
        down = httpx.get(f"{srv.url}/v1/decisions/{decision_id}")
        assert down.status_code == 503, down.text
        error = down.json()["error"]
        assert set(error) == {"message", "type", "code"} and error["type"] == "server_error"
        assert "unable to open database file" in error["message"]
        assert error["code"] == "store_unavailable"
        assert httpx.get(f"{srv.url}/v1/decisions/01ZZZZZZZZ").status_code == 503
        # Activating a version during the outage is not "no such version" either.
        active = httpx.put(f"{srv.url}/v1/policies/spam/active", json={"version": "@1"})
        assert active.status_code == 503, active.text


def test_graceful_shutdown_finishes_in_flight_work(tmp_path):
    backend = scripted(SPAM_1, delay_s=1.0)
    with serving(create_app(settings(tmp_path), backend=backend)) as srv:
        answer: list[httpx.Response] = []
        worker = threading.Thread(
            target=lambda: answer.append(
                httpx.post(f"{srv.url}/v1/classify", json=classify_body("slow"), timeout=30)
            )
        )
        worker.start()
        time.sleep(0.3)
        srv.stop()  # what SIGTERM does: stop accepting, finish what is running
        worker.join()
        assert answer[0].status_code == 200 and answer[0].json()["decisions"][0]["label"] == "1"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{srv.url}/healthz")
    with Store(tmp_path / "log.db") as store:
        assert store.count() == 1


def test_openai_client_moderations_create(tmp_path):
    """Categories are judged in one prompt per item (one call, one score per category)."""
    openai = pytest.importorskip("openai")
    categories = {"hate": "hate", "violence": "violence"}
    hateful = Scripted("", slot_probs=({"0": 0.2, "1": 0.8}, {"0": 0.9, "1": 0.1}))
    calm = Scripted("", slot_probs=({"0": 0.9, "1": 0.1}, {"0": 0.8, "1": 0.2}))
    backend = scripted(hateful, calm, calm)
    app = create_app(settings(tmp_path, moderation_categories=categories), backend=backend)
    with serving(app) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused-on-loopback")
        result = client.moderations.create(input=["first", "second"], model="magistrate")
        assert len(result.results) == 2
        first, second = result.results
        assert first.flagged is True and first.categories.model_dump()["violence"] is False
        assert first.category_scores.model_dump()["hate"] == pytest.approx(0.8)
        assert second.flagged is False
        assert result.model == "magistrate" and result.id.startswith("modr-")
        one = client.moderations.create(input="just one")
        assert len(one.results) == 1
        again = client.moderations.create(input="first")  # from the cache: no call
        assert again.results[0].flagged is True
        assert len(backend.prompts) == 3  # one call per item, not one per category
    with Store(tmp_path / "log.db") as store:
        decisions = store.decisions(policy_id="hate")
        assert len(decisions) == 3 and all("bundle" in d.decision.options for d in decisions)


def test_the_store_can_be_postgresql(store_url, tmp_path):
    store = Store(store_url)
    app = create_app(ServerSettings(), backend=scripted(SPAM_1), store=store)
    with serving(app) as srv:
        got = httpx.post(f"{srv.url}/v1/classify", json=classify_body("WIN"))
        assert got.status_code == 200
        assert httpx.get(f"{srv.url}/readyz").status_code == 200
    with Store(store_url) as again:
        assert again.count() == 1


# -- the embedded model --------------------------------------------------------------------------


@pytest.mark.model
def test_embedded_model_over_http_with_the_openai_client(tmp_path, embedded_backend):
    openai = pytest.importorskip("openai")
    categories = {"hate": "hate", "violence": "violence"}
    app = create_app(settings(tmp_path, moderation_categories=categories), backend=embedded_backend)
    with serving(app) as srv:
        got = httpx.post(
            f"{srv.url}/v1/classify",
            json=classify_body(
                "WIN a FREE iPhone!!! Click http://bit.ly/x now", "Dinner at 7 tonight?",
                mode="reason",
            ),
            timeout=600,
        )  # fmt: skip
        assert got.status_code == 200, got.text
        spam, ham = got.json()["decisions"]
        assert spam["violation"] is True and ham["violation"] is False
        assert spam["rationale"] and spam["status"] == "ok"
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", timeout=600)
        result = client.moderations.create(
            input=["I will stab you tomorrow.", "Lovely weather for a picnic."]
        )
        threat, picnic = result.results
        assert threat.categories.violence is True and picnic.flagged is False
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'magistrate_decisions_total{label="1",policy="violence",status="ok"}' in metrics
    with Store(tmp_path / "log.db") as store:
        assert store.count() == 6  # 2 classify + 2 items x 2 categories


# -- the command line --------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "magistrate", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_keys_commands_and_serve_refuses_open_binding_without_keys(tmp_path):
    env = {**os.environ, "MAGISTRATE_DATABASE_URL": str(tmp_path / "log.db"), "NO_COLOR": "1"}
    refused = run_cli("serve", "--host", "0.0.0.0", env=env)
    assert refused.returncode == 1 and "needs API keys" in refused.stderr
    made = run_cli("keys", "create", "ops", "--scope", "admin", "--json", env=env)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["secret"].startswith("mg_") and key["scopes"] == ["admin"]
    listed = run_cli("keys", "list", "--json", env=env)
    assert json.loads(listed.stdout)["name"] == "ops" and "secret" not in listed.stdout
    assert key["secret"] not in Path(tmp_path / "log.db").read_bytes().decode("latin-1")
    assert run_cli("keys", "create", "x", "--scope", "root", env=env).returncode == 1
    assert run_cli("keys", "revoke", "ops", env=env).returncode == 0
    assert run_cli("keys", "list", "--json", env=env).stdout.strip() == ""
    doc = run_cli("openapi", env=env)
    assert json.loads(doc.stdout)["paths"].keys() >= {"/v1/classify", "/v1/moderations"}


@pytest.mark.model
def test_magistrate_serve_runs_and_stops_on_sigterm(tmp_path):
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MAGISTRATE_DATABASE_URL": str(tmp_path / "log.db"), "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "magistrate", "serve", "--port", str(port),
         "--moderation-categories", "violence"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.ConnectError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.5)
        got = httpx.post(f"{url}/v1/classify", json=classify_body("WIN a FREE iPhone!!!"),
                         timeout=300)  # fmt: skip
        assert got.status_code == 200 and got.json()["decisions"][0]["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    # uvicorn finishes its graceful shutdown, then re-raises the signal it caught.
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err
    assert "WIN a FREE" not in out + err  # content stays out of the server's output
    assert "POST /v1/classify" in out + err  # the access line: method, path, status only
