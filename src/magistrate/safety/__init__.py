"""The technical report's baseline safety evaluations, for any chat model Magistrate can reach.

A *subject* (`magistrate.subject.Subject`: a model, a system prompt, pinned sampling) answers
the cases of the suites (`cases.SUITES`); model graders, which are Magistrate policies
(`graders`), and exact checks grade the answers; `report` turns the outcomes into the table
(rows per evaluation, a column per model, the difference B - A with a paired interval), the
graders' agreement with human labels (`validation`) and an HTML page.

Example:
    >>> cases = load_cases(["overrefusal", "hierarchy"], sample=5, data="../shared/data")
    >>> grading = Grading(grader_policies(), get_backend("embedded"))
    >>> report = asyncio.run(run_safety([Subject("embedded")], cases, grading, store=Store()))
    >>> [(r["metric"], r["models"][0]["value"]) for r in report["rows"]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from magistrate.errors import ConfigError
from magistrate.safety.cases import SUITES, Case, load_cases
from magistrate.safety.graders import GRADER_POLICIES, grader_policies
from magistrate.safety.report import build_report, render_html
from magistrate.safety.runner import Grading, Progress, SubjectRun, run_subject
from magistrate.safety.table import grader_names
from magistrate.safety.validation import validate_graders
from magistrate.store import Store
from magistrate.subject import Subject


async def run_safety(
    subjects: Sequence[Subject],
    cases: Sequence[Case],
    grading: Grading,
    *,
    store: Store | None,
    validate_sample: int | None = 20,
    validate: bool = True,
    seed: int = 0,
    spec: Mapping[str, Any] | None = None,
    data: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run every case for one or two subjects, validate the graders, build the report.

    Args:
        validate_sample: Validation items per human label (None: all of them).
        validate: Measure the graders' agreement with human labels.
        spec: What the caller wants recorded about the run (suites, sample, seed...).

    Raises:
        ConfigError: No subject, more than two, or two with the same label.
        StoreError: An answer or a grade could not be recorded.
    """
    if not 1 <= len(subjects) <= 2:
        raise ConfigError("A safety run compares one or two subjects.")
    if len({s.label for s in subjects}) != len(subjects):
        raise ConfigError(
            "The two subjects have the same label; give them different ones (--label, "
            "--compare-label) so the table can tell them apart."
        )
    runs: list[SubjectRun] = []
    for subject in subjects:
        runs.append(await run_subject(subject, cases, grading, store=store, progress=progress))
    checks = (
        await validate_graders(
            grading,
            sample=validate_sample,
            seed=seed,
            data=data,
            store=store,
            progress=progress,
        )
        if validate
        else []
    )
    full_spec = {
        **(spec or {}),
        "grader_backend": grading.backend.name,
        "grader_mode": grading.mode.value,
        "graders": {
            name: {"id": p.id, "version": p.version, "hash": p.hash}
            for name, p in grading.policies.items()
        },
        "cases": len(cases),
    }
    return build_report(
        runs,
        cases,
        spec=full_spec,
        graders=grader_names(grading.policies),
        validation=checks,
        seed=seed,
    )


__all__ = [
    "GRADER_POLICIES",
    "SUITES",
    "Case",
    "Grading",
    "grader_policies",
    "load_cases",
    "render_html",
    "run_safety",
]
