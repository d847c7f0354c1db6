"""The suites' cases, read from the public data folder (`--data-dir`, `$MAGISTRATE_DATA_DIR`).

- `disallowed`: HarmBench (standard behaviours), StrongREJECT, SimpleSafetyTests, Aegis
  (harmful prompts), BeaverTails (prompts of unsafe pairs), asked as they are; graded by
  `answer-unsafe`.
- `jailbreak`: StrongREJECT forbidden prompts and JailbreakBench harmful behaviours inside a
  jailbreak template (`jailbreaks.TEMPLATES`, in rotation); graded by `answer-unsafe` and
  the StrongREJECT rubric (`answer-refusal`, `answer-convincing`, `answer-specific`).
- `overrefusal`: XSTest safe prompts; graded by `answer-refusal`.
- `hierarchy`: written here (`hierarchy.build_cases`): a system prompt with a secret or a
  rule, and an attack; graded by exact checks.
- `simpleqa`: SimpleQA questions (dev split); graded by `simpleqa-correct`.
- `bbq`: BBQ (6 categories, dev split): context, question, three lettered options; graded
  by exact answer match.

Sampling is per source (per family for `hierarchy`, per context condition for `bbq`), seeded,
so two runs with the same seed ask the same cases. Nothing is downloaded: a missing file is
an error that names it.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magistrate.errors import ConfigError, InputError
from magistrate.evaluate.datasets import data_dir
from magistrate.safety import hierarchy, jailbreaks
from magistrate.subject import Ask

SUITES = ("disallowed", "jailbreak", "overrefusal", "hierarchy", "simpleqa", "bbq")
"""Every suite, in report order."""

SHORT_ANSWER_TOKENS = {"simpleqa": 96, "bbq": 24, "hierarchy": 128}
"""Answer budgets for suites whose answers are short (the subject's budget caps them)."""

BBQ_INSTRUCTION = "Answer with the letter of the correct option (A, B or C) only."


@dataclass(frozen=True)
class Case:
    """One question of a suite.

    Attributes:
        suite: One of `SUITES`.
        source: The dataset (or template family) it came from.
        id: Unique within the run (`<suite>:<source>:<row>`).
        ask: What the subject is asked.
        request: The bare request the graders see (a jailbreak's forbidden prompt, not the
            template around it).
        gold: What the exact checks and graders need (gold answers, BBQ options, secrets).
    """

    suite: str
    source: str
    id: str
    ask: Ask
    request: str
    gold: Mapping[str, Any] = field(default_factory=dict)


def _file(root: Path, relative: str) -> Path:
    path = root / relative
    if not path.is_file():
        raise ConfigError(
            f"Safety suite data {relative} is not under {root}. Point --data-dir (or "
            "$MAGISTRATE_DATA_DIR) at the project's shared data folder."
        )
    return path


def _csv(root: Path, relative: str) -> list[dict[str, str]]:
    with _file(root, relative).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _jsonl(root: Path, relative: str) -> list[dict[str, Any]]:
    with _file(root, relative).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _pick(rows: list[Any], n: int | None, rng: random.Random) -> list[Any]:
    """`n` rows in a seeded random order (all rows, in file order, when n is None)."""
    if n is None or n >= len(rows):
        return rows
    return rng.sample(rows, n)


def _disallowed(root: Path, n: int | None, rng: random.Random) -> Iterator[Case]:
    sources: list[tuple[str, list[tuple[str, str]]]] = [
        (
            "harmbench",
            [
                (r["BehaviorID"], r["Behavior"])
                for f in ("harmbench_behaviors_text_test.csv", "harmbench_behaviors_text_val.csv")
                for r in _csv(root, f"harmbench/{f}")
                if r["FunctionalCategory"] == "standard"
            ],
        ),
        (
            "strongreject",
            [
                (str(i), r["forbidden_prompt"])
                for i, r in enumerate(_csv(root, "strongreject/strongreject_dataset.csv"))
            ],
        ),
        (
            "simplesafetytests",
            [
                (r["id"], r["prompts_final"])
                for r in _csv(root, "simplesafetytests/SimpleSafetyTests_test_cases.csv")
            ],
        ),
        (
            "aegis",
            [
                (str(r["idx"]), r["prompt"])
                for r in _jsonl(root, "aegis_1.0_test_prompts/aegis_1.0_test_prompts.jsonl")
                if r["prompt_label"] == "harmful"
            ],
        ),
        ("beavertails", _beavertails_prompts(root)),
    ]
    for source, rows in sources:
        for row_id, prompt in _pick(rows, n, rng):
            yield Case("disallowed", source, f"disallowed:{source}:{row_id}", Ask(prompt), prompt)


def _beavertails_prompts(root: Path) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for r in _jsonl(root, "beavertails_30k_test/beavertails_30k_test.dev70.jsonl"):
        if not r["is_safe"] and r["prompt"] not in seen:
            seen[r["prompt"]] = str(r["idx"])
    return [(row_id, prompt) for prompt, row_id in seen.items()]


def _jailbreak(root: Path, n: int | None, rng: random.Random) -> Iterator[Case]:
    templates = list(jailbreaks.TEMPLATES)
    sources = [
        (
            "strongreject",
            [
                (str(i), r["forbidden_prompt"])
                for i, r in enumerate(_csv(root, "strongreject/strongreject_dataset.csv"))
            ],
        ),
        (
            "jailbreakbench",
            [(r[""], r["Goal"]) for r in _csv(root, "jailbreakbench/behaviors.csv")],
        ),
    ]
    for source, rows in sources:
        for k, (row_id, request) in enumerate(_pick(rows, n, rng)):
            template = templates[k % len(templates)]
            yield Case(
                "jailbreak",
                source,
                f"jailbreak:{source}:{row_id}:{template}",
                Ask(jailbreaks.wrap(template, request)),
                request,
                {"template": template},
            )


def _overrefusal(root: Path, n: int | None, rng: random.Random) -> Iterator[Case]:
    rows = [r for r in _csv(root, "xstest/xstest_prompts.csv") if r["label"] == "safe"]
    for r in _pick(rows, n, rng):
        yield Case(
            "overrefusal",
            "xstest",
            f"overrefusal:xstest:{r['id']}",
            Ask(r["prompt"]),
            r["prompt"],
            {"type": r["type"]},
        )


def _hierarchy(root: Path, n: int | None, rng: random.Random) -> Iterator[Case]:
    cases = hierarchy.build_cases()
    budget = SHORT_ANSWER_TOKENS["hierarchy"]
    for family in hierarchy.FAMILIES:
        for c in _pick([c for c in cases if c.family == family], n, rng):
            yield Case(
                "hierarchy",
                family,
                f"hierarchy:{c.id}",
                Ask(c.attack, instructions=c.instructions, max_tokens=budget),
                c.attack,
                {"family": c.family, "target": c.target},
            )


def _simpleqa(root: Path, n: int | None, rng: random.Random) -> Iterator[Case]:
    rows = _csv(root, "simpleqa/simple_qa_test_set.dev70.csv")
    budget = SHORT_ANSWER_TOKENS["simpleqa"]
    for i, r in _pick(list(enumerate(rows)), n, rng):
        yield Case(
            "simpleqa",
            "simpleqa",
            f"simpleqa:{i}",
            Ask(r["question"], max_tokens=budget),
            r["question"],
            {"answer": r["true_answer"]},
        )


BBQ_CATEGORIES = (
    "Age",
    "Disability_status",
    "Nationality",
    "Physical_appearance",
    "Religion",
    "Sexual_orientation",
)


def bbq_target(row: Mapping[str, Any]) -> int:
    """The index of the stereotyped option: its group or its name is one of the row's
    `stereotyped_groups` (names are needed where groups are regions, as in Nationality).

    Raises:
        InputError: Not exactly one option is the target.
    """
    stereotyped = {s.lower() for s in row["additional_metadata"]["stereotyped_groups"]}
    found = [
        i
        for i in range(3)
        if (info := row["answer_info"][f"ans{i}"])[1].lower() != "unknown"
        and (info[1].lower() in stereotyped or info[0].lower() in stereotyped)
    ]
    if len(found) != 1:
        raise InputError(f"BBQ example {row['example_id']}: {len(found)} stereotyped options.")
    return found[0]


def bbq_unknown(row: Mapping[str, Any]) -> int:
    """The index of the "unknown" option."""
    return next(i for i in range(3) if row["answer_info"][f"ans{i}"][1].lower() == "unknown")


def bbq_question(row: Mapping[str, Any]) -> str:
    """The prompt for one BBQ example: context, question, lettered options, instruction."""
    options = "\n".join(f"{letter}. {row[f'ans{i}']}" for i, letter in enumerate("ABC"))
    return f"{row['context']}\n{row['question']}\n{options}\n{BBQ_INSTRUCTION}"


def _bbq(root: Path, n: int | None, rng: random.Random) -> Iterator[Case]:
    rows = [
        r for cat in BBQ_CATEGORIES for r in _jsonl(root, f"bbq/{cat}.dev70.jsonl")
    ]  # every category, so a sample spans them
    budget = SHORT_ANSWER_TOKENS["bbq"]
    for condition in ("ambig", "disambig"):
        for r in _pick([r for r in rows if r["context_condition"] == condition], n, rng):
            yield Case(
                "bbq",
                r["category"],
                f"bbq:{r['category']}:{r['example_id']}",
                Ask(bbq_question(r), max_tokens=budget),
                r["question"],
                {
                    "ambiguous": condition == "ambig",
                    "negative": r["question_polarity"] == "neg",
                    "label": int(r["label"]),
                    "unknown": bbq_unknown(r),
                    "target": bbq_target(r),
                    "options": [r["ans0"], r["ans1"], r["ans2"]],
                },
            )


_LOADERS: dict[str, Callable[[Path, int | None, random.Random], Iterator[Case]]] = {
    "disallowed": _disallowed,
    "jailbreak": _jailbreak,
    "overrefusal": _overrefusal,
    "hierarchy": _hierarchy,
    "simpleqa": _simpleqa,
    "bbq": _bbq,
}


def load_cases(
    suites: list[str],
    *,
    sample: int | None = None,
    seed: int = 0,
    data: str | Path | None = None,
) -> list[Case]:
    """The cases of the named suites, in suite order.

    Args:
        sample: Cases per source (per family for `hierarchy`, per context condition for
            `bbq`); None for every case.
        seed: The sample's seed.
        data: The data folder (default `$MAGISTRATE_DATA_DIR`).

    Raises:
        ConfigError: An unknown suite, or a data file that is not there.
    """
    unknown = [s for s in suites if s not in _LOADERS]
    if unknown:
        raise ConfigError(f"Unknown safety suite {unknown[0]!r}. Suites: {', '.join(SUITES)}.")
    root = data_dir(data)
    cases: list[Case] = []
    for suite in SUITES:
        if suite in suites:
            rng = random.Random(f"{seed}:{suite}")
            cases.extend(_LOADERS[suite](root, sample, rng))
    return cases


__all__ = ["BBQ_CATEGORIES", "SUITES", "Case", "bbq_question", "bbq_target", "load_cases"]
