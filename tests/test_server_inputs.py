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
