"""The Typer application and the consoles every command shares."""

from __future__ import annotations

import typer
from rich.console import Console

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

# Register the commands (each module adds itself to `app`).
from magistrate.cli import classify as _classify  # noqa: E402,F401
from magistrate.cli import eval as _eval  # noqa: E402,F401
from magistrate.cli import logs as _logs  # noqa: E402,F401
from magistrate.cli import model as _model  # noqa: E402,F401
from magistrate.cli import models as _models  # noqa: E402,F401
from magistrate.cli import policy as _policy  # noqa: E402,F401
from magistrate.cli import serve as _serve  # noqa: E402,F401
