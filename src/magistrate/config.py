"""Settings from the config file, and the named endpoints of OpenAI-compatible servers.

The file is TOML at `$MAGISTRATE_CONFIG`, else `config.toml` in the user config directory
(`magistrate models` prints the path). Everything in it is optional:

    [endpoints.gpu-box]            # use with --endpoint gpu-box
    preset = "vllm"                # start from a preset's defaults (below)
    base_url = "http://10.0.0.5:8000/v1"
    api_key_env = "GPU_BOX_KEY"    # the key is read from this variable, never from the file
    max_concurrency = 32
    timeout_s = 120

Presets (`--endpoint vllm` works without a config file):

    vllm       http://127.0.0.1:8000/v1    logprobs, reasoning in `reasoning`/`reasoning_content`
    ollama     http://127.0.0.1:11434/v1   reasoning in `reasoning`/`thinking`; sampling pinned
    lmstudio   http://127.0.0.1:1234/v1    defaults to effort low, temperature 0.8: pinned here
    llamacpp   http://127.0.0.1:8080/v1    llama.cpp's server or `python -m llama_cpp.server`
    groq       https://api.groq.com/openai/v1   key $GROQ_API_KEY; no logprobs
    openrouter https://openrouter.ai/api/v1     key $OPENROUTER_API_KEY
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from magistrate.errors import ConfigError

CONFIG_ENV = "MAGISTRATE_CONFIG"


class Endpoint(BaseModel):
    """An OpenAI-compatible server and how to talk to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    base_url: str
    api_key_env: str | None = None
    """Environment variable holding the API key; None for servers that need none."""
    max_concurrency: int = Field(default=8, ge=1, le=1024)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=20)
    logprobs: bool = True
    """Ask for token logprobs (score mode and label scores); off for servers without them."""
    reasoning_effort: bool = True
    """Send `reasoning_effort`; off for servers that reject the parameter."""
    native_reasoning: bool | None = None
    """The model reasons on its own channel; None = guess from the model name (gpt-oss)."""
    headers: dict[str, str] = Field(default_factory=dict)


PRESETS: dict[str, dict[str, Any]] = {
    "vllm": {"base_url": "http://127.0.0.1:8000/v1", "max_concurrency": 64},
    "ollama": {"base_url": "http://127.0.0.1:11434/v1", "max_concurrency": 4},
    "lmstudio": {"base_url": "http://127.0.0.1:1234/v1", "max_concurrency": 4},
    "llamacpp": {"base_url": "http://127.0.0.1:8080/v1", "max_concurrency": 4},
    "groq": {
        "base_url": "https://api.groq.com/openai/v1",
        "api_key_env": "GROQ_API_KEY",
        "logprobs": False,
        "max_concurrency": 16,
    },
    "openrouter": {
        "base_url": "https://openrouter.ai/api/v1",
        "api_key_env": "OPENROUTER_API_KEY",
        "logprobs": False,
        "max_concurrency": 16,
    },
}


class _EndpointEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    max_concurrency: int | None = None
    timeout_s: float | None = None
    max_retries: int | None = None
    logprobs: bool | None = None
    reasoning_effort: bool | None = None
    native_reasoning: bool | None = None
    headers: dict[str, str] | None = None


class Settings(BaseModel):
    """The config file's contents."""

    model_config = ConfigDict(extra="forbid")

    endpoints: dict[str, _EndpointEntry] = Field(default_factory=dict)


def config_path() -> Path:
    """The config file's path (it need not exist)."""
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser()
    return platformdirs.user_config_path("magistrate", appauthor=False) / "config.toml"


def load_settings(path: Path | None = None) -> Settings:
    """Read the config file; a missing file means defaults.

    Raises:
        ConfigError: The file is not valid TOML or has unknown or mistyped keys.
    """
    path = path or config_path()
    if not path.is_file():
        return Settings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file {path} is not valid TOML: {exc}") from None
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"Config file {path} has errors: {problems}") from None


def resolve_endpoint(name: str | None = None, base_url: str | None = None) -> Endpoint:
    """The endpoint to use: `base_url` if given, else a named endpoint or preset.

    Order: an explicit `base_url` (flag, or `$MAGISTRATE_BASE_URL`), then `name` (flag, or
    `$MAGISTRATE_ENDPOINT`) looked up in the config file and then among the presets, then
    `$OPENAI_BASE_URL`, then the OpenAI API itself.

    Raises:
        ConfigError: An unknown endpoint name, or a config entry without a base URL.
    """
    base_url = base_url or os.environ.get("MAGISTRATE_BASE_URL")
    name = name or os.environ.get("MAGISTRATE_ENDPOINT")
    fields: dict[str, Any] = {}
    if name:
        entries = load_settings().endpoints
        if name in entries:
            entry = entries[name].model_dump(exclude_none=True)
            preset = entry.pop("preset", None)
            if preset is not None and preset not in PRESETS:
                raise ConfigError(
                    f"Endpoint {name!r} uses unknown preset {preset!r}; presets are "
                    f"{', '.join(PRESETS)}."
                )
            fields = {**PRESETS.get(preset or "", {}), **entry}
        elif name in PRESETS:
            fields = dict(PRESETS[name])
        else:
            known = sorted({*PRESETS, *entries})
            raise ConfigError(
                f"Unknown endpoint {name!r}. Use one of {', '.join(known)}, or add "
                f"[endpoints.{name}] to {config_path()}."
            )
        fields["name"] = name
    if base_url:
        fields["base_url"] = base_url
    if "base_url" not in fields:
        env = os.environ.get("OPENAI_BASE_URL")
        fields["base_url"] = env or "https://api.openai.com/v1"
        fields.setdefault("api_key_env", "OPENAI_API_KEY")
        fields.setdefault("name", "openai")
    return Endpoint(**fields)
