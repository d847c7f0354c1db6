"""`/v1/batches`: batch jobs over uploaded or server-side inputs (scope `batch`).

A job is created by uploading its input as the body (JSON Lines, CSV, TSV, Parquet or text,
by Content-Type; the options as query parameters) or by sending JSON that names a
server-side `input_path` under the server's batch input root. It runs in the background
through the same `BatchJob` as `magistrate batch`; its state, counts and first failures are
read from its manifest, and its results are one JSON Lines or Parquet file. A key sees the
jobs it created; an admin key sees every job.
"""

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from magistrate.errors import InputError, TooLarge, UnsupportedMediaType
from magistrate.server.deps import BatchKey, ServiceDep
from magistrate.server.responses import ERRORS, NOT_FOUND
from magistrate.server.schemas import BatchCreate, BatchList, BatchOut, ErrorResponse

router = APIRouter(tags=["batches"])

UPLOAD_TYPES = {
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/jsonlines": "jsonl",
    "application/x-jsonlines": "jsonl",
    "text/csv": "csv",
    "text/tab-separated-values": "tsv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "text/plain": "text",
}
"""Content-Types an upload may have, and the input format each means."""

JobId = Annotated[str, Path(pattern=r"^batch_[0-9A-Z]{26}$", description="The job's id.")]
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "The job's state does not allow this."}
}


def _schema() -> dict[str, Any]:
    schema = BatchCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # Mode and Effort: already components of the classify routes
    return schema


def _query_parameters() -> list[dict[str, Any]]:
    """The upload form's options, as the query parameters OpenAPI clients generate."""
    fields = _schema()["properties"]
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": f"With an upload: {field.get('description', name)}",
            "schema": {k: v for k, v in field.items() if k not in ("description", "title")},
            **({"style": "form", "explode": True} if name == "policies" else {}),
        }
        for name, field in fields.items()
        if name != "input_path"
    ]


@router.post(
    "/v1/batches",
    response_model=BatchOut,
    status_code=202,
    responses={
        **ERRORS,
        **NOT_FOUND,
        415: {"model": ErrorResponse, "description": "A body in a format not taken."},
    },
    openapi_extra={
        "parameters": _query_parameters(),
        "requestBody": {
            "required": True,
            "description": "JSON naming a server-side `input_path`, or the input itself "
            "(the options then go in the query string: `?policies=spam&mode=score`).",
            "content": {
                "application/json": {"schema": _schema()},
                **{
                    media: {"schema": {"type": "string", "format": "binary"}}
                    for media in UPLOAD_TYPES
                },
            },
        },
    },
)
async def create_batch(request: Request, key: BatchKey, svc: ServiceDep) -> BatchOut:
    """Create a batch job. It is queued at once (202) and runs in the background; poll
    `GET /v1/batches/{id}`, then fetch `GET /v1/batches/{id}/results`."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding} is not taken; send the input uncompressed."
        )
    if media == "application/json":
        if request.query_params:
            raise InputError(
                "With a JSON body, send every option in the body, not in the query string."
            )
        body = _validated(await _json(request, svc.settings.max_body_bytes), "body")
        upload = None
    elif media in UPLOAD_TYPES:
        body = _validated(_query(request), "query")
        fmt = UPLOAD_TYPES[media]
        if body.input_path is not None:
            raise InputError("An upload is the input; drop `input_path` from the query string.")
        if body.input_format not in (None, fmt):
            raise InputError(
                f"The Content-Type {media} says {fmt}, but input_format says "
                f"{body.input_format}; send one that agrees."
            )
        body = body.model_copy(update={"input_format": fmt})
        upload = _until_disconnect(request)
    else:
        raise UnsupportedMediaType(
            f"Send the input as the body with Content-Type {', '.join(UPLOAD_TYPES)}, or "
            "application/json naming a server-side input_path."
            if media
            else "The request has no Content-Type; send application/x-ndjson with the input, "
            "or application/json naming a server-side input_path."
        )
    policies = await svc.resolve(body.policies, body.policy_text)
    svc.check_mode(body.mode or svc.settings.mode)
    return await svc.batches.create(body, policies, key, upload)


async def _until_disconnect(request: Request) -> AsyncIterator[bytes]:
    """The upload's bytes; a client that goes away mid-upload is an input error, not a 500
    (nothing of the job is kept)."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise InputError("The upload was cut off before its end; send it again.") from None


async def _json(request: Request, limit: int) -> Any:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise TooLarge(f"The JSON body is over {limit:,} bytes.")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"The body is not valid JSON ({exc.msg} at character {exc.pos}); send one JSON object."
        ) from None
    except (UnicodeDecodeError, RecursionError):
        raise InputError("The body is not JSON this server can read (UTF-8, not nested).") from None


def _query(request: Request) -> dict[str, Any]:
    """The query string as `BatchCreate` fields (`policies` may repeat)."""
    data: dict[str, Any] = {}
    for name in request.query_params:
        values = request.query_params.getlist(name)
        if name == "policies":
            data[name] = values
        elif len(values) > 1:
            raise InputError(
                f"Query parameter {name!r} is given {len(values)} times; give it once."
            )
        else:
            data[name] = values[0]
    return data


def _validated(data: Any, where: str) -> BatchCreate:
    try:
        return BatchCreate.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": (where, *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


@router.get("/v1/batches", response_model=BatchList, responses=ERRORS)
async def list_batches(
    key: BatchKey,
    svc: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[
        str | None,
        Query(pattern=r"^batch_[0-9A-Z]{26}$", description="Only jobs created before this one."),
    ] = None,
) -> BatchList:
    """Your batch jobs (every job for an admin key), newest first."""
    return await svc.batches.list_jobs(key, limit=limit, before=before)


@router.get("/v1/batches/{batch_id}", response_model=BatchOut, responses={**ERRORS, **NOT_FOUND})
async def get_batch(batch_id: JobId, key: BatchKey, svc: ServiceDep) -> BatchOut:
    """A job's state (queued, running, done, failed, cancelled), counts and first failures."""
    return await svc.batches.get(batch_id, key)


@router.get(
    "/v1/batches/{batch_id}/results",
    response_class=FileResponse,
    responses={
        **ERRORS,
        **NOT_FOUND,
        **CONFLICT,
        200: {
            "description": "One row per input row and policy, in input order.",
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "application/vnd.apache.parquet": {
                    "schema": {"type": "string", "format": "binary"}
                },
            },
        },
    },
)
async def batch_results(batch_id: JobId, key: BatchKey, svc: ServiceDep) -> FileResponse:
    """A finished job's output: JSON Lines or Parquet, as the job asked (409 before it is
    done)."""
    path, media = await svc.batches.results(batch_id, key)
    return FileResponse(path, media_type=media, filename=f"{batch_id}{path.suffix}")


@router.post(
    "/v1/batches/{batch_id}/cancel",
    response_model=BatchOut,
    responses={**ERRORS, **NOT_FOUND, **CONFLICT},
)
async def cancel_batch(batch_id: JobId, key: BatchKey, svc: ServiceDep) -> BatchOut:
    """Stop a queued or running job. What it committed is kept; retry resumes it."""
    return await svc.batches.cancel(batch_id, key)


@router.post(
    "/v1/batches/{batch_id}/retry",
    response_model=BatchOut,
    status_code=202,
    responses={**ERRORS, **NOT_FOUND, **CONFLICT},
)
async def retry_batch(batch_id: JobId, key: BatchKey, svc: ServiceDep) -> BatchOut:
    """Queue a failed or cancelled job again: it resumes after its last committed row."""
    return await svc.batches.retry(batch_id, key)


@router.delete(
    "/v1/batches/{batch_id}",
    status_code=204,
    responses={**ERRORS, **NOT_FOUND, **CONFLICT},
)
async def delete_batch(batch_id: JobId, key: BatchKey, svc: ServiceDep) -> None:
    """Remove a stopped job's files (upload, output, manifest); its decisions stay in the
    log."""
    await svc.batches.delete(batch_id, key)
