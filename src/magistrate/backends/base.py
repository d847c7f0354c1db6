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
from typing import ClassVar

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
    """

    prefill: bool = False
    label_scores: bool = False
    constrained: bool = False
    native_reasoning: bool = False
    label_slots: bool = False


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

    async def aclose(self) -> None:
        """Release resources. The default does nothing."""
        return None

    @property
    def name(self) -> str:
        """`provider/model`, as recorded with decisions."""
        return f"{self.provider}/{self.model}"


__all__ = ["Backend", "Capabilities", "Completion", "CompletionOptions", "Usage"]
