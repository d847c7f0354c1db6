"""Signed checkpoints and inclusion proofs: what the hash chain alone cannot see.

Real SQLite logs with recorded decisions; tampering is done the way an attacker with write
access to the database would do it (edit a row and rewrite every later hash so that the
chain still checks out, or cut rows off the end), then caught against a checkpoint. The CLI
runs as real processes; the service publishes its checkpoint under uvicorn.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from serving import serving
from storehelp import make_decision

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - where the openai client still uses httpx
    import httpx  # type: ignore[no-redef]

from magistrate.errors import InputError
from magistrate.policy import load_policy
from magistrate.store import Store
from magistrate.store.checkpoints import (
    _split,
    check_checkpoint,
    check_inclusion,
    check_signature,
    generate_key,
    inclusion_path,
    inclusion_proof,
    leaf_hash,
    make_checkpoint,
    merkle_root,
    node_hash,
    public_key_text,
    read_checkpoint,
    verify_inclusion,
)
from magistrate.store.records import GENESIS, row_hash


def _reference_root(leaves: list[bytes]) -> bytes:
    """RFC 9162's definition, recursively."""
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


def test_the_tree_and_its_proofs_follow_rfc_9162():
    for n in range(1, 34):
        leaves = [leaf_hash(bytes([i, n])) for i in range(n)]
        root = merkle_root(leaves)
        assert root == _reference_root(leaves), n
        for index in range(n):
            path = inclusion_path(index, leaves)
            assert len(path) <= n.bit_length()
            assert verify_inclusion(leaves[index], index, n, path, root)
            other = leaves[(index + 1) % n]
            assert n == 1 or not verify_inclusion(other, index, n, path, root)
            assert not verify_inclusion(leaves[index], n, n, path, root)  # past the end


def _log(tmp_path: Path, n: int = 30) -> tuple[Store, list[str]]:
    store = Store(tmp_path / "log.db")
    policy = load_policy("spam")
    ids = []
    for i in range(n):
        decision, item = make_decision(policy, f"message {i}", item_id=f"m{i}")
        store.record(decision, policy=policy, content=item.text)
        ids.append(decision.id)
    return store, ids


def _rewrite_from(store: Store, seq: int, change: dict[str, Any]) -> None:
    """Edit row `seq` and rewrite its hash and every later one, as an attacker with write
    access would: the chain still checks out afterwards."""
    rows = list(store.log.iter_rows())
    prev = rows[seq - 2]["row_hash"] if seq > 1 else GENESIS
    with sqlite3.connect(store.url.removeprefix("sqlite:///")) as conn:
        for row in rows[seq - 1 :]:
            if row["seq"] == seq:
                row.update(change)
            row["prev_hash"] = prev
            row["row_hash"] = prev = row_hash(row)
            sets = ", ".join(f"{k} = ?" for k in (*change, "prev_hash", "row_hash"))
            values = [row[k] for k in (*change, "prev_hash", "row_hash")]
            conn.execute(f"UPDATE decisions SET {sets} WHERE seq = ?", (*values, row["seq"]))


def test_rows_rewritten_with_every_later_hash_are_caught_by_a_checkpoint(tmp_path):
    store, _ = _log(tmp_path)
    key = generate_key(tmp_path / "key.pem")
    signed = make_checkpoint(store, key)
    assert signed.size == 30 and check_signature(signed) is None
    assert check_checkpoint(store, signed).ok

    policy = load_policy("spam")
    decision, item = make_decision(policy, "later", item_id="later")
    store.record(decision, policy=policy, content=item.text)
    grown = check_checkpoint(store, signed)
    assert grown.ok and grown.size == 31  # a log that grew still extends its checkpoint

    _rewrite_from(store, 12, {"label": "0", "violation": False})
    assert store.verify().ok  # the chain alone sees nothing
    caught = check_checkpoint(store, signed)
    assert not caught.ok and "changed or replaced" in str(caught.problem)


def test_a_truncated_log_is_caught_by_a_checkpoint(tmp_path):
    store, _ = _log(tmp_path)
    signed = make_checkpoint(store, generate_key(tmp_path / "key.pem"))
    with sqlite3.connect(tmp_path / "log.db") as conn:
        conn.execute("DELETE FROM decisions WHERE seq > 25")
    assert store.verify().ok  # what remains is a valid chain
    caught = check_checkpoint(store, signed)
    assert not caught.ok and "removed from its end" in str(caught.problem)


def test_a_checkpoint_is_bound_to_its_key_and_contents(tmp_path):
    store, _ = _log(tmp_path, 5)
    key = generate_key(tmp_path / "key.pem")
    signed = make_checkpoint(store, key)
    pinned = public_key_text(key)
    assert check_signature(signed, pinned) is None
    forged = signed.model_copy(update={"size": 4})
    assert "does not match" in str(check_signature(forged))
    stranger = public_key_text(generate_key(tmp_path / "other.pem"))
    assert "not by the pinned key" in str(check_signature(signed, stranger))
    resigned = make_checkpoint(store, generate_key(tmp_path / "third.pem"))
    assert check_signature(resigned) is None  # self-consistent, but...
    assert check_signature(resigned, pinned) is not None  # ...not by the operator's key
    with pytest.raises(InputError, match="not a Magistrate checkpoint"):
        read_checkpoint(b'{"size": 1}')


def test_an_inclusion_proof_holds_for_a_real_decision_and_fails_for_an_edited_one(tmp_path):
    store, ids = _log(tmp_path)
    signed = make_checkpoint(store, generate_key(tmp_path / "key.pem"))
    proof = json.loads(json.dumps(inclusion_proof(store, ids[7], size=signed.size)))
    assert proof["index"] == 7 and len(proof["path"]) == 5
    assert check_inclusion(proof, signed) is None

    edited = json.loads(json.dumps(proof))
    edited["row"]["label"] = "0"
    assert "was changed" in str(check_inclusion(edited, signed))
    moved = json.loads(json.dumps(proof))
    moved["index"] = 8
    assert "does not lead" in str(check_inclusion(moved, signed))

    _rewrite_from(store, 8, {"rationale": "Nothing to see."})  # rehashed: self-consistent
    after = json.loads(json.dumps(inclusion_proof(store, ids[7], size=signed.size)))
    assert "does not lead" in str(check_inclusion(after, signed))


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAGISTRATE_DATABASE_URL": str(tmp_path / "log.db"), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "magistrate", "logs", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_the_cli_signs_verifies_proves_and_checks(tmp_path):
    store, ids = _log(tmp_path, 12)
    store.close()
    key = str(tmp_path / "keys" / "checkpoint.pem")
    made = _cli(tmp_path, "keygen", "--key", key)
    assert made.returncode == 0, made.stderr
    public = made.stdout.strip()
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert _cli(tmp_path, "keygen", "--key", key).returncode != 0  # never silently replaced

    cp = tmp_path / "cp.json"
    assert _cli(tmp_path, "checkpoint", "--key", key, "-o", str(cp)).returncode == 0
    ok = _cli(tmp_path, "verify", "--checkpoint", str(cp), "--public-key", public, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["checkpoint"]["ok"], ok.stdout

    proof = _cli(tmp_path, "prove", ids[3], "--checkpoint", str(cp))
    assert proof.returncode == 0, proof.stderr
    (tmp_path / "proof.json").write_text(proof.stdout)
    checked = _cli(tmp_path, "check-proof", str(tmp_path / "proof.json"), "--checkpoint", str(cp))
    assert checked.returncode == 0 and "is row 4 of the 12 rows" in checked.stdout

    with sqlite3.connect(tmp_path / "log.db") as conn:
        conn.execute("DELETE FROM decisions WHERE seq > 10")
    bad = _cli(tmp_path, "verify", "--checkpoint", str(cp))
    assert bad.returncode == 4 and "removed from its end" in bad.stderr


def test_the_service_publishes_its_checkpoint(tmp_path):
    from magistrate.backends.mock import MockBackend, Scripted
    from magistrate.server import ServerSettings, create_app

    store, _ = _log(tmp_path, 6)
    cp = tmp_path / "cp.json"
    settings = ServerSettings(database=str(tmp_path / "log.db"), checkpoint_file=str(cp))
    app = create_app(settings, backend=MockBackend(script=[Scripted("0")], cycle=True))
    with serving(app) as srv:
        missing = httpx.get(f"{srv.url}/v1/checkpoint")
        assert missing.status_code == 404 and "No checkpoint" in missing.text
        cp.write_text(make_checkpoint(store, generate_key(tmp_path / "k.pem")).to_json())
        served = httpx.get(f"{srv.url}/v1/checkpoint")
        assert served.status_code == 200 and served.json()["size"] == 6
        assert served.json() == json.loads(cp.read_text())
        verified = _cli(tmp_path, "verify", "--checkpoint", f"{srv.url}/v1/checkpoint")
        assert verified.returncode == 0, verified.stderr
