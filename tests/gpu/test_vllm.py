"""The vllm backend on a real GPU. Skipped cleanly anywhere else.

Run on a machine with CUDA, `pip install -e '.[vllm,dev]'` and a local gpt-oss model:

    MAGISTRATE_VLLM_MODEL=/models/gpt-oss-safeguard-20b pytest -q tests/gpu

It checks that prompts render to harmony tokens, that completions parse into a final
verdict and reasoning, that the verdicts on the bundled spam examples are mostly right, and
that concurrent requests are batched (throughput at 16 in flight vs 1, printed).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'magistrate[vllm]')")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)
MODEL = os.environ.get("MAGISTRATE_VLLM_MODEL")
if not MODEL:
    pytest.skip("set MAGISTRATE_VLLM_MODEL to a local gpt-oss model", allow_module_level=True)

from magistrate.backends.vllm_offline import VLLMBackend  # noqa: E402
from magistrate.engine import Judge, judge_all  # noqa: E402
from magistrate.item import Item  # noqa: E402


def decide(judge, content):
    """The one decision of a judge of one policy on one item."""
    return asyncio.run(judge.judge(content)).decisions[0]


def decide_all(judge, items):
    """The decisions of a judge of one policy on many items, in order."""
    return [j.decisions[0] for j in asyncio.run(judge_all(judge, items))]


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def backend():
    return VLLMBackend(MODEL, gpu_memory_utilization=0.85, max_model_len=16384)


def items() -> list[tuple[Item, bool]]:
    rows = [json.loads(line) for line in (ROOT / "examples" / "spam.jsonl").open()]
    return [(Item.of(r["text"], id=r["id"]), bool(r["label"])) for r in rows]


def test_verdicts_reasoning_and_batching(backend, spam):
    clf = Judge(spam, backend, effort="low")
    data = items()
    start = time.perf_counter()
    one = [decide(clf, item) for item, _ in data[:4]]
    t_one = (time.perf_counter() - start) / 4
    start = time.perf_counter()
    many = decide_all(clf, [item for item, _ in data])
    t_many = (time.perf_counter() - start) / len(data)
    assert all(d.ok for d in one + many), [d.verdict.detail for d in many if not d.ok]
    assert all(d.reasoning for d in many)
    right = sum(d.violation is gold for d, (_, gold) in zip(many, data, strict=True))
    print(
        f"vllm: {right}/{len(data)} right; s/item alone {t_one:.2f}, batched {t_many:.2f}, "
        f"ratio {t_one / t_many:.1f}x"
    )
    assert right >= len(data) - 3
    assert many[1].usage.cached_tokens > 0  # the policy prefix came from the prefix cache
