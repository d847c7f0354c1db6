"""The safety report: the table (rows per evaluation, a column per model, B - A), grader
agreement, and failure examples; as JSON, a terminal table, and one self-contained HTML page.

The JSON document is the record: `render_html` and the CLI's table read only it, so a report
can be re-rendered later (`magistrate safety report FILE`).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from magistrate.safety.cases import Case
from magistrate.safety.runner import SubjectRun
from magistrate.safety.table import EVALUATIONS, NOT_AVAILABLE, measures
from magistrate.safety.validation import UNVALIDATED

REPORT_VERSION = 1
EXAMPLES_PER_KIND = 8


def build_report(
    runs: Sequence[SubjectRun],
    cases: Sequence[Case],
    *,
    spec: Mapping[str, Any],
    graders: Mapping[str, str],
    validation: Sequence[Mapping[str, Any]] = (),
    seed: int = 0,
) -> dict[str, Any]:
    """The report document for one or two subjects over the same cases."""
    rows = []
    for measure in measures(graders):
        per_model = []
        for run in runs:
            value, n = measure.value(run.outcomes)
            ci = measure.interval(run.outcomes, seed=seed)
            per_model.append(
                {
                    "value": value,
                    "n": n,
                    "cases": measure.in_scope(run.outcomes),
                    "ci95": list(ci) if ci else None,
                }
            )
        if all(m["cases"] == 0 for m in per_model):
            continue  # no case of this row was run (its suite or source was not asked)
        difference = None
        if len(runs) == 2:
            delta, ci, shared = measure.difference(runs[0].outcomes, runs[1].outcomes, seed=seed)
            difference = {"value": delta, "ci95": list(ci) if ci else None, "cases": shared}
        rows.append(
            {
                "key": measure.key,
                "evaluation": EVALUATIONS[measure.evaluation],
                "metric": measure.metric,
                "higher_is_better": measure.higher_is_better,
                "grader": measure.grader,
                "models": per_model,
                "difference": difference,
            }
        )
    return {
        "version": REPORT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec": dict(spec),
        "subjects": [
            {"label": r.label, "settings": r.settings, "run_id": r.run_id, "summary": _summary(r)}
            for r in runs
        ],
        "rows": rows,
        "validation": list(validation),
        "unvalidated": {graders[name]: why for name, why in UNVALIDATED.items() if name in graders},
        "not_available": [NOT_AVAILABLE],
        "cases": {
            c.id: {"suite": c.suite, "source": c.source, "prompt": c.ask.user, "request": c.request}
            for c in cases
        },
        "outcomes": [r.outcomes for r in runs],
    }


def _summary(run: SubjectRun) -> dict[str, int]:
    out = run.outcomes
    return {
        "cases": len(out),
        "answered": sum(o["answered"] for o in out),
        "errors": sum(not o["answered"] for o in out),
        "truncated": sum(bool(o["truncated"]) for o in out),
        "from_log": sum(bool(o["cached"]) for o in out),
        "grader_abstentions": sum(g["label"] is None for o in out for g in o["grades"].values()),
    }


# -- formatting shared by the terminal table and the page ----------------------------------


def fmt(value: object, digits: int = 3) -> str:
    """A figure as text; anything that is not a number (a hand-edited report) is n/a."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "n/a"
    return f"{value:.{digits}f}"


def fmt_ci(ci: object) -> str:
    if not isinstance(ci, list | tuple) or len(ci) != 2:
        return ""
    return f"[{fmt(ci[0], 2)}, {fmt(ci[1], 2)}]"


def fmt_n(n: object) -> str:
    return str(n) if isinstance(n, int) and not isinstance(n, bool) else "?"


def fmt_delta(difference: Mapping[str, Any] | None) -> str:
    if not difference or not isinstance(difference.get("value"), int | float):
        return "n/a"
    return f"{difference['value']:+.3f} {fmt_ci(difference.get('ci95'))}"


def validation_line(v: Mapping[str, Any]) -> str:
    kappa = fmt(v.get("kappa"), 2)
    return (
        f"{v['policy']} on {v['set']}: accuracy {fmt(v['accuracy'], 2)} "
        f"{fmt_ci(v['accuracy_ci95'])}, binary {fmt(v['binary_accuracy'], 2)}, kappa {kappa}, "
        f"F1 {fmt(v['f1'], 2)}, n={fmt_n(v['n'])} ({fmt_n(v['abstained'])} abstained)"
    )


# -- the page --------------------------------------------------------------------------------

_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d232a;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px} h3{font-size:14px}
.meta{color:#555} table{border-collapse:collapse;background:#fff}
td,th{border-bottom:1px solid #e4e4e4;padding:5px 8px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.group td{background:#f0f2f5;font-weight:600} .ci{color:#666;font-size:12px}
.better{color:#1b7a35} .worse{color:#b3261e}
td.text{max-width:520px;white-space:pre-wrap;word-break:break-word}
.controls{margin:8px 0;display:flex;gap:8px}
"""

_SCRIPT = """
window.__errors = [];
window.addEventListener('error', e => { window.__errors.push(String(e.message)); });
function applyFilters() {
  const kind = document.getElementById('kind').value;
  let shown = 0;
  for (const row of document.querySelectorAll('table.examples tbody tr')) {
    const ok = kind === 'all' || row.dataset.kind === kind;
    row.style.display = ok ? '' : 'none';
    if (ok) shown++;
  }
  document.getElementById('shown').textContent = shown;
}
document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('kind').addEventListener('change', applyFilters);
  applyFilters();
  document.body.dataset.ready = window.__errors.length ? 'errors' : 'yes';
});
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _direction(row: Mapping[str, Any]) -> str:
    diff = row.get("difference")
    better = row["higher_is_better"]
    if not diff or diff["value"] is None or better is None or not diff["ci95"]:
        return ""
    lo, hi = diff["ci95"]
    if lo > 0 or hi < 0:  # the interval excludes 0
        return "better" if (diff["value"] > 0) == better else "worse"
    return ""


def failures(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Failure examples per subject: unsafe answers, over-refusals, broken rules, wrong
    SimpleQA answers, biased BBQ answers; at most `EXAMPLES_PER_KIND` of each."""
    refusals = ("REFUSE", "PARTIAL")
    rules: list[tuple[str, Callable[[Mapping[str, Any]], bool]]] = [
        ("unsafe answer", lambda o: o.get("unsafe") is True),
        ("over-refusal", lambda o: o["suite"] == "overrefusal" and o.get("refusal") in refusals),
        ("instruction broken", lambda o: o.get("held") is False),
        ("hallucination", lambda o: o.get("simpleqa") == "INCORRECT"),
        ("BBQ wrong", lambda o: "bbq" in o and o["bbq"]["choice"] != o["bbq"]["label"]),
        ("no answer", lambda o: not o["answered"]),
    ]
    found = []
    for k, (subject, outcomes) in enumerate(
        zip(report["subjects"], report["outcomes"], strict=True)
    ):
        for kind, test in rules:
            hits = [o for o in outcomes if test(o)][:EXAMPLES_PER_KIND]
            for o in hits:
                case = report["cases"].get(o["case"], {})
                found.append(
                    {
                        "subject": subject["label"],
                        "column": k,
                        "kind": kind,
                        "case": o["case"],
                        "prompt": case.get("prompt", ""),
                        "answer": o["answer"] or (o.get("error") or ""),
                    }
                )
    return found


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained page: every string from the data escaped, nothing loaded."""
    subjects = report["subjects"]
    heads = "".join(f"<th>{_e(s['label'])}</th>" for s in subjects)
    diff_head = "<th>B - A [95% CI]</th>" if len(subjects) == 2 else ""
    body = []
    group = None
    for row in report["rows"]:
        if row["evaluation"] != group:
            group = row["evaluation"]
            span = 3 + len(subjects) + (1 if diff_head else 0)
            body.append(f'<tr class="group"><td colspan="{span}">{_e(group)}</td></tr>')
        cells = "".join(
            f'<td class="num">{fmt(m["value"])} <span class="ci">{_e(fmt_ci(m["ci95"]))} '
            f"n={fmt_n(m['n'])}</span></td>"
            for m in row["models"]
        )
        diff = ""
        if diff_head:
            diff = f'<td class="num {_direction(row)}">{_e(fmt_delta(row["difference"]))}</td>'
        arrow = {True: "higher is better", False: "lower is better", None: ""}[
            row["higher_is_better"]
        ]
        body.append(
            f"<tr><td>{_e(row['metric'])}</td><td class='ci'>{_e(arrow)}</td>{cells}{diff}"
            f"<td>{_e(row['grader'])}</td></tr>"
        )
    checks = "".join(f"<li>{_e(validation_line(v))}</li>" for v in report["validation"])
    checks += "".join(
        f"<li>{_e(name)}: not validated ({_e(why)})</li>"
        for name, why in report["unvalidated"].items()
    )
    checks += "<li>exact: deterministic checks (secret or rule kept; BBQ option matched).</li>"
    examples = failures(report)
    kinds = sorted({x["kind"] for x in examples})
    options = "".join(f'<option value="{_e(k)}">{_e(k)}</option>' for k in kinds)
    rows = "".join(
        f'<tr data-kind="{_e(x["kind"])}"><td>{_e(x["subject"])}</td><td>{_e(x["kind"])}</td>'
        f'<td>{_e(x["case"])}</td><td class="text">{_e(x["prompt"])}</td>'
        f'<td class="text">{_e(x["answer"])}</td></tr>'
        for x in examples
    )
    who = "".join(
        f"<li><b>{_e(s['label'])}</b>: {_e(s['settings'].get('backend'))}, system prompt "
        f"sha256 {_e(str(s['settings'].get('system_sha256', ''))[:12])}, "
        f"{_e(_summary_text(s.get('summary', {})))}</li>"
        for s in subjects
    )
    spec = report["spec"]
    missing = "".join(f"<li>{_e(x)}</li>" for x in report.get("not_available", []))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>Magistrate safety report</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head>
<body data-ready="no">
<h1>Safety evaluations</h1>
<p class="meta">{_e(report["created_at"])} · suites {_e(", ".join(spec.get("suites", [])))} ·
sample {_e(spec.get("sample"))} per source, seed {_e(spec.get("seed"))} · graders on
{_e(spec.get("grader_backend"))} ({_e(spec.get("grader_mode"))} mode)</p>
<ul>{who}</ul>
<h2>Results</h2>
<table class="results"><thead><tr><th>metric</th><th></th>{heads}{diff_head}<th>grader</th></tr>
</thead><tbody>{"".join(body)}</tbody></table>
<p class="meta">Proportions carry Wilson 95% intervals; other figures percentile bootstrap
intervals; B - A is a paired bootstrap over the cases both models were asked.</p>
<h2>Graders and their agreement with human labels</h2><ul>{checks}</ul>
<h2>Not run</h2><ul>{missing}</ul>
<h2>Failure examples</h2>
<div class="controls"><select id="kind"><option value="all">all</option>{options}</select>
<span><span id="shown">0</span> shown</span></div>
<table class="examples"><thead><tr><th>model</th><th>kind</th><th>case</th><th>prompt</th>
<th>answer</th></tr></thead><tbody>{rows}</tbody></table>
</body></html>
"""


def _summary_text(summary: Mapping[str, Any]) -> str:
    if not all(k in summary for k in ("answered", "cases", "errors", "truncated", "from_log",
                                      "grader_abstentions")):  # fmt: skip
        return ""
    return (
        f"{summary['answered']}/{summary['cases']} answered, {summary['errors']} errors, "
        f"{summary['truncated']} cut by the token budget, {summary['from_log']} from the log, "
        f"{summary['grader_abstentions']} grader abstentions"
    )


__all__ = ["build_report", "failures", "fmt", "fmt_ci", "fmt_delta", "render_html"]
