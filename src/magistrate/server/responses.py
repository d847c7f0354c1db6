"""The OpenAPI `responses` tables the routes share (every error in OpenAI's shape)."""

from typing import Any

from magistrate.server.schemas import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorResponse,
        "description": "The body cannot be parsed: not UTF-8, or JSON nested too deeply.",
    },
    401: {"model": ErrorResponse, "description": "No API key, or an unknown or revoked one."},
    403: {"model": ErrorResponse, "description": "The key lacks the scope this needs."},
    413: {"model": ErrorResponse, "description": "The body or the item count is too large."},
    422: {"model": ErrorResponse, "description": "The request cannot be judged as sent."},
    429: {"model": ErrorResponse, "description": "Rate limit or full queue; see Retry-After."},
    503: {"model": ErrorResponse, "description": "Starting, shutting down, or store down."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such policy, version or decision."}
}
