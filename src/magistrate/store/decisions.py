"""The decisions themselves: an append-only, hash-chained log, its queries and its check.

Every append runs in one write transaction (see `Database.write`): it reads the chain's head
and appends after it, so any number of processes can record into one log without losing rows
or forking the chain. `verify()` re-derives every hash and names the first row that no longer
matches.

Example:
    >>> log = DecisionLog(db, PolicyRegistry(db))
    >>> log.record(decision, policy=policy, content="Win a prize!")
    >>> [d.decision.verdict.label for d in log.decisions(policy_id="spam", limit=5)]
    >>> log.verify().ok
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from magistrate.decision import CacheKey, Decision
from magistrate.errors import InputError, NotFound
from magistrate.policy import Policy
from magistrate.store.database import Database, refuse_nul
from magistrate.store.policies import PolicyRegistry
from magistrate.store.records import (
    GENESIS,
    StoredDecision,
    VerifyReport,
    canonical_json,
    decision_row,
    row_hash,
    stored_decision,
    timestamp,
)

Entry = tuple[Decision, Policy, str | None]
"""What one recorded decision needs: the decision, its policy, and the content (or None)."""

_ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]+")

_FILTER_TEXTS = (
    "policy_id", "label", "item_hash", "run_id", "policy_hash", "backend", "effort", "mode"
)  # fmt: skip
_CALLER_TEXTS = ("item_id", "policy_id", "policy_version", "backend")
"""The text columns of a decision that come from the caller, its policy or its settings
(checked for NUL before writing; the content is checked by `magistrate.item`)."""

SEQ_MAX = 2**63 - 1
"""The largest chain position the `seq` column holds (BIGINT on PostgreSQL, SQLite's INTEGER)."""


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

    def __post_init__(self) -> None:
        texts = {name: getattr(self, name) for name in _FILTER_TEXTS}
        refuse_nul("The decision filter", **texts)
        # A number the column cannot hold would reach the driver and fail there (500/503).
        if self.before_seq is not None and not 0 <= self.before_seq <= SEQ_MAX:
            raise InputError(
                f"before={self.before_seq} is not a chain position: give a whole number "
                f"from 0 to {SEQ_MAX}."
            )
        if self.since is not None and self.since.tzinfo is not None:
            try:
                self.since.astimezone(UTC)
            except OverflowError:
                raise InputError(
                    f"since={self.since.isoformat()} lies outside years 1 to 9999 in UTC."
                ) from None


class DecisionLog:
    """The recorded decisions: append, query, verify.

    Args:
        db: The log's database.
        policies: The policy registry of the same database; a decision's policy text is
            stored in the same transaction as the decision.
    """

    def __init__(self, db: Database, policies: PolicyRegistry) -> None:
        self.db = db
        self.policies = policies

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
            StoreUnavailable: The database cannot be reached; nothing was recorded.
            StoreError: Nothing was recorded; the message says why.
        """
        return self.record_many([(decision, policy, content)], run_id=run_id)[0]

    def record_many(self, entries: Iterable[Entry], *, run_id: str | None = None) -> list[int]:
        """Append several decisions in one transaction: all are recorded, or none.

        Raises:
            InputError: A decision's item id, policy, backend, content or the run id holds a
                NUL character; nothing was recorded.
            StoreUnavailable: The database cannot be reached; nothing was recorded.
            StoreError: Nothing was recorded; the message says why.
        """
        batch = list(entries)
        for decision, policy, content in batch:
            refuse_nul(
                f"Decision {decision.id} was not recorded",
                **{name: getattr(decision, name) for name in _CALLER_TEXTS},
                content=content,
                run_id=run_id,
            )
            if decision.policy_hash != policy.hash:
                raise ValueError(
                    f"Decision {decision.id} was made under policy {decision.policy_hash[:12]},"
                    f" not {policy.short_hash}."
                )
        if not batch:
            return []
        decisions = self.db.tables["decisions"]
        new_policies = self._new_policies(batch)
        with self.db.write() as conn:
            for policy, first_seen in new_policies:
                self.policies.insert(conn, policy, first_seen)
            head = conn.execute(
                sa.select(decisions.c.seq, decisions.c.row_hash)
                .order_by(decisions.c.seq.desc())
                .limit(1)
            ).first()
            rows = _chain(batch, head[0] if head else 0, head[1] if head else GENESIS, run_id)
            _insert_many(conn, decisions, rows)
        self.policies.remember(policy.hash for policy, _ in new_policies)
        return [row["seq"] for row in rows]

    def _new_policies(self, batch: Sequence[Entry]) -> list[tuple[Policy, str]]:
        seen: dict[str, tuple[Policy, str]] = {}
        for decision, policy, _ in batch:
            if not self.policies.known(policy.hash) and policy.hash not in seen:
                seen[policy.hash] = (policy, timestamp(decision.created_at))
        return list(seen.values())

    # -- reading --------------------------------------------------------------------------

    def decisions(
        self, where: DecisionFilter | None = None, *, limit: int | None = 100, **filters: Any
    ) -> list[StoredDecision]:
        """Decisions matching a filter, newest first.

        Example:
            >>> log.decisions(policy_id="spam", violations=True, limit=20)
        """
        where = where or DecisionFilter(**filters)
        query = self._select(where).order_by(self.db.tables["decisions"].c.seq.desc())
        if limit is not None:
            query = query.limit(limit)
        with self.db.read() as conn:
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
        decisions = self.db.tables["decisions"]
        last = 0
        while True:  # keyset pages, so no cursor stays open between yields
            query = (
                self._select(where or DecisionFilter())
                .where(decisions.c.seq > last)
                .order_by(decisions.c.seq)
                .limit(batch)
            )
            with self.db.read() as conn:
                rows = [dict(row._mapping) for row in conn.execute(query)]
            if not rows:
                return
            yield from rows
            last = rows[-1]["seq"]

    def reusable(
        self,
        keys: Sequence[CacheKey],
        item_hashes: Iterable[str] | None = None,
        *,
        run_id: str | None = None,
    ) -> list[dict[str, Decision]]:
        """The decision-log cache: per key (one per policy of a judge), the newest recorded
        decision that key's `matches` accepts, by item hash.

        Args:
            keys: What each policy's decisions must match (`Judge.cache_keys()`).
            item_hashes: Only these items (queried in groups); None: every item.
            run_id: Only the decisions of this run or batch job, whatever their status
                (a job's own decisions, errors included, are never made twice); None: any
                run, verdicts only.
        """
        found: list[dict[str, Decision]] = [{} for _ in keys]
        if not keys:
            return found
        d = self.db.tables["decisions"]
        query = sa.select(d).where(d.c.policy_hash.in_({k.policy_hash for k in keys}))
        if run_id is not None:
            query = query.where(d.c.run_id == run_id)
        else:
            query = query.where(d.c.status == "ok")
            for name in ("backend", "effort", "mode"):
                values = {getattr(k, name) for k in keys}
                if len(values) == 1:  # one judge's keys: narrow the query by index
                    query = query.where(d.c[name] == values.pop())
        for chunk in _chunks(item_hashes):
            q = query if chunk is None else query.where(d.c.item_hash.in_(chunk))
            with self.db.read() as conn:
                rows = [dict(row._mapping) for row in conn.execute(q.order_by(d.c.seq))]
            for row in rows:  # oldest first, so the newest wins
                decision = stored_decision(row).decision
                for key, by_item in zip(keys, found, strict=True):
                    if (run_id is not None and key.policy_hash == decision.policy_hash) or (
                        key.matches(decision)
                    ):
                        by_item[decision.item_hash] = decision
        return found

    def decided_items(self, run_id: str, policy_hashes: set[str]) -> set[str]:
        """Item hashes that run `run_id` has a decision for under every one of
        `policy_hashes` (hashes only: no decision is loaded)."""
        d = self.db.tables["decisions"]
        query = (
            sa.select(d.c.item_hash)
            .where(d.c.run_id == run_id, d.c.policy_hash.in_(policy_hashes))
            .group_by(d.c.item_hash)
            .having(sa.func.count(sa.distinct(d.c.policy_hash)) == len(policy_hashes))
        )
        with self.db.read() as conn:
            return {row[0] for row in conn.execute(query)}

    def count(self, where: DecisionFilter | None = None, **filters: Any) -> int:
        """How many decisions match."""
        query = self._select(where or DecisionFilter(**filters)).subquery()
        with self.db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(query)).scalar_one())

    def decision(self, id: str) -> StoredDecision:
        """One decision by its ULID or a unique prefix of it (at least 6 characters).

        Example:
            >>> log.decision("01JD8Q").decision.verdict.label

        Raises:
            NotFound: No decision, or several, match (or `id` cannot be a decision id).
            StoreUnavailable: The database cannot be reached: an outage, never "not found".
        """
        decisions = self.db.tables["decisions"]
        ref = id.strip().upper()
        if len(ref) < 6 or not _ULID.fullmatch(ref):
            raise NotFound(
                f"{id!r} is not a decision id. Give the 26-character ULID that `logs list` "
                "shows, or at least its first 6 characters."
            )
        query = sa.select(decisions).where(decisions.c.id.startswith(ref)).limit(2)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        if not rows:
            raise NotFound(f"No decision {id!r} in the log at {self.db.location}.")
        if len(rows) > 1:
            raise NotFound(f"Several decisions start with {id!r}; give more characters.")
        return stored_decision(dict(rows[0]._mapping))

    def _select(self, where: DecisionFilter) -> sa.Select[Any]:
        d = self.db.tables["decisions"]
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

    # -- verification ---------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Recompute every policy hash and the decision chain; report the first mismatch."""
        hashes: set[str] = set()
        problem = self._policy_problem(hashes)
        if problem is not None:
            return VerifyReport(False, 0, len(hashes), problem=problem)
        prev, checked = GENESIS, 0
        for row in self.iter_rows(batch=1000):
            problem = _chain_problem(row, checked + 1, prev, hashes)
            if problem is not None:
                return VerifyReport(False, checked, len(hashes), problem, row["seq"], row["id"])
            prev, checked = row["row_hash"], checked + 1
        return VerifyReport(True, checked, len(hashes))

    def _policy_problem(self, hashes: set[str]) -> str | None:
        """Re-hash every stored policy text, adding the good hashes to `hashes`."""
        p = self.db.tables["policies"]
        with self.db.read() as conn:
            for policy in conn.execute(sa.select(p.c.hash, p.c.policy_id, p.c.text)):
                text = policy.text.encode("utf-8", "surrogatepass")
                actual = hashlib.sha256(text).hexdigest()
                if actual != policy.hash:
                    return (
                        f"the stored text of policy {policy.policy_id!r} version "
                        f"{policy.hash[:12]} was changed (it now hashes to {actual[:12]})"
                    )
                hashes.add(policy.hash)
        return None


def _chunks(values: Iterable[str] | None, size: int = 500) -> Iterator[list[str] | None]:
    """Groups of at most `size` distinct values for an IN clause; one None for "all"."""
    if values is None:
        yield None
        return
    chunk: list[str] = []
    for value in dict.fromkeys(values):
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _insert_many(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows whose values are all plain text, numbers, booleans or None, through the
    driver's executemany: SQLAlchemy's own path prepares every row's parameters in Python,
    which cost batch jobs more than the insert itself."""
    names = list(rows[0])
    quote = conn.dialect.identifier_preparer.quote
    columns = ", ".join(quote(name) for name in names)
    style = conn.dialect.paramstyle
    if style == "qmark":
        marks = ", ".join("?" for _ in names)
        values: list[Any] = [tuple(row[name] for name in names) for row in rows]
    elif style == "pyformat":
        marks = ", ".join(f"%({name})s" for name in names)
        values = rows
    else:  # pragma: no cover - the drivers Magistrate supports use one of the two
        conn.execute(sa.insert(table), rows)
        return
    conn.exec_driver_sql(f"INSERT INTO {quote(table.name)} ({columns}) VALUES ({marks})", values)


def _chain(batch: Sequence[Entry], seq: int, prev: str, run_id: str | None) -> list[dict[str, Any]]:
    """The rows that append `batch` after chain position `seq` whose hash is `prev`."""
    rows = []
    # A judge gives all its decisions one options mapping: encode each mapping once.
    encoded: dict[int, tuple[object, str]] = {}
    for decision, _, content in batch:
        seq += 1
        known = encoded.get(id(decision.options))
        if known is None or known[0] is not decision.options:
            known = encoded[id(decision.options)] = (
                decision.options,
                canonical_json(dict(decision.options)),
            )
        row = {
            "seq": seq,
            **decision_row(decision, content=content, options_json=known[1]),
            "run_id": run_id,
            "prev_hash": prev,
        }
        row["row_hash"] = prev = row_hash(row)
        rows.append(row)
    return rows


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


_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, *, now: datetime | None = None) -> datetime:
    """A point in time from `30m`, `2h`, `7d`, `1w`, or an ISO date or date-time (UTC if no zone).

    The answer is in UTC and within years 1 to 9999 there, so the log can compare it.

    Example:
        >>> DecisionFilter(since=parse_since("7d"))

    Raises:
        InputError: The value is neither, or it lies outside years 1 to 9999 (UTC).
    """
    match = _RELATIVE.match(value)
    try:
        if match:
            delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
            return (now or datetime.now(UTC)) - delta
        when = datetime.fromisoformat(value.strip())
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        # OverflowError: a span or a zone offset that leaves years 1..9999; ValueError also
        # covers a number with more digits than int() converts.
        raise InputError(
            f"since={value[:40]!r} is not a time the log can search from. Use 30m, 2h, 7d, 1w "
            "(a whole number of s, m, h, d or w reaching back no further than year 1) or an "
            "ISO date or date-time between years 1 and 9999 UTC, such as 2026-11-28 or "
            "2026-11-28T09:30+00:00."
        ) from None
