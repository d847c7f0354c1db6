"""`python -m llama_cpp.server` serving a GGUF on 127.0.0.1, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from faultserver import _free_port


class LlamaServer:
    """Starts the server on a free port as `alias`; `url` is its /v1 base URL."""

    def __init__(self, model: Path, *, alias: str = "embedded", startup_s: float = 180) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.alias = alias
        self.startup_s = startup_s
        cores = str(os.cpu_count() or 2)
        self.cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model),
            "--model_alias", alias, "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", "4096", "--n_threads", cores, "--n_threads_batch", cores,
        ]  # fmt: skip
        self.log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LlamaServer:
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as resp:
                    if json.load(resp)["data"][0]["id"] == self.alias:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(
                    f"llama_cpp.server did not start:\n{self.log.read_text()[-2000:]}"
                )
            time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.unlink(missing_ok=True)
