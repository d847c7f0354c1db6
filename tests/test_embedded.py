"""Model assembly and hash checks, on small fake chunk packages (the real model is in
test_llamacpp.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from magistrate.embedded import (
    QWEN_CODER_1_5B,
    EmbeddedModel,
    ensure_embedded_model,
    model_path,
    verify_model_file,
)
from magistrate.errors import MissingDependency, ModelError

CHUNKS = [b"GGUF" + b"a" * 96, b"b" * 100, b"c" * 50]


def fake_model(
    tmp_path: Path, monkeypatch, chunks=CHUNKS, sha=None, name="fakepart"
) -> EmbeddedModel:
    pkgs = tmp_path / "pkgs"
    for n, data in enumerate(chunks, 1):
        pkg = pkgs / f"{name}{n}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / "part.bin").write_bytes(data)
        (pkg / "__init__.py").write_text(
            "import os\ndef get_part_path():\n"
            "    return os.path.join(os.path.dirname(__file__), 'data', 'part.bin')\n"
        )
    monkeypatch.syspath_prepend(str(pkgs))
    monkeypatch.setenv("MAGISTRATE_CACHE_DIR", str(tmp_path / "cache"))
    whole = b"".join(chunks)
    return EmbeddedModel(
        name="fake",
        filename="fake.gguf",
        part_module=name + "{n}",
        parts=len(chunks),
        size=len(whole),
        sha256=sha or hashlib.sha256(whole).hexdigest(),
        package="x",
    )


def test_assembles_once_and_verifies(tmp_path, monkeypatch):
    model = fake_model(tmp_path, monkeypatch)
    path = ensure_embedded_model(model)
    assert path == model_path(model) and path.read_bytes() == b"".join(CHUNKS)
    mtime = path.stat().st_mtime_ns
    assert ensure_embedded_model(model) == path  # second call does not rebuild
    assert path.stat().st_mtime_ns == mtime


def test_wrong_hash_leaves_nothing_behind(tmp_path, monkeypatch):
    model = fake_model(tmp_path, monkeypatch, sha="0" * 64, name="badhash")
    with pytest.raises(ModelError, match="expected"):
        ensure_embedded_model(model)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_modified_file_is_refused(tmp_path, monkeypatch):
    model = fake_model(tmp_path, monkeypatch, name="tamper")
    path = ensure_embedded_model(model)
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"Refusing to load.*install --force"):
        ensure_embedded_model(model)
    ensure_embedded_model(model, force=True)  # rebuild repairs it
    verify_model_file(path, model, full=True)


def test_same_size_same_mtime_tamper_is_caught_by_full_verify(tmp_path, monkeypatch):
    model = fake_model(tmp_path, monkeypatch, name="sneaky")
    path = ensure_embedded_model(model)
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ModelError):
        verify_model_file(path, model, full=True)


def test_missing_chunk_package_names_the_install(tmp_path, monkeypatch):
    model = fake_model(tmp_path, monkeypatch, name="missing")
    model = EmbeddedModel(**{**model.__dict__, "part_module": "no_such_part{n}"})
    with pytest.raises(MissingDependency, match=r"magistrate\[embedded\]"):
        ensure_embedded_model(model)


def test_wrong_total_size(tmp_path, monkeypatch):
    model = fake_model(tmp_path, monkeypatch, name="short")
    model = EmbeddedModel(**{**model.__dict__, "size": model.size + 1})
    with pytest.raises(ModelError, match="add up to"):
        ensure_embedded_model(model)


def test_real_model_spec_matches_the_issue():
    assert QWEN_CODER_1_5B.parts == 22 and QWEN_CODER_1_5B.size == 1_117_320_768
    assert QWEN_CODER_1_5B.sha256.startswith("cc324af0")
