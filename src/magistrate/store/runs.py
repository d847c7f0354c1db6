"""Eval runs in the log: what was run (spec) and what it measured (metrics), one row each.

The decisions of a run carry its id (`decisions.run_id`); this table holds the run itself,
so a report can be rebuilt and compared later.

Example:
    >>> runs = EvalRuns(Database())
    >>> [(r["id"], r["metrics"]["f1"]) for r in runs.recent(policy_id="spam", limit=5)]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from magistrate.store.database import Database, refuse_nul
from magistrate.store.records import canonical_json


class EvalRuns:
    """The `eval_runs` table: add a run, list recent ones.

    Args:
        db: The log's database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, run: Mapping[str, Any]) -> None:
        """Record an eval run (columns of `eval_runs`; spec and metrics as dicts).

        Raises:
            StoreUnavailable: The database cannot be reached; the run was not recorded.
        """
        runs = self.db.tables["eval_runs"]
        row = dict(run)
        row["spec"] = canonical_json(row["spec"])
        row["metrics"] = canonical_json(row["metrics"])
        with self.db.write() as conn:
            conn.execute(sa.insert(runs).values(**row))

    def recent(self, *, policy_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Eval runs, newest first, with spec and metrics decoded.

        Raises:
            InputError: The policy id holds a NUL character.
        """
        refuse_nul("No eval runs were looked up", policy_id=policy_id)
        runs = self.db.tables["eval_runs"]
        query = sa.select(runs).order_by(runs.c.created_at.desc()).limit(limit)
        if policy_id is not None:
            query = query.where(runs.c.policy_id == policy_id)
        with self.db.read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row["spec"] = json.loads(row["spec"])
            row["metrics"] = json.loads(row["metrics"])
        return rows
