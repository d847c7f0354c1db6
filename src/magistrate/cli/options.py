"""Options that several commands share, declared once so their names and help agree."""

from __future__ import annotations

from typing import Annotated

import typer

from magistrate.store import DATABASE_ENV

DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database",
        "-d",
        envvar=DATABASE_ENV,
        help="Log to use: a SQLite file path or a database URL (default: the user data dir).",
        show_default=False,
    ),
]
ModelOption = Annotated[
    str, typer.Option("--model", "-m", envvar="MAGISTRATE_MODEL", help="provider/model.")
]
BaseUrlOption = Annotated[
    str | None,
    typer.Option(
        envvar="MAGISTRATE_BASE_URL",
        help="For openai/<model>: the server's /v1 URL.",
        show_default=False,
    ),
]
EndpointOption = Annotated[
    str | None,
    typer.Option(
        envvar="MAGISTRATE_ENDPOINT",
        help="For openai/<model>: a preset (vllm, ollama, lmstudio, llamacpp, groq, "
        "openrouter) or an endpoint from the config file.",
        show_default=False,
    ),
]
