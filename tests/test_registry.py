"""The backend registry (built-ins and entry-point plugins), the config file and endpoints."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from magistrate.backends import backend_for, create_backend, parse_model, providers
from magistrate.config import load_settings, resolve_endpoint
from magistrate.errors import ConfigError, MissingDependency

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = """
from magistrate.backends.base import Backend, Capabilities, Completion

class EchoBackend(Backend):
    provider = "echo"
    capabilities = Capabilities()

    def __init__(self, model, **options):
        self.model = model
        self.options = options

    async def complete(self, prompt, options):
        return Completion(text="0", model=self.model)
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A real installed distribution that registers a backend through an entry point."""
    (tmp_path / "echo_plugin.py").write_text(PLUGIN)
    info = tmp_path / "echo_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[magistrate.backends]\necho = echo_plugin:EchoBackend\n"
        "llamacpp = echo_plugin:EchoBackend\n"  # may not replace a built-in
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_plugin_backend_is_found_and_loaded_only_when_chosen(plugin):
    found = providers()
    assert found["echo"].origin == "echo-plugin" and found["echo"].target.endswith("EchoBackend")
    assert found["llamacpp"].origin == "built-in"
    assert "echo_plugin" not in sys.modules
    backend = create_backend("echo/anything", flavour="x")
    assert backend.name == "echo/anything" and backend.options == {"flavour": "x"}
    assert parse_model("echo/a/b").name == "a/b"


def test_unknown_provider_lists_what_exists():
    with pytest.raises(ConfigError, match="llamacpp, mock, openai, vllm"):
        parse_model("nope/model")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_a_missing_optional_dependency_names_the_install():
    with pytest.raises(MissingDependency, match=r"pip install 'magistrate\[vllm\]'"):
        create_backend("vllm/some-model")


def test_base_url_only_for_openai_models():
    with pytest.raises(ConfigError, match="--base-url and --endpoint are for openai"):
        backend_for("llamacpp/embedded", base_url="http://127.0.0.1:1/v1")


def write_config(tmp_path, monkeypatch, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    monkeypatch.setenv("MAGISTRATE_CONFIG", str(path))
    return path


def test_endpoints_from_presets_config_and_flags(tmp_path, monkeypatch):
    for var in ("MAGISTRATE_BASE_URL", "MAGISTRATE_ENDPOINT", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    write_config(
        tmp_path,
        monkeypatch,
        """
[endpoints.gpu-box]
preset = "vllm"
base_url = "http://10.0.0.5:8000/v1"
api_key_env = "GPU_BOX_KEY"
timeout_s = 30
""",
    )
    box = resolve_endpoint("gpu-box")
    assert (box.base_url, box.api_key_env, box.timeout_s, box.max_concurrency) == (
        "http://10.0.0.5:8000/v1",
        "GPU_BOX_KEY",
        30,
        64,
    )
    assert resolve_endpoint("ollama").base_url == "http://127.0.0.1:11434/v1"
    assert resolve_endpoint("groq").logprobs is False
    flag = resolve_endpoint("ollama", base_url="http://127.0.0.1:9/v1")
    assert flag.base_url == "http://127.0.0.1:9/v1" and flag.name == "ollama"
    monkeypatch.setenv("MAGISTRATE_BASE_URL", "http://127.0.0.1:7/v1")
    assert resolve_endpoint().base_url == "http://127.0.0.1:7/v1"
    monkeypatch.delenv("MAGISTRATE_BASE_URL")
    assert resolve_endpoint().base_url == "https://api.openai.com/v1"
    with pytest.raises(ConfigError, match=r"Unknown endpoint 'nope'.*gpu-box"):
        resolve_endpoint("nope")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[endpoints.x\n", "not valid TOML"),
        ("[endpoints.x]\nbase_url = 'http://h/v1'\ncolour = 1\n", "colour"),
        ("[endpoints.x]\nbase_url = 'http://h/v1'\nmax_concurrency = 'lots'\n", "max_concurrency"),
        ("[servers]\n", "servers"),
    ],
)
def test_bad_config_files_are_explained(tmp_path, monkeypatch, text, needle):
    path = write_config(tmp_path, monkeypatch, text)
    with pytest.raises(ConfigError, match=needle) as info:
        load_settings()
    assert str(path) in str(info.value)


def test_unknown_preset_in_config(tmp_path, monkeypatch):
    write_config(tmp_path, monkeypatch, "[endpoints.x]\npreset = 'tgi'\n")
    with pytest.raises(ConfigError, match="unknown preset 'tgi'"):
        resolve_endpoint("x")


def test_models_command_lists_backends_and_endpoints(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text("[endpoints.lab]\nbase_url = 'http://lab:8000/v1'\napi_key_env = 'LAB_KEY'\n")
    env = {**os.environ, "MAGISTRATE_CONFIG": str(config), "LAB_KEY": "secret-value"}
    result = subprocess.run(
        [sys.executable, "-m", "magistrate", "models", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    by_name = {p["name"]: p for p in data["providers"]}
    assert by_name["openai"]["available"] and by_name["llamacpp"]["available"]
    lab = next(e for e in data["endpoints"] if e["name"] == "lab")
    assert lab["base_url"] == "http://lab:8000/v1" and lab["api_key_set"] is True
    assert "secret-value" not in result.stdout
    assert data["config"]["exists"] is True
