"""In-process llama.cpp backend: any GGUF file, the embedded model by default.

One live `Llama` object serves every prompt. llama-cpp-python keeps the tokens of the last
prompt and reuses their KV state for the longest common prefix of the next one; since the
prompt builder puts the policy first and the content last, each item after the first only
pays for its own tokens. The model state is never reset between items, and no RAM cache is
used (it was measured slower, with 4-6 GB of RSS).

The label is read where the answer's label begins (just after the prefill): the prompt is
evaluated, the logits there give each candidate label's first-token probability, and the
label is chosen among the candidates (by the policy's threshold when calibrated). Score mode
stops there; reason mode appends the label's tokens and generates the rest of the answer.

Example:
    >>> backend = LlamaCppBackend()                   # the embedded model
    >>> backend = LlamaCppBackend("/models/gpt-oss-safeguard-20b.gguf", n_ctx=8192)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from magistrate.backends.base import (
    FINAL_NORM,
    Backend,
    Capabilities,
    Completion,
    CompletionOptions,
    Representation,
    Usage,
    layer_kind,
)
from magistrate.backends.llamacpp_tap import StateTap, install
from magistrate.errors import (
    BackendError,
    BackendTimeout,
    ConfigError,
    InputError,
    MalformedAnswer,
    MissingDependency,
    ModelError,
)
from magistrate.prompt import Prompt

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

_T = TypeVar("_T")

GGUF_MAGIC = b"GGUF"
LAYOUT_PLACEHOLDER = "<<content>>"
"""Stands in for the content when a prompt's layout is hashed (`representation`)."""
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
        n_ctx: Context size in tokens (policy + content + answer must fit). 8,192 holds
            the starter pack's eight category policies in one combined prompt (~4,400 tokens).
        n_threads: CPU threads; None means every core this process may use (llama-cpp-python's
            own default is half of them, which halves prompt speed on small machines).
        n_batch: Prompt tokens evaluated per batch.
        verbose: Let llama.cpp print its own logs.
    """

    provider = "llamacpp"
    capabilities = Capabilities(
        prefill=True, label_scores=True, constrained=True, label_slots=True, hidden_state=True
    )
    max_concurrency = 1

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        n_ctx: int = 8192,
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
        # Every call into llama.cpp runs on this one thread. Alternating the calling thread
        # (the main thread, then asyncio's worker threads) was measured 30% slower per item,
        # and the model is not thread-safe anyway.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")
        # gpt-oss GGUFs speak harmony: prompts are rendered by openai-harmony as tokens (their
        # vocabulary is o200k_harmony) and completions are parsed channel by channel.
        self.harmony = self._llm.metadata.get("general.architecture") == "gpt-oss"
        if self.harmony:
            self.capabilities = Capabilities(native_reasoning=True)
        self._format = self._chat_formatter()
        self._marker = os.urandom(8).hex()
        self._candidates: dict[tuple[str, ...], list[list[int]]] = {}
        self._grammars: dict[str, Any] = {}
        self._embedded = model is None or str(model) in EMBEDDED_NAMES
        self._sha256: str | None = None
        # Hidden states are copied out of the graph during the label's own decode, by a
        # tap installed the first time one is asked for (`_ensure_tap`).
        self._n_layer = int(llama_cpp.llama_model_n_layer(self._llm.model))
        self._tap: StateTap | None = None
        self._verbose = verbose

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

    def render(self, prompt: Prompt, *, prefill: bool = True, content: str | None = None) -> str:
        """The prompt text with the chat template applied and the prefill appended.

        Args:
            content: Put this in place of the last message's content (used for a marker).
        """
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
        if content is not None:
            messages[-1]["content"] = content
        text = str(self._format(messages=messages).prompt)
        return text + prompt.prefill if prefill else text

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of `text`, no BOS added by us; `special` parses control tokens."""
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def prompt_tokens(self, prompt: Prompt, *, prefill: bool = True) -> list[int]:
        """The prompt's tokens, with the content tokenized as plain text.

        The template around the content is tokenized with control tokens parsed; the content
        itself is not, so content that spells `<|im_end|>` or `<|im_start|>system` stays text
        inside the user turn and can never close it. (The head is also tokenized on its own,
        so it is token-identical across items, which keeps the KV prefix reusable.)
        """
        marker = f"\x1e{self._marker}\x1e"
        content = prompt.messages[-1].content
        head, sep, tail = self.render(prompt, prefill=prefill, content=marker).partition(marker)
        if not sep or marker in tail:
            raise BackendError("The chat template did not place the content exactly once.")
        return self.tokenize(head) + self.tokenize(content, special=False) + self.tokenize(tail)

    async def complete(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        """Run the prompt on the model's own thread; one at a time."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._complete, prompt, options)

    def complete_sync(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        """The blocking version of `complete` (also runs on the model's thread)."""
        return self.run_on_model_thread(self._complete, prompt, options)

    def run_on_model_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Call `fn(*args)` on the thread that owns the model and wait for the result.

        For code that drives `self.llama` directly (benchmarks), so it runs where Magistrate
        runs it.
        """
        return self._thread.submit(fn, *args).result()

    @property
    def model_sha256(self) -> str:
        """SHA-256 of the model file (the embedded model's is known; others are hashed once)."""
        if self._sha256 is None:
            from magistrate.embedded import QWEN_CODER_1_5B, file_sha256

            self._sha256 = QWEN_CODER_1_5B.sha256 if self._embedded else file_sha256(self.path)
        return self._sha256

    def representation(self, prompt: Prompt) -> Representation | None:
        """The hidden state's binding: the model file's hash and the prompt layout (the
        rendered prompt, chat template and prefill included, with a fixed placeholder for
        the content). gpt-oss GGUFs reason before they answer, so they have no label
        position to read."""
        if self.harmony:
            return None
        rendered = self.render(prompt, content=LAYOUT_PLACEHOLDER)
        layout = hashlib.sha256(rendered.encode("utf-8")).hexdigest()
        layers = tuple(layer_kind(i) for i in range(self._n_layer))
        size = int(self._llm.n_embd())
        return Representation(self.model_sha256, layout, size, (FINAL_NORM, *layers))

    def _ensure_tap(self) -> StateTap:
        """The state tap, installed on first use (the KV cache starts empty again then)."""
        if self._tap is None:
            tap = StateTap(int(self._llm.n_embd()), self._n_layer)
            install(self._llm, tap, verbose=self._verbose)
            self._tap = tap
        return self._tap

    def _complete(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        """Produce one completion; runs on the model thread only.

        With label candidates (and no constrained decoding) it runs in two steps: evaluate
        the prompt and read the label logits there (`_read_label`), then, in reason mode,
        append the chosen label's tokens and let llama.cpp generate the rest. Generation
        itself runs without a logits processor, so it costs what raw llama-cpp-python costs.
        """
        if self.harmony:
            if options.features:
                raise ConfigError(
                    f"{self.name} reasons before it answers; it has no label "
                    "position whose hidden state a read-out could read."
                )
            return self._complete_harmony(prompt, options)
        if options.features and (prompt.slots or not options.constrain_label):
            raise ConfigError(
                "Hidden states are read for one policy's prompt in score mode only; judge "
                "the policies separately (--strategy separate) in --mode score."
            )
        if prompt.slots and options.constrain_label:
            return self._complete_slots(prompt, options)
        if options.features:
            self._ensure_tap()  # before the KV prefix is measured: installing empties it
        use_prefill = not options.constrained
        tokens = self.prompt_tokens(prompt, prefill=use_prefill)
        budget = 1 if options.constrain_label else options.max_tokens
        if len(tokens) + budget > self.n_ctx:
            raise InputError(
                f"The prompt is {len(tokens):,} tokens and {budget} more are needed for the "
                f"answer, but the model's context holds {self.n_ctx:,}. Shorten the content or "
                "the policy, or load the model with a larger n_ctx."
            )
        ids = self._label_token_ids(prompt.candidates) if options.scores and use_prefill else None
        if options.constrain_label and ids is None:
            raise ConfigError(
                f"Score mode needs labels whose first tokens differ; {list(prompt.candidates)} "
                "do not on this model. Use --mode reason, or rename the labels."
            )
        label: _LabelRead | None = None
        text = prompt.prefill if use_prefill else ""
        finish, n_generated = "stop", 0
        cached = self._cached_prefix(tokens)
        start = time.perf_counter()
        if ids is not None:
            label = self._read_label(tokens, cached, ids, prompt, options)
            if not (math.isfinite(label.mass) and label.mass > 0):
                # No probability on any label (NaN or underflowed logits): choosing one
                # anyway would invent the answer, usually the first, non-violating label.
                raise MalformedAnswer(
                    f"{self.name} put no probability on any label at the label position."
                )
            text += prompt.candidates[label.choice]
            n_generated = 1
        if not options.constrain_label:
            prefix = tokens + (self._label_tokens(prompt, label) if label else [])
            result = self._generate(prefix, options, prompt)
            choice = result["choices"][0]
            text += str(choice["text"])
            finish = str(choice.get("finish_reason") or "stop")
            n_generated += int(result.get("usage", {}).get("completion_tokens", 0))
        latency = time.perf_counter() - start
        return Completion(
            text=text,
            model=self.model,
            finish_reason=finish,
            usage=Usage(
                prompt_tokens=len(tokens), cached_tokens=cached, completion_tokens=n_generated
            ),
            latency_s=latency,
            label_probs=label.probs(prompt.candidates) if label else None,
            label_mass=label.mass if label else None,
            features=label.features if label else None,
        )

    def _complete_slots(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        """Score mode for a combined prompt: read each policy's label where its line begins.

        The prompt (ending with the first slot's lead) is evaluated once; then, per slot, the
        label distribution is read, the likelier label and the next slot's lead are appended
        and evaluated (a few tokens each), so every policy after the first is judged with
        the earlier answers in view, as in a written answer.
        """
        tokens = self.prompt_tokens(prompt, prefill=True)
        budget = 8 * len(prompt.slots)
        if len(tokens) + budget > self.n_ctx:
            raise InputError(
                f"The prompt is {len(tokens):,} tokens and about {budget} more are needed for "
                f"the answers, but the model's context holds {self.n_ctx:,}. Shorten the "
                "content, judge fewer policies at once, or load the model with a larger n_ctx."
            )
        slot_ids = [self._label_token_ids(slot.candidates) for slot in prompt.slots]
        if any(ids is None for ids in slot_ids):
            raise ConfigError(
                "Score mode needs labels whose first tokens differ under every policy of the "
                "bundle; use --mode reason, or rename the labels."
            )
        cached = self._cached_prefix(tokens)
        start = time.perf_counter()
        deadline = time.monotonic() + options.timeout_s if options.timeout_s else None
        pending = tokens[cached:]
        self._llm.n_tokens = cached  # eval() first drops the KV cells past n_tokens
        text = ""
        probs: list[dict[str, float] | None] = []
        evaluated = 0
        for i, (slot, ids) in enumerate(zip(prompt.slots, slot_ids, strict=True)):
            if i:
                pending = pending + self.tokenize(slot.lead, special=False)
            read = self._eval_and_read(pending, ids or [], slot.violating)
            evaluated += len(pending)
            probs.append(read.probs(slot.candidates))
            text += slot.lead + slot.candidates[read.choice]
            pending = self._candidate_tokens(slot.candidates)[read.choice]
            if deadline is not None and time.monotonic() > deadline:
                raise BackendTimeout(f"{self.name} did not finish within {options.timeout_s:g} s.")
        return Completion(
            text=text,
            model=self.model,
            usage=Usage(
                prompt_tokens=len(tokens),
                cached_tokens=cached,
                completion_tokens=evaluated - (len(tokens) - cached),
            ),
            latency_s=time.perf_counter() - start,
            slot_probs=tuple(probs),
        )

    def _eval_and_read(
        self,
        tokens: list[int],
        ids: list[int],
        violating: Sequence[bool],
        threshold: float | None = None,
        *,
        features: tuple[str, ...] = (),
    ) -> _LabelRead:
        """Evaluate `tokens` after the first `n_tokens` in the KV cache; read the label logits.

        With `features`, the state tap copies those hidden states at the last token (the
        label position) out of the same decode (`llamacpp_tap`): no second pass.
        """
        import llama_cpp
        import numpy as np

        llm = self._llm
        hidden: tuple[float, ...] | None = None
        tap = self._tap if features else None
        if features and tap is None:
            raise BackendError("The state tap was not installed before the prompt was evaluated.")
        try:
            if tap is not None:
                tap.capture(features)
                try:
                    llm.eval(tokens)
                except BaseException:
                    tap.reset()
                    raise
                hidden = tap.take(features)
            else:
                llm.eval(tokens)
        except RuntimeError as exc:
            raise BackendError(f"llama.cpp failed while scoring: {exc}") from None
        pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),))
        read = _LabelRead.from_logits(logits, ids, violating, threshold)
        return replace(read, features=hidden) if hidden is not None else read

    def _complete_harmony(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        """A gpt-oss completion: harmony tokens in, raw tokens out until `<|return|>`/`<|call|>`."""
        from magistrate import harmony

        tokens = harmony.render_tokens(
            prompt.system, prompt.messages[-1].content, effort=prompt.effort.value
        )
        if len(tokens) + options.max_tokens > self.n_ctx:
            raise InputError(
                f"The prompt is {len(tokens):,} tokens and up to {options.max_tokens:,} more are "
                f"allowed for reasoning and answer, but the context holds {self.n_ctx:,}. Load "
                "the model with a larger n_ctx, lower the effort, or shorten the content."
            )
        cached = self._cached_prefix(tokens)
        deadline = time.monotonic() + options.timeout_s if options.timeout_s else None
        start = time.perf_counter()
        self._llm.set_seed(options.seed)
        out: list[int] = []
        stopped = False
        try:
            for token in self._llm.generate(
                tokens,
                temp=options.temperature,
                top_p=options.top_p,
                top_k=0,
                min_p=0.0,
                repeat_penalty=1.0,
            ):
                out.append(int(token))
                if token in harmony.STOP_TOKEN_IDS:
                    stopped = True
                    break
                if len(out) >= options.max_tokens:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise BackendTimeout(
                        f"{self.name} did not finish within {options.timeout_s:g} s."
                    )
        except RuntimeError as exc:
            raise BackendError(f"llama.cpp failed while generating: {exc}") from None
        return harmony.completion_from_tokens(
            out,
            model=self.model,
            prompt_tokens=len(tokens),
            cached_tokens=cached,
            stopped=stopped,
            latency_s=time.perf_counter() - start,
        )

    def _read_label(
        self,
        tokens: list[int],
        cached: int,
        ids: list[int],
        prompt: Prompt,
        options: CompletionOptions,
    ) -> _LabelRead:
        """Evaluate the uncached prompt tokens and read the label distribution at the end.

        This is one greedy step restricted to the labels (or to the side of the threshold the
        score falls on), without the sampler chain and the extra decode of the sampled token
        that `create_completion` performs.
        """
        self._llm.n_tokens = cached  # eval() first drops the KV cells past n_tokens
        return self._eval_and_read(
            tokens[cached:],
            ids,
            prompt.violating,
            options.label_threshold,
            features=options.features,
        )

    def _label_tokens(self, prompt: Prompt, label: _LabelRead) -> list[int]:
        return self._candidate_tokens(prompt.candidates)[label.choice]

    def _generate(
        self, tokens: list[int], options: CompletionOptions, prompt: Prompt
    ) -> dict[str, Any]:
        from llama_cpp import StoppingCriteriaList

        deadline = time.monotonic() + options.timeout_s if options.timeout_s else None
        timed_out = False

        def past_deadline(_ids: Any, _logits: Any) -> bool:
            nonlocal timed_out
            timed_out = deadline is not None and time.monotonic() > deadline
            return timed_out

        try:
            result = self._llm.create_completion(
                tokens,
                max_tokens=options.max_tokens,
                temperature=options.temperature,
                top_p=options.top_p,
                top_k=0,
                min_p=0.0,
                repeat_penalty=1.0,
                seed=options.seed,
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

    def _candidate_tokens(self, candidates: tuple[str, ...]) -> list[list[int]]:
        """Each candidate label's tokens (as plain text), computed once per label set."""
        if candidates not in self._candidates:
            self._candidates[candidates] = [self.tokenize(n, special=False) for n in candidates]
        return self._candidates[candidates]

    def _label_token_ids(self, candidates: tuple[str, ...]) -> list[int] | None:
        """First token id of each candidate label, or None when two labels share one."""
        first = [ids[0] if ids else -1 for ids in self._candidate_tokens(candidates)]
        distinct = len(set(first)) == len(first) and -1 not in first
        return first if distinct else None

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
        """Free the model and stop its thread."""
        self._thread.shutdown(wait=True)
        self._finalizer()


@dataclass(frozen=True)
class _LabelRead:
    """The label distribution at the label position, and the label chosen there.

    Attributes:
        raw: Probability of each candidate's first token under the full vocabulary.
        mass: Sum of `raw`: how much the model wanted to answer with a label at all.
        choice: Index of the chosen candidate: the most likely one, or with a threshold the
            most likely one on the side of the threshold the violating probability falls on.
        features: The hidden states at the label position, when asked for (the kinds asked
            for, one after another).
    """

    raw: tuple[float, ...]
    mass: float
    choice: int
    features: tuple[float, ...] | None = None

    @classmethod
    def from_logits(
        cls,
        logits: npt.NDArray[np.single],
        ids: list[int],
        violating: Sequence[bool],
        threshold: float | None,
    ) -> _LabelRead:
        import numpy as np

        top = float(np.max(logits))
        log_z = top + math.log(float(np.sum(np.exp(logits - top))))
        raw = tuple(math.exp(float(logits[i]) - log_z) for i in ids)
        mass = sum(raw)
        pool = list(range(len(raw)))
        if threshold is not None and mass > 0:
            score = sum(p for p, bad in zip(raw, violating, strict=True) if bad) / mass
            pool = [i for i, bad in enumerate(violating) if bad == (score >= threshold)]
        return cls(raw, mass, max(pool, key=lambda i: raw[i]))

    def probs(self, candidates: tuple[str, ...]) -> dict[str, float] | None:
        """Candidate probabilities normalised over the candidates."""
        if not self.mass:
            return None
        return {name: p / self.mass for name, p in zip(candidates, self.raw, strict=True)}
