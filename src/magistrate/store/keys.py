"""API keys of the HTTP service: only a SHA-256 of each secret is stored.

A secret is shown once, when the key is created; the log keeps its hash, a short prefix to
recognise it by, its scopes and rate, and when it was revoked.

Example:
    >>> keys = ApiKeys(Database())
    >>> key, secret = keys.create("ci", ["classify"])
    >>> keys.for_secret(secret) == key
    True
    >>> keys.revoke("ci").revoked_at is not None
    True
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from magistrate.errors import Conflict, NotFound
from magistrate.ids import new_ulid
from magistrate.store.database import Database, refuse_nul
from magistrate.store.records import canonical_json, timestamp

API_KEY_PREFIX = "mg_"
"""How every secret starts, so a leaked one is easy to recognise."""

SCOPES = ("classify", "batch", "admin")
"""What a key may do: `classify` (classify, moderations), `batch` (batch jobs, its own
only), `admin` (everything, including policies, decisions, keys and every batch job)."""


@dataclass(frozen=True)
class ApiKey:
    """An API key's record (the secret is never stored, only its SHA-256)."""

    id: str
    """The key's ULID."""
    name: str
    """Unique, chosen by whoever created it."""
    prefix: str
    """The first characters of the secret, to recognise it in lists."""
    scopes: tuple[str, ...]
    """What the key may do (see `SCOPES`), sorted."""
    created_at: str
    rate_per_minute: int | None = None
    """This key's own request rate; None: the server's default."""
    revoked_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (never a secret: the record has none)."""
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


class ApiKeys:
    """The `api_keys` table: create, list, look up by secret, revoke.

    Args:
        db: The log's database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self, name: str, scopes: Sequence[str], *, rate_per_minute: int | None = None
    ) -> tuple[ApiKey, str]:
        """A new API key: its record and the secret, which is shown once and never stored.

        Raises:
            Conflict: A key with this name exists.
            InputError: The name holds a NUL character.
        """
        refuse_nul("The key was not created", name=name)
        secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=new_ulid(),
            name=name,
            prefix=secret[:10],
            scopes=tuple(sorted(set(scopes))),
            rate_per_minute=rate_per_minute,
            created_at=timestamp(datetime.now(UTC)),
        )
        keys = self.db.tables["api_keys"]
        with self.db.write("add a key to") as conn:
            taken = conn.execute(sa.select(keys.c.id).where(keys.c.name == name)).first()
            if taken is not None:
                raise Conflict(f"An API key named {name!r} exists; choose another name.")
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

    def all(self, *, include_revoked: bool = False) -> list[ApiKey]:
        """Every live API key (never the secrets), oldest first; revoked ones too if asked."""
        keys = self.db.tables["api_keys"]
        query = sa.select(keys).order_by(keys.c.created_at)
        if not include_revoked:
            query = query.where(keys.c.revoked_at.is_(None))
        with self.db.read() as conn:
            return [_api_key(dict(row._mapping)) for row in conn.execute(query)]

    def for_secret(self, secret: str) -> ApiKey | None:
        """The live key whose secret this is, or None (unknown or revoked).

        Raises:
            StoreUnavailable: The database cannot be reached (never read as "no such key").
        """
        keys = self.db.tables["api_keys"]
        query = sa.select(keys).where(
            keys.c.key_hash == key_hash(secret), keys.c.revoked_at.is_(None)
        )
        with self.db.read() as conn:
            row = conn.execute(query).first()
        return None if row is None else _api_key(dict(row._mapping))

    def revoke(self, name_or_id: str) -> ApiKey:
        """Revoke a key by name or id; requests with it are refused from then on.

        Raises:
            NotFound: No live key has that name or id.
            InputError: The name holds a NUL character.
        """
        refuse_nul("No key was revoked", name_or_id=name_or_id)
        keys = self.db.tables["api_keys"]
        match = sa.or_(keys.c.name == name_or_id, keys.c.id == name_or_id)
        with self.db.write("revoke a key in") as conn:
            row = conn.execute(sa.select(keys).where(match, keys.c.revoked_at.is_(None))).first()
            if row is None:
                raise NotFound(
                    f"No live API key is named {name_or_id!r}. `magistrate keys list` shows "
                    "the keys."
                )
            now = timestamp(datetime.now(UTC))
            conn.execute(sa.update(keys).where(keys.c.id == row.id).values(revoked_at=now))
        return replace(_api_key(dict(row._mapping)), revoked_at=now)


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
