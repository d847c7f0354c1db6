"""The eval report format: `magistrate.eval/2` written and read back, `/1` files and
`eval_runs` rows from the version before still read by `eval compare`, `eval report` and
`eval report-table`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from evalfiles import scripted, v1_multi_row, v1_result, v1_run_row

from magistrate.engine import Judge
from magistrate.errors import ConfigError
from magistrate.evaluate.datasets import Dataset, Example
from magistrate.evaluate.report import (
    EvalReport,
    MultiReport,
    SingleRunRecord,
    load_result,
    parse_result,
    read_run,
)
from magistrate.evaluate.report_table import table_rows
from magistrate.evaluate.runner import evaluate
from magistrate.policy import load_policy
from magistrate.store import Store
from magistrate.verdict import ParseStatus

ROOT = Path(__file__).resolve().parent.parent


def dataset(name: str = "golden", n: int = 8) -> Dataset:
    examples = tuple(Example(f"i{k}", f"message {k}", k % 2 == 1) for k in range(n))
    return Dataset(name, "mem", examples)


def cli(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAGISTRATE_DATABASE_URL": str(db), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "magistrate", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_a_v1_file_is_read_into_the_v2_models(tmp_path):
    old = v1_result([True, False, None, True, False], "a")
    old["metrics"]["retired_figure"] = 0.5  # a key an older version wrote and /2 dropped
    path = tmp_path / "a.json"
    path.write_text(json.dumps(old), "utf-8")
    report = load_result(path)
    assert report.schema_ == "magistrate.eval/2" and report.id == "a"
    assert report.metrics.confusion.abstained == 1 and report.metrics.ci95.f1 == (0.2, 0.8)
    assert report.metrics.scores is None and report.metrics.reliability is None  # not in /1
    assert report.spec.policy.version == "a" and report.spec.strategy is None
    assert report.spec.options["max_tokens"] == 512
    assert report.items[2].pred is None and report.items[2].status is ParseStatus.TRUNCATED
    # Written again it is a strict /2 document, and reads back the same.
    again = tmp_path / "a2.json"
    again.write_text(json.dumps(report.document()), "utf-8")
    assert json.loads(again.read_text("utf-8"))["schema"] == "magistrate.eval/2"
    assert load_result(again) == report


def test_v2_documents_refuse_unknown_keys_and_errors_name_the_field(tmp_path):
    report = parse_result(v1_result([True, False], "a"))
    extra = report.document()
    extra["metrics"]["retired_figure"] = 0.5  # tolerated in /1, refused in /2
    with pytest.raises(ConfigError, match=r"metrics\.retired_figure"):
        parse_result(extra)
    broken = v1_result([True, False], "a")
    del broken["metrics"]["f1"]
    broken["items"][0]["text"] = "secret content"
    with pytest.raises(ConfigError, match=r"not a valid magistrate\.eval/1 .*metrics\.f1") as e:
        parse_result(broken, source="b.json")
    assert "secret" not in str(e.value)  # errors name fields, never the content
    multi = v1_result([True], "m") | {"schema": "magistrate.eval-multi/1"}
    with pytest.raises(ConfigError, match=r"not a magistrate\.eval/2"):
        parse_result(multi)


def test_eval_compare_and_report_still_read_v1_files(tmp_path):
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(v1_result([True, False, False, True, False], "a")), "utf-8")
    b.write_text(json.dumps(v1_result([True, True, False, False, False], "b")), "utf-8")
    db = tmp_path / "log.db"
    html = str(tmp_path / "d.html")
    shown = cli("eval", "compare", str(a), str(b), "--json", "--html", html, db=db)
    assert shown.returncode == 0, shown.stderr
    diff = json.loads(shown.stdout)
    assert diff["shared_items"] == 5 and (diff["fixed"], diff["broken"]) == (2, 0)
    assert diff["a"]["spec"]["policy"]["version"] == "a" and len(diff["deltas"]["f1"]["ci95"]) == 2
    assert "2 fixed" in (tmp_path / "d.html").read_text("utf-8")
    human = cli("eval", "compare", str(a), str(b), db=db)
    assert human.returncode == 0 and "5 shared items" in human.stdout, human.stderr
    page = tmp_path / "a.html"
    done = cli("eval", "report", str(a), "-o", str(page), db=db)
    assert done.returncode == 0, done.stderr
    assert "golden · spam@a" in page.read_text("utf-8")
    assert not list(tmp_path.glob("*.partial"))


def test_a_run_writes_v2_files_that_read_back(tmp_path, spam, capsys):
    from magistrate.cli import eval as eval_cli

    judge = Judge(spam, scripted([0, 1] * 4), mode="score")
    result = asyncio.run(evaluate(dataset(), judge, threshold_split=0.5)).runs[0]
    path = eval_cli._write_result(result, tmp_path)
    written = json.loads(path.read_text("utf-8"))
    assert written["schema"] == "magistrate.eval/2" and EvalReport.model_validate(written)
    assert load_result(path) == result.report()
    assert path.with_suffix(".html").is_file() and not list(tmp_path.glob("*.partial"))
    assert result.metrics.threshold_transfer is not None and result.metrics.scores is not None
    eval_cli._print_summary(result, path)
    out = capsys.readouterr().out
    assert "PR-AUC / ROC-AUC" in out and "threshold transfer" in out and "from cache" in out


def test_a_multi_run_writes_its_summary_and_prints_it(tmp_path, capsys):
    from magistrate.cli import eval as eval_cli

    examples = tuple(Example(f"e{k}", f"text {k}", k < 2, {"hate": k < 2}) for k in range(4))
    judges = [
        Judge(load_policy(p), scripted([1, 1, 0, 0]), mode="score") for p in ("hate", "violence")
    ]
    run = asyncio.run(evaluate(Dataset("cats", "mem", examples), judges, threshold_split=0.5))
    assert run.multi is not None
    eval_cli._report_multi([run.multi], tmp_path, as_json=False)
    out = capsys.readouterr().out
    assert "exact match 1.000" in out and "any policy flags" in out and "max-score" in out
    written = tmp_path / f"{run.multi.id}.multi.json"
    summary = MultiReport.model_validate_json(written.read_bytes())
    assert summary.schema_ == "magistrate.eval-multi/2" and len(summary.results) == 2
    assert [r.id for r in summary.items] == ["e0", "e1", "e2", "e3"]
    assert all(load_result(p).spec.policy.id in ("hate", "violence") for p in summary.results)


def test_report_table_reads_rows_of_the_old_and_the_new_version(tmp_path, spam):
    store = Store(tmp_path / "log.db")
    store.add_run(v1_run_row("1", "openai-moderation-2022~200@7", 0.7, backend="mock"))
    store.add_run(v1_multi_row("2", 0.25) | {"backend": "mock"})
    judge = Judge(spam, scripted([0, 1] * 4), mode="score")
    new = asyncio.run(evaluate(dataset("toxicchat~8@0"), judge, store=store)).runs[0]
    rows = store.runs()
    record = read_run(next(r for r in rows if r["id"] == new.id))
    assert isinstance(record, SingleRunRecord) and record.metrics.pr_curve is None  # left out
    assert record.spec == new.spec and record.metrics.f1 == new.metrics.f1
    by_key = {(r.backend, r.mode, r.effort): r for r in table_rows(rows)}
    old = by_key["mock", "score", "medium"]
    assert old.oai_mod_f1 is not None and old.oai_mod_f1.f1 == 0.7
    assert old.multi_policy_accuracy is not None and old.multi_policy_accuracy.exact_match == 0.25
    fresh = by_key[new.spec.backend, "score", new.spec.effort.value]
    assert fresh.toxicchat_f1 is not None and fresh.toxicchat_f1.run == new.id
    assert fresh.toxicchat_f1.f1 == new.metrics.f1 and fresh.toxicchat_f1.items == 8
    store.close()
    shown = cli("eval", "report-table", "--json", db=tmp_path / "log.db")
    assert shown.returncode == 0, shown.stderr
    ours = json.loads(shown.stdout)["ours"]
    assert {r["backend"] for r in ours} == {"mock", new.spec.backend}
    multi = [r["multi_policy_accuracy"] for r in ours if r["multi_policy_accuracy"]]
    assert [m["items"] for m in multi] == [90]
