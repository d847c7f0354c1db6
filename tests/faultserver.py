"""A fault-injecting OpenAI-compatible server on loopback, for the openai backend's tests.

The model name picks the scenario (`gpt-oss-<scenario>`): response shapes recorded from
vLLM, Ollama, OpenRouter and Groq, raw harmony, and every failure the backend must turn into
an error or an abstention. Every request body is kept in `FaultServer.requests`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections import Counter
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ANSWER = (
    '{"violation": 1, "policy_category": "SP3", "rule_ids": ["SP3.a"], '
    '"confidence": "high", "rationale": "Prize lure with a link."}'
)
REASONING = "The message promises a free prize and asks for a click: SP3.a applies."
HARMONY_OK = (
    f"<|channel|>analysis<|message|>{REASONING}<|end|><|start|>assistant"
    f"<|channel|>final<|message|>{ANSWER}<|return|>"
)


def _message(content: str | None, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": [], **extra}


def _completion(
    model: str,
    message: dict[str, Any],
    finish: str = "stop",
    usage: dict[str, Any] | None = None,
    logprobs: Any = None,
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish, "logprobs": logprobs}
        ],
        "usage": usage or {"prompt_tokens": 900, "completion_tokens": 60, "total_tokens": 960},
    }


def _logprobs(text: str, label_at: int, p_one: float) -> dict[str, Any]:
    """Per-character tokens, with alternatives 0/1 at the label's position."""
    import math

    content = []
    for i, ch in enumerate(text):
        entry: dict[str, Any] = {"token": ch, "logprob": 0.0, "bytes": None}
        if i == label_at:
            entry["top_logprobs"] = [
                {"token": "1", "logprob": math.log(p_one)},
                {"token": "0", "logprob": math.log(1 - p_one)},
            ]
        content.append(entry)
    return {"content": content}


class FaultServer:
    """Starts on a free loopback port in a thread; `url` is its /v1 base URL."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.hits: Counter[str] = Counter()
        self.slots: dict[str, asyncio.Semaphore] = {}
        app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fault server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        model = str(body.get("model", ""))
        scenario = model.removeprefix("gpt-oss-")
        key = scenario.split(":")[0]
        self.hits[scenario] += 1
        n = self.hits[scenario]
        handler = getattr(self, "s_" + key.replace("-", "_"), None)
        if handler is None:
            return JSONResponse({"error": {"message": f"no scenario {key}"}}, status_code=404)
        result: Response = await handler(model, n, body)
        return result

    # -- response shapes -------------------------------------------------------------------

    async def s_vllm(self, model: str, n: int, body: dict[str, Any]) -> Response:
        usage = {
            "prompt_tokens": 1200,
            "completion_tokens": 80,
            "total_tokens": 1280,
            "prompt_tokens_details": {"cached_tokens": 1152},
        }
        return JSONResponse(_completion(model, _message(ANSWER, reasoning=REASONING), usage=usage))

    async def s_vllm_old(self, model: str, n: int, body: dict[str, Any]) -> Response:
        return JSONResponse(_completion(model, _message(ANSWER, reasoning_content=REASONING)))

    async def s_ollama(self, model: str, n: int, body: dict[str, Any]) -> Response:
        return JSONResponse(_completion(model, _message(ANSWER, thinking=REASONING)))

    async def s_openrouter(self, model: str, n: int, body: dict[str, Any]) -> Response:
        usage = {
            "prompt_tokens": 1000,
            "completion_tokens": 120,
            "total_tokens": 1120,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 90},
        }
        message = _message(ANSWER, reasoning=REASONING, refusal=None, reasoning_details=[])
        data = _completion(model, message, usage=usage)
        data["provider"] = "Groq"
        return JSONResponse(data)

    async def s_groq(self, model: str, n: int, body: dict[str, Any]) -> Response:
        data = _completion(model, _message(ANSWER, reasoning=REASONING))
        data["usage"]["queue_time"] = 0.01
        data["x_groq"] = {"id": "req_test"}
        return JSONResponse(data)

    async def s_raw_harmony(self, model: str, n: int, body: dict[str, Any]) -> Response:
        return JSONResponse(_completion(model, _message(HARMONY_OK)))

    async def s_logprobs(self, model: str, n: int, body: dict[str, Any]) -> Response:
        text = '{"violation": 1, "rule_ids": ["SP3.a"]}'
        lp = _logprobs(text, text.index("1"), 0.8) if body.get("logprobs") else None
        return JSONResponse(_completion(model, _message(text), logprobs=lp))

    async def s_hostile(self, model: str, n: int, body: dict[str, Any]) -> Response:
        """Answers a hostile or broken server could give (`gpt-oss-hostile:<how>`): label
        logprobs that are NaN, infinite, huge or text; content as a list of parts; usage
        counts that are words. Sent as raw JSON (NaN and Infinity included)."""
        import math

        how = model.split(":")[1]
        text = '{"violation": 0, "rule_ids": []}'
        lp = _logprobs(text, text.index("0"), 0.5)
        label = lp["content"][text.index("0")]["top_logprobs"]
        bad: dict[str, Any] = {
            "nan": math.nan,
            "inf": math.inf,
            "neg-inf": -math.inf,
            "big": 1000.0,
            "text": "oops",
        }
        message = _message(text)
        usage = None
        if how in bad:
            for alt in label:
                alt["logprob"] = bad[how]
        elif how == "parts":
            message = _message(None)
            message["content"] = [{"type": "text", "text": text}]
        elif how == "usage":
            usage = {"prompt_tokens": "many", "completion_tokens": 1, "total_tokens": 2}
        raw = json.dumps(_completion(model, message, usage=usage, logprobs=lp), allow_nan=True)
        return Response(raw, media_type="application/json")

    async def s_delay(self, model: str, n: int, body: dict[str, Any]) -> Response:
        """A server that takes 200 ms per request and runs any number of them at once."""
        await asyncio.sleep(0.2)
        return JSONResponse(_completion(model, _message(ANSWER, reasoning=REASONING)))

    async def s_keyword(self, model: str, n: int, body: dict[str, Any]) -> Response:
        """Answers by content: a violation when the user turn mentions a prize, else none
        (`gpt-oss-keyword:MS` takes MS milliseconds per request; `gpt-oss-keyword:MS:SLOTS`
        also serves at most SLOTS requests at once, like a server with SLOTS batch slots)."""
        _, delay, slots = ([*model.split(":"), "", ""])[:3]
        if slots:
            gate = self.slots.setdefault(model, asyncio.Semaphore(int(slots)))
            async with gate:
                await asyncio.sleep(int(delay) / 1000)
        elif delay:
            await asyncio.sleep(int(delay) / 1000)
        users = [m.get("content") for m in body.get("messages", []) if m.get("role") == "user"]
        hit = "prize" in str(users[-1] if users else "").lower()
        answer = json.dumps(
            {
                "violation": int(hit),
                "policy_category": "SP3" if hit else None,
                "rule_ids": ["SP3.a"] if hit else [],
                "confidence": "high",
                "rationale": "Prize lure." if hit else "Ordinary message.",
            }
        )
        return JSONResponse(_completion(model, _message(answer, reasoning=REASONING)))

    # -- failures --------------------------------------------------------------------------

    async def s_slow(self, model: str, n: int, body: dict[str, Any]) -> Response:
        await asyncio.sleep(5)
        return JSONResponse(_completion(model, _message(ANSWER)))

    async def s_http500(self, model: str, n: int, body: dict[str, Any]) -> Response:
        return JSONResponse({"error": {"message": "engine crashed"}}, status_code=500)

    async def s_flaky(self, model: str, n: int, body: dict[str, Any]) -> Response:
        if n == 1:
            return JSONResponse({"error": {"message": "warming up"}}, status_code=503)
        return JSONResponse(_completion(model, _message(ANSWER, reasoning=REASONING)))

    async def s_http400(self, model: str, n: int, body: dict[str, Any]) -> Response:
        message = "This model's maximum context length is 8192 tokens."
        return JSONResponse({"error": {"message": message}}, status_code=400)

    async def s_http401(self, model: str, n: int, body: dict[str, Any]) -> Response:
        return JSONResponse({"error": {"message": "Invalid API key"}}, status_code=401)

    async def s_ratelimit(self, model: str, n: int, body: dict[str, Any]) -> Response:
        if n == 1:
            return JSONResponse(
                {"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "1"}
            )
        return JSONResponse(_completion(model, _message(ANSWER, reasoning=REASONING)))

    async def s_ratelimit_forever(self, model: str, n: int, body: dict[str, Any]) -> Response:
        return JSONResponse(
            {"error": {"message": "quota exceeded"}}, status_code=429, headers={"Retry-After": "0"}
        )

    async def s_reasoning_ate_budget(self, model: str, n: int, body: dict[str, Any]) -> Response:
        return JSONResponse(_completion(model, _message("", reasoning=REASONING), "length"))

    async def s_empty(self, model: str, n: int, body: dict[str, Any]) -> Response:
        return JSONResponse(_completion(model, _message(None)))

    async def s_no_final(self, model: str, n: int, body: dict[str, Any]) -> Response:
        text = f"<|channel|>analysis<|message|>{REASONING}<|end|>"
        return JSONResponse(_completion(model, _message(text)))

    async def s_harmony_truncated(self, model: str, n: int, body: dict[str, Any]) -> Response:
        text = f"<|channel|>analysis<|message|>{REASONING}<|end|><|start|>assistant"
        return JSONResponse(_completion(model, _message(text), "length"))

    async def s_bad_header(self, model: str, n: int, body: dict[str, Any]) -> Response:
        text = "<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>fnal<|message|>1"
        return JSONResponse(_completion(model, _message(text)))

    async def s_unknown_label(self, model: str, n: int, body: dict[str, Any]) -> Response:
        return JSONResponse(_completion(model, _message("MAYBE\nRationale: unsure.")))

    async def s_not_json(self, model: str, n: int, body: dict[str, Any]) -> Response:
        return Response("<html>Bad gateway</html>", media_type="text/html")


class ResettingServer:
    """Accepts connections and resets them at once (TCP RST), like a crashed proxy."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def __enter__(self) -> ResettingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self._sock.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
