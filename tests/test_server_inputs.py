"""What the service must refuse at the door (callers without a key, input the log cannot
hold), stored rows it must read whatever they hold, and what its errors may tell callers
(issue 16: real uvicorn on loopback, real SQLite and PostgreSQL, a scripted backend or the
openai backend against a fault-injecting server)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from faultserver import FaultServer
from serving import serving
from storehelp import make_decision

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - where the openai client still uses httpx
    import httpx  # type: ignore[no-redef]

from magistrate.backends.mock import MockBackend, Scripted
from magistrate.backends.openai_compat import OpenAIBackend
from magistrate.config import Endpoint
from magistrate.errors import InputError, MalformedAnswer
from magistrate.policy import load_policy
from magistrate.server import ServerSettings, create_app
from magistrate.store import Store

SPAM_1 = Scripted("1", label_probs={"0": 0.1, "1": 0.9})


def nested(depth: int) -> dict[str, Any]:
    """A JSON object `depth` levels deep (the outer object is level 1)."""
    tree: dict[str, Any] = {}
    for _ in range(depth - 1):
        tree = {"a": tree}
    return tree


def scripted() -> MockBackend:
    return MockBackend(script=[SPAM_1], cycle=True)


# -- item metadata: bounded at the door, readable from the log -----------------------------------


@pytest.mark.parametrize(
    ("metadata", "needle"),
    [
        (nested(33), "nested deeper than 32 levels"),
        ({"a": [nested(32)]}, "nested deeper than 32 levels"),
        ({"k": "x" * 17_000}, "over 16,384 bytes"),
    ],
    ids=["deep-object", "deep-list", "large"],
)
def test_metadata_too_deep_or_too_large_answers_422_before_any_model_call(
    tmp_path, metadata: dict[str, Any], needle: str
) -> None:
    backend = scripted()
    settings = ServerSettings(database=str(tmp_path / "log.db"))
    with serving(create_app(settings, backend=backend)) as srv:
        body = {"items": [{"text": "hi", "metadata": metadata}], "policies": ["spam"]}
        got = httpx.post(f"{srv.url}/v1/classify", json=body)
        assert got.status_code == 422, got.text[:300]
        error = got.json()["error"]
        assert error["message"].startswith("items.0.metadata:") and needle in error["message"]
        assert len(got.text) < 1000  # the metadata is not echoed back
    assert backend.prompts == []


def test_metadata_at_the_limits_is_judged_and_read_back(tmp_path) -> None:
    settings = ServerSettings(database=str(tmp_path / "log.db"))
    metadata = {**nested(32), "pad": "x" * 16_000}
    with serving(create_app(settings, backend=scripted())) as srv:
        body = {"items": [{"text": "hi", "metadata": metadata}], "policies": ["spam"]}
        made = httpx.post(f"{srv.url}/v1/classify", json=body)
        assert made.status_code == 200, made.text[:300]
        decision_id = made.json()["decisions"][0]["id"]
        one = httpx.get(f"{srv.url}/v1/decisions/{decision_id}")
        assert one.status_code == 200 and one.json()["decision"]["metadata"] == metadata


def test_a_stored_row_with_unreadable_metadata_reads_with_a_marker(store_url: str) -> None:
    """A row an older version accepted (metadata nested some 300 levels deep, past what the
    response encoder takes) must not make every page that holds it, or the decision itself,
    a 500; the chain still verifies."""
    spam = load_policy("spam")
    store = Store(store_url)
    deep, item = make_decision(spam, "deep", item_id="deep")
    deep = dataclasses.replace(deep, metadata=nested(300))
    store.record(deep, policy=spam, content=item.text)
    plain, item = make_decision(spam, "plain", item_id="plain")
    store.record(plain, policy=spam, content=item.text)
    app = create_app(ServerSettings(), backend=scripted(), store=store)
    with serving(app) as srv:
        page = httpx.get(f"{srv.url}/v1/decisions")
        assert page.status_code == 200, page.text[:300]
        rows = {d["decision"]["item_id"]: d["decision"] for d in page.json()["decisions"]}
        assert rows["plain"]["metadata"] == {"source": "test", "n": 1}
        marker = rows["deep"]["metadata"]
        assert list(marker) == ["_unreadable"] and "nested" in marker["_unreadable"]
        one = httpx.get(f"{srv.url}/v1/decisions/{deep.id}")
        assert one.status_code == 200 and one.json()["decision"]["metadata"] == marker
    with Store(store_url) as again:
        assert again.verify().ok  # the stored columns are hashed, not what reads show


# -- NUL characters: refused at the door and by the store, on SQLite and PostgreSQL --------------

NUL = r"\u0000"  # a JSON escape for U+0000, which PostgreSQL text cannot hold


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/classify", f'{{"items": [{{"text": "hi", "id": "m{NUL}"}}],'
         ' "policies": ["spam"]}', "items.0.id"),
        ("POST", "/v1/classify",
         f'{{"items": [{{"text": "hi", "metadata": {{"k": "v{NUL}"}}}}], "policies": ["spam"]}}',
         "items.0.metadata"),
        ("POST", "/v1/classify",
         f'{{"items": [{{"text": "hi", "metadata": {{"k{NUL}": [1]}}}}], "policies": ["spam"]}}',
         "items.0.metadata"),
        ("POST", "/v1/classify", f'{{"items": [{{"text": "hi"}}], "policies": ["sp{NUL}am"]}}',
         "policies.0"),
        ("POST", "/v1/classify", f'{{"items": [{{"text": "hi"}}], "policy_text": "# P{NUL}"}}',
         "policy_text"),
        ("POST", "/v1/classify", f'{{"items": [{{"text": "hi"}}], "policies": ["spam"],'
         f' "idempotency_key": "k{NUL}"}}', "idempotency_key"),
        ("POST", "/v1/moderations", f'{{"input": "hi", "model": "m{NUL}"}}', "model"),
        ("PUT", "/v1/policies/house", f'{{"text": "# P{NUL}"}}', "text"),
        ("PUT", "/v1/policies/spam/active", f'{{"version": "@1{NUL}"}}', "version"),
        ("GET", "/v1/decisions?label=1%00", None, "query.label"),
        ("GET", "/v1/decisions?policy=spam%00", None, "query.policy"),
        ("GET", "/v1/decisions?since=7d%00", None, "query.since"),
        ("DELETE", "/v1/keys/ops%00", None, "path.name"),
    ],
    ids=["item-id", "metadata-value", "metadata-key", "policy-id", "policy-text",
         "idempotency-key", "moderation-model", "put-policy", "activate", "label", "policy",
         "since", "revoke-key"],
)  # fmt: skip
def test_nul_characters_answer_422_before_any_model_call(
    store_url: str, method: str, path: str, body: str | None, field: str
) -> None:
    """A NUL in any request text bound for the database is the caller's mistake (422), on
    both stores alike: never a 503 "made but NOT recorded" after the backend was called."""
    backend = scripted()
    store = Store(store_url)
    store.create_api_key("ops", ["admin"])
    app = create_app(ServerSettings(allow_inline_policies=True), backend=backend, store=store)
    with serving(app) as srv:
        got = httpx.request(
            method,
            f"{srv.url}{path}",
            content=body.encode("ascii") if body is not None else None,
            headers={"content-type": "application/json"},
        )
        assert got.status_code == 422, got.text
        error = got.json()["error"]
        assert error["type"] == "invalid_request_error", got.text
        assert error["message"].startswith(f"{field}:") and "NUL" in error["message"], got.text
    assert backend.prompts == []
    with Store(store_url) as again:
        assert again.count() == 0
        assert [k.name for k in again.api_keys()] == ["ops"]


# -- the key comes first, off loopback ---------------------------------------------------------


def keyed(tmp_path, backend: MockBackend, **kw: Any) -> tuple[Any, dict[str, str]]:
    """An app bound off loopback (keys required) and the header of a `classify` key."""
    store = Store(tmp_path / "log.db")
    _, secret = store.create_api_key("app", ["classify"])
    app = create_app(ServerSettings(host="0.0.0.0", **kw), backend=backend, store=store)
    return app, {"Authorization": f"Bearer {secret}"}


def test_a_caller_without_a_known_key_gets_401_whatever_the_body(tmp_path) -> None:
    backend = scripted()
    app, auth = keyed(tmp_path, backend, max_body_bytes=20_000)
    bodies = [
        b"{not json",
        b'{"items": [{"text": "\xff\xfe"}]}',
        b"[" * 5_000 + b"]" * 5_000,
        b'{"items": [], "policies": ["spam"]}',
        b'{"items": [{"text": "' + b"y" * 30_000 + b'"}]}',
    ]
    json_type = {"content-type": "application/json"}
    with serving(app) as srv:
        url = f"{srv.url}/v1/classify"
        for who in ({}, {"Authorization": "Bearer mg_unknown"}, {"Authorization": "Basic eDp5"}):
            for body in bodies:
                got = httpx.post(url, content=body, headers={**json_type, **who})
                assert got.status_code == 401, (who, body[:20], got.text)
                assert got.headers["www-authenticate"] == "Bearer"
                assert got.json()["error"]["type"] == "authentication_error"
        # With a key, the body is judged on its merits, and scopes are still the routes'.
        bad = httpx.post(url, content=b"{not json", headers={**json_type, **auth})
        assert bad.status_code == 422, bad.text
        body = {"items": [{"text": "hi"}], "policies": ["spam"]}
        assert httpx.post(url, json=body, headers=auth).status_code == 200
        assert httpx.get(f"{srv.url}/v1/decisions", headers=auth).status_code == 403
    assert len(backend.prompts) == 1


def test_the_api_docs_need_a_key_off_loopback_and_stay_open_on_loopback(tmp_path) -> None:
    app, auth = keyed(tmp_path, scripted())
    with serving(app) as srv:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"{srv.url}{path}").status_code == 401, path
            assert httpx.get(f"{srv.url}{path}", headers=auth).status_code == 200, path
        for path in ("/healthz", "/readyz", "/metrics"):  # probes and scrapers need none
            assert httpx.get(f"{srv.url}{path}").status_code == 200, path
    settings = ServerSettings(database=str(tmp_path / "open.db"))
    with serving(create_app(settings, backend=scripted())) as srv:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(f"{srv.url}{path}").status_code == 200, path


# -- a body that cannot be parsed says why -------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "needle", "not_said"),
    [
        (b'{"items": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", 400, "nested too deeply", "UTF-8"),
        (b'{"items": [{"text": "\xff\xfe"}]}', 400, "not valid UTF-8", "nested"),
        (b'{"items": [{"text": "WIN', 422, "not valid JSON", "UTF-8"),
    ],
    ids=["deep", "not-utf8", "malformed"],
)
def test_a_body_that_cannot_be_parsed_says_why(tmp_path, body, status, needle, not_said) -> None:
    settings = ServerSettings(database=str(tmp_path / "log.db"))
    with serving(create_app(settings, backend=scripted())) as srv:
        got = httpx.post(
            f"{srv.url}/v1/classify", content=body, headers={"content-type": "application/json"}
        )
        assert got.status_code == status, got.text
        message = got.json()["error"]["message"]
        assert needle in message and not_said not in message, message
        assert "WIN" not in message


# -- callers get a stable error code, never upstream text ---------------------------------------

UPSTREAM = ("engine crashed", "maximum context length", "no scenario", "fnal")
"""Text the fault server puts in its error bodies and broken answers."""


@pytest.mark.parametrize(
    ("scenario", "settings", "code"),
    [
        ("slow", {"timeout_s": 0.5}, "backend_timeout"),
        ("http500:s", {}, "backend_unavailable"),
        ("http400:s", {}, "backend_rejected"),
        ("http401", {}, "backend_rejected"),
        ("no-such-scenario", {}, "backend_rejected"),
        ("ratelimit-forever:s", {}, "backend_rate_limited"),
        ("bad-header", {}, "malformed_answer"),
        ("closed-port", {}, "backend_unavailable"),
    ],
)
def test_backend_failures_reach_callers_as_a_code_and_the_log_keeps_the_text(
    tmp_path, scenario: str, settings: dict[str, Any], code: str
) -> None:
    with FaultServer() as fault:
        url = fault.url
        if scenario == "closed-port":
            url = url.rsplit(":", 1)[0] + ":9/v1"  # the discard port: nothing listens there
        endpoint = Endpoint(base_url=url, max_retries=0, timeout_s=30)
        backend = OpenAIBackend(f"gpt-oss-{scenario}", endpoint=endpoint)
        app = create_app(
            ServerSettings(database=str(tmp_path / "log.db"), **settings), backend=backend
        )
        body = {"items": [{"text": "WIN"}], "policies": ["spam"], "mode": "reason"}
        with serving(app) as srv:
            got = httpx.post(f"{srv.url}/v1/classify", json=body, timeout=30)
            assert got.status_code == 200, got.text
            [decision] = got.json()["decisions"]
            assert decision["status"] == "error" and decision["error"] == code, decision
            assert not any(text in got.text for text in UPSTREAM), got.text
            logged = httpx.get(f"{srv.url}/v1/decisions/{decision['id']}").json()["decision"]
            assert logged["error"] and logged["error"] != code  # the full message, for audit


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (MalformedAnswer("mock/scripted's answer could not be read (OverflowError)."),
         "malformed_answer"),
        (InputError("The prompt is 9,000 tokens and 1 more are needed for the answer, but "
                    "the model's context holds 4,096. Shorten the content or the policy."),
         "input_too_long"),
        (RuntimeError("upstream said: engine crashed"), "backend_error"),
    ],
    ids=["malformed", "context", "other"],
)  # fmt: skip
def test_other_failures_have_codes_too(tmp_path, failure: Exception, code: str) -> None:
    class Failing(MockBackend):
        async def complete(self, prompt: Any, options: Any) -> Any:
            raise failure

    backend = Failing(script=[])
    settings = ServerSettings(database=str(tmp_path / "log.db"))
    with serving(create_app(settings, backend=backend)) as srv:
        body = {"items": [{"text": "WIN"}], "policies": ["spam"]}
        got = httpx.post(f"{srv.url}/v1/classify", json=body)
        [decision] = got.json()["decisions"]
        assert decision["error"] == code and "engine crashed" not in got.text, got.text
