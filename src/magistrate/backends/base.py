"""The backend interface: one required async method, `complete`, plus optional hooks.

`Completion`, `CompletionOptions` and `Usage` are core nouns (`magistrate.completion`);
they are re-exported here for backends written against this module.

Example:
    >>> class Echo(Backend):
    ...     provider = "echo"
    ...     async def complete(self, prompt, options):
    ...         return Completion(text="0", model="echo")
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Final

from magistrate.completion import Completion, CompletionOptions, Usage
from magistrate.prompt import Prompt


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond plain chat.

    Attributes:
        prefill: Can continue a raw prompt after an assistant prefill.
        label_scores: Can return `label_probs`.
        constrained: Can decode under a JSON schema or grammar.
        native_reasoning: The model reasons on its own channel (gpt-oss harmony).
        label_slots: Can read several labels in one pass (`Prompt.slots`), so several
            policies in one prompt can be judged in score mode.
        hidden_state: Can return the hidden state at the label position
            (`CompletionOptions.features`) and say what it is bound to
            (`Backend.representation`), so fitted read-outs can be used.
    """

    prefill: bool = False
    label_scores: bool = False
    constrained: bool = False
    native_reasoning: bool = False
    label_slots: bool = False
    hidden_state: bool = False


FINAL_NORM: Final = "final-norm@label"
"""The last layer's normalised output at the label position (what the logits are read from)."""


def layer_kind(index: int) -> str:
    """The kind naming the residual stream after block `index` (0-based) at the label position."""
    return f"layer-{index}@label"


@dataclass(frozen=True)
class Representation:
    """What a hidden state at the label position is a function of, besides the content.

    Attributes:
        model_sha256: SHA-256 of the model file (or another stable identity of the weights).
        layout: SHA-256 of the prompt as the model sees it with a fixed placeholder where the
            content goes: policy text, format block, chat template and prefill.
        size: Length of one state's vector.
        kinds: The states it can return at the label position (`CompletionOptions.features`):
            `final-norm@label`, the last layer's normalised output (what the label logits are
            read from), and `layer-K@label`, the residual stream after block K (0-based).
    """

    model_sha256: str
    layout: str
    size: int
    kinds: tuple[str, ...] = (FINAL_NORM,)

    def describe_kinds(self) -> str:
        """The states it can return, for messages (a long list shortened to its ends)."""
        kinds = self.kinds
        return ", ".join(kinds) if len(kinds) <= 3 else f"{kinds[0]}, ..., {kinds[-1]}"


class Backend(ABC):
    """A way to get completions. Subclasses implement `complete`; the rest has defaults."""

    provider: ClassVar[str] = "base"
    capabilities: Capabilities = Capabilities()
    max_concurrency: int = 1
    """How many `complete` calls the engine may run at once."""

    model: str = "unknown"
    """The resolved model name, recorded with every decision."""

    @abstractmethod
    async def complete(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        """Produce one completion for `prompt`.

        Raises:
            BackendError: The backend failed; the engine records it, never as "safe".
        """

    def representation(self, prompt: Prompt) -> Representation | None:
        """What the hidden state this backend returns for `prompt` depends on: the model
        file and the prompt's layout. A fitted read-out is bound to it. None when the
        backend returns no hidden state (the default)."""
        return None

    async def aclose(self) -> None:
        """Release resources. The default does nothing."""
        return None

    @property
    def name(self) -> str:
        """`provider/model`, as recorded with decisions."""
        return f"{self.provider}/{self.model}"


__all__ = [
    "FINAL_NORM",
    "Backend",
    "Capabilities",
    "Completion",
    "CompletionOptions",
    "Representation",
    "Usage",
    "layer_kind",
]
