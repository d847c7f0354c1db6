"""Magistrate's exceptions, in one small hierarchy.

    MagistrateError            anything Magistrate raises on purpose (CLI exit code 1)
    ├── ConfigError            a setting, flag or model string that cannot work
    ├── InputError             content to classify that cannot be used (empty, huge, binary)
    ├── PolicyError            a policy file that cannot be read or parsed
    ├── ModelError             a model file that is missing, not GGUF, or fails its hash
    ├── MissingDependency      an optional package is not installed (message names the install)
    ├── StoreError             the decision log cannot be opened, read or written
    └── BackendError           the backend failed while producing a completion
        ├── BackendUnavailable the backend cannot be reached or loaded (after retries)
        ├── BackendTimeout     the backend did not answer in time
        ├── BackendRateLimited the server kept answering 429 (after honouring Retry-After)
        ├── BackendRejected    the server refused the request (HTTP 4xx other than 429)
        └── MalformedHarmony   a gpt-oss completion whose channel structure is broken

Messages say what happened and how to fix it, in one paragraph. They name ids, hashes and
paths, never the content being classified.
"""

from __future__ import annotations


class MagistrateError(Exception):
    """Base class for every error Magistrate raises on purpose."""


class ConfigError(MagistrateError):
    """A setting, flag or model string that cannot work."""


class InputError(MagistrateError):
    """Content to classify that cannot be used as it is."""


class PolicyError(MagistrateError):
    """A policy file that cannot be read or parsed."""


class ModelError(MagistrateError):
    """A model file that is missing, is not a GGUF file, or does not match its hash."""


class MissingDependency(MagistrateError):
    """An optional dependency is not installed; the message names the install command."""


class StoreError(MagistrateError):
    """The decision log cannot be opened, read or written."""


class BackendError(MagistrateError):
    """The backend failed while producing a completion."""


class BackendUnavailable(BackendError):
    """The backend cannot be reached or loaded."""


class BackendTimeout(BackendError):
    """The backend did not answer within the time allowed."""


class BackendRateLimited(BackendError):
    """The server kept rate limiting (HTTP 429) past the retries allowed."""


class BackendRejected(BackendError):
    """The server refused the request (HTTP 4xx other than 429); retrying will not help."""


class MalformedHarmony(BackendError):
    """A gpt-oss completion whose harmony structure cannot be read (bad channel header)."""
