"""The service's settings and its HTTP request and response bodies (pydantic, at the edge).

Limits that depend on settings (item counts, sizes) are checked at run time, not written
into the schema, so the committed OpenAPI document is the same for every configuration.

Every free-text field of a request other than the content to judge is a `Text` (and item
metadata a `Metadata`): a string UTF-8 cannot carry (an unpaired surrogate, which a JSON
escape such as `\\ud800` produces) or one holding NUL (`\\u0000`, which PostgreSQL text
cannot hold) is refused with 422 while the body is read, before any backend call, instead of
failing later when it is echoed back or recorded. Query and path strings that reach the
database use `Text` too. The content itself is checked by `magistrate.item`, whose message
names the item. Item metadata is also bounded in depth and size (`metadata_tree`), so every
recorded decision can be read back.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from magistrate.backends import DEFAULT_MODEL
from magistrate.decision import Decision, OnAbstain
from magistrate.prompt import Effort, Mode

MODERATION_CATEGORIES: dict[str, str] = {
    "sexual": "sexual",
    "sexual/minors": "sexual-minors",
    "hate": "hate",
    "hate/threatening": "hate-threatening",
    "violence": "violence",
    "violence/graphic": "violence-graphic",
    "harassment": "harassment",
    "self-harm": "self-harm",
}
"""OpenAI moderation category -> the starter-pack policy that judges it."""


class ServerSettings(BaseModel):
    """How `magistrate serve` runs. Every field has a CLI flag of the same name."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8000
    model: str = DEFAULT_MODEL
    base_url: str | None = None
    endpoint: str | None = None
    policies_dir: str | None = None
    database: str | None = None
    require_keys: bool | None = None
    """None: required unless the server binds to a loopback address only."""
    log_content: bool = True
    """Keep the classified content in the decision log (False keeps only its hash)."""
    mode: Mode = Mode.SCORE
    effort: Effort = Effort.MEDIUM
    on_abstain: OnAbstain = OnAbstain.ERROR
    readouts: list[str] = Field(default_factory=lambda: ["auto"])
    """Fitted read-outs for score-mode judgements of one policy per prompt: `auto` (the
    newest stored one bound to the policy text, model and layout), `none`, or ids/files."""
    timeout_s: float | None = 120.0
    max_body_bytes: int = 1_000_000
    max_items: int = 64
    max_policies: int = 8
    max_chars: int = 32_000
    queue: int = 64
    """Judgements allowed to wait in front of the backend before requests get 429."""
    rate_per_minute: int = 600
    """Per API key (a key's own rate overrides it); 0 turns rate limiting off."""
    cache_ttl_s: float = 300.0
    """Identical judgements within this window are answered from memory."""
    cache_entries: int = 10_000
    cache_max_bytes: int = 64 * 1024 * 1024
    """Bytes the result cache may hold (estimated per decision), whatever its entry count."""
    allow_inline_policies: bool = False
    moderation_categories: dict[str, str] = Field(
        default_factory=lambda: dict(MODERATION_CATEGORIES)
    )
    cors_origins: list[str] = Field(default_factory=list)
    graceful_timeout_s: float = 30.0
    checkpoint_file: str | None = None
    """The signed checkpoint `GET /v1/checkpoint` publishes (what `magistrate logs checkpoint
    -o FILE` writes; re-read at every request, so a cron job may replace it)."""
    batch_dir: str | None = None
    """Where batch jobs keep their inputs, outputs and manifests (default: `batches/` in the
    user data folder, beside the default log)."""
    batch_input_root: str | None = None
    """Server-side inputs (`input_path`) must lie under this folder; None refuses them."""
    batch_max_bytes: int = 1 << 30
    """Largest batch upload, in bytes."""
    batch_workers: int = Field(default=1, ge=1)
    """Batch jobs run at once in each server process; the rest wait in order."""
    batch_concurrency: int | None = Field(default=None, ge=1)
    """Backend calls in flight per batch job (default: what the backend allows)."""
    batch_max_jobs: int = Field(default=100, ge=1)
    """Batch jobs queued or running in one process before new ones get 429."""

    @property
    def keys_required(self) -> bool:
        """Whether requests need an API key (by default: whenever not on loopback)."""
        if self.require_keys is not None:
            return self.require_keys
        return not is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- text the log can hold ----------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
NOT_UTF8 = (
    "holds an unpaired surrogate (such as a \\ud800 escape), which UTF-8 cannot encode; "
    "send valid Unicode text"
)


NUL = (
    "holds a NUL character (U+0000, such as a \\u0000 escape), which the decision log "
    "cannot store or search for; remove it"
)


def storable_text(value: object) -> object:
    """Refuse a string the decision log cannot hold: one UTF-8 cannot encode (an unpaired
    surrogate) or one holding NUL (PostgreSQL text cannot). Anything else is left to the
    field's own type.

    Example:
        >>> storable_text("café")
        'café'
    """
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise PydanticCustomError("not_utf8", NOT_UTF8)
        if "\x00" in value:
            raise PydanticCustomError("nul_character", NUL)
    return value


METADATA_MAX_DEPTH = 32
"""How deeply item metadata may nest (the item's metadata object is level 1)."""
METADATA_MAX_BYTES = 16 * 1024
"""How large one item's metadata may be, as compact UTF-8 JSON."""


def metadata_tree(value: object) -> object:
    """Item metadata the log can keep and read back: `storable_text` for every key and string
    at any depth, at most `METADATA_MAX_DEPTH` levels and `METADATA_MAX_BYTES` of JSON.

    Deeper or larger metadata was once accepted and recorded, then broke every read of the
    decisions that held it; it is refused here, before any backend call.

    Example:
        >>> metadata_tree({"source": "forum", "tags": ["a", "b"]})
        {'source': 'forum', 'tags': ['a', 'b']}
    """
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:  # a loop, not recursion: nesting depth is the sender's choice
        node, depth = pending.pop()
        if isinstance(node, dict | list) and depth > METADATA_MAX_DEPTH:
            raise PydanticCustomError(
                "metadata_too_deep",
                f"is nested deeper than {METADATA_MAX_DEPTH} levels; flatten it",
            )
        if isinstance(node, dict):
            pending.extend((key, depth) for key in node)
            pending.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            pending.extend((child, depth + 1) for child in node)
        else:
            storable_text(node)
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode())
    if size > METADATA_MAX_BYTES:
        raise PydanticCustomError(
            "metadata_too_large",
            f"is {size:,} bytes of JSON, over {METADATA_MAX_BYTES:,} bytes; keep large data "
            "elsewhere and send a reference to it",
        )
    return value


Text = Annotated[str, BeforeValidator(storable_text)]
"""A request string the decision log can hold: valid UTF-8, no NUL (checked before length or
pattern)."""

Metadata = Annotated[dict[str, Any], BeforeValidator(metadata_tree)]
"""Free-form JSON whose keys and strings are `storable_text`, within
`METADATA_MAX_DEPTH` levels and `METADATA_MAX_BYTES` (see `metadata_tree`)."""


# -- errors ----------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error, in the OpenAI API's shape."""

    error: ErrorBody


# -- classify --------------------------------------------------------------------------------


class TurnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system", "tool"]
    content: str


class ItemIn(BaseModel):
    """One thing to judge: `text`, or a conversation as `turns` (exactly one of them)."""

    model_config = ConfigDict(extra="forbid")

    id: Text | None = Field(default=None, max_length=200)
    text: str | None = None
    turns: list[TurnIn] | None = None
    metadata: Metadata = Field(default_factory=dict)


class ClassifyRequest(BaseModel):
    """Items to judge under one or several policies."""

    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(min_length=1)
    policies: list[Text] = Field(
        default_factory=list, description="Policy ids known to the server."
    )
    policy_text: Text | None = Field(
        default=None,
        description="An inline Markdown policy (only if the server allows inline policies).",
    )
    mode: Mode | None = Field(default=None, description="Default: the server's mode.")
    effort: Effort | None = Field(default=None, description="Default: the server's effort.")
    include_reasoning: bool = False
    idempotency_key: Text | None = Field(
        default=None,
        max_length=200,
        description="Repeat a request with the same key to get the first answer back "
        "(also the Idempotency-Key header).",
    )


ErrorCode = Literal[
    "backend_timeout",
    "backend_unavailable",
    "backend_rejected",
    "backend_rate_limited",
    "malformed_answer",
    "input_too_long",
    "backend_error",
]
"""Why a decision has no verdict because its call failed, as API callers see it."""

_ERROR_PHRASES: tuple[tuple[ErrorCode, re.Pattern[str]], ...] = (
    ("backend_timeout", re.compile(r"did not (?:answer|finish) within")),
    ("backend_rate_limited", re.compile(r"is rate limiting requests")),
    ("backend_rejected", re.compile(r"rejected the request with HTTP")),
    ("backend_unavailable", re.compile(r"Cannot reach |failed with HTTP 5\d\d|could not load")),
    ("input_too_long", re.compile(r"context holds [\d,]+")),
    (
        "malformed_answer",
        re.compile(
            r"answer could not be read|not a Completion|no token usage|not keyed by label"
            r"|token counts that are not counts|text fields that are not text"
            r"|[Hh]armony message|outside any harmony message|unreadable response"
            r"|without any choices"
        ),
    ),
)
"""The phrases Magistrate's own messages open with, per code (the engine records an error as
text). Upstream text follows these phrases in a message, so the phrase found first wins."""


def error_code(decision: Decision) -> ErrorCode | None:
    """A stable code for a decision whose backend call failed (None when none failed).

    Callers get the code; the full message, which may quote an upstream server's error body,
    stays in the decision log (`GET /v1/decisions/{id}` with an admin key). The code is read
    from the message's opening phrase (the table above); a message none of them opens is
    `backend_error`.

    Example:
        >>> error_code(decision)  # error: "openai/m did not answer within 5 s."
        'backend_timeout'
    """
    if decision.error is None:
        return None
    found = [
        (match.start(), code)
        for code, phrase in _ERROR_PHRASES
        if (match := phrase.search(decision.error)) is not None
    ]
    return min(found)[1] if found else "backend_error"


class PolicyRef(BaseModel):
    id: str
    version: str
    hash: str


class UsageOut(BaseModel):
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int


class DecisionOut(BaseModel):
    """One ruling on one item under one policy."""

    id: str
    created_at: str
    item_index: int
    item_id: str | None
    item_hash: str
    policy: PolicyRef
    status: str = Field(description="`ok`, or why no verdict was reached (an abstention).")
    label: str | None
    violation: bool | None
    flagged: bool | None = Field(
        description="What to route by: the violation, or for an abstention what the "
        "server's on-abstain setting says (None: the caller must decide)."
    )
    rule_ids: list[str]
    unknown_rule_ids: list[str]
    category: str | None
    score: float | None
    confidence: str | None
    rationale: str | None
    reasoning: str | None = None
    error: ErrorCode | None = Field(
        description="Why the backend call failed, as a stable code (None when it did not): "
        "`backend_timeout`, `backend_unavailable` (unreachable or 5xx), `backend_rejected` "
        "(4xx other than 429), `backend_rate_limited`, `malformed_answer`, `input_too_long` "
        "(over the model's context) or `backend_error`. The full message is in the "
        "decision log."
    )
    model: str
    mode: str
    effort: str
    latency_ms: float
    cached: bool
    usage: UsageOut

    @classmethod
    def of(
        cls,
        decision: Decision,
        index: int,
        *,
        cached: bool,
        reasoning: bool,
        item_id: str | None = None,
    ) -> DecisionOut:
        """The decision as the API shows it; `item_id` is the request's id for the item
        (a cached decision was recorded under an earlier request's id)."""
        v = decision.verdict
        return cls(
            id=decision.id,
            created_at=decision.created_at.isoformat(),
            item_index=index,
            item_id=item_id if item_id is not None else decision.item_id,
            item_hash=decision.item_hash,
            policy=PolicyRef(
                id=decision.policy_id, version=decision.policy_version, hash=decision.policy_hash
            ),
            status=v.status.value,
            label=v.label,
            violation=v.violation,
            flagged=decision.flagged,
            rule_ids=list(v.rule_ids),
            unknown_rule_ids=list(v.unknown_rule_ids),
            category=v.category,
            score=v.score,
            confidence=v.confidence,
            rationale=v.rationale,
            reasoning=decision.reasoning if reasoning else None,
            error=error_code(decision),
            model=decision.model,
            mode=decision.mode,
            effort=decision.effort,
            latency_ms=round(decision.latency_s * 1000, 3),
            cached=cached,
            usage=UsageOut(
                prompt_tokens=decision.usage.prompt_tokens,
                cached_tokens=decision.usage.cached_tokens,
                completion_tokens=decision.usage.completion_tokens,
                reasoning_tokens=decision.usage.reasoning_tokens,
            ),
        )


class ClassifyResponse(BaseModel):
    """Decisions in item order, then policy order within an item."""

    request_id: str
    backend: str
    decisions: list[DecisionOut]


# -- moderations (OpenAI's shape) --------------------------------------------------------------


class ModerationTextPart(BaseModel):
    type: Literal["text"]
    text: str


class ModerationRequest(BaseModel):
    """The OpenAI Moderation API request: `input` is a string or an array."""

    input: str | list[str] | list[ModerationTextPart]
    model: Text | None = None


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float] = Field(
        description="The probability of a violation per category, only where the verdict "
        "carries one (score mode, or a backend with label probabilities). A category judged "
        "by a backend without probabilities, or an abstention routed by --on-abstain, is "
        "absent here: read its flag in `categories`."
    )
    category_applied_input_types: dict[str, list[str]]
    decision_ids: dict[str, str] = Field(
        description="Magistrate's decision id for each category (for audit and appeal)."
    )


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


# -- policies --------------------------------------------------------------------------------


class PolicyPut(BaseModel):
    """A new text for a policy id (stored as a new immutable version)."""

    model_config = ConfigDict(extra="forbid")

    text: Text = Field(min_length=1)
    activate: bool = True
    allow_lint_errors: bool = False


class FindingOut(BaseModel):
    code: str
    severity: str
    line: int
    message: str


class PolicySummary(BaseModel):
    id: str
    version: str
    hash: str
    title: str
    source: Literal["store", "builtin"]
    labels: list[str]
    violating_labels: list[str]


class PolicyDetail(PolicySummary):
    text: str
    rule_ids: list[str]
    output: str
    threshold: float
    findings: list[FindingOut]


class PolicyList(BaseModel):
    policies: list[PolicySummary]


class PolicyVersionOut(BaseModel):
    number: int
    hash: str
    version: str
    title: str
    first_seen: str
    decisions: int
    active: bool


class PolicyVersions(BaseModel):
    id: str
    versions: list[PolicyVersionOut]


class PolicyPutResponse(BaseModel):
    policy: PolicyDetail
    created: bool
    active: bool


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Text = Field(
        min_length=1, description="`@N`, a hash prefix or a version label of a stored text."
    )


# -- decisions -------------------------------------------------------------------------------


class StoredDecisionOut(BaseModel):
    seq: int
    decision: dict[str, Any]
    content: str | None


class DecisionList(BaseModel):
    decisions: list[StoredDecisionOut]


# -- keys ------------------------------------------------------------------------------------


class KeyCreate(BaseModel):
    """A new API key: its unique name, what it may do, and optionally its own rate."""

    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    scopes: list[Literal["classify", "batch", "admin"]] = Field(default=["classify"], min_length=1)
    rate_per_minute: int | None = Field(default=None, ge=1)


class KeyOut(BaseModel):
    """An API key's record; never its secret."""

    id: str
    name: str
    prefix: str
    scopes: list[str]
    rate_per_minute: int | None
    created_at: str
    revoked_at: str | None


class KeyCreated(BaseModel):
    key: KeyOut
    secret: str = Field(description="Shown once; only its SHA-256 is stored.")


class KeyList(BaseModel):
    keys: list[KeyOut]


# -- batches ---------------------------------------------------------------------------------


class BatchCreate(BaseModel):
    """A batch job: which policies, how, and (in the JSON form) which server-side input.

    Send it as the JSON body with `input_path`, or upload JSON Lines as the body
    (`Content-Type: application/x-ndjson`) and pass these fields as query parameters
    (`?policies=spam&policies=hate&mode=score`).
    """

    model_config = ConfigDict(extra="forbid")

    policies: list[Text] = Field(
        default_factory=list, description="Policy ids known to the server (their active text)."
    )
    policy_text: Text | None = Field(
        default=None,
        description="An inline Markdown policy (only if the server allows inline policies).",
    )
    input_path: Text | None = Field(
        default=None,
        max_length=4096,
        description="A file, folder or glob under the server's batch input root (JSON form "
        "only); .jsonl, .csv, .tsv, .parquet, .txt, also gzipped.",
    )
    input_format: Literal["jsonl", "csv", "tsv", "parquet", "text"] | None = Field(
        default=None, description="Read the input as this format instead of by extension."
    )
    text_col: Text | None = Field(
        default=None, max_length=200, description="The column holding the text or turns."
    )
    id_col: Text | None = Field(
        default=None, max_length=200, description="The column holding each row's id."
    )
    mode: Mode | None = Field(default=None, description="Default: the server's mode.")
    effort: Effort | None = Field(default=None, description="Default: the server's effort.")
    strategy: Literal["combined", "separate"] = Field(
        default="combined",
        description="Several policies in one prompt per item (score mode, where the "
        "backend reads each label in one pass), or one call per policy.",
    )
    output_format: Literal["jsonl", "parquet"] = "jsonl"
    name: Text | None = Field(
        default=None, max_length=100, description="A label for the job, shown in lists."
    )
    max_errors: float | None = Field(
        default=None,
        ge=0,
        description="Stop past this many rows without a verdict (a count, or below 1 a "
        "fraction); what was done is kept and POST .../retry resumes.",
    )


BatchState = Literal["queued", "running", "done", "failed", "cancelled"]


class BatchInput(BaseModel):
    kind: Literal["upload", "path"]
    files: list[str] = Field(description="Uploaded: `upload`; else paths under the input root.")
    bytes: int


class BatchCounts(BaseModel):
    rows: int = Field(description="Input rows done (committed to the output).")
    output_rows: int
    flagged: int
    violations: int
    no_verdict: int
    invalid: int = Field(description="Rows that could not be judged (bad JSON, empty, ...).")
    decisions_made: int
    decisions_cached: int
    prompt_tokens: int
    completion_tokens: int


class BatchFailure(BaseModel):
    row: int
    item_id: str
    policy_id: str | None
    status: str
    reason: str | None


class BatchOut(BaseModel):
    """A batch job's state, read from its manifest."""

    id: str
    object: Literal["batch"] = "batch"
    name: str | None
    state: BatchState
    created_at: str
    updated_at: str | None
    finished_at: str | None
    model: str
    mode: Mode
    effort: Effort
    strategy: str
    policies: list[PolicyRef]
    input: BatchInput
    output_format: str
    rows_total: int | None = Field(description="Input rows, once counted.")
    counts: BatchCounts
    attempts: int
    elapsed_s: float
    failure_kinds: dict[str, int]
    failures: list[BatchFailure] = Field(description="The first rows without a verdict.")
    error: str | None
    run_id: str | None = Field(description="The `run_id` its decisions carry in the log.")
    results_url: str | None = Field(description="Where the output is, once done.")


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchOut]
    has_more: bool


# -- health ----------------------------------------------------------------------------------


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    model: str
    store: str
    draining: bool
    detail: str | None = None
