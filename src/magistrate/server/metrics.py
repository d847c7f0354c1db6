"""Prometheus metrics of one app (a registry of its own, so several apps can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from magistrate.decision import Decision

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The service's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "magistrate_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "magistrate_http_request_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "magistrate_decisions",
            "Decisions made (cache hits excluded), by policy id, label and parse status.",
            ["policy", "label", "status"],
            registry=r,
        )
        self.abstentions = Counter(
            "magistrate_abstentions",
            "Decisions that reached no verdict, by policy id and reason.",
            ["policy", "status"],
            registry=r,
        )
        self.backend_errors = Counter(
            "magistrate_backend_errors",
            "Decisions whose backend call failed (timeouts, unreachable, rejected).",
            ["policy"],
            registry=r,
        )
        self.cache_hits = Counter(
            "magistrate_cache_hits", "Judgements answered from the result cache.", registry=r
        )
        self.tokens = Counter(
            "magistrate_tokens", "Model tokens used, by kind.", ["kind"], registry=r
        )
        self.rejected = Counter(
            "magistrate_rejected_requests",
            "Requests refused before any judging, by reason.",
            ["reason"],
            registry=r,
        )
        self.queue = Gauge(
            "magistrate_queue_units",
            "Judgements queued or running in front of the backend.",
            registry=r,
        )
        self.judge_seconds = Histogram(
            "magistrate_judge_seconds",
            "Time to judge one item under one policy (backend included).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def observe_decision(self, decision: Decision) -> None:
        """Count a freshly made decision (never call this for cache hits)."""
        verdict = decision.verdict
        self.decisions.labels(decision.policy_id, verdict.label or "", verdict.status.value).inc()
        if not verdict.ok:
            self.abstentions.labels(decision.policy_id, verdict.status.value).inc()
        if decision.error is not None:
            self.backend_errors.labels(decision.policy_id).inc()
        self.tokens.labels("prompt").inc(decision.usage.prompt_tokens)
        self.tokens.labels("completion").inc(decision.usage.completion_tokens)
        self.judge_seconds.observe(decision.latency_s)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
