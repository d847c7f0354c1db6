"""`magistrate models`: the backends, the embedded model and the endpoints available here."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from magistrate.backends import DEFAULT_MODEL, providers
from magistrate.cli.app import app, out_console
from magistrate.config import PRESETS, config_path, load_settings, resolve_endpoint
from magistrate.embedded import model_path


@app.command("models")
def models(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List backend providers (and what to install for missing ones), the embedded model, and
    the OpenAI-compatible endpoints from the presets and the config file."""
    data = _inventory()
    if as_json:
        out_console.out(json.dumps(data, indent=2), highlight=False)
        return
    table = Table(
        "provider",
        "from",
        "status",
        "model strings",
        box=None,
        title="Backends",
        title_justify="left",
    )
    for p in data["providers"]:
        status = "[green]available[/]" if p["available"] else f"[yellow]{escape(p['install'])}[/]"
        table.add_row(p["name"], escape(p["origin"]), status, escape(p["usage"]))
    out_console.print(table)
    emb = data["embedded"]
    state = "installed" if emb["installed"] else "not installed: run `magistrate model install`"
    out_console.print(f"\n[bold]Embedded model[/] ({DEFAULT_MODEL}): {state}\n  {emb['path']}")
    table = Table(
        "endpoint",
        "base URL",
        "API key",
        "logprobs",
        "source",
        box=None,
        title=f"\nEndpoints (--endpoint NAME; config file {data['config']['path']}"
        f"{'' if data['config']['exists'] else ', not present'})",
        title_justify="left",
    )
    for e in data["endpoints"]:
        key = (
            "-"
            if not e["api_key_env"]
            else (
                f"${e['api_key_env']} "
                + ("[green]set[/]" if e["api_key_set"] else "[red]not set[/]")
            )
        )
        table.add_row(
            e["name"], escape(e["base_url"]), key, "yes" if e["logprobs"] else "no", e["source"]
        )
    out_console.print(table)


_USAGE = {
    "llamacpp": "llamacpp/embedded, llamacpp/PATH.gguf (gpt-oss GGUFs use harmony)",
    "openai": "openai/MODEL with --base-url URL or --endpoint NAME",
    "vllm": "vllm/MODEL-DIR (GPU)",
    "mock": "tests only",
}


def _inventory() -> dict[str, Any]:
    found = []
    for p in providers().values():
        found.append(
            {
                "name": p.name,
                "origin": p.origin,
                "target": p.target,
                "available": p.missing is None,
                "install": p.missing or "",
                "usage": _USAGE.get(p.name, f"{p.name}/MODEL"),
            }
        )
    path = model_path()
    settings = load_settings()
    endpoints = []
    names = [(n, "preset") for n in PRESETS] + [(n, "config") for n in settings.endpoints]
    for name, source in names:
        if source == "preset" and name in settings.endpoints:
            continue
        e = resolve_endpoint(name)
        endpoints.append(
            {
                "name": name,
                "source": source,
                "base_url": e.base_url,
                "api_key_env": e.api_key_env,
                "api_key_set": bool(e.api_key_env and os.environ.get(e.api_key_env)),
                "logprobs": e.logprobs,
                "max_concurrency": e.max_concurrency,
            }
        )
    return {
        "providers": found,
        "embedded": {"path": str(path), "installed": path.is_file()},
        "config": {"path": str(config_path()), "exists": config_path().is_file()},
        "endpoints": endpoints,
    }
