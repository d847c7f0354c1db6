"""Schemathesis against the committed OpenAPI document, on a live server (scripted backend).

A bounded run (CI): no request may get a 5xx, and every response must match the schema
(status code documented, content type and body as declared). 45 cases per operation: over
1,000 cases in all, which the last test checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serving import serving

from magistrate.backends.mock import MockBackend, Scripted
from magistrate.server import ServerSettings, create_app

ROOT = Path(__file__).resolve().parents[1]
schema = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.json")


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Each step answers one policy (label_probs) or the 8 moderation categories judged in
    # one prompt (slot_probs), whichever the route asks for.
    flag, clear = {"0": 0.3, "1": 0.7}, {"0": 0.8, "1": 0.2}
    backend = MockBackend(
        script=[
            Scripted("1", label_probs=flag, slot_probs=(flag,) + (clear,) * 7),
            Scripted("0", label_probs=clear, slot_probs=(clear,) * 8),
        ],
        cycle=True,
    )
    db = tmp_path_factory.mktemp("fuzz") / "log.db"
    app = create_app(
        ServerSettings(database=str(db), allow_inline_policies=True, max_items=8),
        backend=backend,
    )
    with serving(app) as srv:
        yield srv.url


CASES: list[str] = []


@schema.parametrize()
@settings(
    max_examples=45,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_5xx_and_responses_match_the_schema(case, live_url):
    CASES.append(f"{case.method} {case.path}")
    case.call_and_validate(
        base_url=live_url,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
        timeout=30,
    )


def test_the_run_was_not_a_token_one():
    if not CASES:
        pytest.skip("the schemathesis cases were not selected in this run")
    assert len(CASES) >= 1000, f"only {len(CASES)} cases"
    assert len(set(CASES)) >= 20  # every operation, not one many times
