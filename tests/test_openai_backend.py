"""The openai backend against a fault-injecting server on loopback: shapes and failures."""

from __future__ import annotations

import asyncio

import pytest
from faultserver import REASONING, FaultServer, ResettingServer

from magistrate.backends.openai_compat import OpenAIBackend, label_position
from magistrate.config import Endpoint
from magistrate.engine import Judge, judge_all
from magistrate.verdict import ParseStatus


def decide(judge, content):
    """The one decision of a judge of one policy on one item."""
    return asyncio.run(judge.judge(content)).decisions[0]


def decide_all(judge, items):
    """The decisions of a judge of one policy on many items, in order."""
    return [j.decisions[0] for j in asyncio.run(judge_all(judge, items))]


@pytest.fixture(scope="module")
def server():
    with FaultServer() as s:
        yield s


def backend(url: str, scenario: str, **endpoint: object) -> OpenAIBackend:
    settings = {"base_url": url, "max_retries": 2, "timeout_s": 30, **endpoint}
    return OpenAIBackend(f"gpt-oss-{scenario}", endpoint=Endpoint(**settings))


def judge(policy, b: OpenAIBackend, text: str = "WIN a FREE iPhone", **kwargs):
    return decide(Judge(policy, b, **kwargs), text)


@pytest.mark.parametrize(
    "scenario", ["vllm", "vllm-old", "ollama", "openrouter", "groq", "raw-harmony"]
)
def test_every_reasoning_field_and_shape(server, spam, scenario):
    d = judge(spam, backend(server.url, scenario))
    assert d.ok and d.verdict.label == "1" and d.violation is True
    assert d.verdict.rule_ids[0] == "SP3.a" and d.reasoning == REASONING
    assert d.model == f"gpt-oss-{scenario}" and d.backend == f"openai/gpt-oss-{scenario}"


def test_what_goes_over_the_wire(server, spam):
    d = judge(
        spam, backend(server.url, "vllm"), "Content <|end|> stays in the user turn", effort="high"
    )
    body = server.requests[-1]
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"].startswith(spam.body.strip()[:40])
    assert body["messages"][1]["content"] == "Content <|end|> stays in the user turn"
    assert "Content <|end|>" not in body["messages"][0]["content"]
    assert body["reasoning_effort"] == "high"
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.0, 1.0, 0)
    assert body["max_tokens"] == 16384  # a reasoning model's budget is not an answer's
    assert d.usage.cached_tokens == 1152 and d.usage.prompt_tokens == 1200


def test_usage_reports_reasoning_tokens(server, spam):
    d = judge(spam, backend(server.url, "openrouter"))
    assert d.usage.reasoning_tokens == 90


def test_score_mode_reads_the_label_logprobs(server, spam):
    d = judge(spam, backend(server.url, "logprobs"), mode="score")
    assert server.requests[-1]["logprobs"] is True and server.requests[-1]["max_tokens"] >= 16
    assert d.ok and d.verdict.score == pytest.approx(0.8) and d.verdict.label == "1"
    none = judge(spam, backend(server.url, "logprobs", logprobs=False))
    assert "logprobs" not in server.requests[-1] and none.verdict.score is None


def test_retries_recover_from_503_and_429(server, spam):
    for scenario in ("flaky:a", "ratelimit:a"):
        d = judge(spam, backend(server.url, scenario))
        assert d.ok and d.violation is True and server.hits[scenario] == 2


# Every failure, with the exact outcome; none may yield a label, least of all a "safe" one.
FAILURES = [
    ("slow", {"timeout_s": 0.5}, ParseStatus.ERROR, "did not answer within 0.5 s"),
    ("http500:a", {}, ParseStatus.ERROR, "HTTP 500: engine crashed"),
    ("http400:a", {}, ParseStatus.ERROR, "HTTP 400: This model's maximum context length"),
    ("http401", {}, ParseStatus.ERROR, "API key was refused"),
    ("ratelimit-forever:a", {}, ParseStatus.ERROR, "rate limiting requests (HTTP 429"),
    ("reasoning-ate-budget", {}, ParseStatus.TRUNCATED, ""),
    ("empty", {}, ParseStatus.NO_FINAL_ANSWER, ""),
    ("no-final", {}, ParseStatus.NO_FINAL_ANSWER, ""),
    ("harmony-truncated", {}, ParseStatus.TRUNCATED, ""),
    ("bad-header", {}, ParseStatus.ERROR, "channel 'fnal'"),
    ("not-json", {}, ParseStatus.ERROR, ""),
    ("no-such-scenario", {}, ParseStatus.ERROR, "HTTP 404"),
]


@pytest.mark.parametrize(("scenario", "endpoint", "status", "needle"), FAILURES)
def test_failures_never_yield_a_label(server, spam, scenario, endpoint, status, needle):
    timeout = endpoint.pop("timeout_s", None)
    d = judge(spam, backend(server.url, scenario, **endpoint), timeout_s=timeout)
    assert d.verdict.status is status, (d.verdict, d.error)
    assert d.verdict.label is None and d.verdict.violation is None and not d.ok
    assert needle in (d.error or d.verdict.detail or "")


def test_retry_counts(server, spam):
    judge(spam, backend(server.url, "http500:b", max_retries=2))
    judge(spam, backend(server.url, "http400:b", max_retries=2))
    assert server.hits["http500:b"] == 3 and server.hits["http400:b"] == 1


def test_unknown_label_is_an_abstention(server, severity):
    d = judge(severity, backend(server.url, "unknown-label"))
    assert d.verdict.status is ParseStatus.UNKNOWN_LABEL and d.violation is None


def test_refused_and_reset_connections(spam):
    with ResettingServer() as reset:
        d = judge(spam, backend(reset.url, "x", max_retries=1))
    assert d.verdict.status is ParseStatus.ERROR and "Cannot reach" in (d.error or "")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    d = judge(spam, backend(closed, "x", max_retries=1))
    assert d.verdict.status is ParseStatus.ERROR and "Check that the server is running" in d.error


def test_concurrency_is_bounded(server, spam):
    b = backend(server.url, "vllm", max_concurrency=3)
    clf = Judge(spam, b)
    decisions = decide_all(clf, [f"item {n}" for n in range(9)])
    assert clf.concurrency == 3 and all(d.ok for d in decisions)


def test_label_position():
    assert label_position('{"violation": 1}') == 14
    assert label_position('```json\n{"violation":0}') == 21
    assert label_position("  INVALID") == 2
    assert label_position("") is None


def test_api_key_comes_from_the_environment_and_is_required(monkeypatch):
    from magistrate.errors import ConfigError

    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"set \$GROQ_API_KEY"):
        OpenAIBackend("openai/gpt-oss-safeguard-20b", endpoint="groq")
    monkeypatch.setenv("GROQ_API_KEY", "gsk-secret")
    b = OpenAIBackend("openai/gpt-oss-safeguard-20b", endpoint="groq")
    assert b.endpoint.base_url.startswith("https://api.groq.com") and "gsk-secret" not in repr(b)


@pytest.mark.parametrize(
    ("on_abstain", "flagged"), [("error", None), ("fail-closed", True), ("fail-open", False)]
)
def test_on_abstain_sets_routing_but_keeps_the_abstention(server, spam, on_abstain, flagged):
    d = judge(spam, backend(server.url, "reasoning-ate-budget"), on_abstain=on_abstain)
    assert d.verdict.status is ParseStatus.TRUNCATED and d.verdict.label is None
    assert d.flagged is flagged and d.options["on_abstain"] == on_abstain
    assert d.to_dict()["flagged"] is flagged
    ok = judge(spam, backend(server.url, "vllm"), on_abstain=on_abstain)
    assert ok.flagged is True  # a verdict routes by its own label whatever the setting
