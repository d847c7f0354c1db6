"""The Typer application and the consoles every command shares.

Command modules import this module and add themselves to `app`; this module imports none
of them (the package `magistrate.cli` does), so no import circle runs through it.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

EXIT_USER_ERROR = 1
EXIT_NO_VERDICT = 3
EXIT_VERIFY_FAILED = 4
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="magistrate",
    help="Apply written policies to content with reasoning language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out_console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False)


def counting_progress() -> Progress:
    """The progress bar of commands that count items (description, bar, n/total, time
    left), on stderr and gone when done."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
