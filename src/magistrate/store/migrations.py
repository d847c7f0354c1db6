"""Named, append-only schema migrations, applied in order when a store opens.

Each migration is a function of one open write transaction. Its name goes into the
`magistrate_migrations` table in the same transaction, so a migration is applied entirely or
not at all, and two processes opening a new log at once apply it once (the write lock that
every write transaction takes serialises them). Never edit a migration that has shipped: add
a new one at the end of `MIGRATIONS`. The tables the queries use are read back from the
database after migrating, so this file is the only place the schema is written down.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

MIGRATIONS_TABLE = "magistrate_migrations"

Migration = Callable[[Connection], None]

# 64-bit on PostgreSQL; plain INTEGER on SQLite (the same 64-bit storage there).
_BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _m001_policies_and_decisions(conn: Connection) -> None:
    meta = sa.MetaData()
    sa.Table(
        "policies",
        meta,
        # SHA-256 of the exact policy text: a policy version *is* its text.
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("policy_id", sa.String(200), nullable=False, index=True),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("first_seen", sa.String(32), nullable=False),
    )
    sa.Table(
        "decisions",
        meta,
        # Position in the hash chain: 1, 2, 3, ... with no gaps.
        sa.Column("seq", _BIGINT, primary_key=True, autoincrement=False),
        sa.Column("id", sa.String(26), nullable=False, unique=True),
        sa.Column("created_at", sa.String(32), nullable=False, index=True),
        sa.Column("item_id", sa.Text),
        sa.Column("item_hash", sa.String(64), nullable=False, index=True),
        sa.Column("content", sa.Text),  # NULL when the content was redacted
        sa.Column("policy_hash", sa.String(64), sa.ForeignKey("policies.hash"), nullable=False),
        sa.Column("policy_id", sa.String(200), nullable=False, index=True),
        sa.Column("policy_version", sa.String(100), nullable=False),
        sa.Column("backend", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("effort", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("options", sa.Text, nullable=False),  # canonical JSON
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("label", sa.Text, index=True),
        sa.Column("violation", sa.Boolean),
        sa.Column("category", sa.Text),
        sa.Column("rule_ids", sa.Text, nullable=False),  # canonical JSON list
        sa.Column("unknown_rule_ids", sa.Text, nullable=False),  # canonical JSON list
        sa.Column("score", sa.Float),
        sa.Column("confidence", sa.Text),
        sa.Column("rationale", sa.Text),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("label_probs", sa.Text, nullable=False),  # canonical JSON object
        sa.Column("abstain_reason", sa.Text),
        sa.Column("reasoning", sa.Text),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("reasoning_tokens", sa.Integer, nullable=False),
        sa.Column("latency_s", sa.Float, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("metadata", sa.Text, nullable=False),  # canonical JSON object
        # Eval runs (and batch jobs) will point their decisions at a run row.
        sa.Column("run_id", sa.String(26), index=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False, unique=True),
    )
    meta.create_all(conn)


def _m002_eval_runs(conn: Connection) -> None:
    meta = sa.MetaData()
    sa.Table(
        "eval_runs",
        meta,
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("created_at", sa.String(32), nullable=False, index=True),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("dataset_hash", sa.String(64), nullable=False),
        sa.Column("policy_id", sa.String(200), nullable=False, index=True),
        sa.Column("policy_hash", sa.String(64), nullable=False, index=True),
        sa.Column("backend", sa.Text, nullable=False),
        sa.Column("effort", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),  # canonical JSON
        sa.Column("metrics", sa.Text, nullable=False),  # canonical JSON
        sa.Column("result_path", sa.Text),
    )
    meta.create_all(conn)
    # The eval cache looks decisions up by what produced them and by item.
    decisions = sa.Table("decisions", sa.MetaData(), autoload_with=conn)
    sa.Index(
        "ix_decisions_cache", decisions.c.policy_hash, decisions.c.backend, decisions.c.item_hash
    ).create(conn)


def _m003_service(conn: Connection) -> None:
    meta = sa.MetaData()
    sa.Table("policies", meta, autoload_with=conn)  # the foreign key's target
    sa.Table(
        "api_keys",
        meta,
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        # SHA-256 of the secret; the secret itself is shown once and never stored.
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),  # for display: `mg_AbC1...`
        sa.Column("scopes", sa.Text, nullable=False),  # canonical JSON list
        sa.Column("rate_per_minute", sa.Integer),  # NULL: the server's default
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("revoked_at", sa.String(32)),
    )
    sa.Table(
        "active_policies",
        meta,
        # Which stored text of a policy the server applies under its id.
        sa.Column("policy_id", sa.String(200), primary_key=True),
        sa.Column("policy_hash", sa.String(64), sa.ForeignKey("policies.hash"), nullable=False),
        sa.Column("activated_at", sa.String(32), nullable=False),
    )
    meta.create_all(conn, tables=[meta.tables["api_keys"], meta.tables["active_policies"]])


def _m004_generations(conn: Connection) -> None:
    meta = sa.MetaData()
    sa.Table(
        "generations",
        meta,
        # A chat model's answers under evaluation (safety suites), keyed by what produced
        # them: the cache a stopped suite resumes from. Questions are kept as hashes only.
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("key", sa.String(64), nullable=False, index=True),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(26), index=True),
        sa.Column("backend", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("reasoning", sa.Text),
        sa.Column("finish_reason", sa.String(32), nullable=False),
        sa.Column("usage", sa.Text, nullable=False),  # canonical JSON
        sa.Column("latency_s", sa.Float, nullable=False),
        sa.Column("error", sa.Text),  # set: no answer (never reused as one)
    )
    meta.create_all(conn)


def _m005_readouts(conn: Connection) -> None:
    meta = sa.MetaData()
    sa.Table(
        "readouts",
        meta,
        # Fitted read-outs (`magistrate fit`), stored with the policy versions they read:
        # one row per artefact, found by what it is bound to.
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("policy_id", sa.Text, nullable=False, index=True),
        sa.Column("policy_hash", sa.String(64), nullable=False, index=True),
        sa.Column("model_sha256", sa.Text, nullable=False),
        sa.Column("layout", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),  # of the document
        sa.Column("document", sa.Text, nullable=False),  # canonical JSON
    )
    meta.create_all(conn)


MIGRATIONS: list[tuple[str, Migration]] = [
    ("m001_policies_and_decisions", _m001_policies_and_decisions),
    ("m002_eval_runs", _m002_eval_runs),
    ("m003_service", _m003_service),
    ("m004_generations", _m004_generations),
    ("m005_readouts", _m005_readouts),
]
"""Every migration, oldest first. Append only."""


def migration_table(meta: sa.MetaData) -> sa.Table:
    """The table that records which migrations ran (the same on every schema version)."""
    return sa.Table(
        MIGRATIONS_TABLE,
        meta,
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("applied_at", sa.String(32), nullable=False),
    )


def applied(conn: Connection) -> list[str]:
    """Names of the migrations already applied, or [] on a new database."""
    if not sa.inspect(conn).has_table(MIGRATIONS_TABLE):
        return []
    table = migration_table(sa.MetaData())
    return [row[0] for row in conn.execute(sa.select(table.c.name))]


def migrate(conn: Connection) -> list[str]:
    """Apply every pending migration inside the caller's write transaction.

    Returns:
        The names applied now (empty when the schema was current).
    """
    done = set(applied(conn))
    table = migration_table(sa.MetaData())
    table.create(conn, checkfirst=True)
    ran = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        step(conn)
        now = datetime.now(UTC).isoformat(timespec="microseconds")
        conn.execute(sa.insert(table).values(name=name, applied_at=now))
        ran.append(name)
    return ran
