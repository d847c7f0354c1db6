"""Input the service must refuse at the door, and stored rows it must read whatever they hold
(issue 16: real uvicorn on loopback, real SQLite and PostgreSQL, a scripted backend)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from serving import serving
from storehelp import make_decision

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - where the openai client still uses httpx
    import httpx  # type: ignore[no-redef]

from magistrate.backends.mock import MockBackend, Scripted
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
