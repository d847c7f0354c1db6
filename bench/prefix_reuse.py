"""Seconds per item with the policy's KV prefix reused vs re-prefilled for every item.

Each round times one item right after `Llama.reset()` (the whole prompt is evaluated again)
and the next item with the prefix kept, so both variants share the same machine state.

    python bench/prefix_reuse.py [--items 6]
"""

from __future__ import annotations

import asyncio
import time

from _common import mean, parse_args, report, setup

from magistrate.engine import Judge


def main() -> None:
    args = parse_args(__doc__ or "", default_items=6)
    backend, policy, items = setup(args)
    clf = Judge(policy, backend, mode="score")
    asyncio.run(clf.judge(items[0]))  # warm: the policy is now in the KV cache
    fresh, reused = [], []
    for i in range(args.items):
        backend.llama.reset()
        start = time.perf_counter()
        asyncio.run(clf.judge(items[i]))
        fresh.append(time.perf_counter() - start)
        start = time.perf_counter()
        d = asyncio.run(clf.judge(items[i + 1])).decisions[0]
        reused.append(time.perf_counter() - start)
        assert d.usage.cached_tokens > 0, "the prefix was not reused"
    ratio = mean(fresh) / mean(reused)
    report(
        "prefix_reuse (score mode)",
        {"s/item, prefix re-prefilled": mean(fresh), "s/item, prefix reused": mean(reused)},
        ratio,
        ">= 3.0x",
        ratio >= 3.0,
    )


if __name__ == "__main__":
    main()
