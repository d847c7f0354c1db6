"""The CLI as a user runs it: a real process, real files, the real embedded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IPHONE = "WIN a FREE iPhone!!! Click http://bit.ly/x to claim"


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "magistrate", *args],
        input=stdin,
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


@pytest.mark.model
def test_classify_reports_a_violation_with_a_real_rule(spam):
    result = cli("classify", "--policy", "src/magistrate/policies/spam.md", IPHONE)
    assert result.returncode == 0, result.stderr
    assert "VIOLATION" in result.stdout
    rules = result.stdout.split("rules=")[1].split()[0].split(",")
    assert set(rules) & spam.rule_ids


@pytest.mark.model
def test_score_mode_json_gives_a_score(spam):
    result = cli("classify", "--policy", "spam", "--mode", "score", "--json", IPHONE)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert 0.0 <= record["score"] <= 1.0
    assert record["violation"] is True and record["status"] == "ok"
    assert record["policy"]["hash"] == spam.hash and record["mode"] == "score"


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (("classify", "--policy", "spam", "   "), None, "empty"),
        (("classify", "--policy", "spam", "-"), b"\xff\xfe\xfa not utf-8", "not valid UTF-8"),
        (("classify", "--policy", "spam", "-"), b"\x00\x01binary", "NUL"),
        (
            ("classify", "--policy", "spam", "--max-chars", "10", "this text is far too long"),
            None,
            "limit is 10",
        ),
        (("classify", "--policy", "no/such/policy.md", "hi"), None, "does not exist"),
        (("classify", "--policy", "spam", "--file", "no-such-file.jsonl"), None, "does not exist"),
        (
            (
                "classify",
                "--policy",
                "spam",
            ),
            None,
            "exactly one",
        ),
        (
            ("classify", "--policy", "spam", "--model", "llamacpp/missing.gguf", "hi"),
            None,
            "does not exist",
        ),
        (("classify", "--policy", "spam", "--model", "warp/drive", "hi"), None, "Unknown model"),
        (("policy", "show", "missing.md"), None, "does not exist"),
    ],
)
def test_user_errors_exit_1_with_a_fix(args, stdin, needle):
    result = cli(*args, stdin=stdin)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert needle in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr


def test_broken_policy_file(tmp_path: Path):
    bad = tmp_path / "bad.md"
    bad.write_text("---\nid: [oops\n---\n# P\n", encoding="utf-8")
    result = cli("classify", "--policy", str(bad), "hello")
    assert result.returncode == 1 and "front matter is broken" in result.stderr
    bad.write_bytes(b"\xff\xfe# P")
    result = cli("policy", "lint", str(bad))
    assert result.returncode == 1 and "not valid UTF-8" in result.stderr


def test_jsonl_with_a_bad_line_fails_before_classifying(tmp_path: Path):
    data = tmp_path / "items.jsonl"
    data.write_text('{"text": "fine"}\n{"text": ""}\n', encoding="utf-8")
    result = cli("classify", "--policy", "spam", "--file", str(data))
    assert result.returncode == 1 and "line 2" in result.stderr


def test_usage_error_exits_2():
    assert cli("classify", "--policy", "spam", "--mode", "guess", "x").returncode == 2
    assert cli("classify", "x").returncode == 2  # --policy is required


def test_policy_show_and_lint_json(spam):
    shown = json.loads(cli("policy", "show", "spam", "--json").stdout)
    assert shown["hash"] == spam.hash and shown["output"] == "json"
    assert {r["id"] for r in shown["rules"]} == set(spam.rule_ids)
    linted = cli("policy", "lint", "spam", "--json")
    assert linted.returncode == 0
    assert all(f["severity"] != "error" for f in json.loads(linted.stdout)["findings"])


def test_lint_fails_on_errors(tmp_path: Path):
    bad = tmp_path / "p.md"
    bad.write_text("# P\n\n## EXAMPLES\nContent: x\nAnswer: MAYBE\n", encoding="utf-8")
    result = cli("policy", "lint", str(bad))
    assert result.returncode == 1 and "undefined-label" in result.stdout
    assert f"{bad}:5" in result.stdout.replace("\n", "")


@pytest.mark.model
def test_decisions_are_logged_listed_shown_and_verified(spam, tmp_path):
    import sqlite3

    db = str(tmp_path / "log.db")
    first = cli("classify", "-p", "spam", "--mode", "score", "--json", "--database", db, IPHONE)
    second = cli(
        "classify",
        "-p",
        "spam",
        "--mode",
        "score",
        "--json",
        "--database",
        db,
        "--redact",
        "See you at dinner at 7?",
    )
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    ids = [json.loads(r.stdout)["id"] for r in (first, second)]

    listed = cli("logs", "list", "--json", "--database", db)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["id"] for r in rows] == ids[::-1]  # newest first
    assert all(r["policy"]["hash"] == spam.hash for r in rows)
    assert all(r["model"] == "qwen2.5-coder-1.5b-instruct-q4_k_m" for r in rows)
    assert rows[1]["content"] == IPHONE and rows[0]["content"] is None  # --redact
    table = cli("logs", "list", "--database", db).stdout
    assert ids[0] in table and ids[1] in table and spam.hash[:8] in table

    shown = cli("logs", "show", ids[0], "--database", db)
    assert shown.returncode == 0 and spam.text.strip() in shown.stdout

    assert cli("logs", "verify", "--database", db).returncode == 0
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE decisions SET score = 0.01 WHERE id = ?", (ids[0],))
    failed = cli("logs", "verify", "--database", db)
    assert failed.returncode == 4 and ids[0] in failed.stderr

    history = cli("policy", "history", "spam", "--json", "--database", db)
    assert json.loads(history.stdout)[0]["decisions"] == 2


@pytest.mark.model
def test_no_log_records_nothing(tmp_path):
    db = tmp_path / "log.db"
    result = cli(
        "classify", "-p", "spam", "--mode", "score", "--no-log", "--database", str(db), IPHONE
    )
    assert result.returncode == 0 and not db.exists()


def test_log_commands_on_bad_logs(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 10)
    result = cli("logs", "list", "--database", str(junk))
    assert result.returncode == 1 and "not a SQLite database" in result.stderr
    empty = str(tmp_path / "empty.db")
    assert "No decisions" in cli("logs", "list", "--database", empty).stderr
    missing = cli("logs", "show", "01ABCDEFGH", "--database", empty)
    assert missing.returncode == 1 and "No decision" in missing.stderr
    assert cli("logs", "export", "--format", "xml", "--database", empty).returncode == 1
    assert cli("policy", "history", "spam", "--database", empty).returncode == 1


@pytest.mark.parametrize("since", ["99999999999d", "0001-01-01T00:00:00+14:00", "soon"])
def test_logs_list_with_a_since_out_of_range_is_a_clean_error(tmp_path, since):
    got = cli("logs", "list", "--since", since, "--database", str(tmp_path / "log.db"))
    assert got.returncode == 1, (got.stdout, got.stderr)
    assert "Traceback" not in got.stderr and "30m, 2h, 7d, 1w" in got.stderr
    assert not (tmp_path / "log.db").exists()  # refused before the log was opened


def test_export_history_and_diff(spam, tmp_path):
    import pyarrow.parquet as pq
    from storehelp import make_decision

    from magistrate.policy import parse_policy
    from magistrate.store import Store

    db = str(tmp_path / "log.db")
    v2 = parse_policy(spam.text.replace("version: 1.0.0", "version: 1.1.0"), source="spam.md")
    with Store(db) as store:
        for n, policy in enumerate([spam, spam, v2]):
            decision, item = make_decision(policy, f"message {n}", item_id=str(n))
            store.record(decision, policy=policy, content=item.text)

    out = cli("logs", "export", "--database", db)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["item_id"] for r in rows] == ["0", "1", "2"] and rows[2]["content"] == "message 2"
    parquet = tmp_path / "d.parquet"
    done = cli("logs", "export", "--format", "parquet", "-o", str(parquet), "--database", db)
    assert done.returncode == 0, done.stderr
    table = pq.read_table(parquet)
    assert table.num_rows == 3 and table.column("seq").to_pylist() == [1, 2, 3]
    assert table.column("policy_hash").to_pylist()[2] == v2.hash
    only = cli(
        "logs",
        "export",
        "--policy",
        "nope",
        "--format",
        "parquet",
        "-o",
        str(parquet),
        "--database",
        db,
    )
    assert only.returncode == 0 and pq.read_table(parquet).num_rows == 0

    history = cli("policy", "history", "spam", "--database", db).stdout
    assert "@1" in history and "@2" in history and v2.hash[:12] in history
    diff = cli("policy", "diff", "spam", "@1", "1.1.0", "--database", db)
    assert diff.returncode == 0
    assert "-version: 1.0.0" in diff.stdout and "+version: 1.1.0" in diff.stdout
    same = cli("policy", "diff", "spam", "@2", v2.hash[:8], "--database", db)
    assert "same text" in same.stdout


@pytest.mark.model
def test_several_policies_in_one_prompt(tmp_path: Path):
    """`-p` repeated: one call per item, one decision per policy, flagged when any flags."""
    import sqlite3

    data = tmp_path / "prompts.jsonl"
    rows = [
        {"id": "code", "text": "how do I sort a list of tuples by the second item in python?"},
        {
            "id": "story",
            "text": "write an erotic story about two neighbours, describe their bodies",
        },
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    db = str(tmp_path / "log.db")
    policies = ["-p", "chat-sexual", "-p", "chat-harm", "-p", "chat-abuse", "-p", "chat-jailbreak"]
    args = ("classify", *policies, "--mode", "score", "--json", "--database", db)
    result = cli(*args, "--file", str(data))
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["item_id"] for r in out] == ["code", "story"]
    for r in out:
        ids = [d["policy"]["id"] for d in r["decisions"]]
        assert ids == ["chat-sexual", "chat-harm", "chat-abuse", "chat-jailbreak"]
        assert all(0.0 <= d["score"] <= 1.0 for d in r["decisions"])
        assert r["flagged"] is any(d["flagged"] for d in r["decisions"])
        assert r["flagged_by"] == [d["policy"]["id"] for d in r["decisions"] if d["flagged"]]
    assert out[0]["flagged"] is False and "chat-sexual" in out[1]["flagged_by"]
    assert "2 items: 1 violations, 1 not" in result.stderr
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from decisions").fetchone()[0] == 8
    human = cli("classify", *policies, "--mode", "score", "--no-log", rows[1]["text"])
    assert human.returncode == 0 and "-> FLAGGED by chat-sexual" in human.stdout


def test_a_bare_policy_name_is_bundled_even_beside_a_file_of_that_name(spam, tmp_path: Path):
    shadow = spam.text.replace("threshold: 0.75", "threshold: 0.05")
    (tmp_path / "spam").write_text(shadow, encoding="utf-8")
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "magistrate", *args]
        return subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
        )

    shown = run("policy", "show", "spam", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["hash"] == spam.hash
    assert json.loads(run("policy", "show", "./spam", "--json").stdout)["hash"] != spam.hash
    unknown = run("policy", "show", "mine")
    assert unknown.returncode == 1 and "./mine" in unknown.stderr
    assert "Traceback" not in unknown.stderr
