"""The HTML report of an eval run: one self-contained file that opens with no server.

Headline metrics with 95% intervals, the confusion matrix, the PR curve and the score
histogram as inline SVG, and the table of disagreements (text, gold, prediction, cited rules,
rationale) with filters. Every string from the data is HTML-escaped (the items are untrusted
content), and a Content-Security-Policy forbids loading anything from anywhere.
"""

from __future__ import annotations

import html

from magistrate.evaluate.compare import Comparison
from magistrate.evaluate.report import Confusion, EvalReport, EvalSpec, ItemRow, Metrics

_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d232a;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px}
.meta{color:#555} .cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:16px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:22px} .card span{color:#666;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:24px} figure{margin:0;background:#fff;border:1px solid #ddd;
border-radius:6px;padding:10px} figcaption{font-size:12px;color:#555}
table.cm td,table.cm th{border:1px solid #ccc;padding:8px 14px;text-align:center}
table.items{border-collapse:collapse;width:100%;background:#fff}
table.items th,table.items td{border-bottom:1px solid #e4e4e4;padding:6px;vertical-align:top;
text-align:left} table.items td.text{max-width:480px;white-space:pre-wrap;word-break:break-word}
.fp{color:#b3261e} .fn{color:#8a5a00} .ab{color:#6b4fbb}
.controls{margin:8px 0;display:flex;gap:8px}
"""

_SCRIPT = """
window.__errors = [];
window.addEventListener('error', e => { window.__errors.push(String(e.message)); });
function applyFilters() {
  const kind = document.getElementById('kind').value;
  const q = document.getElementById('q').value.toLowerCase();
  let shown = 0;
  for (const row of document.querySelectorAll('table.items tbody tr')) {
    const ok = (kind === 'all' || row.dataset.kind === kind) &&
               (!q || row.textContent.toLowerCase().includes(q));
    row.style.display = ok ? '' : 'none';
    if (ok) shown++;
  }
  document.getElementById('shown').textContent = shown;
}
document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('kind').addEventListener('change', applyFilters);
  document.getElementById('q').addEventListener('input', applyFilters);
  applyFilters();
  document.body.dataset.ready = window.__errors.length ? 'errors' : 'yes';
});
"""


Card = tuple[str, float | None, tuple[float, float] | None]


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cards(mtr: Metrics) -> str:
    """The headline figures, each with its 95% interval where there is one."""
    ci = mtr.ci95
    cards: list[Card] = [
        ("F1", mtr.f1, ci.f1),
        ("precision", mtr.precision, ci.precision),
        ("recall", mtr.recall, ci.recall),
        ("accuracy", mtr.accuracy, None),
        ("parse rate", mtr.parse_rate, None),
        ("abstain rate", mtr.abstain_rate, None),
    ]
    if mtr.scores is not None:
        cards.append(("PR-AUC", mtr.scores.pr_auc, None))
    if mtr.threshold_transfer is not None:
        t = mtr.threshold_transfer
        cards.append(
            (f"F1 at t={t.threshold:.2f} (held-out part)", t.test.f1, t.test_ci95_f1),
        )
    return "".join(
        f'<div class="card"><b>{_fmt(v)}</b><span>{_e(name)}'
        + (f" [{_fmt(c[0])}, {_fmt(c[1])}]" if c else "")
        + "</span></div>"
        for name, v, c in cards
    )


def _meta(report: EvalReport) -> str:
    """The line under the title: which run, model, policy and dataset."""
    spec, mtr = report.spec, report.metrics
    return f"""run {_e(report.id)} · {_e(spec.created_at)} · {_e(spec.backend)} ·
{_e(spec.mode)} mode · effort {_e(spec.effort)} · policy {_e(spec.policy.hash[:12])} ·
dataset {_e(spec.dataset.hash[:12])} ({_e(spec.dataset.items)} items,
{_e(mtr.positives)} positive: {_e(spec.dataset.positive)}) ·
magistrate {_e(spec.package_version)} {_e((spec.git_revision or "")[:10])}"""


def render_html(report: EvalReport) -> str:
    """The report page of one policy's result (as written to `<run id>.json`)."""
    spec, mtr, items = report.spec, report.metrics, report.items
    rows = [r for r in items if r.pred is None or r.pred != r.gold]
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>Magistrate eval {_e(report.id)}</title><style>{_STYLE}</style>
<script>{_SCRIPT}</script></head>
<body data-ready="no">
<h1>{_e(spec.dataset.name)} · {_e(spec.policy.id)}@{_e(spec.policy.version)}</h1>
<div class="meta">{_meta(report)}</div>
<div class="cards">{_cards(mtr)}</div>
<h2>Charts</h2><div class="charts">
<figure>{_confusion(mtr.confusion)}<figcaption>Confusion matrix (abstained:
{_e(mtr.confusion.abstained)})</figcaption></figure>
{_pr_figure(mtr)}{_histogram_figure(items)}{_reliability_figure(mtr)}
</div>
<h2>Disagreements (<span id="shown">{len(rows)}</span> shown of {len(rows)})</h2>
<div class="controls"><select id="kind" aria-label="kind">
<option value="all">all disagreements</option><option value="fp">false positives</option>
<option value="fn">false negatives</option><option value="ab">abstentions</option></select>
<input id="q" type="search" placeholder="filter text, rules, rationale" aria-label="search"></div>
<table class="items"><thead><tr><th>id</th><th>kind</th><th>text</th><th>gold</th><th>predicted</th>
<th>score</th><th>rules</th><th>rationale / reason</th></tr></thead><tbody>
{"".join(_row(r) for r in rows)}
</tbody></table>
</body></html>
"""
    return body


def _row(r: ItemRow) -> str:
    kind = "ab" if r.pred is None else ("fp" if r.pred else "fn")
    names = {"ab": "abstained", "fp": "false positive", "fn": "false negative"}
    reason = r.rationale or (r.detail or r.status if kind == "ab" else "-")
    predicted = r.label if r.pred is not None else r.status
    return (
        f'<tr data-kind="{kind}"><td>{_e(r.id)}</td><td class="{kind}">{names[kind]}</td>'
        f'<td class="text">{_e(r.text)}</td><td>{"violating" if r.gold else "not"}</td>'
        f"<td>{_e(predicted)}</td><td>{_fmt(r.score)}</td>"
        f"<td>{_e(', '.join(r.rule_ids))}</td><td>{_e(reason)}</td></tr>"
    )


def _confusion(c: Confusion) -> str:
    total = max(1, c.tp + c.fp + c.fn + c.tn)

    def cell(n: int, good: bool) -> str:
        alpha = 0.15 + 0.7 * n / total
        color = f"rgba(46,125,50,{alpha:.2f})" if good else f"rgba(198,40,40,{alpha:.2f})"
        return f'<td style="background:{color}">{n}</td>'

    return (
        '<table class="cm"><tr><th></th><th>predicted violating</th><th>predicted not</th></tr>'
        f"<tr><th>gold violating</th>{cell(c.tp, True)}{cell(c.fn, False)}</tr>"
        f"<tr><th>gold not</th>{cell(c.fp, False)}{cell(c.tn, True)}</tr></table>"
    )


def _pr_figure(mtr: Metrics) -> str:
    points = mtr.pr_curve
    if not points or mtr.scores is None:
        return "<figure><figcaption>No scores: no PR curve.</figcaption></figure>"
    w, h, pad = 320, 240, 30
    coords = " ".join(
        f"{pad + r * (w - 2 * pad):.1f},{h - pad - p * (h - 2 * pad):.1f}" for r, p in points
    )
    auc = mtr.scores.pr_auc
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'role="img" aria-label="precision-recall curve">'
        f'<rect x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" fill="none" '
        f'stroke="#999"/><polyline points="{coords}" fill="none" stroke="#1565c0" '
        f'stroke-width="2"/><text x="{w / 2}" y="{h - 6}" font-size="11" '
        f'text-anchor="middle">recall</text><text x="10" y="{h / 2}" font-size="11" '
        f'transform="rotate(-90 10 {h / 2})" text-anchor="middle">precision</text></svg>'
        f"<figcaption>Precision-recall curve (PR-AUC {auc:.3f})</figcaption></figure>"
    )


def _reliability_figure(mtr: Metrics) -> str:
    table = mtr.reliability
    if table is None or not table.bins:
        return "<figure><figcaption>No scores: no reliability diagram.</figcaption></figure>"
    w, h, pad = 320, 240, 30
    top = max(b.n for b in table.bins)

    def xy(score: float, rate: float) -> tuple[float, float]:
        return pad + score * (w - 2 * pad), h - pad - rate * (h - 2 * pad)

    dots = []
    for b in table.bins:
        x, y = xy(b.mean_score, b.positive_rate)
        radius = 2 + 6 * (b.n / top) ** 0.5
        dots.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" fill="#1565c0" '
            f'fill-opacity="0.7"><title>{b.n} items, mean score {b.mean_score:.2f}, '
            f"{b.positive_rate:.0%} violating</title></circle>"
        )
    x0, y0 = xy(0, 0)
    x1, y1 = xy(1, 1)
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
        f'aria-label="reliability diagram"><rect x="{pad}" y="{pad}" width="{w - 2 * pad}" '
        f'height="{h - 2 * pad}" fill="none" stroke="#999"/><line x1="{x0}" y1="{y0}" '
        f'x2="{x1}" y2="{y1}" stroke="#bbb" stroke-dasharray="4 3"/>{"".join(dots)}'
        f'<text x="{w / 2}" y="{h - 6}" font-size="11" text-anchor="middle">mean score in '
        f'bin</text><text x="10" y="{h / 2}" font-size="11" transform="rotate(-90 10 {h / 2})" '
        f'text-anchor="middle">share violating</text></svg><figcaption>Reliability (ECE '
        f"{table.ece:.3f}): dots on the diagonal are calibrated</figcaption></figure>"
    )


def _histogram_figure(items: list[ItemRow]) -> str:
    scored = [(r.gold, r.score) for r in items if r.score is not None]
    if not scored:
        return "<figure><figcaption>No scores: no histogram.</figcaption></figure>"
    bins = 10
    pos = [0] * bins
    neg = [0] * bins
    for gold, score in scored:
        k = min(bins - 1, int(float(score) * bins))
        (pos if gold else neg)[k] += 1
    top = max(1, *pos, *neg)
    w, h, pad = 320, 240, 30
    bar = (w - 2 * pad) / bins
    rects = []
    for k in range(bins):
        for j, (counts, color) in enumerate(((neg, "#66bb6a"), (pos, "#e53935"))):
            height = (h - 2 * pad) * counts[k] / top
            x = pad + k * bar + j * bar / 2
            rects.append(
                f'<rect x="{x:.1f}" y="{h - pad - height:.1f}" width="{bar / 2 - 1:.1f}" '
                f'height="{height:.1f}" fill="{color}"><title>{counts[k]}</title></rect>'
            )
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
        f'aria-label="score histogram"><line x1="{pad}" y1="{h - pad}" x2="{w - pad}" '
        f'y2="{h - pad}" stroke="#999"/>{"".join(rects)}<text x="{w / 2}" y="{h - 6}" '
        f'font-size="11" text-anchor="middle">score (0 to 1)</text></svg>'
        f"<figcaption>Scores: gold violating (red) vs not (green)</figcaption></figure>"
    )


def _who(spec: EvalSpec) -> str:
    p = spec.policy
    return _e(f"{p.id}@{p.version} {p.hash[:12]} · {spec.backend} · {spec.mode}")


def render_compare_html(report: Comparison) -> str:
    """The comparison of two runs (as `evaluate.compare.compare` returns it) as one page."""
    deltas = "".join(
        f"<tr><td>{_e(name)}</td><td>{_fmt(d.a)}</td><td>{_fmt(d.b)}</td>"
        f"<td>{d.delta:+.3f} [{d.ci95[0]:+.3f}, {d.ci95[1]:+.3f}]</td></tr>"
        for name, d in report.deltas.items()
    )
    flips = "".join(
        f'<tr data-kind="{"fixed" if f.fixed else "broken"}"><td>{_e(f.id)}</td>'
        f'<td class="{"fn" if not f.fixed else ""}">{"fixed" if f.fixed else "broken"}</td>'
        f'<td class="text">{_e(f.text)}</td><td>{"violating" if f.gold else "not"}</td>'
        f"<td>{_e(f.a.label)} {_fmt(f.a.score)}</td>"
        f"<td>{_e(f.b.label)} {_fmt(f.b.score)}</td>"
        f"<td>{_e(f.b.rationale or f.a.rationale)}</td></tr>"
        for f in report.flips
    )
    who_a, who_b = _who(report.a.spec), _who(report.b.spec)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>Magistrate compare</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head>
<body data-ready="no">
<h1>Comparison of two eval runs</h1>
<div class="meta">A: {who_a}<br>B: {who_b}<br>{report.shared_items} shared items</div>
<h2>Metrics (B - A, paired bootstrap 95% CI)</h2>
<table class="items"><thead><tr><th>metric</th><th>A</th><th>B</th><th>B - A</th></tr></thead>
<tbody>{deltas}</tbody></table>
<h2>Flipped items (<span id="shown">{len(report.flips)}</span>: {report.fixed} fixed,
{report.broken} broken)</h2>
<div class="controls"><select id="kind" aria-label="kind"><option value="all">all</option>
<option value="fixed">fixed</option><option value="broken">broken</option></select>
<input id="q" type="search" placeholder="filter" aria-label="search"></div>
<table class="items"><thead><tr><th>id</th><th>change</th><th>text</th><th>gold</th><th>A</th>
<th>B</th><th>rationale</th></tr></thead><tbody>{flips}</tbody></table>
</body></html>
"""
