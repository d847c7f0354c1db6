"""The decision log: one `Store` over SQLAlchemy, SQLite by default, PostgreSQL by URL.

Every write runs in a transaction that holds the log's write lock (SQLite `BEGIN IMMEDIATE`,
a PostgreSQL transaction-level advisory lock), reads the chain's head and appends after it,
so any number of processes can record into one log without losing rows or forking the
chain. SQLite runs in WAL mode with `synchronous=FULL`: a decision reported as recorded
survives a killed process.

Example:
    >>> store = Store()                           # the default SQLite file
    >>> store.record(decision, policy=policy, content="Win a prize!")
    >>> [d.decision.verdict.label for d in store.decisions(policy_id="spam", limit=5)]
    >>> store.verify().ok
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import platformdirs
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from magistrate.decision import Decision
from magistrate.errors import ConfigError, MissingDependency, StoreError
from magistrate.ids import new_ulid
from magistrate.policy import Policy
from magistrate.store import migrations
from magistrate.store.records import (
    GENESIS,
    PolicyVersion,
    StoredDecision,
    VerifyReport,
    canonical_json,
    decision_row,
    row_hash,
    stored_decision,
    timestamp,
)

DATABASE_ENV = "MAGISTRATE_DATABASE_URL"
"""Environment variable naming the log: a SQLAlchemy URL or a SQLite file path."""

SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a writer waits for another process's write lock before giving up."""

_PG_LOCK_KEY = 0x4D41474953  # "MAGIS": the advisory lock that serialises chain appends
_SQLITE_HEADER = b"SQLite format 3\x00"
_WRITE = "magistrate_write"


def default_database_path() -> Path:
    """The SQLite file used when no URL is given: `logs.db` in the user data directory."""
    return platformdirs.user_data_path("magistrate", appauthor=False) / "logs.db"


def resolve_url(url: str | Path | None = None) -> str:
    """A SQLAlchemy URL from a URL, a file path, `$MAGISTRATE_DATABASE_URL` or the default.

    `postgresql://` and `postgres://` URLs use the psycopg 3 driver.
    """
    raw = str(url) if url is not None else os.environ.get(DATABASE_ENV) or ""
    if not raw.strip():
        return f"sqlite:///{default_database_path()}"
    raw = raw.strip()
    if "://" not in raw:
        return f"sqlite:///{Path(raw).expanduser().resolve()}"
    scheme, rest = raw.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return raw


Entry = tuple[Decision, Policy, str | None]
"""What one recorded decision needs: the decision, its policy, and the content (or None)."""


@dataclass(frozen=True)
class DecisionFilter:
    """Which decisions a query returns (every field optional; all given ones must hold)."""

    policy_id: str | None = None
    label: str | None = None
    since: datetime | None = None
    violations: bool = False
    abstained: bool = False
    item_hash: str | None = None
    run_id: str | None = None
    policy_hash: str | None = None
    backend: str | None = None
    effort: str | None = None
    mode: str | None = None
    ok: bool = False
    """Only decisions that reached a verdict."""
    before_seq: int | None = None
    """Only decisions older than this chain position (paging through newest-first lists)."""


class Store:
    """The decision log and the policy texts it was judged under.

    Args:
        url: A SQLAlchemy URL (`sqlite:///path`, `postgresql://user@host/db`) or a SQLite
            file path; default `$MAGISTRATE_DATABASE_URL`, then `default_database_path()`.

    Raises:
        StoreError: The log cannot be opened: unreachable server, a file that is not a
            SQLite database, a database that holds someone else's tables, or a log written
            by a newer Magistrate.
        MissingDependency: A PostgreSQL URL without the `postgres` extra installed.
    """

    def __init__(self, url: str | Path | None = None) -> None:
        self.url = resolve_url(url)
        try:
            parsed = sa.engine.make_url(self.url)
        except sa.exc.ArgumentError:
            raise ConfigError(
                f"{self.url!r} is not a database URL. Use sqlite:///PATH, a file path, or "
                "postgresql://USER@HOST:PORT/DB."
            ) from None
        self.dialect = parsed.get_backend_name()
        self.location = (
            parsed.database or ":memory:"
            if self.dialect == "sqlite"
            else parsed.render_as_string(hide_password=True)
        )
        self.engine = self._engine(parsed)
        self._known_policies: set[str] = set()
        self._open()
        self.tables = self._reflect()

    # -- opening ------------------------------------------------------------------------

    def _engine(self, url: sa.URL) -> Engine:
        if self.dialect == "sqlite":
            return _sqlite_engine(url, self.location)
        if self.dialect == "postgresql":
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise MissingDependency(
                    "A PostgreSQL log needs the psycopg driver: pip install 'magistrate[postgres]'"
                ) from None
            return sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
        raise ConfigError(
            f"Magistrate keeps its log in SQLite or PostgreSQL, not {self.dialect!r}. "
            "Use sqlite:///PATH or postgresql://USER@HOST:PORT/DB."
        )

    def _open(self) -> None:
        with self._errors("open"), self.engine.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
        if names and migrations.MIGRATIONS_TABLE not in names:
            raise StoreError(
                f"{self.location} holds tables that are not a Magistrate log "
                f"({', '.join(sorted(names)[:5])}). Point --database or {DATABASE_ENV} at "
                "a new file or an empty database."
            )
        with self._write("migrate") as conn:
            known = {name for name, _ in migrations.MIGRATIONS}
            newer = [name for name in migrations.applied(conn) if name not in known]
            if newer:
                raise StoreError(
                    f"The log at {self.location} was written by a newer Magistrate (schema "
                    f"{newer[-1]}). Upgrade Magistrate to read it."
                )
            migrations.migrate(conn)

    def _reflect(self) -> dict[str, sa.Table]:
        meta = sa.MetaData()
        with self._errors("read"), self.engine.connect() as conn:
            meta.reflect(
                conn, only=["policies", "decisions", "eval_runs", "api_keys", "active_policies"]
            )
        return dict(meta.tables)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.location!r})"

    # -- transactions and errors ----------------------------------------------------------

    @contextmanager
    def _write(self, doing: str = "write to") -> Iterator[Connection]:
        """A transaction holding the log's write lock; commits on success."""
        with self._errors(doing), self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                if self.dialect == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._errors("read"), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(self._explain(exc, doing)) from exc
        except UnicodeEncodeError as exc:
            raise StoreError(
                f"Could not {doing} the decision log at {self.location}: text that is not "
                f"valid Unicode ({exc.reason})."
            ) from exc

    def _explain(self, exc: sa.exc.SQLAlchemyError, doing: str) -> str:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        where = f"the decision log at {self.location}"
        low = detail.lower()
        if "file is not a database" in low or "malformed" in low:
            return (
                f"{where} is not a readable SQLite database ({detail}). Move the file aside "
                f"and start a new log, or choose another with --database / {DATABASE_ENV}."
            )
        if "disk is full" in low or "database or disk is full" in low or "no space" in low:
            return (
                f"Could not {doing} {where}: the disk is full ({detail}). Nothing from this "
                "write was kept; free some space and run again."
            )
        if "database is locked" in low:
            return (
                f"Could not {doing} {where}: another process held its write lock for over "
                f"{SQLITE_BUSY_TIMEOUT_S:.0f} s. Try again, or use PostgreSQL for heavy "
                "concurrent writing."
            )
        if "unable to open" in low or "readonly" in low or "read-only" in low:
            return (
                f"Could not {doing} {where} ({detail}). Check that the directory exists and "
                "is writable, or choose another log with --database."
            )
        if self.dialect == "postgresql" and isinstance(exc, sa.exc.OperationalError):
            return (
                f"Could not {doing} {where}: {detail}. Check that PostgreSQL is running and "
                f"the URL is right (--database / {DATABASE_ENV}), or run with --no-log."
            )
        return f"Could not {doing} {where}: {detail}"

    # -- writing --------------------------------------------------------------------------

    def record(
        self,
        decision: Decision,
        *,
        policy: Policy,
        content: str | None = None,
        run_id: str | None = None,
    ) -> int:
        """Append one decision (and its policy text, if new). Returns its chain position.

        Args:
            decision: The decision to record.
            policy: The policy it was made under (its hash must match the decision's).
            content: The content judged; None stores its hash alone (redaction).
            run_id: The eval run (or batch job) the decision belongs to.

        Raises:
            StoreError: Nothing was recorded; the message says why.
        """
        return self.record_many([(decision, policy, content)], run_id=run_id)[0]

    def record_many(self, entries: Iterable[Entry], *, run_id: str | None = None) -> list[int]:
        """Append several decisions in one transaction: all are recorded, or none."""
        batch = list(entries)
        for decision, policy, _ in batch:
            if decision.policy_hash != policy.hash:
                raise ValueError(
                    f"Decision {decision.id} was made under policy {decision.policy_hash[:12]},"
                    f" not {policy.short_hash}."
                )
        if not batch:
            return []
        decisions = self.tables["decisions"]
        new_policies = self._new_policies(batch)
        with self._write() as conn:
            for policy, first_seen in new_policies:
                self._insert_policy(conn, policy, first_seen)
            head = conn.execute(
                sa.select(decisions.c.seq, decisions.c.row_hash)
                .order_by(decisions.c.seq.desc())
                .limit(1)
            ).first()
            seq, prev = (head[0], head[1]) if head else (0, GENESIS)
            rows = []
            for decision, _, content in batch:
                seq += 1
                row = {
                    "seq": seq,
                    **decision_row(decision, content=content),
                    "run_id": run_id,
                    "prev_hash": prev,
                }
                row["row_hash"] = prev = row_hash(row)
                rows.append(row)
            conn.execute(sa.insert(decisions), rows)
        self._known_policies.update(policy.hash for policy, _ in new_policies)
        return [row["seq"] for row in rows]

    def add_policy(self, policy: Policy, *, first_seen: datetime | None = None) -> None:
        """Store a policy text without a decision (for servers that manage policies)."""
        if policy.hash in self._known_policies:
            return
        with self._write() as conn:
            self._insert_policy(conn, policy, timestamp(first_seen or datetime.now(UTC)))
        self._known_policies.add(policy.hash)

    def _new_policies(self, batch: Sequence[Entry]) -> list[tuple[Policy, str]]:
        seen: dict[str, tuple[Policy, str]] = {}
        for decision, policy, _ in batch:
            if policy.hash not in self._known_policies and policy.hash not in seen:
                seen[policy.hash] = (policy, timestamp(decision.created_at))
        return list(seen.values())

    def _insert_policy(self, conn: Connection, policy: Policy, first_seen: str) -> None:
        policies = self.tables["policies"]
        exists = conn.execute(
            sa.select(policies.c.hash).where(policies.c.hash == policy.hash)
        ).first()
        if exists is None:
            conn.execute(
                sa.insert(policies).values(
                    hash=policy.hash,
                    policy_id=policy.id,
                    version=policy.version,
                    title=policy.title,
                    text=policy.text,
                    first_seen=first_seen,
                )
            )

    # -- reading --------------------------------------------------------------------------

    def decisions(
        self, where: DecisionFilter | None = None, *, limit: int | None = 100, **filters: Any
    ) -> list[StoredDecision]:
        """Decisions matching a filter, newest first.

        Example:
            >>> store.decisions(policy_id="spam", violations=True, limit=20)
        """
        where = where or DecisionFilter(**filters)
        query = self._select(where).order_by(self.tables["decisions"].c.seq.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return [stored_decision(dict(row._mapping)) for row in conn.execute(query)]

    def iter_decisions(
        self, where: DecisionFilter | None = None, *, batch: int = 500
    ) -> Iterator[StoredDecision]:
        """Every matching decision, oldest first, streamed (for exports)."""
        for row in self.iter_rows(where, batch=batch):
            yield stored_decision(row)

    def iter_rows(
        self, where: DecisionFilter | None = None, *, batch: int = 500
    ) -> Iterator[dict[str, Any]]:
        """Raw decision rows (column -> value), oldest first, streamed."""
        decisions = self.tables["decisions"]
        last = 0
        while True:  # keyset pages, so no cursor stays open between yields
            query = (
                self._select(where or DecisionFilter())
                .where(decisions.c.seq > last)
                .order_by(decisions.c.seq)
                .limit(batch)
            )
            with self._read() as conn:
                rows = [dict(row._mapping) for row in conn.execute(query)]
            if not rows:
                return
            yield from rows
            last = rows[-1]["seq"]

    def count(self, where: DecisionFilter | None = None, **filters: Any) -> int:
        """How many decisions match."""
        query = self._select(where or DecisionFilter(**filters)).subquery()
        with self._read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(query)).scalar_one())

    def decision(self, id: str) -> StoredDecision:
        """One decision by its ULID or a unique prefix of it (at least 6 characters).

        Raises:
            StoreError: No decision, or several, match.
        """
        decisions = self.tables["decisions"]
        ref = id.strip().upper()
        if len(ref) < 6 or not re.fullmatch(r"[0-9A-HJKMNP-TV-Z]+", ref):
            raise StoreError(
                f"{id!r} is not a decision id. Give the 26-character ULID that `logs list` "
                "shows, or at least its first 6 characters."
            )
        query = sa.select(decisions).where(decisions.c.id.startswith(ref)).limit(2)
        with self._read() as conn:
            rows = conn.execute(query).all()
        if not rows:
            raise StoreError(f"No decision {id!r} in the log at {self.location}.")
        if len(rows) > 1:
            raise StoreError(f"Several decisions start with {id!r}; give more characters.")
        return stored_decision(dict(rows[0]._mapping))

    def _select(self, where: DecisionFilter) -> sa.Select[Any]:
        d = self.tables["decisions"]
        query = sa.select(d)
        if where.policy_id is not None:
            query = query.where(d.c.policy_id == where.policy_id)
        if where.label is not None:
            query = query.where(d.c.label == where.label)
        if where.since is not None:
            query = query.where(d.c.created_at >= timestamp(where.since))
        if where.violations:
            query = query.where(d.c.violation.is_(True))
        if where.abstained:
            query = query.where(d.c.status != "ok")
        if where.item_hash is not None:
            query = query.where(d.c.item_hash == where.item_hash)
        if where.run_id is not None:
            query = query.where(d.c.run_id == where.run_id)
        for name in ("policy_hash", "backend", "effort", "mode"):
            value = getattr(where, name)
            if value is not None:
                query = query.where(d.c[name] == value)
        if where.ok:
            query = query.where(d.c.status == "ok")
        if where.before_seq is not None:
            query = query.where(d.c.seq < where.before_seq)
        return query

    # -- eval runs ------------------------------------------------------------------------

    def add_run(self, run: Mapping[str, Any]) -> None:
        """Record an eval run (columns of `eval_runs`; spec and metrics as dicts)."""
        runs = self.tables["eval_runs"]
        row = dict(run)
        row["spec"] = canonical_json(row["spec"])
        row["metrics"] = canonical_json(row["metrics"])
        with self._write() as conn:
            conn.execute(sa.insert(runs).values(**row))

    def runs(self, *, policy_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Eval runs, newest first, with spec and metrics decoded."""
        runs = self.tables["eval_runs"]
        query = sa.select(runs).order_by(runs.c.created_at.desc()).limit(limit)
        if policy_id is not None:
            query = query.where(runs.c.policy_id == policy_id)
        with self._read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row["spec"] = json.loads(row["spec"])
            row["metrics"] = json.loads(row["metrics"])
        return rows

    # -- policies -------------------------------------------------------------------------

    def policy_ids(self) -> list[str]:
        """Every policy id the log has seen."""
        p = self.tables["policies"]
        with self._read() as conn:
            query = sa.select(p.c.policy_id).distinct().order_by(p.c.policy_id)
            return [row[0] for row in conn.execute(query)]

    def policy_versions(self, policy_id: str) -> list[PolicyVersion]:
        """The distinct texts of a policy, in the order the log first saw them."""
        p, d = self.tables["policies"], self.tables["decisions"]
        counts = (
            sa.select(d.c.policy_hash, sa.func.count().label("n"))
            .group_by(d.c.policy_hash)
            .subquery()
        )
        query = (
            sa.select(p, sa.func.coalesce(counts.c.n, 0).label("n"))
            .outerjoin(counts, counts.c.policy_hash == p.c.hash)
            .where(p.c.policy_id == policy_id)
            .order_by(p.c.first_seen, p.c.hash)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            PolicyVersion(
                number=n,
                hash=row.hash,
                policy_id=row.policy_id,
                version=row.version,
                title=row.title,
                first_seen=row.first_seen,
                text=row.text,
                decisions=row.n,
            )
            for n, row in enumerate(rows, 1)
        ]

    def policy_version(self, policy_id: str, ref: str) -> PolicyVersion:
        """One version of a policy by `@N` (the N-th text seen), hash prefix or version label.

        Raises:
            StoreError: No version, or several, match `ref`.
        """
        versions = self.policy_versions(policy_id)
        if not versions:
            raise StoreError(
                f"The log has no policy {policy_id!r}. `magistrate policy history` "
                "lists what it has after a decision is recorded under it."
            )
        ref = ref.strip()
        if re.fullmatch(r"@\d+", ref):
            n = int(ref[1:])
            if 1 <= n <= len(versions):
                return versions[n - 1]
            raise StoreError(f"Policy {policy_id!r} has {len(versions)} versions; no {ref}.")
        if re.fullmatch(r"[0-9a-fA-F]{6,64}", ref):
            by_hash = [v for v in versions if v.hash.startswith(ref.lower())]
            if len(by_hash) == 1:
                return by_hash[0]
        by_label = [v for v in versions if v.version == ref]
        if len(by_label) == 1:
            return by_label[0]
        if len(by_label) > 1:
            hashes = ", ".join(f"@{v.number} ({v.hash[:12]})" for v in by_label)
            raise StoreError(
                f"Policy {policy_id!r} has {len(by_label)} texts labelled version {ref!r}: "
                f"{hashes}. Name one by @N or by hash."
            )
        raise StoreError(
            f"Policy {policy_id!r} has no version {ref!r}. Use @N, a hash prefix or a version "
            "label from `magistrate policy history`."
        )

    def has_policy(self, policy_hash: str) -> bool:
        """Whether the log holds the policy text with this hash."""
        p = self.tables["policies"]
        with self._read() as conn:
            return (
                conn.execute(sa.select(p.c.hash).where(p.c.hash == policy_hash)).first() is not None
            )

    def policy_text(self, policy_hash: str) -> str:
        """The exact text of the policy with this hash."""
        p = self.tables["policies"]
        with self._read() as conn:
            text = conn.execute(sa.select(p.c.text).where(p.c.hash == policy_hash)).scalar()
        if text is None:
            raise StoreError(f"The log has no policy text with hash {policy_hash[:12]}.")
        return str(text)

    # -- the service: active policies and API keys ----------------------------------------

    def activate_policy(self, policy: Policy, *, at: datetime | None = None) -> None:
        """Store a policy text (if new) and make it the active version of its id."""
        active = self.tables["active_policies"]
        now = timestamp(at or datetime.now(UTC))
        with self._write() as conn:
            self._insert_policy(conn, policy, now)
            conn.execute(sa.delete(active).where(active.c.policy_id == policy.id))
            conn.execute(
                sa.insert(active).values(
                    policy_id=policy.id, policy_hash=policy.hash, activated_at=now
                )
            )
        self._known_policies.add(policy.hash)

    def active_policies(self) -> dict[str, str]:
        """Policy id -> hash of its active text."""
        active = self.tables["active_policies"]
        with self._read() as conn:
            rows = conn.execute(sa.select(active.c.policy_id, active.c.policy_hash)).all()
        return {row.policy_id: row.policy_hash for row in rows}

    def create_api_key(
        self, name: str, scopes: Sequence[str], *, rate_per_minute: int | None = None
    ) -> tuple[ApiKey, str]:
        """A new API key: its record and the secret, which is shown once and never stored.

        Raises:
            StoreError: A key with this name exists.
        """
        secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=new_ulid(),
            name=name,
            prefix=secret[:10],
            scopes=tuple(sorted(set(scopes))),
            rate_per_minute=rate_per_minute,
            created_at=timestamp(datetime.now(UTC)),
        )
        keys = self.tables["api_keys"]
        with self._write("add a key to") as conn:
            taken = conn.execute(sa.select(keys.c.id).where(keys.c.name == name)).first()
            if taken is not None:
                raise StoreError(f"An API key named {name!r} exists; choose another name.")
            conn.execute(
                sa.insert(keys).values(
                    id=key.id,
                    name=name,
                    key_hash=key_hash(secret),
                    prefix=key.prefix,
                    scopes=canonical_json(list(key.scopes)),
                    rate_per_minute=rate_per_minute,
                    created_at=key.created_at,
                )
            )
        return key, secret

    def api_keys(self, *, include_revoked: bool = False) -> list[ApiKey]:
        """Every API key (never the secrets), oldest first."""
        keys = self.tables["api_keys"]
        query = sa.select(keys).order_by(keys.c.created_at)
        if not include_revoked:
            query = query.where(keys.c.revoked_at.is_(None))
        with self._read() as conn:
            return [_api_key(dict(row._mapping)) for row in conn.execute(query)]

    def api_key_for(self, secret: str) -> ApiKey | None:
        """The live key whose secret this is, or None (unknown or revoked)."""
        keys = self.tables["api_keys"]
        query = sa.select(keys).where(
            keys.c.key_hash == key_hash(secret), keys.c.revoked_at.is_(None)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        return None if row is None else _api_key(dict(row._mapping))

    def revoke_api_key(self, name_or_id: str) -> ApiKey:
        """Revoke a key by name or id; requests with it are refused from then on.

        Raises:
            StoreError: No live key has that name or id.
        """
        keys = self.tables["api_keys"]
        match = sa.or_(keys.c.name == name_or_id, keys.c.id == name_or_id)
        with self._write("revoke a key in") as conn:
            row = conn.execute(sa.select(keys).where(match, keys.c.revoked_at.is_(None))).first()
            if row is None:
                raise StoreError(f"No live API key is named {name_or_id!r}.")
            now = timestamp(datetime.now(UTC))
            conn.execute(sa.update(keys).where(keys.c.id == row.id).values(revoked_at=now))
        return replace(_api_key(dict(row._mapping)), revoked_at=now)

    # -- verification ---------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Recompute every policy hash and the decision chain; report the first mismatch."""
        p = self.tables["policies"]
        hashes: set[str] = set()
        with self._read() as conn:
            for policy in conn.execute(sa.select(p.c.hash, p.c.policy_id, p.c.text)):
                text = policy.text.encode("utf-8", "surrogatepass")
                actual = hashlib.sha256(text).hexdigest()
                if actual != policy.hash:
                    return VerifyReport(
                        False,
                        0,
                        len(hashes),
                        problem=f"the stored text of policy {policy.policy_id!r} version "
                        f"{policy.hash[:12]} was changed (it now hashes to {actual[:12]})",
                    )
                hashes.add(policy.hash)
        prev, checked = GENESIS, 0
        for row in self.iter_rows(batch=1000):
            problem = _chain_problem(row, checked + 1, prev, hashes)
            if problem is not None:
                return VerifyReport(False, checked, len(hashes), problem, row["seq"], row["id"])
            prev, checked = row["row_hash"], checked + 1
        return VerifyReport(True, checked, len(hashes))


API_KEY_PREFIX = "mg_"


@dataclass(frozen=True)
class ApiKey:
    """An API key's record (the secret is never stored, only its SHA-256)."""

    id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: str
    rate_per_minute: int | None = None
    revoked_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "scopes": list(self.scopes),
            "rate_per_minute": self.rate_per_minute,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


def key_hash(secret: str) -> str:
    """SHA-256 of a key's secret: enough for 256-bit random secrets (no password stretching)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _api_key(row: Mapping[str, Any]) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        scopes=tuple(json.loads(row["scopes"])),
        created_at=row["created_at"],
        rate_per_minute=row["rate_per_minute"],
        revoked_at=row["revoked_at"],
    )


def _chain_problem(row: dict[str, Any], expected: int, prev: str, policies: set[str]) -> str | None:
    """Why a decision row breaks the chain, or None when it checks out."""
    seq, rid = row["seq"], row["id"]
    if seq != expected:
        return f"rows {expected}..{seq - 1} are missing before row {seq} ({rid})"
    if row_hash(row) != row["row_hash"]:
        return f"row {seq} ({rid}) was changed after it was recorded"
    if row["prev_hash"] != prev:
        return (
            f"row {seq} ({rid}) does not follow row {seq - 1}: one of the two was changed or "
            "replaced after it was recorded"
        )
    if row["policy_hash"] not in policies:
        return f"row {seq} ({rid}) cites policy {row['policy_hash'][:12]}, which the log lacks"
    return None


def _sqlite_engine(url: sa.URL, path: str) -> Engine:
    if path != ":memory:":
        file = Path(path)
        if file.is_dir():
            raise StoreError(f"{file} is a directory; give a file path for the SQLite log.")
        if file.is_file() and file.stat().st_size > 0:
            with file.open("rb") as fh:
                if fh.read(16) != _SQLITE_HEADER:
                    raise StoreError(
                        f"{file} is not a SQLite database (it may be corrupt or another kind "
                        f"of file). Move it aside, or choose another log with --database / "
                        f"{DATABASE_ENV}."
                    )
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"Cannot create the directory for the log {file}: {exc}") from None
    engine = sa.create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transactions into our own hands (pysqlite's implicit BEGIN is DEFERRED).
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers take the write lock up front, so reading the chain head and appending
        # after it cannot interleave with another writer.
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, *, now: datetime | None = None) -> datetime:
    """A point in time from `30m`, `2h`, `7d`, `1w`, or an ISO date or date-time (UTC if no zone).

    Raises:
        ConfigError: The value is neither.
    """
    match = _RELATIVE.match(value)
    if match:
        delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return (now or datetime.now(UTC)) - delta
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"--since {value!r} is not a time. Use 30m, 2h, 7d, 1w, or a date such as "
            "2026-11-28 or 2026-11-28T09:30."
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
