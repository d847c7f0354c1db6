"""Magistrate: apply written policies to content with reasoning language models.

Example:
    >>> from magistrate import Judge, classify
    >>> decision = classify("WIN a FREE iPhone!!!", policy="spam")
    >>> decision.verdict.violation, decision.verdict.rule_ids
    (True, ('SP3.a', ...))
    >>> judgement = asyncio.run(Judge(["hate", "violence"], mode="score").judge("some text"))
    >>> judgement.flagged, judgement.flagged_by

`Classifier` and `CombinedClassifier` are deprecated names kept working over `Judge`.
"""

from magistrate.backends import DEFAULT_MODEL, get_backend
from magistrate.backends.base import Backend, Capabilities
from magistrate.completion import Completion, CompletionOptions, Usage
from magistrate.decision import Decision, OnAbstain
from magistrate.engine import (
    Classifier,
    CombinedClassifier,
    Judge,
    Judgement,
    Strategy,
    classify,
    judge_all,
)
from magistrate.errors import (
    BackendError,
    BackendRateLimited,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    ErrorBudgetExceeded,
    Forbidden,
    InputError,
    MagistrateError,
    MalformedHarmony,
    MissingDependency,
    ModelError,
    NotFound,
    Overloaded,
    PolicyError,
    StoreError,
    StoreUnavailable,
    TooLarge,
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
    "ErrorBudgetExceeded",
    "Finding",
    "Forbidden",
    "InputError",
    "Item",
    "Judge",
    "Judgement",
    "Label",
    "MagistrateError",
    "MalformedHarmony",
    "MissingDependency",
    "Mode",
    "ModelError",
    "NotFound",
    "OnAbstain",
    "OutputFormat",
    "Overloaded",
    "ParseStatus",
    "Policy",
    "PolicyBundle",
    "PolicyError",
    "Prompt",
    "StoreError",
    "StoreUnavailable",
    "Strategy",
    "TooLarge",
    "Turn",
    "Usage",
    "Verdict",
    "__version__",
    "build_prompt",
    "classify",
    "get_backend",
    "judge_all",
    "lint_policy",
    "load_policy",
    "parse_policy",
    "parse_verdict",
]
