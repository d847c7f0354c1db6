"""Batch jobs: throughput and memory at scale, and the cost of the job machinery.

1. N items (default 100,000) through a backend that answers instantly, with the decision
   log on (SQLite): `BatchJob` end to end (read JSONL, judge, record, write Parquet, commit
   parts, assemble) vs the bare `judge_many` loop over the same items in the same process.
   Reported: batch items/s, the ratio to the bare loop, and peak RSS growth during the job.
   Goals: >= 2,000 items/s, RSS growth <= 300 MB.
2. The embedded model, M items (default 100, score mode): `BatchJob` vs `judge_many` in
   process on the same loaded model, alternating which goes first. Goal: >= 0.97x.
3. Ray Data with 2 actors vs the local engine, R items (default 400), against a loopback
   server that answers in 200 ms and serves 4 requests at once; each actor, like the local
   engine, keeps 2 calls in flight. Both jobs run end to end (the Ray one includes starting
   its actors, on a Ray instance started beforehand). Goal: >= 1.8x.

    python bench/batch.py [--items 100000] [--embedded-items 100] [--ray-items 400]
                          [--skip-embedded] [--skip-ray]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, report

from magistrate.backends.base import Backend, Capabilities, Completion, CompletionOptions, Usage
from magistrate.batch import BatchJob, expand_inputs, job_spec
from magistrate.batch.job import RayOptions
from magistrate.engine import Judge, judge_all
from magistrate.item import Item
from magistrate.prompt import Prompt
from magistrate.store import BufferedRecorder, Store

ANSWER = '{"violation": 0, "policy_category": null, "rule_ids": [], "rationale": "fine"}'


class InstantBackend(Backend):
    """Answers every prompt at once with the same verdict, keeping nothing."""

    provider = "instant"
    capabilities = Capabilities(prefill=True)

    def __init__(self) -> None:
        self.model = "instant"
        self.max_concurrency = 64

    async def complete(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        return Completion(text=ANSWER, model=self.model, usage=Usage(prompt_tokens=10))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_input(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"m{i}", "text": f"Message number {i}: see you at {i % 97}"}))
            f.write("\n")


def run_job(judge: Judge, src: Path, out: Path, store: Store) -> float:
    sources = expand_inputs([str(src)])
    job = BatchJob(sources, out, judge, job_spec(sources, judge), store=store)
    start = time.perf_counter()
    asyncio.run(job.run())
    return time.perf_counter() - start


def run_loop(judge: Judge, src: Path, store: Store) -> float:
    """The bare fan-out over the same items: read, judge, record in groups, keep nothing."""
    recorder = BufferedRecorder(store)
    judge.recorder = recorder

    async def go() -> None:
        with src.open(encoding="utf-8") as f:
            items = (Item.of(json.loads(line)["text"]) for line in f)
            async for _ in judge.judge_many(items):
                pass
        await recorder.aflush()

    start = time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - start


def scale(n: int, tmp: Path) -> None:
    src = tmp / "in.jsonl"
    write_input(src, n)
    judge = Judge(["spam"], InstantBackend())
    loop_s = run_loop(judge, src, Store(tmp / "loop.db"))
    before = rss_mb()
    job_s = run_job(judge, src, tmp / "out.parquet", Store(tmp / "job.db"))
    growth = rss_mb() - before
    rate = n / job_s
    figures = {
        "batch items/s (log on)": rate,
        "judge_many alone items/s (log on)": n / loop_s,
        "peak RSS growth during the job, MB": growth,
    }
    ratio = loop_s / job_s
    report("batch vs bare judge_many (instant backend)", figures, ratio, "info", True)
    ok = rate >= 2000 and growth <= 300
    print(f"goals: >= 2,000 items/s and <= 300 MB RSS growth: {'PASS' if ok else 'FAIL'}")
    if not ok:
        sys.exit(1)


def embedded(n: int, tmp: Path) -> None:
    from magistrate.backends.llamacpp import LlamaCppBackend

    rows = [json.loads(line) for line in (ROOT / "examples" / "spam.jsonl").open()]
    src = tmp / "emb.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"e{i}", "text": f"{rows[i % len(rows)]['text']} ({i})"}) + "\n"
            for i in range(n)
        ),
        encoding="utf-8",
    )
    backend = LlamaCppBackend()
    judge = Judge(["spam"], backend, mode="score")
    asyncio.run(judge_all(judge, ["warm the policy prefix"]))
    job_s, loop_s = 0.0, 0.0
    for turn in range(2):  # alternate which goes first; fresh logs so nothing is cached
        if turn == 0:
            job_s += run_job(judge, src, tmp / f"e{turn}.parquet", Store(tmp / f"ej{turn}.db"))
            loop_s += run_loop(judge, src, Store(tmp / f"el{turn}.db"))
        else:
            loop_s += run_loop(judge, src, Store(tmp / f"el{turn}.db"))
            job_s += run_job(judge, src, tmp / f"e{turn}.parquet", Store(tmp / f"ej{turn}.db"))
    ratio = loop_s / job_s
    figures = {"judge_many s (2 runs)": loop_s, "batch s (2 runs)": job_s}
    report("batch vs judge_many (embedded model)", figures, ratio, ">= 0.97", ratio >= 0.97)


def on_ray(n: int, tmp: Path, batch_rows: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from faultserver import FaultServer

    from magistrate.backends import backend_for
    from magistrate.batch.ray import JudgeConfig, connect

    src = tmp / "ray.jsonl"
    write_input(src, n)
    sources = expand_inputs([str(src)])
    connect(None)
    with FaultServer() as server:
        model = "openai/gpt-oss-keyword:200:4"
        judge = Judge(["spam"], backend_for(model, base_url=server.url), concurrency=2)
        spec = job_spec(sources, judge, model=model)
        config = JudgeConfig.of(judge, model, base_url=server.url)
        timings = {}
        for name, ray in (
            ("local", None),
            ("ray", RayOptions(config, actors=2, batch_rows=batch_rows)),
        ):
            job = BatchJob(sources, tmp / f"{name}.parquet", judge, spec,
                           store=Store(tmp / f"{name}.db"), ray=ray)  # fmt: skip
            start = time.perf_counter()
            manifest = asyncio.run(job.run())
            timings[name] = time.perf_counter() - start
            assert manifest.counts.no_verdict == 0 and manifest.counts.rows == n
    ratio = timings["local"] / timings["ray"]
    figures = {
        "local engine s": timings["local"],
        "ray, 2 actors s (actor start-up included)": timings["ray"],
    }
    report("ray (2 actors) vs local, 4-slot 200 ms server", figures, ratio, ">= 1.8", ratio >= 1.8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--embedded-items", type=int, default=100)
    parser.add_argument("--ray-items", type=int, default=400)
    parser.add_argument("--ray-batch-rows", type=int, default=RayOptions.batch_rows)
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_scale:
            scale(args.items, Path(tmp))
        if not args.skip_ray:
            on_ray(args.ray_items, Path(tmp), args.ray_batch_rows)
        if not args.skip_embedded:
            embedded(args.embedded_items, Path(tmp))


if __name__ == "__main__":
    main()
