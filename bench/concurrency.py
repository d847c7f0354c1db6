"""Throughput of the openai backend with N requests in flight vs 1.

1. Against `python -m llama_cpp.server` serving the embedded model on 127.0.0.1 (score mode,
   the bundled examples). llama-cpp-python's server holds one model and runs one request at a
   time (a lock around the model), so on it concurrency can only overlap the HTTP round trip:
   the ratio is reported, with no target.
2. Against a loopback server that takes 200 ms per request and really runs any number at once
   (the fault server of the tests): this measures Magistrate's side (bounded concurrency,
   one client per event loop, no head-of-line blocking). Target: >= 0.8 x N.

python bench/concurrency.py [--n 4] [--items 12]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from _common import ROOT, report

sys.path.insert(0, str(ROOT / "tests"))

from faultserver import FaultServer
from llamaserver import LlamaServer

from magistrate.backends.openai_compat import OpenAIBackend
from magistrate.embedded import ensure_embedded_model
from magistrate.engine import Judge, judge_all
from magistrate.item import Item
from magistrate.policy import load_policy


def items(n: int) -> list[Item]:
    rows = [json.loads(line) for line in (ROOT / "examples" / "spam.jsonl").open()]
    return [Item.of(r["text"], id=r["id"]) for r in (rows * 10)[:n]]


def items_per_second(url: str, model: str, n: int, batch: list[Item], mode: str) -> float:
    backend = OpenAIBackend(model, base_url=url, max_concurrency=n)
    clf = Judge(load_policy("spam"), backend, mode=mode)
    start = time.perf_counter()
    decisions = [j.decisions[0] for j in asyncio.run(judge_all(clf, batch))]
    elapsed = time.perf_counter() - start
    assert all(d.ok for d in decisions), [d.verdict.detail for d in decisions if not d.ok]
    return len(batch) / elapsed


def llama_server(n: int, count: int) -> dict[str, float]:
    with LlamaServer(ensure_embedded_model()) as server:
        batch = items(count)
        items_per_second(server.url, "embedded", 1, batch[:1], "score")  # prefill, untimed
        one = items_per_second(server.url, "embedded", 1, batch, "score")
        many = items_per_second(server.url, "embedded", n, batch, "score")
    return {
        "llama_cpp.server items/s, 1 in flight": one,
        f"llama_cpp.server items/s, {n} in flight": many,
        "llama_cpp.server ratio (serial server)": many / one,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4, help="requests in flight")
    parser.add_argument("--items", type=int, default=12, help="items per measurement")
    args = parser.parse_args()
    figures = llama_server(args.n, args.items)
    with FaultServer() as server:
        batch = items(args.n * 10)
        one = items_per_second(server.url, "gpt-oss-delay", 1, batch, "reason")
        many = items_per_second(server.url, "gpt-oss-delay", args.n, batch, "reason")
    figures["200 ms server items/s, 1 in flight"] = one
    figures[f"200 ms server items/s, {args.n} in flight"] = many
    ratio = many / one
    report("concurrency", figures, ratio, f">= {0.8 * args.n:.1f}x", ratio >= 0.8 * args.n)


if __name__ == "__main__":
    main()
