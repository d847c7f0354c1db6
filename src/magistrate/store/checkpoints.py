"""Signed checkpoints of the decision log, and proofs that a decision is in it.

The hash chain (`records.py`) shows any edit of a row, except one made by someone who also
rewrites every later hash, and it cannot show that rows were cut off the end. Transparency
logs (Certificate Transparency, Trillian, sigsum) close both gaps with signed checkpoints,
and so does this module:

- A **checkpoint** fixes the log at one moment: its size, the root of a Merkle tree over its
  row hashes (the tree of RFC 9162, section 2.1), and the last row's hash, signed with an
  Ed25519 key that lives outside the database (a key file only the checkpointing job reads).
  Keep checkpoints where the database's writers cannot change them: publish them, hand them
  to an auditor, store them in another system.
- `check_checkpoint` proves the current log **extends** a checkpoint: it still has the
  checkpoint's rows, with the same hashes (same root, same head). Together with the chain
  recomputed by `DecisionLog.verify`, an edit of any of those rows, even with every later
  hash rewritten, and a truncation below the checkpoint's size are both detected.
- `inclusion_proof` gives, for one decision, its row and the log2(size) hashes leading from
  its row hash to the root of a checkpoint; `check_inclusion` verifies it from the proof and
  the checkpoint alone, without the database.

Example:
    >>> key = generate_key(Path("checkpoint.pem"))
    >>> checkpoint = make_checkpoint(store, key)
    >>> check_checkpoint(store, checkpoint, public_key=checkpoint.public_key).ok
    True
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import platformdirs
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from magistrate.errors import ConfigError, InputError, NotFound
from magistrate.store.records import GENESIS, row_hash

SCHEMA: Final = "magistrate.checkpoint/1"
KEY_ENV = "MAGISTRATE_CHECKPOINT_KEY"


# -- the Merkle tree (RFC 9162, section 2.1) --------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The tree hash of `leaves` (their leaf hashes already taken).

    Built level by level, an odd last node moving up unchanged: the same tree as the RFC's
    split at the largest power of two below the size.
    """
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = list(leaves)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def inclusion_path(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """The audit path of leaf `index` in the tree of `leaves` (RFC 9162 2.1.3.1)."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf {index} is not in a tree of {len(leaves)}")
    path: list[bytes] = []
    lo, hi = 0, len(leaves)
    siblings = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            siblings.append((lo + k, hi))
            hi = lo + k
        else:
            siblings.append((lo, lo + k))
            lo = lo + k
    for start, end in reversed(siblings):  # the path runs from the leaf up
        path.append(merkle_root(leaves[start:end]))
    return path


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """Whether `path` leads from `leaf` (a leaf hash) at `index` to `root` in a tree of
    `size` leaves (RFC 9162 2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def _split(n: int) -> int:
    """The largest power of two below n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


# -- keys ---------------------------------------------------------------------------------------


def default_key_path() -> Path:
    """`$MAGISTRATE_CHECKPOINT_KEY`, else `checkpoint-ed25519.pem` in the user config folder."""
    if path := os.environ.get(KEY_ENV):
        return Path(path)
    return platformdirs.user_config_path("magistrate", appauthor=False) / "checkpoint-ed25519.pem"


def generate_key(path: Path, *, force: bool = False) -> Any:
    """A new Ed25519 signing key, written to `path` (PEM, readable by its owner only).

    Raises:
        ConfigError: `path` exists and `force` is off.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if path.exists() and not force:
        raise ConfigError(
            f"{path} exists; a new key would make its earlier checkpoints unverifiable with "
            "the new public key. Keep it, or pass --force to replace it."
        )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def load_key(path: Path) -> Any:
    """The Ed25519 signing key at `path`.

    Raises:
        ConfigError: No key there, or not an Ed25519 private key in PEM.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(
            f"No checkpoint key at {path}. Create one with `magistrate logs keygen` (keep it "
            "outside the database, readable only by the job that writes checkpoints)."
        ) from None
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key.")
    return key


def public_key_text(key: Any) -> str:
    """A signing key's public half, as base64 of its 32 raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def key_id(public_key: str) -> str:
    """A short name for a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(base64.b64decode(public_key)).hexdigest()[:16]


# -- checkpoints --------------------------------------------------------------------------------


class Checkpoint(BaseModel):
    """The log's size, tree root and last row hash at one moment, signed."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
    schema_: Literal["magistrate.checkpoint/1"] = Field(default=SCHEMA, alias="schema")
    size: int = Field(ge=0)
    root: str = Field(pattern=r"^[0-9a-f]{64}$")
    head: str = Field(pattern=r"^[0-9a-f]{64}$")
    """The hash of row `size` (`GENESIS` for an empty log)."""
    created_at: str
    key_id: str
    public_key: str
    signature: str

    def signed_text(self) -> bytes:
        """What the signature covers: every field but the key and the signature."""
        return (
            f"{SCHEMA}\nsize {self.size}\nroot {self.root}\nhead {self.head}\n"
            f"time {self.created_at}\n"
        ).encode()

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"


def read_checkpoint(text: str | bytes, *, where: str = "the checkpoint") -> Checkpoint:
    """A checkpoint from its JSON.

    Raises:
        InputError: Not a checkpoint this version can read.
    """
    try:
        return Checkpoint.model_validate_json(text)
    except ValidationError as exc:
        raise InputError(
            f"{where} is not a Magistrate checkpoint ({exc.error_count()} problems); give "
            "the JSON that `magistrate logs checkpoint` wrote."
        ) from None


def make_checkpoint(store: Any, key: Any) -> Checkpoint:
    """Sign the log as it is now (`store`: a `Store`)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    assert isinstance(key, Ed25519PrivateKey)
    hashes = row_hashes(store)
    public = public_key_text(key)
    unsigned = Checkpoint(
        size=len(hashes),
        root=merkle_root([leaf_hash(h) for h in hashes]).hex(),
        head=hashes[-1].hex() if hashes else GENESIS,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        key_id=key_id(public),
        public_key=public,
        signature="",
    )
    signature = base64.b64encode(key.sign(unsigned.signed_text())).decode("ascii")
    return unsigned.model_copy(update={"signature": signature})


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    problem: str | None = None
    size: int = 0
    """The log's size now."""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problem": self.problem, "size": self.size}


def check_signature(checkpoint: Checkpoint, public_key: str | None = None) -> str | None:
    """Why the checkpoint's signature does not hold, or None. With `public_key` (base64)
    the checkpoint must be signed by that key; without it, by the key it carries (which only
    shows it was not altered since: pin the key to know who signed it)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    expected = public_key or checkpoint.public_key
    if public_key is not None and public_key != checkpoint.public_key:
        return (
            f"the checkpoint was signed by key {checkpoint.key_id}, not by the pinned key "
            f"{key_id(public_key)}"
        )
    try:
        verifier = Ed25519PublicKey.from_public_bytes(base64.b64decode(expected))
        verifier.verify(base64.b64decode(checkpoint.signature), checkpoint.signed_text())
    except (InvalidSignature, ValueError):
        return "the checkpoint's signature does not match its contents"
    return None


def check_checkpoint(
    store: Any, checkpoint: Checkpoint, *, public_key: str | None = None
) -> CheckResult:
    """Whether the current log extends `checkpoint`: the signature holds, and the log still
    has the checkpoint's rows with the same hashes. Run `DecisionLog.verify` as well: it
    recomputes each row's hash from its contents, which this check takes as stored."""
    problem = check_signature(checkpoint, public_key)
    if problem is not None:
        return CheckResult(False, problem)
    hashes = row_hashes(store)
    size = checkpoint.size
    if len(hashes) < size:
        return CheckResult(
            False,
            f"the log has {len(hashes)} rows, fewer than the {size} the checkpoint of "
            f"{checkpoint.created_at} signed: rows were removed from its end",
            len(hashes),
        )
    root = merkle_root([leaf_hash(h) for h in hashes[:size]]).hex()
    head = hashes[size - 1].hex() if size else GENESIS
    if root != checkpoint.root or head != checkpoint.head:
        return CheckResult(
            False,
            f"the log's first {size} rows are not those the checkpoint of "
            f"{checkpoint.created_at} signed: some were changed or replaced",
            len(hashes),
        )
    return CheckResult(True, None, len(hashes))


def inclusion_proof(store: Any, decision_id: str, *, size: int | None = None) -> dict[str, Any]:
    """A proof that a decision is in the log's first `size` rows (default: all of them):
    its row as stored and the audit path to the tree root of that size.

    Raises:
        NotFound: No decision with that id.
        InputError: The decision is not among the first `size` rows, or `size` exceeds
            the log.
    """
    d = store.tables["decisions"]
    with store.db.read() as conn:
        found = conn.execute(sa.select(d).where(d.c.id == decision_id)).first()
    if found is None:
        raise NotFound(f"No decision {decision_id!r} in the log (give its full id).")
    row = dict(found._mapping)
    hashes = row_hashes(store)
    size = len(hashes) if size is None else size
    if size > len(hashes):
        raise InputError(f"The log has {len(hashes)} rows; it cannot prove a size of {size}.")
    index = int(row["seq"]) - 1
    if index >= size:
        raise InputError(
            f"Decision {decision_id} is row {index + 1}, after the {size} rows asked for; "
            "prove it against a later checkpoint."
        )
    leaves = [leaf_hash(h) for h in hashes[:size]]
    return {
        "schema": "magistrate.inclusion/1",
        "size": size,
        "index": index,
        "root": merkle_root(leaves).hex(),
        "path": [p.hex() for p in inclusion_path(index, leaves)],
        "row": row,
    }


def check_inclusion(proof: dict[str, Any], checkpoint: Checkpoint) -> str | None:
    """Why `proof` does not show its decision in the log `checkpoint` signed, or None.

    The row's hash is recomputed from its contents, so an edited row fails even where its
    stored hash was left alone. The checkpoint's signature is not checked here
    (`check_signature`).
    """
    try:
        row = dict(proof["row"])
        index, size = int(proof["index"]), int(proof["size"])
        path = [bytes.fromhex(p) for p in proof["path"]]
    except (KeyError, TypeError, ValueError):
        return "the proof is malformed (give the JSON that `magistrate logs prove` wrote)"
    if size != checkpoint.size:
        return f"the proof is for a log of {size} rows; the checkpoint signed {checkpoint.size}"
    stated = row.get("row_hash")
    if row_hash(row) != stated:
        return "the decision's row does not match its hash: it was changed"
    leaf = leaf_hash(bytes.fromhex(str(stated)))
    if not verify_inclusion(leaf, index, size, path, bytes.fromhex(checkpoint.root)):
        return "the path does not lead to the checkpoint's root: the row is not in that log"
    return None


def row_hashes(store: Any) -> list[bytes]:
    """Every row's hash, in log order."""
    return [h for chunk in _hash_pages(store) for h in chunk]


def _hash_pages(store: Any, page: int = 50_000) -> Iterator[list[bytes]]:
    d = store.tables["decisions"]
    last = 0
    while True:
        query = sa.select(d.c.seq, d.c.row_hash).where(d.c.seq > last).order_by(d.c.seq).limit(page)
        with store.db.read() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return
        yield [bytes.fromhex(r.row_hash) for r in rows]
        last = rows[-1].seq


__all__ = [
    "CheckResult",
    "Checkpoint",
    "check_checkpoint",
    "check_inclusion",
    "check_signature",
    "default_key_path",
    "generate_key",
    "inclusion_proof",
    "load_key",
    "make_checkpoint",
    "merkle_root",
    "read_checkpoint",
    "verify_inclusion",
]
