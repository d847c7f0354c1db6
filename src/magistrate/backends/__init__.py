"""Backends, chosen by a `provider/model` string and imported only when chosen.

    llamacpp/embedded          the embedded default model (also: `embedded`)
    llamacpp/<path.gguf>       any GGUF file, in process
    openai/<model>             any OpenAI-compatible server (--base-url or --endpoint)
    mock/<name>                the scripted backend, for engine unit tests only

Loaded backends are kept per model string, so repeated `classify()` calls reuse one model.

Example:
    >>> backend = get_backend("llamacpp/embedded")
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Any

from magistrate.backends.base import Backend, Capabilities, Completion, CompletionOptions, Usage
from magistrate.errors import ConfigError

DEFAULT_MODEL = "llamacpp/embedded"

_PROVIDERS: dict[str, str] = {
    "llamacpp": "magistrate.backends.llamacpp:LlamaCppBackend",
    "mock": "magistrate.backends.mock:MockBackend",
    "openai": "magistrate.backends.openai_compat:OpenAIBackend",
}
_loaded: dict[str, Backend] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model string."""

    provider: str
    name: str


def parse_model(model: str) -> ModelSpec:
    """Split `provider/name`; a bare `embedded` means the embedded default.

    Raises:
        ConfigError: Unknown provider or empty name.
    """
    model = model.strip()
    if model in ("", "embedded", "default"):
        return ModelSpec("llamacpp", "embedded")
    provider, sep, name = model.partition("/")
    if not sep or provider not in _PROVIDERS:
        raise ConfigError(
            f"Unknown model {model!r}. Use provider/name with a provider from "
            f"{', '.join(sorted(_PROVIDERS))}, e.g. llamacpp/embedded or "
            "llamacpp/path/to/model.gguf."
        )
    if not name:
        raise ConfigError(f"Model {model!r} names no model after '{provider}/'.")
    return ModelSpec(provider, name)


def create_backend(model: str, **options: Any) -> Backend:
    """Construct a new backend for a model string (no caching)."""
    spec = parse_model(model)
    module_name, _, class_name = _PROVIDERS[spec.provider].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls(spec.name, **options)
    return backend


def backend_for(model: str, *, base_url: str | None = None, endpoint: str | None = None) -> Backend:
    """The backend for a model string plus the CLI's/server's `--base-url` and `--endpoint`.

    Raises:
        ConfigError: A base URL or endpoint given for a provider that does not take one.
    """
    options: dict[str, Any] = {}
    if base_url or endpoint:
        spec = parse_model(model)
        if spec.provider != "openai":
            raise ConfigError(
                f"--base-url and --endpoint are for openai/<model> models, not {model!r}. "
                f"Use --model openai/{spec.name} to reach a server."
            )
        options = {"base_url": base_url, "endpoint": endpoint}
    return get_backend(model, **options)


def get_backend(model: str = DEFAULT_MODEL, **options: Any) -> Backend:
    """The loaded backend for a model string, created on first use and then reused."""
    key = f"{model}|{sorted(options.items())}"
    with _lock:
        if key not in _loaded:
            _loaded[key] = create_backend(model, **options)
        return _loaded[key]


__all__ = [
    "DEFAULT_MODEL",
    "Backend",
    "Capabilities",
    "Completion",
    "CompletionOptions",
    "ModelSpec",
    "Usage",
    "backend_for",
    "create_backend",
    "get_backend",
    "parse_model",
]
