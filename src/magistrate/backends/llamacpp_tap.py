"""Reading hidden states out of llama.cpp's graph while it computes the label logits.

llama.cpp calls a context's evaluation callback (`cb_eval`) for every node of the compute
graph: first to ask whether the caller wants to see that node, then, for the nodes it said
yes to, once the node is computed. A `StateTap` answers yes for the tensors of the states a
read-out asks for (the residual stream after a block, `l_out-K`; the final normalised
output, `result_norm`) and copies the last row of each: the state at the batch's last
token, which in score mode is the label position. The states come from the same decode as
the label logits, so reading them costs a copy of a few kilobytes, not a second decode.

llama-cpp-python sets no callback on the context it creates, so `install` makes the
context again with one (the model's weights are shared, only the KV cache is rebuilt). The
backend installs it the first time a state is asked for, so a process that never asks keeps
llama.cpp's own context with no Python call per graph node. While no state is wanted the
callback answers "no" at once (measured: no difference in score-mode or generation speed
within the run-to-run noise).
"""

from __future__ import annotations

import contextlib
import ctypes
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from magistrate.backends.base import FINAL_NORM
from magistrate.errors import BackendError, ConfigError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

_LAYER = re.compile(r"^layer-(\d+)@label$")


def tensor_name(kind: str, n_layer: int) -> bytes:
    """The name llama.cpp gives the graph tensor holding a state kind.

    Raises:
        ConfigError: An unknown kind, or a block the model does not have.
    """
    if kind == FINAL_NORM:
        return b"result_norm"
    match = _LAYER.match(kind)
    if match is None:
        raise ConfigError(
            f"Unknown hidden-state kind {kind!r}; use {FINAL_NORM!r} or 'layer-K@label' "
            f"(K from 0 to {n_layer - 1})."
        )
    index = int(match.group(1))
    if index >= n_layer:
        raise ConfigError(f"{kind!r} names block {index}, but the model has {n_layer} (0-based).")
    return f"l_out-{index}".encode()


class _Ggml:
    """The few ggml functions the tap calls (from the library llama-cpp-python loads)."""

    def __init__(self) -> None:
        from llama_cpp._ggml import libggml

        lib: Any = libggml
        lib.ggml_get_name.restype = ctypes.c_char_p
        lib.ggml_get_name.argtypes = [ctypes.c_void_p]
        lib.ggml_nrows.restype = ctypes.c_int64
        lib.ggml_nrows.argtypes = [ctypes.c_void_p]
        lib.ggml_nbytes.restype = ctypes.c_size_t
        lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_tensor_get.restype = None
        lib.ggml_backend_tensor_get.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_size_t,
        ]
        self.name = lib.ggml_get_name
        self.nrows = lib.ggml_nrows
        self.nbytes = lib.ggml_nbytes
        self.get = lib.ggml_backend_tensor_get


class StateTap:
    """Copies the last row of chosen graph tensors during `llama_decode`.

    Use `capture(kinds)` around one decode, then `take()` for the states, in the order asked.

    Args:
        n_embd: Width of the model's hidden state.
        n_layer: Number of blocks (for naming and checking `layer-K` kinds).
    """

    def __init__(self, n_embd: int, n_layer: int) -> None:
        import llama_cpp

        self.n_embd = n_embd
        self.n_layer = n_layer
        self._ggml = _Ggml()
        self._want: dict[bytes, int] = {}
        self._rows: list[npt.NDArray[np.float32] | None] = []
        self._error: str | None = None
        # Kept on the object: llama.cpp holds only the C pointer.
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._observe)

    def capture(self, kinds: Iterable[str]) -> None:
        """Watch for these kinds' tensors during the next decode(s); later rows win."""
        names = [tensor_name(kind, self.n_layer) for kind in kinds]
        if len(set(names)) != len(names):
            raise ConfigError(f"A hidden state was asked for twice: {list(kinds)}.")
        self._want = {name: i for i, name in enumerate(names)}
        self._rows = [None] * len(names)
        self._error = None

    def reset(self) -> None:
        """Stop watching and forget what was captured."""
        self._want, self._rows, self._error = {}, [], None

    def take(self, kinds: Iterable[str]) -> tuple[float, ...]:
        """The captured states, concatenated in the order of `kinds`; stops watching.

        Raises:
            BackendError: A state was not produced (a model whose graph names its tensors
                otherwise), or could not be read.
        """
        rows, error = self._rows, self._error
        self.reset()
        if error is not None:
            raise BackendError(f"Reading the hidden state failed: {error}")
        out: list[float] = []
        for kind, row in zip(kinds, rows, strict=True):
            if row is None:
                raise BackendError(
                    f"llama.cpp computed no {kind} state for this model (its graph has no "
                    "tensor of that name); fit the read-out on another kind."
                )
            out.extend(row.astype(float).tolist())
        return tuple(out)

    def _observe(self, tensor: int | None, ask: bool, _user_data: int | None) -> bool:
        # Called from inside llama_decode for every graph node: keep the "no" path short.
        # Returning False when not asking would stop the computation, so a failure here is
        # kept for `take` to raise and the computation goes on.
        want = self._want
        if not want:
            return not ask
        try:
            name = self._ggml.name(tensor)
            if ask:
                return name in want
            index = want.get(name)
            if index is not None:
                self._copy_last_row(tensor, index)
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
        return True

    def _copy_last_row(self, tensor: int | None, index: int) -> None:
        import numpy as np

        row_bytes = self.n_embd * 4
        rows = int(self._ggml.nrows(tensor))
        if int(self._ggml.nbytes(tensor)) != rows * row_bytes:
            raise ValueError(f"tensor is not {self.n_embd} float32 columns per row")
        if rows == 0:
            # A piece of a split batch that outputs no token: the tensors after the last
            # block are cut to the output rows, so they are empty there.
            return
        row = np.empty(self.n_embd, dtype=np.float32)
        self._ggml.get(tensor, row.ctypes.data, (rows - 1) * row_bytes, row_bytes)
        self._rows[index] = row


def install(llm: Any, tap: StateTap, *, verbose: bool = False) -> None:
    """Make `llm`'s context again with `tap` as its evaluation callback.

    The KV cache is rebuilt empty; the weights are shared. Call it before any evaluation.
    """
    from llama_cpp import _internals

    params = llm.context_params
    params.cb_eval = tap.callback
    params.cb_eval_user_data = None
    llm._ctx.close()
    try:
        llm._ctx = llm._stack.enter_context(
            contextlib.closing(
                _internals.LlamaContext(model=llm._model, params=params, verbose=verbose)
            )
        )
    except (ValueError, RuntimeError) as exc:
        raise BackendError(f"llama.cpp could not make a context with a state tap: {exc}") from None
    llm.n_tokens = 0


__all__ = ["StateTap", "install", "tensor_name"]
