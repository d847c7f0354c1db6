"""Policy texts in the log: every version by its hash, and which one is active per id.

A policy is stored once per distinct text, keyed by the SHA-256 of that text; its history is
its rows in the order the log first saw them. A decision cites the hash, so the exact text it
was judged under can always be shown (`text(hash)`) and re-hashed (`DecisionLog.verify`).

Example:
    >>> registry = PolicyRegistry(Database())
    >>> [f"@{v.number} {v.version} {v.hash[:12]}" for v in registry.versions("spam")]
    >>> registry.activate(load_policy("spam"))   # the server applies this text from now on
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from magistrate.errors import NotFound
from magistrate.policy import Policy
from magistrate.store.database import Database, refuse_nul
from magistrate.store.records import PolicyVersion, timestamp

KNOWN_KEPT = 4096
"""Policy hashes a process remembers as stored (older ones are looked up again)."""


class PolicyRegistry:
    """The policy texts a log holds, their versions, and the active text of each id.

    Args:
        db: The log's database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        # Hashes this process stored or saw stored (a memo that saves a lookup), bounded:
        # a server taking inline policies sees a new text per request.
        self._known: OrderedDict[str, None] = OrderedDict()

    # -- writing --------------------------------------------------------------------------

    def add(self, policy: Policy, *, first_seen: datetime | None = None) -> None:
        """Store a policy text without a decision (for servers that manage policies).

        Raises:
            StoreUnavailable: The database cannot be reached.
        """
        if policy.hash in self._known:
            return
        with self.db.write() as conn:
            self.insert(conn, policy, timestamp(first_seen or datetime.now(UTC)))
        self.remember([policy.hash])

    def activate(self, policy: Policy, *, at: datetime | None = None) -> None:
        """Store a policy text (if new) and make it the active version of its id."""
        active = self.db.tables["active_policies"]
        now = timestamp(at or datetime.now(UTC))
        with self.db.write() as conn:
            self.insert(conn, policy, now)
            conn.execute(sa.delete(active).where(active.c.policy_id == policy.id))
            conn.execute(
                sa.insert(active).values(
                    policy_id=policy.id, policy_hash=policy.hash, activated_at=now
                )
            )
        self.remember([policy.hash])

    def insert(self, conn: Connection, policy: Policy, first_seen: str) -> None:
        """Store a policy text inside the caller's write transaction, unless the log has it.

        The caller calls `remember` once its transaction has committed.
        """
        policies = self.db.tables["policies"]
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

    def known(self, policy_hash: str) -> bool:
        """Whether this process already knows the log holds this text (no query)."""
        return policy_hash in self._known

    def remember(self, hashes: Iterable[str]) -> None:
        """Note texts a committed transaction stored, so they are not looked up again (the
        most recent `KNOWN_KEPT`)."""
        for digest in hashes:
            self._known[digest] = None
            self._known.move_to_end(digest)
        while len(self._known) > KNOWN_KEPT:
            self._known.popitem(last=False)

    # -- reading --------------------------------------------------------------------------

    def ids(self) -> list[str]:
        """Every policy id the log has seen, sorted."""
        p = self.db.tables["policies"]
        with self.db.read() as conn:
            query = sa.select(p.c.policy_id).distinct().order_by(p.c.policy_id)
            return [row[0] for row in conn.execute(query)]

    def versions(self, policy_id: str) -> list[PolicyVersion]:
        """The distinct texts of a policy, in the order the log first saw them (maybe none).

        Raises:
            InputError: The id holds a NUL character.
        """
        refuse_nul("No policy versions were looked up", policy_id=policy_id)
        p, d = self.db.tables["policies"], self.db.tables["decisions"]
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
        with self.db.read() as conn:
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

    def version(self, policy_id: str, ref: str) -> PolicyVersion:
        """One version of a policy by `@N` (the N-th text seen), hash prefix or version label.

        Example:
            >>> registry.version("spam", "@2").hash

        Raises:
            NotFound: No version, or several, match `ref`.
        """
        versions = self.versions(policy_id)
        if not versions:
            raise NotFound(
                f"The log has no policy {policy_id!r}. `magistrate policy history` "
                "lists what it has after a decision is recorded under it."
            )
        return _pick(policy_id, versions, ref.strip())

    def has(self, policy_hash: str) -> bool:
        """Whether the log holds the policy text with this hash."""
        p = self.db.tables["policies"]
        with self.db.read() as conn:
            found = conn.execute(sa.select(p.c.hash).where(p.c.hash == policy_hash)).first()
        return found is not None

    def text(self, policy_hash: str) -> str:
        """The exact text of the policy with this hash.

        Raises:
            NotFound: The log has no text with this hash.
        """
        p = self.db.tables["policies"]
        with self.db.read() as conn:
            text = conn.execute(sa.select(p.c.text).where(p.c.hash == policy_hash)).scalar()
        if text is None:
            raise NotFound(f"The log has no policy text with hash {policy_hash[:12]}.")
        return str(text)

    def active(self) -> dict[str, str]:
        """Policy id -> hash of its active text."""
        active = self.db.tables["active_policies"]
        with self.db.read() as conn:
            rows = conn.execute(sa.select(active.c.policy_id, active.c.policy_hash)).all()
        return {row.policy_id: row.policy_hash for row in rows}


def _pick(policy_id: str, versions: list[PolicyVersion], ref: str) -> PolicyVersion:
    """The one version `ref` names (`@N`, a hash prefix, or a version label)."""
    if re.fullmatch(r"@\d+", ref):
        n = int(ref[1:])
        if 1 <= n <= len(versions):
            return versions[n - 1]
        raise NotFound(f"Policy {policy_id!r} has {len(versions)} versions; no {ref}.")
    if re.fullmatch(r"[0-9a-fA-F]{6,64}", ref):
        by_hash = [v for v in versions if v.hash.startswith(ref.lower())]
        if len(by_hash) == 1:
            return by_hash[0]
    by_label = [v for v in versions if v.version == ref]
    if len(by_label) == 1:
        return by_label[0]
    if len(by_label) > 1:
        hashes = ", ".join(f"@{v.number} ({v.hash[:12]})" for v in by_label)
        raise NotFound(
            f"Policy {policy_id!r} has {len(by_label)} texts labelled version {ref!r}: "
            f"{hashes}. Name one by @N or by hash."
        )
    raise NotFound(
        f"Policy {policy_id!r} has no version {ref!r}. Use @N, a hash prefix or a version "
        "label from `magistrate policy history`."
    )
