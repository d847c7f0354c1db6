"""The database under the decision log: one SQLAlchemy engine, opened and migrated once.

`Database` resolves the URL, builds the engine (SQLite in WAL mode by default, PostgreSQL by
URL), applies the migrations, reflects the tables, and hands out the two kinds of transaction
every store uses: `read()` and `write()`. A write transaction holds the log's write lock
(SQLite `BEGIN IMMEDIATE`, a PostgreSQL transaction-level advisory lock), so writers in any
number of processes queue instead of interleaving.

Failures are translated once, here: a database that cannot be reached, is locked past the
busy timeout, or whose disk is full or gone raises `StoreUnavailable`; a file or database
that is not a Magistrate log (or was written by a newer one) raises plain `StoreError`.

Example:
    >>> db = Database("sqlite:///logs.db")
    >>> with db.read() as conn:
    ...     conn.execute(sa.select(sa.func.count()).select_from(db.tables["decisions"]))
    >>> db.close()
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import platformdirs
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

import magistrate.store.migrations as migrations
from magistrate.errors import (
    ConfigError,
    InputError,
    MissingDependency,
    StoreError,
    StoreUnavailable,
)

DATABASE_ENV = "MAGISTRATE_DATABASE_URL"
"""Environment variable naming the log: a SQLAlchemy URL or a SQLite file path."""

SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a writer waits for another process's write lock before giving up."""

TABLES = (
    "policies",
    "decisions",
    "eval_runs",
    "api_keys",
    "active_policies",
    "generations",
    "readouts",
)
"""The tables the stores query (reflected from the database, defined by the migrations)."""

_PG_LOCK_KEY = 0x4D41474953  # "MAGIS": the advisory lock that serialises chain appends
_SQLITE_HEADER = b"SQLite format 3\x00"
_WRITE = "magistrate_write"
_OPERATIONAL = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.DisconnectionError,
    sa.exc.TimeoutError,
)


def refuse_nul(what: str, **texts: str | None) -> None:
    """Refuse text that holds U+0000 before it is written or searched for, on every database.

    PostgreSQL text cannot hold NUL; SQLite can. Both refuse it here, as the caller's mistake,
    so a log behaves the same on either and never fails with an outage-like error.

    Example:
        >>> refuse_nul("the filter", label="1", policy_id=None)

    Raises:
        InputError: Some of `texts` hold NUL (the message names them, never their values).
    """
    held = [name for name, text in texts.items() if isinstance(text, str) and "\x00" in text]
    if held:
        raise InputError(
            f"{what}: {', '.join(held)} {'holds' if len(held) == 1 else 'hold'} a NUL "
            "character (U+0000), which the decision log cannot store or search for. Remove it."
        )


def default_database_path() -> Path:
    """The SQLite file used when no URL is given: `logs.db` in the user data directory."""
    return platformdirs.user_data_path("magistrate", appauthor=False) / "logs.db"


def resolve_url(url: str | Path | None = None) -> str:
    """A SQLAlchemy URL from a URL, a file path, `$MAGISTRATE_DATABASE_URL` or the default.

    `postgresql://` and `postgres://` URLs use the psycopg 3 driver.

    Example:
        >>> resolve_url("postgres://me@db/log")
        'postgresql+psycopg://me@db/log'
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


class Database:
    """One opened, migrated log database that every store shares.

    Args:
        url: A SQLAlchemy URL (`sqlite:///path`, `postgresql://user@host/db`) or a SQLite
            file path; default `$MAGISTRATE_DATABASE_URL`, then `default_database_path()`.

    Attributes:
        url: The resolved SQLAlchemy URL.
        dialect: `sqlite` or `postgresql`.
        location: Where the log is, for messages (a file path, or the URL without password).
        engine: The one SQLAlchemy engine (and connection pool) of this log.
        tables: The reflected tables by name.

    Raises:
        StoreUnavailable: The database cannot be reached: unreachable server, a file that
            cannot be read or created, locked past the busy timeout.
        StoreError: A file that is not a SQLite database, a database that holds someone
            else's tables, or a log written by a newer Magistrate.
        MissingDependency: A PostgreSQL URL without the `postgres` extra installed.
        ConfigError: Not a database URL, or a database other than SQLite and PostgreSQL.
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
        self._open()
        self.tables = self._reflect()

    def close(self) -> None:
        """Close every pooled connection (a later query opens a new one)."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.location!r})"

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
        with self.write("migrate") as conn:
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
            meta.reflect(conn, only=list(TABLES))
        return dict(meta.tables)

    # -- transactions and errors ----------------------------------------------------------

    @contextmanager
    def write(self, doing: str = "write to") -> Iterator[Connection]:
        """A transaction holding the log's write lock; commits when the block ends cleanly.

        Args:
            doing: What the write is for, as in "Could not {doing} the decision log".

        Raises:
            StoreUnavailable: The database cannot be reached or its disk is full or locked.
            StoreError: The database refused the write (e.g. a duplicate id).
        """
        with self._errors(doing), self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                if self.dialect == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for queries (no write lock).

        Raises:
            StoreUnavailable: The database cannot be reached.
        """
        with self._errors("read"), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
            raise self._translate(exc, doing) from exc
        except UnicodeEncodeError as exc:
            raise StoreError(
                f"Could not {doing} the decision log at {self.location}: text that is not "
                f"valid Unicode ({exc.reason})."
            ) from exc

    def _translate(self, exc: sa.exc.SQLAlchemyError, doing: str) -> StoreError:
        """The error to raise for a database failure: unavailable, or a plain store error."""
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        where = f"the decision log at {self.location}"
        low = detail.lower()
        if "file is not a database" in low or "malformed" in low:
            return StoreError(
                f"{where} is not a readable SQLite database ({detail}). Move the file aside "
                f"and start a new log, or choose another with --database / {DATABASE_ENV}."
            )
        if "disk is full" in low or "no space" in low:
            return StoreUnavailable(
                f"Could not {doing} {where}: the disk is full ({detail}). Nothing from this "
                "write was kept; free some space and run again."
            )
        if "database is locked" in low:
            return StoreUnavailable(
                f"Could not {doing} {where}: another process held its write lock for over "
                f"{SQLITE_BUSY_TIMEOUT_S:.0f} s. Try again, or use PostgreSQL for heavy "
                "concurrent writing."
            )
        if "unable to open" in low or "readonly" in low or "read-only" in low:
            return StoreUnavailable(
                f"Could not {doing} {where} ({detail}). Check that the directory exists and "
                "is writable, or choose another log with --database."
            )
        if not _operational(exc):
            return StoreError(f"Could not {doing} {where}: {detail}")
        if self.dialect == "postgresql":
            return StoreUnavailable(
                f"Could not {doing} {where}: {detail}. Check that PostgreSQL is running and "
                f"the URL is right (--database / {DATABASE_ENV}), or run with --no-log."
            )
        return StoreUnavailable(f"Could not {doing} {where}: {detail}")


def _operational(exc: sa.exc.SQLAlchemyError) -> bool:
    """Whether a failure is the database's state (outage, I/O, locks), not the request's."""
    return isinstance(exc, _OPERATIONAL) or bool(getattr(exc, "connection_invalidated", False))


def _check_sqlite_file(file: Path) -> None:
    """Refuse a path that cannot hold a SQLite log before SQLite creates or opens it."""
    if file.is_dir():
        raise StoreError(f"{file} is a directory; give a file path for the SQLite log.")
    try:
        if file.is_file() and file.stat().st_size > 0:
            with file.open("rb") as fh:
                header = fh.read(16)
            if header != _SQLITE_HEADER:
                raise StoreError(
                    f"{file} is not a SQLite database (it may be corrupt or another kind "
                    f"of file). Move it aside, or choose another log with --database / "
                    f"{DATABASE_ENV}."
                )
    except OSError as exc:
        raise StoreUnavailable(
            f"Cannot read the log {file}: {exc.strerror or exc}. Check its permissions, or "
            "choose another log with --database."
        ) from None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(f"Cannot create the directory for the log {file}: {exc}") from None


def _sqlite_engine(url: sa.URL, path: str) -> Engine:
    if path != ":memory:":
        _check_sqlite_file(Path(path))
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
