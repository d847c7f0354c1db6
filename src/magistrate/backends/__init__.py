"""Backends, chosen by a `provider/model` string and imported only when chosen.

    llamacpp/embedded          the embedded default model (also: `embedded`)
    llamacpp/<path.gguf>       any GGUF file, in process
    openai/<model>             any OpenAI-compatible server (--base-url or --endpoint)
    vllm/<hf id or path>       vLLM's engine in process on a GPU (extra `vllm`)
    <plugin>/<model>           a third party's backend, from the `magistrate.backends`
                               entry-point group (`name = "package.module:BackendClass"`)
    mock/<name>                the scripted backend, for engine unit tests only

Loaded backends are kept per model string, so repeated `classify()` calls reuse one model.

Example:
    >>> backend = get_backend("llamacpp/embedded")
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import threading
from dataclasses import dataclass
from typing import Any

from magistrate.backends.base import Backend, Capabilities, Completion, CompletionOptions, Usage
from magistrate.errors import ConfigError, MissingDependency

DEFAULT_MODEL = "llamacpp/embedded"
ENTRY_POINT_GROUP = "magistrate.backends"

_BUILTIN: dict[str, str] = {
    "llamacpp": "magistrate.backends.llamacpp:LlamaCppBackend",
    "mock": "magistrate.backends.mock:MockBackend",
    "openai": "magistrate.backends.openai_compat:OpenAIBackend",
    "vllm": "magistrate.backends.vllm_offline:VLLMBackend",
}
REQUIREMENTS: dict[str, tuple[str, str]] = {
    "llamacpp": ("llama_cpp", "llamacpp"),
    "openai": ("openai", "openai"),
    "vllm": ("vllm", "vllm"),
}
"""provider -> (module it needs, the extra that installs it)."""


@dataclass(frozen=True)
class Provider:
    """A backend provider: built in, or registered by another package's entry point."""

    name: str
    target: str
    """`module:Class`, imported only when the provider is chosen."""
    origin: str
    """`built-in`, or the distribution that registered it."""

    @property
    def missing(self) -> str | None:
        """The install command when the provider's dependency is absent, else None."""
        need = REQUIREMENTS.get(self.name)
        if need is None or importlib.util.find_spec(need[0]) is not None:
            return None
        return f"pip install 'magistrate[{need[1]}]'"


def providers() -> dict[str, Provider]:
    """Every provider: the built-in ones, then entry points (which cannot replace them)."""
    found = {name: Provider(name, target, "built-in") for name, target in _BUILTIN.items()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in found:
            origin = ep.dist.name if ep.dist is not None else "entry point"
            found[ep.name] = Provider(ep.name, ep.value, origin)
    return found


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
    known = providers()
    if not sep or provider not in known:
        raise ConfigError(
            f"Unknown model {model!r}. Use provider/name with a provider from "
            f"{', '.join(sorted(known))}, e.g. llamacpp/embedded, "
            "llamacpp/path/to/model.gguf or openai/gpt-oss-safeguard-20b."
        )
    if not name:
        raise ConfigError(f"Model {model!r} names no model after '{provider}/'.")
    return ModelSpec(provider, name)


def create_backend(model: str, **options: Any) -> Backend:
    """Construct a new backend for a model string (no caching)."""
    spec = parse_model(model)
    provider = providers()[spec.provider]
    if provider.missing:
        raise MissingDependency(f"The {spec.provider} backend is not installed: {provider.missing}")
    module_name, _, class_name = provider.target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"Backend {spec.provider!r} ({provider.target}, from {provider.origin}) cannot be "
            f"loaded: {exc}"
        ) from None
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
    "Provider",
    "Usage",
    "backend_for",
    "create_backend",
    "get_backend",
    "parse_model",
    "providers",
]
