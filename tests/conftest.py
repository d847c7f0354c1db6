"""Shared fixtures. Tests marked `model` load the real embedded model (CI runs them all)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from magistrate.policy import Policy, load_policy, parse_policy

SEVERITY_POLICY = """\
---
id: sev
version: "2"
output: labels
labels:
  - {name: VALID, violation: false, description: allowed}
  - {name: INVALID, violation: true, description: remove}
  - {name: INVALID + ESCALATE, violation: true, description: remove and escalate}
---
# Severity Policy

## INSTRUCTIONS
Answer with exactly one of VALID, INVALID or INVALID + ESCALATE.

## DEFINITIONS
- Lure: a promise meant to make the reader act.

## VIOLATES (1)
- **SV2.a**: bulk ads.
- **SV4.a**: asks for passwords.

## SAFE (0)
- **SV0.a**: personal messages.

## EXAMPLES
Content: "Buy now, 50% off"
Answer: INVALID

Content: "Dinner at 7?"
Answer: VALID

Content: "Send me your bank PIN"
Answer: INVALID + ESCALATE

Answer with exactly one of VALID, INVALID or INVALID + ESCALATE.
"""


@pytest.fixture(scope="session")
def spam() -> Policy:
    return load_policy("spam")


@pytest.fixture(scope="session")
def severity() -> Policy:
    return parse_policy(SEVERITY_POLICY, source="sev.md")


@pytest.fixture(scope="session")
def embedded_backend() -> Iterator[object]:
    """The real embedded model, loaded once for the whole session."""
    from magistrate.backends import get_backend

    yield get_backend("llamacpp/embedded")


@pytest.fixture(scope="session", autouse=True)
def _private_decision_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep every test (and the CLI processes it starts) out of the user's own decision log
    and batch folder."""
    folder = tmp_path_factory.mktemp("log")
    private = {
        "MAGISTRATE_DATABASE_URL": str(folder / "session.db"),
        "MAGISTRATE_BATCH_DIR": str(folder / "batches"),
    }
    old = {name: os.environ.get(name) for name in private}
    os.environ.update(private)
    yield
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


POSTGRES_ENV = "MAGISTRATE_TEST_POSTGRES_URL"


def postgres_url() -> str:
    """The test server's URL (scripts/with-postgres sets it); skip or fail when absent."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {POSTGRES_ENV} is not set.")
        pytest.skip(f"no PostgreSQL: run through scripts/with-postgres (sets {POSTGRES_ENV})")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL for an empty log: a new SQLite file, or a new schema on the test PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.db'}"
        return
    base = postgres_url().replace("postgresql://", "postgresql+psycopg://", 1)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    yield f"{base}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()
