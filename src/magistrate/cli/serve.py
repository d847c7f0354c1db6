"""`magistrate serve`, `magistrate keys` and `magistrate openapi`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from magistrate.backends import DEFAULT_MODEL
from magistrate.cli.app import app, err_console, out_console
from magistrate.cli.options import (
    BaseUrlOption,
    DatabaseOption,
    EndpointOption,
    ModelOption,
    ReadoutOption,
)
from magistrate.decision import OnAbstain
from magistrate.errors import ConfigError, MissingDependency
from magistrate.prompt import Effort, Mode
from magistrate.store import Store
from magistrate.store.keys import SCOPES


def _server() -> Any:
    try:
        import magistrate.server as server
    except ImportError as exc:
        raise MissingDependency(
            f"The HTTP server needs FastAPI and uvicorn ({exc.name} is missing): "
            "pip install 'magistrate[server]'"
        ) from None
    return server


HostOption = Annotated[str, typer.Option(envvar="MAGISTRATE_HOST", help="Address to bind.")]
PortOption = Annotated[int, typer.Option(envvar="MAGISTRATE_PORT", min=0, max=65535)]
PoliciesDirOption = Annotated[
    Path | None,
    typer.Option(
        "--policies",
        envvar="MAGISTRATE_POLICIES",
        help="Folder of .md policies, activated at start (the starter pack is always "
        "available under its own ids).",
    ),
]
WorkersOption = Annotated[int, typer.Option(min=1, help="Processes (each loads its own model).")]
RequireKeysOption = Annotated[
    bool | None,
    typer.Option(
        "--require-keys/--no-require-keys",
        help="Require API keys (default: yes unless bound to loopback).",
        show_default=False,
    ),
]
QueueOption = Annotated[
    int, typer.Option(min=0, help="Judgements that may wait before requests get 429.")
]
RateOption = Annotated[
    int, typer.Option(min=0, help="Requests per minute per API key (0: no limit).")
]
CacheTtlOption = Annotated[
    float, typer.Option(min=0, help="Seconds identical judgements are served from memory.")
]
RedactOption = Annotated[
    bool, typer.Option("--redact", help="Log only the content's hash, not the content.")
]
CategoriesOption = Annotated[
    str | None,
    typer.Option(
        help="Categories of /v1/moderations, comma-separated, each `name` or "
        "`name=policy-id` (default: the 8 OpenAI categories, starter-pack policies).",
    ),
]
CorsOption = Annotated[list[str] | None, typer.Option(help="Allow browser calls from this origin.")]
BatchDirOption = Annotated[
    Path | None,
    typer.Option(
        envvar="MAGISTRATE_BATCH_DIR",
        help="Where batch jobs keep uploads, outputs and manifests (default: batches/ in the "
        "user data folder).",
        show_default=False,
    ),
]
BatchInputRootOption = Annotated[
    Path | None,
    typer.Option(
        envvar="MAGISTRATE_BATCH_INPUT_ROOT",
        help="Let POST /v1/batches name server-side inputs under this folder (input_path).",
        show_default=False,
    ),
]


@app.command()
def serve(
    host: HostOption = "127.0.0.1",
    port: PortOption = 8000,
    model: ModelOption = DEFAULT_MODEL,
    base_url: BaseUrlOption = None,
    endpoint: EndpointOption = None,
    policies: PoliciesDirOption = None,
    database: DatabaseOption = None,
    workers: WorkersOption = 1,
    require_keys: RequireKeysOption = None,
    mode: Annotated[Mode, typer.Option(help="Default mode for /v1/classify.")] = Mode.SCORE,
    effort: Annotated[Effort, typer.Option()] = Effort.MEDIUM,
    on_abstain: Annotated[
        OnAbstain, typer.Option(help="What an abstention routes as (`flagged`).")
    ] = OnAbstain.ERROR,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per judgement.")] = 120.0,
    max_body_bytes: Annotated[int, typer.Option(min=1024)] = 1_000_000,
    max_items: Annotated[int, typer.Option(min=1, help="Items per request.")] = 64,
    queue: QueueOption = 64,
    rate_per_minute: RateOption = 600,
    cache_ttl: CacheTtlOption = 300.0,
    redact: RedactOption = False,
    allow_inline_policies: Annotated[bool, typer.Option()] = False,
    moderation_categories: CategoriesOption = None,
    cors_origin: CorsOption = None,
    checkpoint_file: Annotated[
        Path | None,
        typer.Option(
            help="Publish this signed checkpoint at GET /v1/checkpoint (`magistrate logs "
            "checkpoint -o FILE` writes it; re-read at every request).",
            show_default=False,
        ),
    ] = None,
    batch_dir: BatchDirOption = None,
    batch_input_root: BatchInputRootOption = None,
    batch_max_bytes: Annotated[
        int, typer.Option(min=1024, help="Largest batch upload, in bytes.")
    ] = 1 << 30,
    batch_workers: Annotated[
        int, typer.Option(min=1, help="Batch jobs run at once (per process).")
    ] = 1,
    batch_concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Backend calls in flight per batch job (default: what the backend allows).",
            show_default=False,
        ),
    ] = None,
    readout: ReadoutOption = None,
) -> None:
    """Serve /v1/classify, /v1/moderations (OpenAI's shape), batch jobs, policies and decisions
    over HTTP."""
    server = _server()
    import uvicorn

    fields: dict[str, Any] = {
        "host": host,
        "port": port,
        "model": model,
        "base_url": base_url,
        "endpoint": endpoint,
        "policies_dir": str(policies) if policies else None,
        "database": database,
        "require_keys": require_keys,
        "log_content": not redact,
        "readouts": readout or ["auto"],
        "mode": mode,
        "effort": effort,
        "on_abstain": on_abstain,
        "timeout_s": timeout,
        "max_body_bytes": max_body_bytes,
        "max_items": max_items,
        "queue": queue,
        "rate_per_minute": rate_per_minute,
        "cache_ttl_s": cache_ttl,
        "allow_inline_policies": allow_inline_policies,
        "cors_origins": cors_origin or [],
        "checkpoint_file": str(checkpoint_file) if checkpoint_file else None,
        "batch_dir": str(batch_dir) if batch_dir else None,
        "batch_input_root": str(batch_input_root) if batch_input_root else None,
        "batch_max_bytes": batch_max_bytes,
        "batch_workers": batch_workers,
        "batch_concurrency": batch_concurrency,
    }
    if moderation_categories:
        fields["moderation_categories"] = parse_categories(moderation_categories)
    settings = server.ServerSettings(**fields)
    _check_keys(settings, require_keys, server.schemas.is_loopback(host))
    keys = "required" if settings.keys_required else "not required"
    err_console.print(
        f"Magistrate {escape(model)} on http://{escape(host)}:{port} (API keys {keys}; "
        f"docs at /docs)"
    )
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "timeout_graceful_shutdown": int(settings.graceful_timeout_s),
        "log_level": "info",
        "access_log": True,
    }
    if workers > 1:
        os.environ["MAGISTRATE_SERVER_SETTINGS"] = settings.model_dump_json()
        uvicorn.run("magistrate.server.app:app_from_env", factory=True, workers=workers, **common)
    else:
        uvicorn.run(server.create_app(settings), **common)


def _check_keys(settings: Any, require_keys: bool | None, loopback: bool) -> None:
    """Refuse to serve off loopback with keys required and none created; warn when keys
    were turned off there."""
    if settings.keys_required:
        with Store(settings.database) as store:
            if not store.api_keys():
                raise ConfigError(
                    f"Serving on {settings.host} needs API keys and the log has none. Create "
                    "one with `magistrate keys create NAME`, or bind to 127.0.0.1."
                )
    elif require_keys is False and not loopback:
        err_console.print(
            f"[yellow]Warning:[/] serving on {escape(settings.host)} without API keys: anyone "
            "who can reach this port can classify and manage policies."
        )


def parse_categories(spec: str) -> dict[str, str]:
    """`hate,violence=my-violence` -> {"hate": "hate", "violence": "my-violence"}."""
    out: dict[str, str] = {}
    for part in spec.split(","):
        name, _, policy = part.strip().partition("=")
        if not name:
            continue
        out[name] = policy.strip() or name.replace("/", "-")
    if not out:
        raise ConfigError("--moderation-categories names no category.")
    return out


@app.command()
def openapi(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Print the service's OpenAPI document (committed as docs/openapi.json)."""
    text = json.dumps(_server().create_app().openapi(), indent=2, sort_keys=True) + "\n"
    if output is None:
        out_console.out(text, end="", highlight=False)
    else:
        output.write_text(text, "utf-8")
        err_console.print(f"Wrote {escape(str(output))}")


keys_app = typer.Typer(help="API keys for `magistrate serve`.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key (who or what uses it).")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            help="classify (default), batch (batch jobs) or admin (everything: policies, "
            "decisions, keys, every batch job); repeatable."
        ),
    ] = None,
    rate_per_minute: Annotated[
        int | None, typer.Option(min=1, help="This key's own request rate.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    database: DatabaseOption = None,
) -> None:
    """Create a key; its secret is printed once and only its hash is stored."""
    scopes = scope or ["classify"]
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ConfigError(f"Unknown scope {bad[0]!r}; use one of {', '.join(SCOPES)}.")
    with Store(database) as store:
        key, secret = store.create_api_key(name, scopes, rate_per_minute=rate_per_minute)
    if as_json:
        out_console.out(json.dumps({**key.to_dict(), "secret": secret}), highlight=False)
        return
    out_console.out(secret, highlight=False)
    err_console.print(
        f"Created key {escape(name)} ({', '.join(key.scopes)}). Store the secret now; it is "
        "not shown again. Send it as `Authorization: Bearer <secret>`."
    )


@keys_app.command("list")
def keys_list(
    include_revoked: Annotated[bool, typer.Option("--all", help="Revoked keys too.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    database: DatabaseOption = None,
) -> None:
    """The keys (never their secrets)."""
    with Store(database) as store:
        keys = store.api_keys(include_revoked=include_revoked)
    if as_json:
        for key in keys:
            out_console.out(json.dumps(key.to_dict()), highlight=False)
        return
    table = Table("name", "prefix", "scopes", "rate/min", "created", "revoked", box=None)
    for key in keys:
        table.add_row(
            escape(key.name),
            key.prefix + "…",
            ", ".join(key.scopes),
            str(key.rate_per_minute or "default"),
            key.created_at[:19],
            (key.revoked_at or "")[:19],
        )
    out_console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The key's name or id.")],
    database: DatabaseOption = None,
) -> None:
    """Revoke a key; a running server refuses it from its next request."""
    with Store(database) as store:
        key = store.revoke_api_key(name)
    err_console.print(f"Revoked {escape(key.name)}.")
