"""One `Store`, four stores over one database; "not found" never reads as "unavailable".

A row that is not there raises `NotFound`; a database that cannot be reached raises
`StoreUnavailable`; a log that is not ours raises plain `StoreError`. Real SQLite files and a
real PostgreSQL server (or a port with nothing on it), no mocks.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sqlite3
from pathlib import Path

import pytest
from storehelp import make_decision

from magistrate.errors import MagistrateError, NotFound, StoreError, StoreUnavailable
from magistrate.item import Item
from magistrate.policy import Policy
from magistrate.store import (
    ApiKeys,
    Database,
    DecisionLog,
    EvalRuns,
    PolicyRegistry,
    Recorder,
    Store,
)
from magistrate.verdict import ParseStatus


@pytest.fixture
def store(store_url: str):
    with Store(store_url) as s:
        yield s


def closed_port() -> int:
    """A loopback port with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def a_log_that_goes_away(tmp_path: Path, spam: Policy) -> tuple[Store, str]:
    """A SQLite log with one decision, whose directory is then deleted under the store."""
    store = Store(tmp_path / "gone" / "log.db")
    decision, item = make_decision(spam)
    store.record(decision, policy=spam, content=item.text)
    shutil.rmtree(tmp_path / "gone")
    store.engine.dispose()  # what a pool does over time: the next query opens a connection
    return store, decision.id


# -- the split --------------------------------------------------------------------------


def test_the_four_stores_share_one_database(store, spam):
    assert isinstance(store.db, Database)
    assert isinstance(store.log, DecisionLog) and isinstance(store.policies, PolicyRegistry)
    assert isinstance(store.eval_runs, EvalRuns) and isinstance(store.keys, ApiKeys)
    stores = (store.log, store.policies, store.eval_runs, store.keys)
    assert all(part.db is store.db for part in stores)
    assert store.log.policies is store.policies
    assert store.engine is store.db.engine and store.tables is store.db.tables
    decision, item = make_decision(spam)
    store.log.record(decision, policy=spam, content=item.text)
    # What one store wrote, the others (and the old method names) read through the same engine.
    assert store.policies.text(spam.hash) == store.policy_text(spam.hash) == spam.text
    assert store.policies.versions("spam")[0].decisions == 1
    assert store.decision(decision.id).decision == decision


def test_old_imports_and_method_names_keep_working():
    from magistrate.store.store import (  # noqa: F401
        DATABASE_ENV,
        ApiKey,
        DecisionFilter,
        Entry,
        default_database_path,
        key_hash,
        parse_since,
        resolve_url,
    )

    for name in (
        "record", "record_many", "decisions", "iter_decisions", "iter_rows", "count",
        "decision", "verify", "add_policy", "policy_ids", "policy_versions", "policy_version",
        "has_policy", "policy_text", "activate_policy", "active_policies", "add_run", "runs",
        "create_api_key", "api_keys", "api_key_for", "revoke_api_key", "close",
    ):  # fmt: skip
        assert callable(getattr(Store, name)), name


def test_keys_and_runs_through_their_stores(store):
    key, secret = store.keys.create("ci", ["classify"])
    assert store.api_key_for(secret) == key and store.keys.all() == [key]
    assert store.keys.revoke("ci").revoked_at is not None
    assert store.keys.for_secret(secret) is None
    run = {
        "id": "r1",
        "created_at": "2026-01-01T00:00:00.000000+00:00",
        "policy_id": "spam",
        "policy_hash": "a" * 64,
        "dataset": "d",
        "dataset_hash": "b" * 64,
        "backend": "mock/x",
        "effort": "low",
        "mode": "binary",
        "spec": {"n": 1},
        "metrics": {"f1": 0.5},
    }
    store.eval_runs.add(run)
    [back] = store.runs(policy_id="spam")
    assert back["metrics"] == {"f1": 0.5} and store.eval_runs.recent() == [back]


# -- not found ----------------------------------------------------------------------------


def test_a_missing_row_is_not_found(store, spam):
    decision, item = make_decision(spam)
    store.record(decision, policy=spam, content=item.text)
    missing = [
        lambda: store.decision("01ZZZZZZZZZZZZZZZZZZZZZZZZ"),
        lambda: store.decision("ILOVEU"),  # not ULID characters: no decision can have it
        lambda: store.policy_version("spam", "9.9"),
        lambda: store.policy_version("nope", "@1"),
        lambda: store.policy_text("f" * 64),
        lambda: store.revoke_api_key("nobody"),
    ]
    for lookup in missing:
        with pytest.raises(NotFound) as info:
            lookup()
        assert not isinstance(info.value, StoreError), str(info.value)
    assert store.api_key_for("mg_unknown") is None  # an unknown secret is an answer, not an error


def test_a_taken_key_name_is_neither_not_found_nor_unavailable(store):
    store.create_api_key("ci", ["classify"])
    with pytest.raises(MagistrateError, match="exists; choose another name") as info:
        store.create_api_key("ci", ["admin"])
    assert not isinstance(info.value, NotFound | StoreError)


def test_a_log_that_is_not_ours_stays_a_plain_store_error(tmp_path):
    path = tmp_path / "log.db"
    path.write_bytes(b"not a database\n" * 100)
    with pytest.raises(StoreError) as info:
        Store(path)
    assert not isinstance(info.value, StoreUnavailable)


# -- unavailable ----------------------------------------------------------------------------


def test_an_unreachable_postgresql_is_unavailable():
    pytest.importorskip("psycopg")
    with pytest.raises(StoreUnavailable, match="Check that PostgreSQL is running"):
        Store(f"postgresql+psycopg://x@127.0.0.1:{closed_port()}/db")


def test_a_log_that_went_away_is_unavailable_not_not_found(tmp_path, spam):
    store, decision_id = a_log_that_goes_away(tmp_path, spam)
    reads = [
        lambda: store.decision(decision_id),
        store.count,
        lambda: store.policy_text(spam.hash),
        lambda: store.api_key_for("mg_anything"),  # never "no such key" during an outage
        store.verify,
    ]
    for read in reads:
        with pytest.raises(StoreUnavailable, match="unable to open database file"):
            read()


def test_the_recorder_keeps_unavailable_as_unavailable(tmp_path, spam):
    store, _ = a_log_that_goes_away(tmp_path, spam)
    decision, _ = make_decision(spam)
    with pytest.raises(StoreUnavailable, match="was made but NOT recorded"):
        Recorder(store).record(decision, spam, Item.of("Win a prize!"))


def test_a_write_lock_held_past_the_timeout_is_unavailable(tmp_path, spam, monkeypatch):
    path = tmp_path / "log.db"
    monkeypatch.setattr("magistrate.store.database.SQLITE_BUSY_TIMEOUT_S", 0.2)
    store = Store(path)
    other = sqlite3.connect(path, isolation_level=None)  # another process's writer
    other.execute("BEGIN IMMEDIATE")
    decision, item = make_decision(spam)
    try:
        with pytest.raises(StoreUnavailable, match="held its write lock"):
            store.record(decision, policy=spam, content=item.text)
    finally:
        other.execute("ROLLBACK")
        other.close()
        store.close()


# -- the decision-log cache and grouped recording ----------------------------------------------


def test_reusable_finds_matching_verdicts_by_item_and_a_jobs_own_decisions(store, spam):
    from dataclasses import replace

    from magistrate.decision import CacheKey
    from magistrate.store import BufferedRecorder

    key = CacheKey(spam.hash, "llamacpp/test-model", "medium", "score", {"max_tokens": 1,
                   "temperature": 0.0, "constrained": True})  # fmt: skip
    good, item = make_decision(spam, "first text")
    other_options, _ = make_decision(spam, "second text")
    other_options = replace(other_options, options={"max_tokens": 2})
    failed, failed_item = make_decision(spam, "third text", status=ParseStatus.ERROR)
    store.record(good, policy=spam, content=item.text)
    store.record(other_options, policy=spam)
    recorder = BufferedRecorder(store, run_id="01JOBJOBJOBJOBJOBJOBJOBJOB", flush_every=100)
    asyncio.run(recorder.arecord_all([(failed, spam)], failed_item))
    assert store.count() == 2  # kept in memory until flushed
    assert asyncio.run(recorder.aflush()) == 1 and store.count() == 3

    hashes = [item.hash, other_options.item_hash, failed.item_hash, "f" * 64]
    (found,) = store.log.reusable([key], hashes)
    assert list(found) == [item.hash]  # other options and abstentions are not reused
    assert found[item.hash].id == good.id
    (own,) = store.log.reusable([key], hashes, run_id="01JOBJOBJOBJOBJOBJOBJOBJOB")
    assert list(own) == [failed.item_hash]  # a job's own decisions, whatever their status
    many = [f"{n:064x}" for n in range(1200)] + [item.hash]  # more than one IN group
    assert list(store.log.reusable([key], many)[0]) == [item.hash]
