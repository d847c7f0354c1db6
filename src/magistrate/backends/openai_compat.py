"""Any OpenAI-compatible Chat Completions server: vLLM, Ollama, LM Studio, llama.cpp, Groq, ...

Model strings are `openai/<model name as the server knows it>`; where the server is comes
from `--base-url` / `$MAGISTRATE_BASE_URL`, or a named endpoint (`--endpoint vllm`, or one
from the config file; see `magistrate.config`).

What it sends: the policy (with Magistrate's format block) as the system message, the content
as the user message and nothing else, pinned sampling (temperature, top_p, seed), a token
budget, `reasoning_effort` for reasoning models, and a logprobs request when the endpoint
offers logprobs (so score mode works remotely). What it reads: the answer from `content`,
the reasoning from `reasoning`, `reasoning_content` or `thinking` (whichever the server
uses), raw harmony text when a server returns it unparsed, token usage including cached and
reasoning tokens.

Failures are typed, never a label: a timeout is `BackendTimeout`; refused or reset
connections and 5xx answers are retried with backoff and then `BackendUnavailable`; 429 is
retried after its `Retry-After` and then `BackendRateLimited`; other 4xx answers are
`BackendRejected` at once; a malformed harmony header is `MalformedHarmony`. Reasoning that
ate the whole budget (empty content, `finish_reason` "length") comes back as a truncated
completion, which the engine records as an abstention.

Example:
    >>> backend = OpenAIBackend("gpt-oss-safeguard-20b", endpoint="vllm")
    >>> asyncio.run(judge_all(Judge("spam", backend), items))
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import time
import weakref
from collections.abc import AsyncGenerator, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

from magistrate.backends.base import Backend, Capabilities, Completion, CompletionOptions, Usage
from magistrate.config import Endpoint, resolve_endpoint
from magistrate.errors import (
    BackendError,
    BackendRateLimited,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    MissingDependency,
)
from magistrate.harmony import CHANNEL, parse_completion
from magistrate.prompt import Prompt

SCORE_MAX_TOKENS = 16
"""Budget in score mode: enough to reach the label (`{"violation": 1`) and read its logprobs."""
TOP_LOGPROBS = 20
REASONING_FIELDS = ("reasoning", "reasoning_content", "thinking")
RETRY_AFTER_CAP_S = 60.0
_LABEL_AFTER = re.compile(r'^\s*(?:```(?:json)?\s*)?\{\s*"violation"\s*:\s*')


class OpenAIBackend(Backend):
    """Completions from an OpenAI-compatible server over HTTP.

    Args:
        model: The model name the server serves (`gpt-oss-safeguard-20b`).
        base_url: The server's `/v1` URL; overrides the endpoint's.
        endpoint: A preset (`vllm`, `ollama`, `lmstudio`, `llamacpp`, `groq`, `openrouter`)
            or an endpoint from the config file.
        max_concurrency: Requests in flight at once (default: the endpoint's).
        api_key: The key; default from the endpoint's `api_key_env`, `$MAGISTRATE_API_KEY`
            or `$OPENAI_API_KEY`. It is sent as a header and never logged or recorded.
    """

    provider = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        endpoint: str | Endpoint | None = None,
        max_concurrency: int | None = None,
        api_key: str | None = None,
    ) -> None:
        try:
            import openai
        except ImportError:
            raise MissingDependency(
                "The openai backend needs the openai client: pip install 'magistrate[openai]'"
            ) from None
        self._openai = openai
        self.endpoint = (
            endpoint if isinstance(endpoint, Endpoint) else resolve_endpoint(endpoint, base_url)
        )
        self.model = model
        self.max_concurrency = max_concurrency or self.endpoint.max_concurrency
        native = self.endpoint.native_reasoning
        if native is None:
            native = "gpt-oss" in model.lower()
        self.capabilities = Capabilities(
            prefill=False,
            label_scores=self.endpoint.logprobs,
            constrained=False,
            native_reasoning=native,
        )
        self._api_key_value = api_key or self._api_key()
        # One client per event loop: an async client's connections belong to the loop that
        # opened them, and `classify()` / the CLI run a fresh loop per call.
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Any, AsyncGenerator[None, None]]
        ] = weakref.WeakKeyDictionary()

    async def _client(self) -> Any:
        """This event loop's client; closed by the loop's own shutdown (`asyncio.run`)."""
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            client = self._openai.AsyncOpenAI(
                base_url=self.endpoint.base_url,
                api_key=self._api_key_value,
                max_retries=0,  # retries are ours: only retryable errors, honouring Retry-After
                timeout=self.endpoint.timeout_s,
                default_headers=self.endpoint.headers or None,
            )
            closer = _close_at_shutdown(client)
            await closer.__anext__()  # the loop now owns it: shutdown_asyncgens() closes it
            entry = self._clients[loop] = (client, closer)
        return entry[0]

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.model!r}, base_url={self.endpoint.base_url!r})"

    def _api_key(self) -> str:
        env = self.endpoint.api_key_env
        if env:
            key = os.environ.get(env)
            if not key:
                raise ConfigError(f"Endpoint {self.endpoint.name!r} needs an API key: set ${env}.")
            return key
        return os.environ.get("MAGISTRATE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"

    @property
    def name(self) -> str:
        return f"openai/{self.model}"

    async def aclose(self) -> None:
        entry = self._clients.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[1].aclose()

    def request(self, prompt: Prompt, options: CompletionOptions) -> dict[str, Any]:
        """The Chat Completions request body for a prompt (what goes over the wire)."""
        score = options.constrain_label
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.messages[1].content},
            ],
            "temperature": options.temperature,
            "top_p": options.top_p,
            "seed": options.seed,
            "max_tokens": max(options.max_tokens, SCORE_MAX_TOKENS)
            if score
            else options.max_tokens,
        }
        if score and not self.capabilities.native_reasoning:
            body["stop"] = [",", "\n"]  # the label is all score mode reads: stop right after it
        if self.capabilities.native_reasoning and self.endpoint.reasoning_effort:
            body["reasoning_effort"] = prompt.effort.value
        if self.capabilities.label_scores and options.scores:
            body["logprobs"] = True
            body["top_logprobs"] = TOP_LOGPROBS
        return body

    async def complete(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        start = time.perf_counter()
        response = await self._send(self.request(prompt, options), options)
        if not getattr(response, "choices", None):
            raise BackendError(f"{self.name} answered without any choices.")
        choice = response.choices[0]
        message = _as_dict(choice.message)
        content = message.get("content") or ""
        reasoning = next(
            (
                message[k]
                for k in REASONING_FIELDS
                if isinstance(message.get(k), str) and message[k]
            ),
            None,
        )
        finish = choice.finish_reason or "stop"
        if CHANNEL in content:  # a server that returns raw harmony instead of parsing it
            parsed = parse_completion(content)
            content = parsed.final or ""
            reasoning = reasoning or parsed.reasoning
            if parsed.truncated:
                finish = "length"
        probs, mass = _label_probs(content, _as_dict(choice).get("logprobs"), prompt.candidates)
        return Completion(
            text=content,
            model=getattr(response, "model", None) or self.model,
            reasoning=reasoning,
            finish_reason=finish,
            usage=_usage(getattr(response, "usage", None)),
            latency_s=time.perf_counter() - start,
            label_probs=probs,
            label_mass=mass,
        )

    async def _send(self, body: dict[str, Any], options: CompletionOptions) -> Any:
        openai = self._openai
        timeout = options.timeout_s or self.endpoint.timeout_s
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendTimeout(f"{self.name} did not answer within {timeout:g} s.")
            try:
                client = await self._client()
                return await client.chat.completions.create(**body, timeout=remaining)
            except openai.APITimeoutError:
                raise BackendTimeout(f"{self.name} did not answer within {timeout:g} s.") from None
            except openai.APIConnectionError as exc:
                error: BackendError = BackendUnavailable(
                    f"Cannot reach {self.endpoint.base_url} ({_cause(exc)}). Check that the "
                    "server is running and the base URL is right."
                )
                wait = _backoff(attempt)
            except openai.RateLimitError as exc:
                wait = _retry_after(exc.response.headers) or _backoff(attempt)
                error = BackendRateLimited(
                    f"{self.name} is rate limiting requests (HTTP 429; retry after {wait:.0f} s)."
                )
            except openai.APIStatusError as exc:
                status = exc.status_code
                detail = _error_message(exc)
                if status < 500:
                    raise BackendRejected(_rejection(self.name, status, detail)) from None
                error = BackendUnavailable(f"{self.name} failed with HTTP {status}: {detail}")
                wait = _retry_after(exc.response.headers) or _backoff(attempt)
            except openai.APIError as exc:  # unreadable body and the like: not retryable
                raise BackendError(f"{self.name} sent an unreadable response: {exc}") from None
            attempt += 1
            if attempt > self.endpoint.max_retries or wait >= deadline - time.monotonic():
                raise error from None
            await asyncio.sleep(wait)


async def _close_at_shutdown(client: Any) -> AsyncGenerator[None, None]:
    """Suspended until its loop shuts its async generators down, then closes `client`.

    A client's connections belong to the loop that opened them; closing it after that loop
    is gone fails ("Event loop is closed"), so it is closed as the loop shuts down.
    """
    try:
        yield
    finally:
        await client.close()


def _as_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    dump = getattr(obj, "model_dump", None)
    return dict(dump()) if callable(dump) else {}


def _cause(exc: BaseException) -> str:
    inner = exc.__cause__ or exc.__context__
    return type(inner).__name__ if inner else "connection error"


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and inner.get("message"):
            return str(inner["message"])[:300]
        if isinstance(inner, str):
            return inner[:300]
    return str(getattr(exc, "message", exc))[:300]


def _rejection(name: str, status: int, detail: str) -> str:
    hint = {
        401: "The API key was refused: check the key's environment variable.",
        403: "The API key may not use this model.",
        404: "The server does not serve this model or path: check the model name and the "
        "base URL (it usually ends in /v1).",
        413: "The request is too large for the server.",
    }.get(status, "")
    return f"{name} rejected the request with HTTP {status}: {detail}. {hint}".strip()


def _backoff(attempt: int) -> float:
    return float(min(0.25 * 2**attempt, 8.0) * (1 + random.random() * 0.25))


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), capped."""
    if not headers:
        return None
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, RETRY_AFTER_CAP_S))


def _usage(usage: Any) -> Usage:
    data = _as_dict(usage)
    prompt_details = data.get("prompt_tokens_details") or {}
    completion_details = data.get("completion_tokens_details") or {}
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        cached_tokens=int(prompt_details.get("cached_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def label_position(text: str) -> int | None:
    """Where the label begins in an answer: after `{"violation": `, else the first character."""
    match = _LABEL_AFTER.match(text)
    if match:
        return match.end()
    stripped = len(text) - len(text.lstrip())
    return stripped if stripped < len(text) else None


def _label_probs(
    text: str, logprobs: Any, candidates: Sequence[str]
) -> tuple[dict[str, float] | None, float | None]:
    """Candidate label probabilities from the token logprobs at the label's position."""
    tokens = _as_dict(logprobs).get("content") if logprobs else None
    pos = label_position(text)
    if not tokens or pos is None or not candidates:
        return None, None
    offset = 0
    for entry in tokens:
        entry = _as_dict(entry)
        token = str(entry.get("token", ""))
        if offset <= pos < offset + len(token):
            lead = text[offset:pos]  # e.g. the space in " 1"
            mass: dict[str, float] = {}
            alternatives = entry.get("top_logprobs") or [entry]
            for alt in alternatives:
                alt = _as_dict(alt)
                alt_token = str(alt.get("token", ""))
                if not alt_token.startswith(lead):
                    continue
                rest = alt_token[len(lead) :].strip().strip('"')
                matches = [c for c in candidates if rest and (c.startswith(rest) or rest == c)]
                if len(matches) == 1:
                    p = math.exp(float(alt.get("logprob", -1e9)))
                    mass[matches[0]] = mass.get(matches[0], 0.0) + p
            total = sum(mass.values())
            if total <= 0:
                return None, None
            return {c: mass.get(c, 0.0) / total for c in candidates}, total
        offset += len(token)
    return None, None
