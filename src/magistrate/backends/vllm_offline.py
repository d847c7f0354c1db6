"""vLLM's engine in process, on a GPU: gpt-oss prompts as harmony tokens, parsed from tokens.

`vllm/<model>` where the model is a local directory (or a Hugging Face id the machine can
fetch). Install with `pip install 'magistrate[vllm]'` on a Linux machine with CUDA.

Every prompt is rendered to harmony tokens by openai-harmony (no chat template, no date line,
so the policy prefix is identical across items and vLLM's prefix cache holds it), generated
with `stop_token_ids` = `<|return|>`, `<|call|>`, and the completion's tokens are decoded with
control tokens kept and parsed by `harmony.parse_completion`. Requests that arrive together
are gathered for a few milliseconds and sent to `LLM.generate` as one batch, so the engine's
continuous batching sees them all.

Example:
    >>> judge = Judge("spam", "vllm//models/gpt-oss-safeguard-20b", effort="low")
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from magistrate import harmony
from magistrate.backends.base import Backend, Capabilities, Completion, CompletionOptions
from magistrate.errors import BackendError, BackendUnavailable, MissingDependency
from magistrate.prompt import Prompt


@dataclass
class _Request:
    tokens: list[int]
    options: CompletionOptions
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    queued: float = field(default_factory=time.perf_counter)


class VLLMBackend(Backend):
    """gpt-oss (or any harmony model) on vLLM's offline engine.

    Args:
        model: Model directory or id for `vllm.LLM`.
        max_concurrency: Requests the engine may hold at once (vLLM batches them).
        batch_window_s: How long to gather arriving requests into one `generate` call.
        engine_args: Passed to `vllm.LLM` (e.g. `gpu_memory_utilization`, `max_model_len`,
            `tensor_parallel_size`); prefix caching is always on.
    """

    provider = "vllm"
    capabilities = Capabilities(native_reasoning=True)

    def __init__(
        self,
        model: str,
        *,
        max_concurrency: int = 256,
        batch_window_s: float = 0.005,
        **engine_args: Any,
    ) -> None:
        try:
            import vllm
        except ImportError:
            raise MissingDependency(
                "The vllm backend needs vLLM on a CUDA machine: pip install 'magistrate[vllm]'"
            ) from None
        harmony.encoding()  # fail early, before the GPU is claimed, if harmony cannot load
        self.model = model
        self.max_concurrency = max_concurrency
        self._vllm = vllm
        try:
            self._llm = vllm.LLM(model=model, enable_prefix_caching=True, **engine_args)
        except Exception as exc:  # vLLM raises many kinds; all mean the model did not load
            raise BackendUnavailable(f"vLLM could not load {model}: {exc}") from exc
        self._window = batch_window_s
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._worker = threading.Thread(target=self._serve, name="vllm-batcher", daemon=True)
        self._worker.start()

    async def complete(self, prompt: Prompt, options: CompletionOptions) -> Completion:
        tokens = harmony.render_tokens(
            prompt.system, prompt.messages[-1].content, effort=prompt.effort.value
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Request(tokens, options, loop, future))
        output, latency = await future
        return self._completion(tokens, output, latency)

    def _completion(self, tokens: list[int], output: Any, latency: float) -> Completion:
        first = output.outputs[0]
        ids = [int(t) for t in first.token_ids]
        stopped = first.finish_reason == "stop"
        if stopped and (not ids or ids[-1] not in harmony.STOP_TOKEN_IDS):
            # vLLM may leave the stop token out of the output; the parser wants it.
            reason = first.stop_reason
            ids.append(reason if isinstance(reason, int) else harmony.STOP_TOKEN_IDS[0])
        return harmony.completion_from_tokens(
            ids,
            model=self.model,
            prompt_tokens=len(tokens),
            cached_tokens=int(getattr(output, "num_cached_tokens", 0) or 0),
            stopped=stopped,
            latency_s=latency,
        )

    def _serve(self) -> None:
        """Gather requests for a moment, run them as one batch, hand back the outputs."""
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self._window
            while len(batch) < self.max_concurrency:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        params = [
            self._vllm.SamplingParams(
                temperature=r.options.temperature,
                top_p=r.options.top_p,
                seed=r.options.seed,
                max_tokens=r.options.max_tokens,
                stop_token_ids=list(harmony.STOP_TOKEN_IDS),
                skip_special_tokens=False,
            )
            for r in batch
        ]
        prompts = [{"prompt_token_ids": r.tokens} for r in batch]
        try:
            outputs = self._llm.generate(prompts, params, use_tqdm=False)
        except Exception as exc:  # hand the failure to every waiting caller
            error = BackendError(f"vLLM failed on a batch of {len(batch)}: {exc}")
            for r in batch:
                r.loop.call_soon_threadsafe(_fail, r.future, error)
            return
        done = time.perf_counter()
        for r, out in zip(batch, outputs, strict=True):
            r.loop.call_soon_threadsafe(_resolve, r.future, (out, done - r.queued))

    async def aclose(self) -> None:
        self._queue.put(None)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
