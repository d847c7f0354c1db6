"""Magistrate: apply written policies to content with reasoning language models.

Example:
    >>> from magistrate import classify
    >>> decision = classify("WIN a FREE iPhone!!!", policy="spam")
    >>> decision.verdict.violation, decision.verdict.rule_ids
    (True, ('SP3.a', ...))
"""

from magistrate.backends import DEFAULT_MODEL, get_backend
from magistrate.backends.base import Backend, Capabilities, Completion, CompletionOptions, Usage
from magistrate.decision import Decision, OnAbstain
from magistrate.engine import Classifier, CombinedClassifier, classify
from magistrate.errors import (
    BackendError,
    BackendRateLimited,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    InputError,
    MagistrateError,
    MalformedHarmony,
    MissingDependency,
    ModelError,
    PolicyError,
    StoreError,
)
from magistrate.item import Item, Turn
from magistrate.lint import Finding, lint_policy
from magistrate.policy import Label, OutputFormat, Policy, PolicyBundle, load_policy, parse_policy
from magistrate.prompt import Effort, Mode, Prompt, build_prompt
from magistrate.verdict import ParseStatus, Verdict, parse_verdict

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "Backend",
    "BackendError",
    "BackendRateLimited",
    "BackendRejected",
    "BackendTimeout",
    "BackendUnavailable",
    "Capabilities",
    "Classifier",
    "CombinedClassifier",
    "Completion",
    "CompletionOptions",
    "ConfigError",
    "Decision",
    "Effort",
    "Finding",
    "InputError",
    "Item",
    "Label",
    "MagistrateError",
    "MalformedHarmony",
    "MissingDependency",
    "Mode",
    "ModelError",
    "OnAbstain",
    "OutputFormat",
    "ParseStatus",
    "Policy",
    "PolicyBundle",
    "PolicyError",
    "Prompt",
    "StoreError",
    "Turn",
    "Usage",
    "Verdict",
    "__version__",
    "build_prompt",
    "classify",
    "get_backend",
    "lint_policy",
    "load_policy",
    "parse_policy",
    "parse_verdict",
]
