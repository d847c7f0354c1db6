"""Magistrate's exceptions, in one small hierarchy, and the HTTP status each maps to.

    MagistrateError            anything Magistrate raises on purpose (CLI exit code 1)
    ├── ConfigError            a setting, flag or model string that cannot work
    ├── InputError             content to classify that cannot be used (empty, huge, binary)
    │   └── TooLarge           more items or judgements than one request may carry
    ├── PolicyError            a policy file that cannot be read or parsed
    ├── ModelError             a model file that is missing, not GGUF, or fails its hash
    ├── MissingDependency      an optional package is not installed (message names the install)
    ├── NotFound               no such policy, version, decision, run or key
    ├── Unauthorized           no API key, or an unknown or revoked one
    ├── Forbidden              the caller's key lacks the scope, or the feature is off
    ├── Conflict               a request that clashes with an earlier one (idempotency keys)
    ├── Overloaded             the queue in front of the backend is full (retry later)
    │   └── RateLimited        the caller's key is over its request rate
    ├── Unavailable            the service cannot answer now (starting, draining, no verdict)
    ├── ErrorBudgetExceeded    too many items of one run got no verdict (`--max-errors`)
    ├── StoreError             the decision log cannot be opened, read or written
    │   └── StoreUnavailable   the database cannot be reached (outage, locked, disk gone)
    └── BackendError           the backend failed while producing a completion
        ├── BackendUnavailable the backend cannot be reached or loaded (after retries)
        ├── BackendTimeout     the backend did not answer in time
        ├── BackendRateLimited the server kept answering 429 (after honouring Retry-After)
        ├── BackendRejected    the server refused the request (HTTP 4xx other than 429)
        ├── MalformedAnswer    an answer that cannot be read (wrong types, numbers out of range)
        └── MalformedHarmony   a gpt-oss completion whose channel structure is broken

"Not found" and "unavailable" are different answers: a missing row is `NotFound` (404), a
database that cannot be reached is `StoreUnavailable` (503), so an outage never reads as
"there is no such decision".

Messages say what happened and how to fix it, in one paragraph. They name ids, hashes and
paths, never the content being classified.

Example:
    >>> http_status(NotFound("no such decision"))
    HttpError(status=404, type='not_found_error', code=None, headers=())
"""

from __future__ import annotations

from typing import NamedTuple


class MagistrateError(Exception):
    """Base class for every error Magistrate raises on purpose.

    Args:
        message: What happened and how to fix it.
        code: A stable machine-readable code for callers (the HTTP error's `code`); the
            class's default when None.
    """

    code: str | None = None

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ConfigError(MagistrateError):
    """A setting, flag or model string that cannot work."""


class ReadOutMismatch(ConfigError):
    """A fitted read-out was given to a judge whose policy text, model or prompt layout it
    was not fitted on."""


class InputError(MagistrateError):
    """Content to classify that cannot be used as it is."""


class TooLarge(InputError):
    """More items, policies or bytes than one request may carry; split it."""

    code = "too_large"


class UnsupportedMediaType(InputError):
    """A request body in a format the route does not take (its Content-Type)."""

    code = "unsupported_media_type"


class PolicyError(MagistrateError):
    """A policy file that cannot be read or parsed."""


class ModelError(MagistrateError):
    """A model file that is missing, is not a GGUF file, or does not match its hash."""


class MissingDependency(MagistrateError):
    """An optional dependency is not installed; the message names the install command."""


class NotFound(MagistrateError):
    """No such policy, policy version, decision, eval run or API key."""


class Unauthorized(MagistrateError):
    """No API key was sent, or the key is unknown or revoked."""

    code = "invalid_api_key"


class Forbidden(MagistrateError):
    """The caller's key lacks the scope, or the server has the feature turned off."""


class Conflict(MagistrateError):
    """A request that clashes with an earlier one (an idempotency key reused or in use), or
    with the state of what it names (the results of a batch job that is not done)."""


class JobLocked(ConfigError):
    """Another process is running this batch job right now (it holds `OUTPUT.lock`)."""

    code = "job_locked"


class Overloaded(MagistrateError):
    """The queue in front of the backend is full; try again after `retry_after` seconds.

    Attributes:
        retry_after: Whole seconds until there is likely room (at least 1).
    """

    code = "queue_full"

    def __init__(self, message: str, retry_after: int, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, retry_after)


class RateLimited(Overloaded):
    """The caller's API key is over its request rate; retry after `retry_after` seconds."""

    code = "rate_limited"


class Unavailable(MagistrateError):
    """The service cannot answer now: starting, shutting down, or no verdict was reached.

    Attributes:
        retry_after: Seconds to wait before retrying, when known.
    """

    code = "unavailable"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ErrorBudgetExceeded(MagistrateError):
    """More items than the run's error budget got no verdict (`--max-errors`).

    Decisions made before the run stopped are recorded; a re-run reuses them.
    """


class StoreError(MagistrateError):
    """The decision log cannot be opened, read or written."""

    code = "store_error"


class StoreUnavailable(StoreError):
    """The database cannot be reached or answered with an operational error."""

    code = "store_unavailable"


class BackendError(MagistrateError):
    """The backend failed while producing a completion."""

    code = "backend_unavailable"


class BackendUnavailable(BackendError):
    """The backend cannot be reached or loaded."""


class BackendTimeout(BackendError):
    """The backend did not answer within the time allowed."""


class BackendRateLimited(BackendError):
    """The server kept rate limiting (HTTP 429) past the retries allowed."""


class BackendRejected(BackendError):
    """The server refused the request (HTTP 4xx other than 429); retrying will not help."""


class MalformedAnswer(BackendError):
    """The backend's answer cannot be read: a field of the wrong type, a number out of range,
    or anything else that broke while reading it. The item gets an `error` decision."""


class MalformedHarmony(BackendError):
    """A gpt-oss completion whose harmony structure cannot be read (bad channel header)."""


class HttpError(NamedTuple):
    """How the service answers an error: status code, OpenAI-style `type` and `code`, and
    the headers that go with it."""

    status: int
    type: str
    code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


_HTTP: tuple[tuple[type[MagistrateError], int, str], ...] = (
    # Most specific first: the first class the error is an instance of wins.
    (TooLarge, 413, "invalid_request_error"),
    (UnsupportedMediaType, 415, "invalid_request_error"),
    (NotFound, 404, "not_found_error"),
    (Unauthorized, 401, "authentication_error"),
    (Forbidden, 403, "permission_error"),
    (Conflict, 409, "invalid_request_error"),
    (Overloaded, 429, "rate_limit_error"),
    (InputError, 422, "invalid_request_error"),
    (PolicyError, 422, "invalid_request_error"),
    (ConfigError, 422, "invalid_request_error"),
    (MissingDependency, 501, "server_error"),
    (Unavailable, 503, "server_error"),
    (StoreError, 503, "server_error"),
    (BackendError, 503, "server_error"),
)


def http_status(exc: BaseException) -> HttpError:
    """The HTTP answer for an error: the one table every route's errors go through.

    The code is the error's own (`MagistrateError.code`); `Retry-After` goes with errors
    that know when to retry, `WWW-Authenticate` with `Unauthorized`. Anything not in the
    table (including errors Magistrate did not raise on purpose) is a 500 `server_error`.
    """
    for kind, status, type_ in _HTTP:
        if isinstance(exc, kind):
            headers: list[tuple[str, str]] = []
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                headers.append(("Retry-After", str(retry_after)))
            if isinstance(exc, Unauthorized):
                headers.append(("WWW-Authenticate", "Bearer"))
            return HttpError(status, type_, exc.code, tuple(headers))
    return HttpError(500, "server_error")


EvalAborted = ErrorBudgetExceeded
"""Deprecated name of `ErrorBudgetExceeded` (eval runs raised it before every caller shared
one error budget)."""
