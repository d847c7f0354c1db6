"""Which read-outs a judge uses: `--readout auto|none|ID|FILE`.

- `auto` (the default): for each policy, the newest stored read-out bound to exactly this
  policy text, model file and prompt layout, in score mode with one policy per prompt on a
  backend with hidden states; none otherwise (a judge in reason mode, or on a remote model,
  simply has no read-out).
- `none`: zero-shot scores only.
- an id: that stored read-out; a path: that file. Either is checked against the judge and
  refused when it was fitted on another policy text, model or layout.

Example:
    >>> readouts = choose_readouts(["auto"], policies, backend, store, mode="score")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from magistrate.errors import ConfigError
from magistrate.item import Item
from magistrate.policy import Policy
from magistrate.prompt import Mode, build_prompt
from magistrate.readout.artefact import ReadOut

if TYPE_CHECKING:
    from magistrate.backends.base import Backend
    from magistrate.store import Store

AUTO = "auto"
NONE = "none"


def choose_readouts(
    choices: Sequence[str] | None,
    policies: Sequence[Policy],
    backend: Backend,
    store: Store | None,
    *,
    mode: Mode | str,
    combined: bool = False,
) -> list[ReadOut]:
    """The read-outs for a judge of `policies` (see the module docstring).

    Raises:
        ConfigError: An explicit read-out in a mode or setting that cannot use one, or a
            file that cannot be read.
        NotFound: No stored read-out has the id given.
    """
    wanted = [c.strip() for c in (choices or [AUTO]) if c.strip()] or [AUTO]
    if wanted == [NONE]:
        return []
    if wanted == [AUTO]:
        if Mode(mode) is not Mode.SCORE or combined or store is None:
            return []
        return _matching(policies, backend, store)
    if AUTO in wanted or NONE in wanted:
        raise ConfigError("--readout takes `auto`, `none`, or read-out ids and files; not a mix.")
    if Mode(mode) is not Mode.SCORE or combined:
        raise ConfigError(
            "A read-out judges one policy's prompt in score mode: use --mode score with one "
            "policy per prompt (eval and batch: --strategy separate), or --readout none."
        )
    found = []
    for choice in wanted:
        if _looks_like_path(choice):
            found.append(ReadOut.load(choice))
        elif store is None:
            raise ConfigError(f"Read-out {choice!r} is looked up in the decision log; open one.")
        else:
            found.append(store.readouts.get(choice))
    return found


def _matching(policies: Sequence[Policy], backend: Backend, store: Store) -> list[ReadOut]:
    if not backend.capabilities.hidden_state:
        return []
    probe = Item.of("representation probe")
    native = backend.capabilities.native_reasoning
    found = []
    for policy in policies:
        if not store.readouts.has(policy.hash):
            continue  # (binding a GGUF file means hashing it: only when a read-out could fit)
        rep = backend.representation(build_prompt(policy, probe, native_reasoning=native))
        if rep is None:
            continue
        readout = store.readouts.latest(policy.hash, rep.model_sha256, rep.layout)
        if readout is not None:
            found.append(readout)
    return found


def _looks_like_path(text: str) -> bool:
    return text.endswith(".json") or "/" in text or "\\" in text or Path(text).exists()


__all__ = ["AUTO", "NONE", "choose_readouts"]
