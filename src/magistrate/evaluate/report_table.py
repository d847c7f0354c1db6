"""The technical report's Table 2 layout for the runs in the decision log, with the published
rows beside them for reference (published, not reproduced here)."""

from __future__ import annotations

from typing import Any

PUBLISHED = [
    # model, multi-policy accuracy %, OpenAI Moderation 2022 F1, ToxicChat F1
    ("gpt-oss-safeguard-120b", 46.3, 82.9, 79.3),
    ("gpt-oss-safeguard-20b", 43.6, 82.9, 79.9),
    ("internal Safety Reasoner", 52.2, 82.8, 81.3),
    ("gpt-5-thinking", 43.2, 79.8, 81.0),
    ("gpt-oss-120b", 32.5, 80.4, 76.7),
    ("gpt-oss-20b", 32.1, 78.7, 75.9),
]
"""gpt-oss-safeguard technical report, Tables 1 and 2 (OpenAI's prompts and harness)."""

COLUMNS = {"openai-moderation-2022": "oai_mod_f1", "toxicchat": "toxicchat_f1"}


def table_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (backend, mode, effort): the newest run on each public set.

    `runs` are eval runs as `Store.runs()` returns them (newest first).
    """
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for run in runs:
        key = (run["backend"], run["mode"], run["effort"])
        multi = run["spec"].get("kind") == "multi"
        base = run["dataset"].split("~")[0].split("[")[0].split(":")[0]
        column = "multi_policy_accuracy" if multi else COLUMNS.get(base)
        if column is None:
            continue
        row = rows.setdefault(
            key,
            {"backend": key[0], "mode": key[1], "effort": key[2], "multi_policy_accuracy": None},
        )
        if multi:
            if row["multi_policy_accuracy"] is None:
                row["multi_policy_accuracy"] = {
                    "exact_match": run["metrics"]["exact_match"],
                    "items": run["metrics"]["exact_match_items"],
                    "strategy": run["spec"]["strategy"],
                    "dataset": run["spec"]["dataset"]["name"],
                    "policies": len(run["spec"]["policies"]),
                    "run": run["id"],
                }
            continue
        if column in row:
            continue  # an older run of the same set
        metrics = run["metrics"]
        row[column] = {
            "f1": metrics["f1"],
            "ci95": metrics.get("ci95", {}).get("f1"),
            "precision": metrics["precision"],
            "recall": metrics["recall"],
            "items": run["spec"]["dataset"]["items"],
            "dataset": run["dataset"],
            "policy": f"{run['policy_id']}@{run['spec']['policy']['version']}",
            "run": run["id"],
        }
    return list(rows.values())


def published_rows() -> list[dict[str, Any]]:
    return [
        {"model": m, "multi_policy_accuracy": a, "oai_mod_f1": o, "toxicchat_f1": t}
        for m, a, o, t in PUBLISHED
    ]
