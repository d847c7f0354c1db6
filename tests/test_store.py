"""The decision log on real SQLite files and a real PostgreSQL server (same tests for both)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from storehelp import make_decision

from magistrate.errors import ConfigError, InputError, NotFound, StoreError, StoreUnavailable
from magistrate.policy import parse_policy
from magistrate.store import GENESIS, DecisionFilter, Store, parse_since, resolve_url
from magistrate.store import migrations as migrations_module
from magistrate.verdict import ParseStatus

HELPER = Path(__file__).with_name("storehelp.py")


@pytest.fixture
def store(store_url: str):
    with Store(store_url) as s:
        yield s


def edit(store: Store, sql: str, **params: object) -> None:
    """Change the database behind the store's back, as someone with a SQL shell would."""
    with store.engine.connect() as conn, conn.begin():
        conn.execute(sa.text(sql), params)


def test_a_decision_round_trips_exactly(store, spam):
    decision, item = make_decision(spam, "Cheap pills!!", item_id="m-1")
    assert store.record(decision, policy=spam, content=item.text) == 1
    [row] = store.decisions()
    assert row.decision == decision
    assert row.content == "Cheap pills!!"
    assert (row.seq, row.prev_hash) == (1, GENESIS)
    assert store.decision(decision.id).row_hash == row.row_hash
    assert store.decision(decision.id[:8].lower()).id == decision.id
    assert store.policy_text(spam.hash) == spam.text
    data = row.to_dict()
    assert data["policy"]["hash"] == spam.hash and data["rule_ids"] == ["SP2.a"]
    assert data["unknown_rule_ids"] == ["SP9.z"] and data["log"]["seq"] == 1


def test_redaction_keeps_only_the_hash(store, spam):
    decision, item = make_decision(spam, "my phone is 555-0100")
    store.record(decision, policy=spam, content=None)
    row = store.decision(decision.id)
    assert row.content is None and row.decision.item_hash == item.hash
    assert store.verify().ok


def test_filters_and_order(store, spam):
    old = datetime.now(UTC) - timedelta(days=3)
    entries = [
        make_decision(spam, "a", label="1", when=old),
        make_decision(spam, "b", label="0", rules=("SP0.a",)),
        make_decision(spam, "c", status=ParseStatus.MALFORMED),
        make_decision(spam, "d", label="1"),
    ]
    store.record_many([(d, spam, i.text) for d, i in entries])
    assert [r.content for r in store.decisions()] == ["d", "c", "b", "a"]
    assert [r.content for r in store.decisions(violations=True)] == ["d", "a"]
    assert [r.content for r in store.decisions(label="0")] == ["b"]
    assert [r.content for r in store.decisions(abstained=True)] == ["c"]
    assert [r.content for r in store.decisions(since=parse_since("1d"))] == ["d", "c", "b"]
    assert [r.content for r in store.decisions(policy_id="other")] == []
    assert len(store.decisions(limit=2)) == 2
    assert store.count(DecisionFilter(violations=True)) == 2
    abstain = store.decisions(abstained=True)[0].decision
    assert abstain.verdict.violation is None and abstain.verdict.detail
    assert [r.content for r in store.iter_decisions()] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    "since",
    [
        "99999999999d",  # more days than a timedelta holds
        "1000000w",  # a timedelta, but before year 1
        "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
        "9999-12-31T23:59:00-14:00",  # after year 9999 in UTC
        "9" * 5000 + "s",  # more digits than int() converts
    ],
)
def test_a_since_out_of_range_is_an_input_error(since):
    with pytest.raises(InputError, match="30m, 2h, 7d, 1w") as caught:
        parse_since(since)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_before_seq_is_bounded_by_the_integer_column(store, spam):
    decision, item = make_decision(spam, "a")
    store.record(decision, policy=spam, content=item.text)
    assert [r.content for r in store.decisions(before_seq=2**63 - 1)] == ["a"]
    for seq in (2**63, -1):
        with pytest.raises(InputError, match="9223372036854775807"):
            DecisionFilter(before_seq=seq)


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ("[1", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"a": ' * 200 + "1" + "}" * 200, "nested deeper than 128 levels"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 128 levels"),
    ],
    ids=["broken", "list", "deep", "past-recursion"],
)
def test_stored_metadata_that_cannot_be_read_back_reads_as_a_marker(store, spam, stored, reason):
    """Whatever the metadata column holds, reads answer (the row's own chain check fails)."""
    decision, item = make_decision(spam, "a")
    store.record(decision, policy=spam, content=item.text)
    edit(store, "UPDATE decisions SET metadata = :m WHERE seq = 1", m=stored)
    [row] = store.decisions()
    assert row.decision.metadata == {"_unreadable": reason}
    assert store.decision(decision.id).decision.metadata == {"_unreadable": reason}
    assert json.loads(json.dumps(row.to_dict()))["metadata"] == {"_unreadable": reason}
    report = store.verify()
    assert not report.ok and report.seq == 1 and "changed" in (report.problem or "")


def test_policy_versions_history_and_lookup(store, spam):
    v2 = parse_policy(spam.text.replace("version: 1.0.0", "version: 1.1.0"), source="spam.md")
    v2b = parse_policy(v2.text + "\nOne more line.\n", source="spam.md")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for n, policy in enumerate([spam, v2, v2, v2b]):
        decision, item = make_decision(policy, f"m{n}", when=t0 + timedelta(hours=n))
        store.record(decision, policy=policy, content=item.text)
    versions = store.policy_versions("spam")
    assert [(v.number, v.version, v.decisions) for v in versions] == [
        (1, "1.0.0", 1),
        (2, "1.1.0", 2),
        (3, "1.1.0", 1),
    ]
    assert [v.hash for v in versions] == [spam.hash, v2.hash, v2b.hash]
    assert store.policy_version("spam", "@2").hash == v2.hash
    assert store.policy_version("spam", "1.0.0").hash == spam.hash
    assert store.policy_version("spam", v2b.hash[:10]).hash == v2b.hash
    with pytest.raises(NotFound, match=r"2 texts labelled version '1\.1\.0'"):
        store.policy_version("spam", "1.1.0")
    with pytest.raises(NotFound, match="no version"):
        store.policy_version("spam", "9.9")
    with pytest.raises(NotFound, match="has 3 versions"):
        store.policy_version("spam", "@4")
    assert store.policy_ids() == ["spam"]


def test_verify_names_the_row_edited_by_hand(store, spam):
    ids = []
    for n in range(5):
        decision, item = make_decision(spam, f"m{n}")
        store.record(decision, policy=spam, content=item.text)
        ids.append(decision.id)
    assert store.verify().ok and store.verify().decisions == 5
    edit(store, "UPDATE decisions SET label = '0', violation = :f WHERE seq = 3", f=False)
    report = store.verify()
    assert not report.ok and report.seq == 3 and report.decision_id == ids[2]
    assert report.decisions == 2 and ids[2] in (report.problem or "")


@pytest.mark.parametrize(
    ("sql", "seq", "needle"),
    [
        ("UPDATE decisions SET content = 'harmless' WHERE seq = 2", 2, "changed"),
        ("UPDATE decisions SET score = 0.01 WHERE seq = 4", 4, "changed"),
        ("UPDATE decisions SET reasoning = NULL WHERE seq = 1", 1, "changed"),
        ("DELETE FROM decisions WHERE seq = 2", 3, "missing"),
        # A row whose hash was recomputed still breaks the link the next row recorded.
        ("UPDATE decisions SET prev_hash = :g WHERE seq = 3", 3, "changed"),
    ],
)
def test_verify_catches_each_kind_of_edit(store, spam, sql, seq, needle):
    for n in range(4):
        decision, item = make_decision(spam, f"m{n}")
        store.record(decision, policy=spam, content=item.text)
    edit(store, sql, g=GENESIS) if ":g" in sql else edit(store, sql)
    report = store.verify()
    assert not report.ok and report.seq == seq and needle in (report.problem or "")


def test_verify_catches_a_rehashed_row_at_the_link(store, spam):
    from magistrate.store.records import row_hash

    for n in range(3):
        decision, item = make_decision(spam, f"m{n}")
        store.record(decision, policy=spam, content=item.text)
    row = next(r for r in store.iter_rows() if r["seq"] == 2)
    row["label"] = "0"
    edit(store, "UPDATE decisions SET label = '0', row_hash = :h WHERE seq = 2", h=row_hash(row))
    report = store.verify()
    assert not report.ok and report.seq == 3 and "does not follow row 2" in (report.problem or "")


def test_verify_catches_an_edited_policy_text(store, spam):
    decision, item = make_decision(spam)
    store.record(decision, policy=spam, content=item.text)
    edit(store, "UPDATE policies SET text = text || ' (amended)'")
    report = store.verify()
    assert not report.ok and "policy 'spam'" in (report.problem or "")


def test_record_many_is_all_or_nothing(store, spam):
    first, item = make_decision(spam, "kept")
    store.record(first, policy=spam, content=item.text)
    good, _ = make_decision(spam, "a")
    with pytest.raises(StoreError):  # the same ULID twice violates the unique index
        store.record_many([(good, spam, "a"), (good, spam, "a")])
    assert store.count() == 1 and store.verify().ok
    other = parse_policy(spam.text + "\nx\n", source="spam.md")
    with pytest.raises(ValueError, match="was made under policy"):
        store.record(good, policy=other)


def test_migrations_run_once_and_a_newer_log_is_refused(store_url, spam):
    with Store(store_url) as first:
        decision, item = make_decision(spam)
        first.record(decision, policy=spam, content=item.text)
        with first.engine.connect() as conn:
            names = migrations_module.applied(conn)
        assert names == [name for name, _ in migrations_module.MIGRATIONS]
    with Store(store_url) as again:  # reopening applies nothing and keeps the rows
        assert again.count() == 1
        edit(again, "INSERT INTO magistrate_migrations VALUES ('m999_future', 'x')")
    with pytest.raises(StoreError, match="newer Magistrate"):
        Store(store_url)


def test_writers_in_several_processes_lose_nothing(store_url, spam):
    Store(store_url).close()  # create the schema first, as any first process would
    procs = [
        subprocess.Popen(
            [sys.executable, str(HELPER), store_url, "write", "15", f"p{n}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    reported = set()
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        reported |= set(out.split())
    with Store(store_url) as store:
        rows = list(store.iter_decisions())
        assert {r.id for r in rows} == reported and len(rows) == 60
        assert [r.seq for r in rows] == list(range(1, 61))
        assert store.verify().ok


def test_a_process_killed_mid_transaction_loses_only_uncommitted_work(store_url):
    proc = subprocess.run(
        [sys.executable, str(HELPER), store_url, "kill", "5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr
    reported = proc.stdout.split()
    with Store(store_url) as store:
        assert [r.id for r in store.iter_decisions()] == reported
        assert store.verify().ok


def test_a_foreign_database_is_refused(store_url):
    engine = sa.create_engine(store_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    engine.dispose()
    with pytest.raises(StoreError, match="not a Magistrate log"):
        Store(store_url)


# -- SQLite only ------------------------------------------------------------------------


def test_sqlite_uses_wal(tmp_path):
    with Store(tmp_path / "log.db") as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_a_corrupt_file_is_refused_untouched(tmp_path):
    path = tmp_path / "log.db"
    junk = b"this is not a database\n" * 100
    path.write_bytes(junk)
    with pytest.raises(StoreError, match="not a SQLite database"):
        Store(path)
    assert path.read_bytes() == junk


def test_a_damaged_sqlite_file_gives_a_clear_error(tmp_path, spam):
    path = tmp_path / "log.db"
    with Store(path) as store:
        decision, item = make_decision(spam)
        store.record(decision, policy=spam, content=item.text)
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # keep the header, wreck the schema page
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"not a readable SQLite database|Could not"):
        Store(path)


def test_a_directory_or_unwritable_place_is_refused(tmp_path):
    with pytest.raises(StoreError, match="is a directory"):
        Store(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        Store(blocker / "sub" / "log.db")


def test_a_full_disk_mid_write_keeps_every_recorded_decision(tmp_path, spam):
    path = tmp_path / "log.db"
    store = Store(path)
    pages = []

    @sa.event.listens_for(store.engine, "connect")
    def _small_disk(dbapi_conn, _):  # the file may not grow past a few pages
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages[0]}")

    with store.engine.connect() as conn:
        pages.append(int(conn.exec_driver_sql("PRAGMA page_count").scalar()) + 6)
    store.engine.dispose()
    recorded = []
    with pytest.raises(StoreUnavailable, match="disk is full") as info:
        for n in range(500):
            decision, item = make_decision(spam, f"message {n} " + "x" * 2000)
            store.record(decision, policy=spam, content=item.text)
            recorded.append(decision.id)
    assert "Nothing from this write was kept" in str(info.value)
    assert recorded, "the disk filled before any write"
    store.close()
    with Store(path) as again:
        assert [r.id for r in again.iter_decisions()] == recorded
        assert again.verify().ok


# -- PostgreSQL only --------------------------------------------------------------------


def test_an_unreachable_server_gives_a_clear_error():
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreUnavailable, match="Check that PostgreSQL is running"):
        Store(f"postgresql://nobody@127.0.0.1:{port}/none")


def test_urls_and_paths_resolve(tmp_path, monkeypatch):
    assert resolve_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert resolve_url(tmp_path / "x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    monkeypatch.setenv("MAGISTRATE_DATABASE_URL", "sqlite:////tmp/elsewhere.db")
    assert resolve_url() == "sqlite:////tmp/elsewhere.db"
    monkeypatch.delenv("MAGISTRATE_DATABASE_URL")
    assert resolve_url().endswith("logs.db")
    with pytest.raises(ConfigError, match="SQLite or PostgreSQL"):
        Store("mysql://u@h/db")
    with pytest.raises(InputError, match="not a time"):
        parse_since("yesterday-ish")
    assert parse_since("2026-11-28").tzinfo is not None


def test_a_nul_character_is_an_input_error_on_every_database(store, spam):
    """PostgreSQL text cannot hold U+0000; both stores refuse it alike, before writing or
    querying, as the caller's mistake (never StoreUnavailable, never stored on one only)."""
    decision, item = make_decision(spam, "a")
    decision = dataclasses.replace(decision, item_id="m\x00")  # Item.of refuses such an id
    with pytest.raises(InputError, match="item_id") as caught:
        store.record(decision, policy=spam, content=item.text)
    assert "NUL" in str(caught.value) and decision.id in str(caught.value)
    decision, item = make_decision(spam, "a")
    with pytest.raises(InputError, match="run_id"):
        store.record(decision, policy=spam, content=item.text, run_id="r\x00")
    assert store.count() == 0
    for field in ("policy_id", "label", "item_hash", "run_id", "policy_hash", "backend"):
        with pytest.raises(InputError, match=field):
            DecisionFilter(**{field: "x\x00"})
    with pytest.raises(InputError, match="NUL"):
        store.decisions(label="1\x00")
    with pytest.raises(InputError, match="NUL"):
        store.revoke_api_key("ops\x00")
    with pytest.raises(InputError, match="NUL"):
        store.create_api_key("ops\x00", ["admin"])
    with pytest.raises(InputError, match="NUL"):
        store.policy_versions("spam\x00")
    with pytest.raises(InputError, match="NUL"):
        store.runs(policy_id="spam\x00")
