"""In-process llama.cpp backend: any GGUF file, the embedded model by default.

One live `Llama` object serves every prompt. llama-cpp-python keeps the tokens of the last
prompt and reuses their KV state for the longest common prefix of the next one; since the
prompt builder puts the policy first and the content last, each item after the first only
pays for its own tokens. The model state is never reset between items, and no RAM cache is
used (it was measured slower, with 4-6 GB of RSS).

The label score is read from the logits at the first generated position (just after the
prefill) by a logits processor: the probabilities of each candidate label's first token,
normalised over the candidates. In score mode the same processor masks every other token, so
the one generated token is a label.

Example:
    >>> backend = LlamaCppBackend()                   # the embedded model
    >>> backend = LlamaCppBackend("/models/gpt-oss-safeguard-20b.gguf", n_ctx=8192)
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magistrate.backends.base import Backend, Capabilities, Completion, CompletionOptions, Usage
from magistrate.errors import (
    BackendError,
    BackendTimeout,
    ConfigError,
    InputError,
    MissingDependency,
    ModelError,
)
from magistrate.prompt import Prompt

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

GGUF_MAGIC = b"GGUF"
EMBEDDED_NAMES = ("embedded", "default", "")
INSTALL_HINT = (
    'Install it with `make demo`, or by hand: CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON '
    '-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" pip install --no-cache-dir '
    "'magistrate[embedded]' (the default native build can crash on some CPUs)."
)
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def resolve_model_path(name: str | Path | None) -> Path:
    """A GGUF path from a model name: the embedded model for None/`embedded`, else a file.

    Raises:
        ModelError: The path does not exist or is not a GGUF file.
    """
    if name is None or str(name) in EMBEDDED_NAMES:
        from magistrate.embedded import ensure_embedded_model

        return ensure_embedded_model()
    path = Path(name).expanduser()
    if not path.is_file():
        raise ModelError(
            f"Model file {str(path)!r} does not exist. Pass the path of a .gguf file, or "
            "'llamacpp/embedded' for the embedded model."
        )
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(
            f"Model file {str(path)!r} is not a GGUF file (it starts with {magic!r}, not "
            "b'GGUF'). Convert it with llama.cpp's convert_hf_to_gguf.py, or download a .gguf."
        )
    return path


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class LlamaCppBackend(Backend):
    """A GGUF model run in this process by llama.cpp.

    Args:
        model: Path to a .gguf file, or None / "embedded" for the embedded default.
        n_ctx: Context size in tokens (policy + content + answer must fit).
        n_threads: CPU threads; None means every core this process may use (llama-cpp-python's
            own default is half of them, which halves prompt speed on small machines).
        n_batch: Prompt tokens evaluated per batch.
        verbose: Let llama.cpp print its own logs.
    """

    provider = "llamacpp"
    capabilities = Capabilities(prefill=True, label_scores=True, constrained=True)
    max_concurrency = 1

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        verbose: bool = False,
    ) -> None:
        try:
            import llama_cpp
        except ImportError:
            raise MissingDependency(f"llama-cpp-python is not installed. {INSTALL_HINT}") from None
        path = resolve_model_path(model)
        self.path = path
        self.model = path.stem
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads or _usable_cores(),
                n_threads_batch=n_threads or _usable_cores(),
                n_batch=n_batch,
                logits_all=False,
                verbose=verbose,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"llama.cpp could not load {path}: {exc}") from None
        # Free the model before interpreter shutdown tears down the modules that
        # llama-cpp-python's own __del__ needs (otherwise it prints a TypeError at exit).
        self._finalizer = weakref.finalize(self, self._llm.close)
        self._lock = threading.Lock()
        self._format = self._chat_formatter()
        self._candidate_ids: dict[tuple[str, ...], list[int] | None] = {}
        self._grammars: dict[str, Any] = {}

    @property
    def llama(self) -> Any:
        """The live `llama_cpp.Llama` object (for benchmarks and advanced use)."""
        return self._llm

    @property
    def n_ctx(self) -> int:
        """Context size in tokens."""
        return int(self._llm.n_ctx())

    def _chat_formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        meta = self._llm.metadata
        template = meta.get("tokenizer.chat_template") or _CHATML

        def token_text(key: str) -> str:
            token_id = meta.get(key)
            if token_id is None:
                return ""
            return str(
                self._llm.detokenize([int(token_id)], special=True).decode("utf-8", "replace")
            )

        return Jinja2ChatFormatter(
            template,
            eos_token=token_text("tokenizer.ggml.eos_token_id"),
            bos_token=token_text("tokenizer.ggml.bos_token_id"),
            add_generation_prompt=True,
        )

    def render(self, prompt: Prompt, *, prefill: bool = True) -> str:
        """The exact prompt text the model sees (chat template applied, prefill appended)."""
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
        text = str(self._format(messages=messages).prompt)
        return text + prompt.prefill if prefill else text

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text`, special tokens parsed, no BOS added by us."""
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    async def complete(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        """Run the prompt on a worker thread; one at a time (the model is not thread-safe)."""
        return await asyncio.to_thread(self.complete_sync, prompt, options)

    def complete_sync(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        """The blocking version of `complete`."""
        use_prefill = not options.constrained
        text = self.render(prompt, prefill=use_prefill)
        tokens = self.tokenize(text)
        budget = 1 if options.constrain_label else options.max_tokens
        if len(tokens) + budget > self.n_ctx:
            raise InputError(
                f"The prompt is {len(tokens):,} tokens and {budget} more are needed for the "
                f"answer, but the model's context holds {self.n_ctx:,}. Shorten the content or "
                "the policy, or load the model with a larger n_ctx."
            )
        ids = self._label_token_ids(prompt.candidates) if options.scores else None
        if options.constrain_label and ids is None:
            raise ConfigError(
                f"Score mode needs labels whose first tokens differ; {list(prompt.candidates)} "
                "do not on this model. Use --mode reason, or rename the labels."
            )
        probe = _LabelProbe(
            ids,
            prompt.violating,
            constrain=options.constrain_label,
            threshold=options.label_threshold if use_prefill else None,
        )
        if options.constrain_label:
            with self._lock:
                cached = self._cached_prefix(tokens)
                start = time.perf_counter()
                answer = self._score_only(tokens, cached, probe, prompt.candidates)
                latency = time.perf_counter() - start
            generated, finish, n_generated = answer, "stop", 1
        else:
            deadline = time.monotonic() + options.timeout_s if options.timeout_s else None
            with self._lock:
                cached = self._cached_prefix(tokens)
                start = time.perf_counter()
                result = self._run(tokens, budget, options, probe, deadline, prompt)
                latency = time.perf_counter() - start
            choice = result["choices"][0]
            generated = str(choice["text"])
            finish = str(choice.get("finish_reason") or "stop")
            n_generated = int(result.get("usage", {}).get("completion_tokens", 0))
        return Completion(
            text=(prompt.prefill if use_prefill else "") + generated,
            model=self.model,
            finish_reason=finish,
            usage=Usage(
                prompt_tokens=len(tokens), cached_tokens=cached, completion_tokens=n_generated
            ),
            latency_s=latency,
            label_probs=probe.probs(prompt.candidates),
            label_mass=probe.mass,
        )

    def _score_only(
        self, tokens: list[int], cached: int, probe: _LabelProbe, candidates: tuple[str, ...]
    ) -> str:
        """Score mode: evaluate only the uncached tokens and read the label logits there.

        Equivalent to generating one greedy token restricted to the labels, without the
        sampler chain and the extra decode of that token that `create_completion` performs.
        """
        import llama_cpp
        import numpy as np

        llm = self._llm
        llm.n_tokens = cached  # eval() drops the KV cells past n_tokens before decoding
        try:
            llm.eval(tokens[cached:])
        except RuntimeError as exc:
            raise BackendError(f"llama.cpp failed while scoring: {exc}") from None
        pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),))
        probe(None, logits)
        return candidates[probe.choice]

    def _run(
        self,
        tokens: list[int],
        budget: int,
        options: CompletionOptions,
        probe: _LabelProbe,
        deadline: float | None,
        prompt: Prompt,
    ) -> dict[str, Any]:
        from llama_cpp import LogitsProcessorList, StoppingCriteriaList

        timed_out = False

        def past_deadline(_ids: Any, _logits: Any) -> bool:
            nonlocal timed_out
            timed_out = deadline is not None and time.monotonic() > deadline
            return timed_out

        try:
            result = self._llm.create_completion(
                tokens,
                max_tokens=budget,
                temperature=options.temperature,
                top_p=options.top_p,
                top_k=0,
                min_p=0.0,
                repeat_penalty=1.0,
                seed=options.seed,
                logits_processor=LogitsProcessorList([probe]) if probe.active else None,
                stopping_criteria=StoppingCriteriaList([past_deadline]) if deadline else None,
                grammar=self._grammar(prompt) if options.constrained else None,
            )
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f"llama.cpp failed while generating: {exc}") from None
        if timed_out:
            raise BackendTimeout(
                f"llama.cpp did not finish within {options.timeout_s} s. Raise the timeout or "
                "lower the effort (fewer tokens)."
            )
        return dict(result)  # type: ignore[arg-type]

    def _cached_prefix(self, tokens: Sequence[int]) -> int:
        """How many leading tokens of `tokens` are already in the KV cache."""
        held = self._llm.input_ids[: self._llm.n_tokens]
        n = 0
        for a, b in zip(held, tokens, strict=False):
            if a != b:
                break
            n += 1
        return min(n, len(tokens) - 1)

    def _label_token_ids(self, candidates: tuple[str, ...]) -> list[int] | None:
        """First token id of each candidate label, or None when two labels share one."""
        if candidates not in self._candidate_ids:
            first = []
            for name in candidates:
                ids = self._llm.tokenize(name.encode("utf-8"), add_bos=False, special=False)
                first.append(int(ids[0]) if ids else -1)
            distinct = len(set(first)) == len(first) and -1 not in first
            self._candidate_ids[candidates] = first if distinct else None
        return self._candidate_ids[candidates]

    def _grammar(self, prompt: Prompt) -> Any:
        from llama_cpp.llama_grammar import LlamaGrammar

        if prompt.schema is not None:
            key = json.dumps(prompt.schema, sort_keys=True)
            if key not in self._grammars:
                self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
        elif prompt.grammar is not None:
            key = prompt.grammar
            if key not in self._grammars:
                self._grammars[key] = LlamaGrammar.from_string(key, verbose=False)
        else:
            raise ConfigError("Constrained decoding needs a schema or grammar in the prompt.")
        return self._grammars[key]

    async def aclose(self) -> None:
        """Free the model."""
        self._finalizer()


class _LabelProbe:
    """Logits processor: reads label probabilities at the first generated position.

    With `constrain`, it also masks every non-label token there, so the generated token is a
    label (score mode). With `threshold`, the label token is the best one on the side of the
    threshold that the violating probability falls on (calibrated labels in both modes).
    """

    def __init__(
        self,
        ids: list[int] | None,
        violating: Sequence[bool],
        *,
        constrain: bool,
        threshold: float | None,
    ) -> None:
        self.ids = ids
        self.violating = list(violating)
        self.constrain = constrain
        self.threshold = threshold
        self.raw: list[float] | None = None
        self.mass: float | None = None
        self.choice = 0
        """Index of the label chosen at the label position."""
        self._seen = False

    @property
    def active(self) -> bool:
        return self.ids is not None

    def __call__(
        self, _input_ids: npt.NDArray[np.intc] | None, logits: npt.NDArray[np.single]
    ) -> npt.NDArray[np.single]:
        if self._seen or self.ids is None:
            return logits
        self._seen = True
        import numpy as np

        top = float(np.max(logits))
        log_z = top + math.log(float(np.sum(np.exp(logits - top))))
        self.raw = [math.exp(float(logits[i]) - log_z) for i in self.ids]
        raw = self.raw
        self.mass = sum(raw)
        self.choice = max(range(len(raw)), key=lambda i: raw[i])
        if self.threshold is not None and self.mass > 0:
            score = sum(p for p, bad in zip(raw, self.violating, strict=True) if bad)
            side = score / self.mass >= self.threshold
            sides = [i for i, bad in enumerate(self.violating) if bad == side]
            self.choice = max(sides, key=lambda i: raw[i])
        elif not self.constrain:
            return logits  # free generation: only observe
        masked = np.full_like(logits, -np.inf)
        masked[self.ids[self.choice]] = 0.0
        return masked

    def probs(self, candidates: tuple[str, ...]) -> dict[str, float] | None:
        if self.raw is None or not self.mass:
            return None
        return {name: p / self.mass for name, p in zip(candidates, self.raw, strict=True)}
