"""Fitted read-outs in the log, beside the policy versions they read (`magistrate fit`).

One row per artefact, keyed by its id, with what it is bound to (policy hash, model file
hash, prompt layout) as columns, so a judge finds the read-outs that fit it without parsing
every document. The policy text is stored too, so `policy history` and the read-out agree.

Example:
    >>> store.readouts.add(readout, policy)
    >>> store.readouts.latest(policy.hash, model_sha256, layout)
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from magistrate.errors import NotFound, ReadOutMismatch
from magistrate.policy import Policy
from magistrate.readout.artefact import ReadOut
from magistrate.store.database import Database, refuse_nul
from magistrate.store.policies import PolicyRegistry
from magistrate.store.records import timestamp


class ReadOutStore:
    """The `readouts` table.

    Args:
        db: The log's database.
        policies: The policy registry (the read-out's policy text is stored with it).
    """

    def __init__(self, db: Database, policies: PolicyRegistry) -> None:
        self.db = db
        self.policies = policies

    def add(self, readout: ReadOut, policy: Policy) -> None:
        """Store a read-out (and its policy text, if the log does not have it).

        Raises:
            ConfigError: The policy is not the one the read-out was fitted on.
            StoreUnavailable: The database cannot be reached; nothing was stored.
        """
        b = readout.binding
        if policy.hash != b.policy_hash:
            raise ReadOutMismatch(
                f"Read-out {readout.id} is bound to policy text {b.policy_hash[:12]}, not "
                f"{policy.hash[:12]}."
            )
        table = self.db.tables["readouts"]
        now = timestamp(datetime.now(UTC))
        with self.db.write() as conn:
            self.policies.insert(conn, policy, now)
            conn.execute(
                sa.insert(table).values(
                    id=readout.id,
                    created_at=readout.document.created_at,
                    policy_id=b.policy_id,
                    policy_hash=b.policy_hash,
                    model_sha256=b.model_sha256,
                    layout=b.layout,
                    sha256=readout.hash,
                    document=readout.to_json(),
                )
            )
        self.policies.remember([policy.hash])

    def get(self, readout_id: str) -> ReadOut:
        """A read-out by id.

        Raises:
            NotFound: No read-out has that id.
        """
        refuse_nul("The read-out lookup", id=readout_id)
        table = self.db.tables["readouts"]
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(table.c.document, table.c.sha256).where(table.c.id == readout_id)
            ).first()
        if row is None:
            raise NotFound(
                f"No read-out {readout_id!r} in {self.db.location}; `magistrate fit list` "
                "shows the stored ones."
            )
        return self._parse(row.document, readout_id, row.sha256)

    def has(self, policy_hash: str) -> bool:
        """Whether any read-out is stored for this policy text."""
        table = self.db.tables["readouts"]
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(table.c.id).where(table.c.policy_hash == policy_hash).limit(1)
            ).first()
        return row is not None

    def latest(self, policy_hash: str, model_sha256: str, layout: str) -> ReadOut | None:
        """The newest read-out bound to exactly this policy text, model and layout."""
        table = self.db.tables["readouts"]
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(table.c.id, table.c.document, table.c.sha256)
                .where(
                    table.c.policy_hash == policy_hash,
                    table.c.model_sha256 == model_sha256,
                    table.c.layout == layout,
                )
                .order_by(table.c.created_at.desc(), table.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else self._parse(row.document, row.id, row.sha256)

    def list(self, policy_id: str | None = None) -> list[ReadOut]:
        """Every stored read-out (of one policy id), newest first."""
        table = self.db.tables["readouts"]
        query = sa.select(table.c.id, table.c.document, table.c.sha256)
        if policy_id is not None:
            refuse_nul("The read-out lookup", policy_id=policy_id)
            query = query.where(table.c.policy_id == policy_id)
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(table.c.created_at.desc(), table.c.id.desc()))
            return [self._parse(r.document, r.id, r.sha256) for r in rows]

    @staticmethod
    def _parse(document: str, readout_id: str, sha256: str) -> ReadOut:
        from magistrate.errors import StoreError

        readout = ReadOut.from_json(document, source=f"Stored read-out {readout_id}")
        if readout.hash != sha256:
            raise StoreError(
                f"Stored read-out {readout_id} no longer matches its SHA-256; the row was "
                "changed after it was written. Fit it again."
            )
        return readout


__all__ = ["ReadOutStore"]
