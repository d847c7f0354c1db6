"""A chat model's answers under evaluation (`subject.Subject`), one row per generation.

Rows are keyed by the generation's identity (`Subject.key`: backend, system prompt, question,
sampling). `reusable` answers the latest successful answer per key, so a safety suite that
was stopped resumes without asking again; failures are recorded too but never reused.
Questions are not stored (only their hashes enter the key): the suite's own results file
holds them.

Example:
    >>> log = GenerationLog(Database())
    >>> log.reusable(["3f2a..."])
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import UTC, datetime

import sqlalchemy as sa

from magistrate.completion import Usage
from magistrate.ids import new_ulid
from magistrate.store.database import Database
from magistrate.store.records import canonical_json
from magistrate.subject import Answer

_CHUNK = 500


class GenerationLog:
    """The `generations` table: record answers, find reusable ones.

    Args:
        db: The log's database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, answer: Answer, *, run_id: str | None = None) -> str:
        """Record one answer (or failure); returns the row id.

        Raises:
            StoreUnavailable: The database cannot be reached; nothing was recorded.
        """
        row_id = new_ulid()
        usage = answer.usage
        with self.db.write() as conn:
            conn.execute(
                sa.insert(self.db.tables["generations"]).values(
                    id=row_id,
                    key=answer.key,
                    created_at=datetime.now(UTC).isoformat(timespec="microseconds"),
                    run_id=run_id,
                    backend=answer.model,
                    text=answer.text,
                    reasoning=answer.reasoning,
                    finish_reason=answer.finish_reason,
                    usage=canonical_json(
                        {
                            "prompt_tokens": usage.prompt_tokens,
                            "cached_tokens": usage.cached_tokens,
                            "completion_tokens": usage.completion_tokens,
                            "reasoning_tokens": usage.reasoning_tokens,
                        }
                    ),
                    latency_s=answer.latency_s,
                    error=answer.error,
                )
            )
        return row_id

    async def arecord(self, answer: Answer, *, run_id: str | None = None) -> None:
        """`record` in a worker thread (the `subject.AnswerRecorder` protocol)."""
        await asyncio.to_thread(self.record, answer, run_id=run_id)

    def reusable(self, keys: Iterable[str]) -> dict[str, Answer]:
        """The latest successful answer for each key that has one."""
        table = self.db.tables["generations"]
        wanted = sorted(set(keys))
        found: dict[str, Answer] = {}
        with self.db.read() as conn:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                query = (
                    sa.select(table)
                    .where(table.c.key.in_(chunk), table.c.error.is_(None))
                    .order_by(table.c.id)
                )
                for row in conn.execute(query):
                    found[row.key] = _answer(row)
        return found

    def count(self) -> int:
        """How many generations the log holds."""
        table = self.db.tables["generations"]
        with self.db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _answer(row: sa.Row[object]) -> Answer:
    usage = json.loads(row.usage)
    return Answer(
        key=row.key,
        model=row.backend,
        text=row.text,
        reasoning=row.reasoning,
        finish_reason=row.finish_reason,
        usage=Usage(**{k: int(v) for k, v in usage.items()}),
        latency_s=float(row.latency_s),
    )


__all__ = ["GenerationLog"]
