"""The service as routers: no database call on the event loop, bounded caches, the keys
resource (real uvicorn on loopback, real SQLite, a scripted backend)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import serving

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - where the openai client still uses httpx
    import httpx  # type: ignore[no-redef]

from magistrate.backends.mock import MockBackend, Scripted
from magistrate.policy import load_policy
from magistrate.server import ServerSettings, create_app
from magistrate.server import catalog as catalog_module
from magistrate.server import service as service_module
from magistrate.store import Store

SPAM_1 = Scripted("1", label_probs={"0": 0.1, "1": 0.9})


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def watch_store(store: Store, on_loop: list[str]) -> None:
    """Note every database transaction that a coroutine runs on the event loop."""
    read, write = store.db.read, store.db.write

    @contextlib.contextmanager
    def watched_read() -> Iterator[object]:
        if _on_event_loop():
            on_loop.append("read")
        with read() as conn:
            yield conn

    @contextlib.contextmanager
    def watched_write(doing: str = "write to") -> Iterator[object]:
        if _on_event_loop():
            on_loop.append(f"write: {doing}")
        with write(doing) as conn:
            yield conn

    store.db.read = watched_read  # type: ignore[method-assign]
    store.db.write = watched_write  # type: ignore[method-assign]


def test_no_route_touches_the_database_on_the_event_loop(tmp_path: Path) -> None:
    store = Store(tmp_path / "log.db")
    on_loop: list[str] = []
    watch_store(store, on_loop)
    categories = {"hate": "hate", "violence": "violence"}
    calm = Scripted("", slot_probs=({"0": 0.9, "1": 0.1}, {"0": 0.8, "1": 0.2}))
    backend = MockBackend(script=[SPAM_1, calm], cycle=True)
    settings = ServerSettings(database=str(tmp_path / "log.db"), moderation_categories=categories)
    text = load_policy("spam").text.replace("id: spam", "id: house")
    with serving(create_app(settings, backend=backend, store=store)) as srv:
        url = srv.url
        body = {"items": [{"text": "WIN"}], "policies": ["spam"]}
        made = httpx.post(f"{url}/v1/classify", json=body).json()["decisions"][0]
        assert httpx.post(f"{url}/v1/moderations", json={"input": "hello"}).status_code == 200
        assert httpx.put(f"{url}/v1/policies/house", json={"text": text}).status_code == 201
        assert httpx.get(f"{url}/v1/policies").status_code == 200
        assert httpx.get(f"{url}/v1/policies/house").status_code == 200
        assert httpx.get(f"{url}/v1/policies/house/versions").status_code == 200
        activate = httpx.put(f"{url}/v1/policies/house/active", json={"version": "@1"})
        assert activate.status_code == 200
        assert httpx.get(f"{url}/v1/decisions").status_code == 200
        assert httpx.get(f"{url}/v1/decisions/{made['id']}").status_code == 200
        assert httpx.post(f"{url}/v1/keys", json={"name": "ci"}).status_code == 201
        assert httpx.get(f"{url}/v1/keys").status_code == 200
        assert httpx.delete(f"{url}/v1/keys/ci").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 200
    assert on_loop == []


def test_judges_and_parsed_policies_stay_bounded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(service_module, "JUDGES_KEPT", 3)
    monkeypatch.setattr(catalog_module, "POLICIES_KEPT", 2)
    settings = ServerSettings(database=str(tmp_path / "log.db"), allow_inline_policies=True)
    app = create_app(settings, backend=MockBackend(script=[SPAM_1], cycle=True))
    spam = load_policy("spam").text
    with serving(app) as srv:
        for n in range(8):
            inline = spam.replace("id: spam", f"id: inline-{n}")
            body = {"items": [{"text": "x"}], "policy_text": inline, "mode": "score"}
            assert httpx.post(f"{srv.url}/v1/classify", json=body).status_code == 200
        for n in range(4):
            text = spam.replace("id: spam", f"id: stored-{n}")
            httpx.put(f"{srv.url}/v1/policies/stored-{n}", json={"text": text})
            assert httpx.get(f"{srv.url}/v1/policies/stored-{n}").status_code == 200
        service = app.state.service
        assert len(service._judges) == 3  # one judge per inline text, least recent dropped
        assert len(service.catalog._parsed) == 2


def test_keys_resource_creates_lists_and_revokes(tmp_path: Path) -> None:
    store = Store(tmp_path / "log.db")
    _, admin = store.create_api_key("ops", ["admin"])
    settings = ServerSettings(database=str(tmp_path / "log.db"), host="0.0.0.0")
    app = create_app(settings, backend=MockBackend(script=[SPAM_1], cycle=True), store=store)
    with serving(app) as srv:
        as_admin = {"Authorization": f"Bearer {admin}"}
        made = httpx.post(
            f"{srv.url}/v1/keys", json={"name": "app", "scopes": ["classify"]}, headers=as_admin
        )
        assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
        secret = made.json()["secret"]
        assert secret.startswith("mg_") and made.json()["key"]["scopes"] == ["classify"]
        as_app = {"Authorization": f"Bearer {secret}"}
        body = {"items": [{"text": "hi"}], "policies": ["spam"]}
        assert httpx.post(f"{srv.url}/v1/classify", json=body, headers=as_app).status_code == 200
        assert httpx.get(f"{srv.url}/v1/keys", headers=as_app).status_code == 403
        listed = httpx.get(f"{srv.url}/v1/keys", headers=as_admin).json()["keys"]
        assert {k["name"] for k in listed} == {"ops", "app"}
        assert all("secret" not in k for k in listed)
        bad = httpx.post(f"{srv.url}/v1/keys", json={"name": "x", "scopes": []}, headers=as_admin)
        assert bad.status_code == 422
        assert httpx.delete(f"{srv.url}/v1/keys/app", headers=as_admin).status_code == 200
        gone = httpx.delete(f"{srv.url}/v1/keys/app", headers=as_admin)
        assert gone.status_code == 404 and gone.json()["error"]["type"] == "not_found_error"
        assert httpx.post(f"{srv.url}/v1/classify", json=body, headers=as_app).status_code == 401


@pytest.mark.parametrize("starting", [True])
def test_a_request_before_the_service_exists_answers_503(starting: bool) -> None:
    from fastapi.testclient import TestClient

    app = create_app(ServerSettings())
    client = TestClient(app)  # no lifespan: the service is never made
    got = client.post("/v1/classify", json={"items": [{"text": "x"}], "policies": ["spam"]})
    assert got.status_code == 503 and got.json()["error"]["code"] == "starting"


def test_moderation_categories_may_share_a_policy(tmp_path: Path) -> None:
    """`--moderation-categories hate,hateful=hate`: two categories, one policy, both answered."""
    categories = {"hate": "hate", "hateful": "hate"}
    settings = ServerSettings(database=str(tmp_path / "log.db"), moderation_categories=categories)
    app = create_app(settings, backend=MockBackend(script=[SPAM_1], cycle=True))
    with serving(app) as srv:
        got = httpx.post(f"{srv.url}/v1/moderations", json={"input": "hello"})
        assert got.status_code == 200, got.text
        result = got.json()["results"][0]
        assert result["categories"] == {"hate": True, "hateful": True}
        assert result["category_scores"]["hateful"] == pytest.approx(0.9)


def test_decision_query_parameters_out_of_range_answer_422(store_url: str) -> None:
    """Hostile `before`/`since` values are the caller's mistake (422), never a 500."""
    store = Store(store_url)
    app = create_app(
        ServerSettings(), backend=MockBackend(script=[SPAM_1], cycle=True), store=store
    )
    with serving(app) as srv:
        body = {"items": [{"text": "WIN"}], "policies": ["spam"]}
        assert httpx.post(f"{srv.url}/v1/classify", json=body).status_code == 200
        edge = httpx.get(f"{srv.url}/v1/decisions", params={"before": 2**63 - 1})
        assert edge.status_code == 200 and len(edge.json()["decisions"]) == 1
        cases = [
            ({"before": str(2**63)}, "before"),
            ({"since": "99999999999d"}, "30m, 2h, 7d, 1w"),
            ({"since": "1000000w"}, "30m, 2h, 7d, 1w"),
            ({"since": "0001-01-01T00:00:00+14:00"}, "30m, 2h, 7d, 1w"),
            ({"since": "9999-12-31T23:59:00-14:00"}, "30m, 2h, 7d, 1w"),
        ]
        for params, needle in cases:
            got = httpx.get(f"{srv.url}/v1/decisions", params=params)
            assert got.status_code == 422, (params, got.text)
            error = got.json()["error"]
            assert set(error) == {"message", "type", "code"}, got.text
            assert error["type"] == "invalid_request_error" and needle in error["message"]


LONE = r"\ud800"  # a JSON escape that parses to an unpaired surrogate, which no UTF-8 can hold


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/moderations", f'{{"input": "hi", "model": "m{LONE}"}}', "model"),
        ("POST", "/v1/classify", f'{{"items": [{{"text": "hi"}}], "policy_text": "# P{LONE}"}}',
         "policy_text"),
        ("POST", "/v1/classify",
         f'{{"items": [{{"text": "hi", "metadata": {{"k": "v{LONE}"}}}}], "policies": ["spam"]}}',
         "items.0.metadata"),
        ("POST", "/v1/classify",
         f'{{"items": [{{"text": "hi", "metadata": {{"k{LONE}": 1}}}}], "policies": ["spam"]}}',
         "items.0.metadata"),
        ("POST", "/v1/classify",
         f'{{"items": [{{"text": "hi", "metadata": {{"a": [1, {{"b": ["{LONE}"]}}]}}}}],'
         ' "policies": ["spam"]}', "items.0.metadata"),
        ("POST", "/v1/classify", f'{{"items": [{{"text": "hi", "id": "m{LONE}"}}],'
         ' "policies": ["spam"]}', "items.0.id"),
        ("POST", "/v1/classify", f'{{"items": [{{"text": "hi"}}], "policies": ["sp{LONE}"]}}',
         "policies.0"),
        ("POST", "/v1/classify", f'{{"items": [{{"text": "hi"}}], "policies": ["spam"],'
         f' "idempotency_key": "k{LONE}"}}', "idempotency_key"),
        ("PUT", "/v1/policies/house", f'{{"text": "# P{LONE}"}}', "text"),
        ("PUT", "/v1/policies/spam/active", f'{{"version": "@1{LONE}"}}', "version"),
    ],
)  # fmt: skip
def test_lone_surrogates_answer_422_before_any_model_call(
    tmp_path: Path, method: str, path: str, body: str, field: str
) -> None:
    """Text that UTF-8 cannot carry is refused at the door: no 500 from echoing it back, no
    backend call whose decision then cannot be recorded."""
    backend = MockBackend(script=[SPAM_1], cycle=True)
    settings = ServerSettings(database=str(tmp_path / "log.db"), allow_inline_policies=True)
    app = create_app(settings, backend=backend)
    with serving(app) as srv:
        got = httpx.request(
            method,
            f"{srv.url}{path}",
            content=body.encode("ascii"),
            headers={"content-type": "application/json"},
        )
        assert got.status_code == 422, got.text
        error = got.json()["error"]
        assert error["type"] == "invalid_request_error", got.text
        assert error["message"].startswith(f"{field}:") and "UTF-8" in error["message"], got.text
    assert backend.prompts == []
    with Store(tmp_path / "log.db") as store:
        assert store.count() == 0


def test_the_working_directory_cannot_replace_a_bundled_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spam = load_policy("spam")
    shadow = spam.text.replace("threshold: 0.75", "threshold: 0.05")
    (tmp_path / "spam").write_text(shadow, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    settings = ServerSettings(database=str(tmp_path / "log.db"))
    app = create_app(settings, backend=MockBackend(script=[SPAM_1], cycle=True))
    with serving(app) as srv:
        body = {"items": [{"text": "WIN"}], "policies": ["spam"]}
        got = httpx.post(f"{srv.url}/v1/classify", json=body)
        assert got.status_code == 200, got.text
        assert got.json()["decisions"][0]["policy"]["hash"] == spam.hash
