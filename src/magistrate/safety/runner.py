"""Run the suites: ask each subject every case, grade the answers, gather the outcomes.

One pass per subject: `Subject.answer_many` for the answers (looked up in and recorded to
the log's `generations`), then one `Judge` per model grader over the answers that need it
(`judge_many`, looked up in and recorded to the decision log like eval decisions), then the
exact checks. A run that was stopped resumes from what the log holds: nothing is asked or
graded twice. An answer that failed, or a grade that abstained, is kept as such and left
out of the figures it would feed (each row says how many cases it rests on); it is never
read as safe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from magistrate.backends import Backend
from magistrate.engine import Judge, judge_all
from magistrate.errors import InputError
from magistrate.evaluate.runner import log_lookup
from magistrate.ids import new_ulid
from magistrate.item import Item
from magistrate.policy import Policy
from magistrate.prompt import Mode
from magistrate.safety import hierarchy
from magistrate.safety.cases import Case
from magistrate.safety.graders import SCALES, SUITE_GRADERS, bbq_choice, grader_content
from magistrate.safety.metrics import strongreject_score
from magistrate.store import Recorder, Store
from magistrate.subject import Answer, Subject

Progress = Callable[[str, int, int], None]
"""Called as work finishes: (stage, done, total)."""

GRADE_MAX_CHARS = 64_000
"""Grader content limit: a request plus an answer."""


@dataclass
class Grading:
    """How answers are graded: the graders' policies and the backend that judges them."""

    policies: Mapping[str, Policy]
    backend: Backend
    mode: Mode = Mode.SCORE
    timeout_s: float | None = None

    def judge(self, name: str, store: Store | None, run_id: str) -> Judge:
        return Judge(
            self.policies[name],
            self.backend,
            mode=self.mode,
            calibrated=name not in SCALES,
            max_chars=GRADE_MAX_CHARS,
            timeout_s=self.timeout_s,
            recorder=Recorder(store, run_id=run_id) if store is not None else None,
        )


@dataclass
class SubjectRun:
    """One subject's outcomes, one per case, in case order."""

    label: str
    settings: dict[str, Any]
    run_id: str
    outcomes: list[dict[str, Any]] = field(default_factory=list)


async def run_subject(
    subject: Subject,
    cases: Sequence[Case],
    grading: Grading,
    *,
    store: Store | None,
    progress: Progress | None = None,
) -> SubjectRun:
    """Ask, grade and check every case for one subject.

    Raises:
        StoreError: An answer or grade was made but could not be recorded.
    """
    run_id = new_ulid()
    generations = store.generations if store is not None else None
    found = generations.reusable(subject.key(c.ask) for c in cases) if generations else {}

    async def lookup(key: str) -> Answer | None:
        return found.get(key)

    answers: list[Answer] = []
    total = len(cases)

    def asked(answer: Answer) -> None:
        answers.append(answer)
        if progress is not None:
            progress(f"{subject.label}: answers", len(answers), total)

    async for _ in subject.answer_many(
        (c.ask for c in cases), lookup=lookup, recorder=generations, run_id=run_id, on_result=asked
    ):
        pass
    outcomes = [_outcome(case, answer) for case, answer in zip(cases, answers, strict=True)]
    for name in _graders_needed(cases):
        await _grade(name, cases, answers, outcomes, grading, store, run_id, progress, subject)
    for case, answer, outcome in zip(cases, answers, outcomes, strict=True):
        _exact(case, answer, outcome)
        _rubric(outcome)
    return SubjectRun(subject.label, subject.settings(), run_id, outcomes)


def _graders_needed(cases: Sequence[Case]) -> list[str]:
    names: list[str] = []
    for case in cases:
        for name in SUITE_GRADERS[case.suite]:
            if name not in names:
                names.append(name)
    return names


def _outcome(case: Case, answer: Answer) -> dict[str, Any]:
    return {
        "case": case.id,
        "suite": case.suite,
        "source": case.source,
        "answered": answer.ok,
        "error": answer.error,
        "truncated": answer.truncated,
        "cached": answer.cached,
        "answer": answer.text,
        "latency_s": round(answer.latency_s, 3),
        "completion_tokens": answer.usage.completion_tokens,
        "grades": {},
    }


async def _grade(
    name: str,
    cases: Sequence[Case],
    answers: Sequence[Answer],
    outcomes: list[dict[str, Any]],
    grading: Grading,
    store: Store | None,
    run_id: str,
    progress: Progress | None,
    subject: Subject,
) -> None:
    """One grader over every answered case whose suite uses it."""
    todo = [i for i, c in enumerate(cases) if name in SUITE_GRADERS[c.suite] and answers[i].ok]
    if not todo:
        return
    judge = grading.judge(name, store, run_id)
    items: list[Item] = []
    gradable: list[int] = []
    for i in todo:
        content = grader_content(
            name, cases[i].request, answers[i].text, str(cases[i].gold.get("answer", ""))
        )
        try:
            items.append(Item.of(content, id=cases[i].id, max_chars=GRADE_MAX_CHARS))
        except InputError as exc:
            # An answer the grader cannot read (binary-looking, far too long): an abstention
            # of the grader, counted as one, never a grade.
            outcomes[i]["grades"][name] = {"label": None, "status": "ungradable", "error": str(exc)}
            outcomes[i][name] = None  # ("unsafe" for the unsafe grader: the same key)
            continue
        gradable.append(i)
    todo = gradable
    lookup = log_lookup(store, judge, items) if store is not None else None
    done = 0

    def graded(_: object) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(f"{subject.label}: {name} grader", done, len(items))

    judgements = await judge_all(judge, items, lookup=lookup, on_result=graded)
    for i, judgement in zip(todo, judgements, strict=True):
        decision = judgement.decisions[0]
        verdict = decision.verdict
        outcomes[i]["grades"][name] = {
            "label": verdict.label if verdict.status == "ok" else None,
            "status": str(verdict.status),
            "score": verdict.score,
            "decision": decision.id,
            "cached": judgement.cached[0] if judgement.cached else False,
        }
        label = verdict.label if verdict.status == "ok" else None
        if name == "unsafe":
            outcomes[i]["unsafe"] = None if label is None else label == "1"
        elif name in SCALES:
            outcomes[i][name] = None if label is None else int(label)
        else:
            outcomes[i][name] = label


def _exact(case: Case, answer: Answer, outcome: dict[str, Any]) -> None:
    """The exact checks: hierarchy secrets and rules, BBQ options."""
    if case.suite == "hierarchy":
        outcome["family"] = case.gold["family"]
        if answer.ok:
            probe = hierarchy.HierarchyCase(
                case.id, case.gold["family"], case.ask.instructions, case.ask.user,
                case.gold["target"],
            )  # fmt: skip
            outcome["held"] = hierarchy.held(probe, answer.text)
    elif case.suite == "bbq":
        gold = case.gold
        outcome["bbq"] = {
            "ambiguous": gold["ambiguous"],
            "negative": gold["negative"],
            "label": gold["label"],
            "unknown": gold["unknown"],
            "target": gold["target"],
            "choice": bbq_choice(answer.text, gold["options"]) if answer.ok else None,
        }


def _rubric(outcome: dict[str, Any]) -> None:
    """The StrongREJECT score, where all three of its grades were given."""
    refusal, convincing, specific = (outcome.get(k) for k in ("refusal", *SCALES))
    if (
        outcome["suite"] == "jailbreak"
        and refusal is not None
        and isinstance(convincing, int)
        and isinstance(specific, int)
    ):
        outcome["sr_score"] = strongreject_score(refusal == "REFUSE", convincing, specific)


__all__ = ["Grading", "Progress", "SubjectRun", "run_subject"]
