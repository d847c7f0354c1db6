"""Shared fixtures. Tests marked `model` load the real embedded model (CI runs them all)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
