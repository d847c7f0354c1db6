"""Items per second in score mode vs reason mode, on the same items, interleaved.

Before each timed call an untimed score of a filler item leaves the KV cache holding the
policy prefix and a different item, as in normal use: otherwise the second mode would find
the whole item already cached by the first and skip its prefill.

python bench/modes.py [--items 8]
"""

from __future__ import annotations

import asyncio
import time

from _common import mean, parse_args, report, setup

from magistrate.engine import Judge


def main() -> None:
    args = parse_args(__doc__ or "", default_items=8)
    backend, policy, items = setup(args)
    score = Judge(policy, backend, mode="score")
    reason = Judge(policy, backend, mode="reason")
    t_score, t_reason, agree = [], [], 0
    for item in items[1 : args.items + 1]:
        asyncio.run(score.judge(items[0]))  # filler
        start = time.perf_counter()
        s = asyncio.run(score.judge(item)).decisions[0]
        t_score.append(time.perf_counter() - start)
        asyncio.run(score.judge(items[0]))  # filler
        start = time.perf_counter()
        r = asyncio.run(reason.judge(item)).decisions[0]
        t_reason.append(time.perf_counter() - start)
        agree += s.violation is r.violation
    ratio = mean(t_reason) / mean(t_score)
    report(
        "modes",
        {
            "items/s, score mode": 1 / mean(t_score),
            "items/s, reason mode": 1 / mean(t_reason),
            "labels agreeing between modes (count)": agree,
        },
        ratio,
        ">= 5.0x",
        ratio >= 5.0,
    )


if __name__ == "__main__":
    main()
