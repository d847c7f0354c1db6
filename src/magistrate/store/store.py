"""The one object callers open: a `Store` holds one database and the four stores over it.

    Store(url)
    ├── db          Database        engine, migrations, transactions, error translation
    ├── log         DecisionLog     record, query and verify the hash-chained decisions
    ├── policies    PolicyRegistry  policy texts by hash, versions, the active text per id
    ├── eval_runs   EvalRuns        eval runs (spec and metrics)
    ├── generations GenerationLog   a chat model's answers under evaluation (safety suites)
    ├── readouts    ReadOutStore    fitted read-outs, by the policy text, model and layout
    └── keys        ApiKeys         the HTTP service's API keys

The store's own methods (`record`, `decisions`, `policy_text`, `add_run`, `api_key_for`, ...)
are the names callers have always used; each hands over to the store that keeps that data.

Errors: a row that is not there raises `NotFound`; a database that cannot be reached (refused
connection, disk full or gone, locked past the busy timeout) raises `StoreUnavailable`; a log
that is not ours or was written by a newer Magistrate raises `StoreError`.

Example:
    >>> store = Store()                           # the default SQLite file
    >>> store.record(decision, policy=policy, content="Win a prize!")
    >>> [d.decision.verdict.label for d in store.log.decisions(policy_id="spam", limit=5)]
    >>> store.policies.versions("spam")
    >>> store.verify().ok
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from magistrate.decision import Decision
from magistrate.policy import Policy
from magistrate.store.database import (
    DATABASE_ENV,
    SQLITE_BUSY_TIMEOUT_S,
    Database,
    default_database_path,
    resolve_url,
)
from magistrate.store.decisions import DecisionFilter, DecisionLog, Entry, parse_since
from magistrate.store.generations import GenerationLog
from magistrate.store.keys import API_KEY_PREFIX, ApiKey, ApiKeys, key_hash
from magistrate.store.policies import PolicyRegistry
from magistrate.store.readouts import ReadOutStore
from magistrate.store.records import PolicyVersion, StoredDecision, VerifyReport
from magistrate.store.runs import EvalRuns


class Store:
    """The decision log, the policy texts it was judged under, eval runs and API keys.

    Args:
        url: A SQLAlchemy URL (`sqlite:///path`, `postgresql://user@host/db`) or a SQLite
            file path; default `$MAGISTRATE_DATABASE_URL`, then `default_database_path()`.

    Attributes:
        db: The one `Database` (engine, transactions) the four stores share.
        log: The decisions (`DecisionLog`).
        policies: The policy texts and active versions (`PolicyRegistry`).
        eval_runs: The eval runs (`EvalRuns`).
        generations: A chat model's answers under evaluation (`GenerationLog`).
        readouts: Fitted read-outs (`ReadOutStore`).
        keys: The API keys (`ApiKeys`).

    Raises:
        StoreUnavailable: The database cannot be reached (unreachable server, a file that
            cannot be read or created).
        StoreError: A file that is not a SQLite database, a database that holds someone
            else's tables, or a log written by a newer Magistrate.
        MissingDependency: A PostgreSQL URL without the `postgres` extra installed.
    """

    def __init__(self, url: str | Path | None = None) -> None:
        self.db = Database(url)
        self.policies = PolicyRegistry(self.db)
        self.log = DecisionLog(self.db, self.policies)
        self.eval_runs = EvalRuns(self.db)
        self.generations = GenerationLog(self.db)
        self.readouts = ReadOutStore(self.db, self.policies)
        self.keys = ApiKeys(self.db)

    @property
    def url(self) -> str:
        """The resolved SQLAlchemy URL."""
        return self.db.url

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.db.dialect

    @property
    def location(self) -> str:
        """Where the log is, for messages (a file path, or the URL without password)."""
        return self.db.location

    @property
    def engine(self) -> Engine:
        """The one SQLAlchemy engine every store uses."""
        return self.db.engine

    @property
    def tables(self) -> dict[str, sa.Table]:
        """The reflected tables by name."""
        return self.db.tables

    def close(self) -> None:
        """Close every pooled connection."""
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.location!r})"

    # -- decisions: `DecisionLog` ---------------------------------------------------------

    def record(
        self,
        decision: Decision,
        *,
        policy: Policy,
        content: str | None = None,
        run_id: str | None = None,
    ) -> int:
        """Append one decision; returns its chain position. See `DecisionLog.record`."""
        return self.log.record(decision, policy=policy, content=content, run_id=run_id)

    def record_many(self, entries: Iterable[Entry], *, run_id: str | None = None) -> list[int]:
        """Append several decisions, all or none. See `DecisionLog.record_many`."""
        return self.log.record_many(entries, run_id=run_id)

    def decisions(
        self, where: DecisionFilter | None = None, *, limit: int | None = 100, **filters: Any
    ) -> list[StoredDecision]:
        """Decisions matching a filter, newest first. See `DecisionLog.decisions`."""
        return self.log.decisions(where, limit=limit, **filters)

    def iter_decisions(
        self, where: DecisionFilter | None = None, *, batch: int = 500
    ) -> Iterator[StoredDecision]:
        """Every matching decision, oldest first, streamed. See `DecisionLog.iter_decisions`."""
        return self.log.iter_decisions(where, batch=batch)

    def iter_rows(
        self, where: DecisionFilter | None = None, *, batch: int = 500
    ) -> Iterator[dict[str, Any]]:
        """Raw decision rows, oldest first, streamed. See `DecisionLog.iter_rows`."""
        return self.log.iter_rows(where, batch=batch)

    def count(self, where: DecisionFilter | None = None, **filters: Any) -> int:
        """How many decisions match. See `DecisionLog.count`."""
        return self.log.count(where, **filters)

    def decision(self, id: str) -> StoredDecision:
        """One decision by ULID or unique prefix (`NotFound` if none). See `DecisionLog`."""
        return self.log.decision(id)

    def verify(self) -> VerifyReport:
        """Recompute every policy hash and the chain. See `DecisionLog.verify`."""
        return self.log.verify()

    # -- policies: `PolicyRegistry` -------------------------------------------------------

    def add_policy(self, policy: Policy, *, first_seen: datetime | None = None) -> None:
        """Store a policy text without a decision. See `PolicyRegistry.add`."""
        self.policies.add(policy, first_seen=first_seen)

    def policy_ids(self) -> list[str]:
        """Every policy id the log has seen. See `PolicyRegistry.ids`."""
        return self.policies.ids()

    def policy_versions(self, policy_id: str) -> list[PolicyVersion]:
        """The distinct texts of a policy, oldest first. See `PolicyRegistry.versions`."""
        return self.policies.versions(policy_id)

    def policy_version(self, policy_id: str, ref: str) -> PolicyVersion:
        """One version by `@N`, hash prefix or label (`NotFound` if none). See `PolicyRegistry`."""
        return self.policies.version(policy_id, ref)

    def has_policy(self, policy_hash: str) -> bool:
        """Whether the log holds this policy text. See `PolicyRegistry.has`."""
        return self.policies.has(policy_hash)

    def policy_text(self, policy_hash: str) -> str:
        """The exact text with this hash (`NotFound` if none). See `PolicyRegistry.text`."""
        return self.policies.text(policy_hash)

    def activate_policy(self, policy: Policy, *, at: datetime | None = None) -> None:
        """Make a policy text the active one of its id. See `PolicyRegistry.activate`."""
        self.policies.activate(policy, at=at)

    def active_policies(self) -> dict[str, str]:
        """Policy id -> hash of its active text. See `PolicyRegistry.active`."""
        return self.policies.active()

    # -- eval runs: `EvalRuns` ------------------------------------------------------------

    def add_run(self, run: Mapping[str, Any]) -> None:
        """Record an eval run. See `EvalRuns.add`."""
        self.eval_runs.add(run)

    def runs(self, *, policy_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Eval runs, newest first. See `EvalRuns.recent`."""
        return self.eval_runs.recent(policy_id=policy_id, limit=limit)

    # -- API keys: `ApiKeys` --------------------------------------------------------------

    def create_api_key(
        self, name: str, scopes: Sequence[str], *, rate_per_minute: int | None = None
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (shown once). See `ApiKeys.create`."""
        return self.keys.create(name, scopes, rate_per_minute=rate_per_minute)

    def api_keys(self, *, include_revoked: bool = False) -> list[ApiKey]:
        """Every API key, oldest first. See `ApiKeys.all`."""
        return self.keys.all(include_revoked=include_revoked)

    def api_key_for(self, secret: str) -> ApiKey | None:
        """The live key whose secret this is, or None. See `ApiKeys.for_secret`."""
        return self.keys.for_secret(secret)

    def revoke_api_key(self, name_or_id: str) -> ApiKey:
        """Revoke a key by name or id (`NotFound` if none is live). See `ApiKeys.revoke`."""
        return self.keys.revoke(name_or_id)


__all__ = [
    "API_KEY_PREFIX",
    "DATABASE_ENV",
    "SQLITE_BUSY_TIMEOUT_S",
    "ApiKey",
    "ApiKeys",
    "Database",
    "DecisionFilter",
    "DecisionLog",
    "Entry",
    "EvalRuns",
    "PolicyRegistry",
    "Store",
    "default_database_path",
    "key_hash",
    "parse_since",
    "resolve_url",
]
