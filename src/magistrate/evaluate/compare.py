"""Compare two eval results item by item: metric deltas with paired intervals, and flips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from magistrate.errors import ConfigError
from magistrate.evaluate import metrics as m
from magistrate.evaluate.runner import RESULT_SCHEMA


def load_result(path: str | Path) -> dict[str, Any]:
    """An eval result JSON written by `magistrate eval`.

    Raises:
        ConfigError: The file is missing, not JSON, or not an eval result.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"No eval result at {path}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not an eval result (not JSON: {exc}).") from None
    if not isinstance(data, dict) or data.get("schema") != RESULT_SCHEMA:
        raise ConfigError(f"{path} is not a {RESULT_SCHEMA} result written by `magistrate eval`.")
    return data


def compare(
    a: dict[str, Any], b: dict[str, Any], *, rounds: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Deltas (B - A) on the items both runs judged, with paired bootstrap 95% intervals."""
    items_a = {r["id"]: r for r in a["items"]}
    items_b = {r["id"]: r for r in b["items"]}
    shared = [i for i in items_a if i in items_b]
    if not shared:
        raise ConfigError("The two runs share no items (different datasets?).")
    gold = [bool(items_a[i]["gold"]) for i in shared]
    pred_a = [items_a[i]["pred"] for i in shared]
    pred_b = [items_b[i]["pred"] for i in shared]
    rng = np.random.default_rng(seed)
    n = len(shared)
    deltas: dict[str, Any] = {}
    for name, fn in (("f1", m.f1_of), ("precision", m.precision_of), ("recall", m.recall_of)):
        base = fn(gold, pred_a)
        new = fn(gold, pred_b)
        samples = []
        for _ in range(rounds):
            idx = rng.integers(0, n, n)
            g = [gold[k] for k in idx]
            samples.append(fn(g, [pred_b[k] for k in idx]) - fn(g, [pred_a[k] for k in idx]))
        lo, hi = np.percentile(samples, [2.5, 97.5])
        deltas[name] = {"a": base, "b": new, "delta": new - base, "ci95": [float(lo), float(hi)]}
    flips = []
    for i, truth, pa, pb in zip(shared, gold, pred_a, pred_b, strict=True):
        if pa != pb:
            ra, rb = items_a[i], items_b[i]
            flips.append(
                {
                    "id": i,
                    "text": ra["text"],
                    "gold": truth,
                    "a": {
                        k: ra.get(k) for k in ("pred", "label", "score", "rule_ids", "rationale")
                    },
                    "b": {
                        k: rb.get(k) for k in ("pred", "label", "score", "rule_ids", "rationale")
                    },
                    "fixed": pb == truth,
                }
            )
    return {
        "a": {"id": a["id"], "spec": a["spec"]},
        "b": {"id": b["id"], "spec": b["spec"]},
        "shared_items": n,
        "deltas": deltas,
        "flips": flips,
        "fixed": sum(1 for f in flips if f["fixed"]),
        "broken": sum(1 for f in flips if not f["fixed"]),
    }
