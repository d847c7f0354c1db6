"""The `magistrate` command line: thin commands over the Python API.

Exit codes (every command):
    0    success (for `classify`: every item got a verdict)
    1    user error: bad input, policy, model or flag; the message says how to fix it
    2    usage error: unknown option or missing argument
    3    `classify`, `batch`: at least one item got no verdict (unparseable answer, backend
         failure, or for `batch` an input row that could not be read)
    4    `logs verify`: the log does not match its hashes (the message names the first bad row)
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

# Each command module adds itself to `app` when imported.
from magistrate.cli import batch, classify, eval, fit, logs, model, models, policy, safety, serve
from magistrate.cli.app import (
    EXIT_INTERRUPTED,
    EXIT_NO_VERDICT,
    EXIT_USER_ERROR,
    app,
    err_console,
)
from magistrate.errors import MagistrateError

COMMANDS = (batch, classify, eval, fit, logs, model, models, policy, safety, serve)
"""The command modules, registered on `app` by importing them."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with the documented code."""
    try:
        app(args=argv, prog_name="magistrate")  # exits with the command's code
    except KeyboardInterrupt:
        err_console.print("Interrupted.")
        sys.exit(EXIT_INTERRUPTED)
    except MagistrateError as exc:
        err_console.print(f"[bold red]Error:[/] {escape(str(exc))}")
        sys.exit(EXIT_USER_ERROR)


__all__ = ["COMMANDS", "EXIT_NO_VERDICT", "EXIT_USER_ERROR", "app", "main", "typer"]
