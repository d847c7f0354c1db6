"""Magistrate's cost over raw llama-cpp-python on identical prompts and settings.

For each item, the raw call is `Llama.create_completion` on the exact prompt text Magistrate
renders, with the same greedy sampling and token budget; the Magistrate call is
`Judge.judge` (prompt building, label scoring, verdict parsing, the decision). Both
run on the same live model, alternating which goes first, and must produce the same text.
Label calibration is off here so both generate exactly the same tokens. Before each timed
call an untimed score of a filler item leaves the KV cache holding the policy prefix only
(as in normal use), so both calls evaluate the same tokens in the same batch shapes.

    python bench/overhead.py [--items 8]
"""

from __future__ import annotations

import asyncio
import time

from _common import parse_args, report, setup

from magistrate.engine import Judge


def main() -> None:
    args = parse_args(__doc__ or "", default_items=8)
    backend, policy, items = setup(args)
    clf = Judge(policy, backend, mode="reason", calibrated=False, fallback=False)
    filler = Judge(policy, backend, mode="score")
    llm = backend.llama
    raw_total = ours_total = 0.0
    generated: list[int] = []
    for i, item in enumerate(items[1 : args.items + 1]):
        text = backend.render(clf.prompt(item))

        def raw(text: str = text) -> str:
            out = llm.create_completion(
                text,
                max_tokens=clf.max_tokens,
                temperature=0.0,
                top_p=1.0,
                top_k=0,
                min_p=0.0,
                repeat_penalty=1.0,
                seed=0,
            )
            return str(out["choices"][0]["text"])

        def ours(item=item) -> str:
            decision = asyncio.run(clf.judge(item)).decisions[0]
            generated.append(decision.usage.completion_tokens)
            return decision.verdict.answer

        runs = [(raw, "raw"), (ours, "ours")] if i % 2 == 0 else [(ours, "ours"), (raw, "raw")]
        answers = {}
        for fn, name in runs:
            asyncio.run(filler.judge(items[0]))  # cache: policy prefix + another item
            start = time.perf_counter()
            answers[name] = fn()
            elapsed = time.perf_counter() - start
            if name == "raw":
                raw_total += elapsed
            else:
                ours_total += elapsed
        prefill = clf.prompt(item).prefill
        assert (prefill + answers["raw"]).strip() == answers["ours"], answers
    n = args.items
    ratio = ours_total / raw_total
    report(
        "overhead (reason mode)",
        {
            "s/item, raw llama-cpp-python": raw_total / n,
            "s/item, Magistrate": ours_total / n,
            "generated tokens/item": sum(generated) / n,
        },
        ratio,
        "<= 1.03x",
        ratio <= 1.03,
    )


if __name__ == "__main__":
    main()
