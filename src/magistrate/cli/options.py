"""Options that several commands share, declared once so their names and help agree."""

from __future__ import annotations

from typing import Annotated

import typer

from magistrate.decision import OnAbstain
from magistrate.engine import Strategy
from magistrate.prompt import Effort, Mode
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
ModeOption = Annotated[
    Mode, typer.Option(envvar="MAGISTRATE_MODE", help="reason (the model writes) or score.")
]
EffortOption = Annotated[Effort, typer.Option(envvar="MAGISTRATE_EFFORT")]
TimeoutOption = Annotated[float | None, typer.Option(min=0.1, help="Seconds allowed per item.")]
CalibrateOption = Annotated[
    bool,
    typer.Option(help="Choose the label by the policy's threshold, not the raw top token."),
]
OnAbstainOption = Annotated[
    OnAbstain,
    typer.Option(
        envvar="MAGISTRATE_ON_ABSTAIN",
        help="What an item without a verdict means: error (exit 3), fail-closed (flag it) "
        "or fail-open (allow it); the abstention and its reason are recorded either way.",
    ),
]
MaxCharsOption = Annotated[int, typer.Option(min=1, help="Size limit for one item, in characters.")]
FallbackOption = Annotated[
    bool, typer.Option(help="Retry with constrained decoding when an answer does not parse.")
]
LogOption = Annotated[
    bool, typer.Option(envvar="MAGISTRATE_LOG", help="Record every decision in the decision log.")
]
LogContentOption = Annotated[
    bool,
    typer.Option(
        "--log-content/--redact",
        envvar="MAGISTRATE_LOG_CONTENT",
        help="Keep the content in the log, or only its SHA-256.",
    ),
]
TextColOption = Annotated[str | None, typer.Option(help="Column with the text (files).")]
IdColOption = Annotated[str | None, typer.Option(help="Column with the item id.")]
MaxErrorsOption = Annotated[
    float | None,
    typer.Option(help="Abort past this many items without a verdict (N, or a fraction < 1)."),
]
CacheOption = Annotated[bool, typer.Option(help="Reuse verdicts already in the decision log.")]
StrategyOption = Annotated[
    Strategy,
    typer.Option(
        help="Several policies: one prompt for all (combined) or one call per policy (separate).",
    ),
]
ReadoutOption = Annotated[
    list[str] | None,
    typer.Option(
        "--readout",
        envvar="MAGISTRATE_READOUT",
        help="Fitted read-outs (`magistrate fit`) in score mode: auto (the newest stored one "
        "bound to each policy's text, the model and the prompt layout), none (zero-shot "
        "scores), or read-out ids or files (repeat for several policies).",
    ),
]
