"""Servers on loopback for the benchmarks: `scoder serve` and `transformers serve` (which ships
with transformers and knows nothing of scoder). Each is a context manager that yields the base URL
and the model id the server lists, and stops the server on exit."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(command: Sequence[str], port: int, what: str) -> Iterator[tuple[str, str]]:
    log = Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
    with log.open("w") as out:  # a file, not a pipe: a chatty server must never block on it
        proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} died: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as r:
                    models = [m["id"] for m in json.load(r)["data"]]
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"{what} did not start: {log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield url, models[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.unlink(missing_ok=True)


def scoder_serve(
    model: str | None, name: str = "model", *extra: str
) -> contextlib.AbstractContextManager:
    """`scoder serve` over `model` (None: the embedded model) as `name`, with `extra` options."""
    port = free_port()
    command = [sys.executable, "-m", "scoder.cli", "serve", *(["--model", model] if model else []),
               "--port", str(port), "--served-model-name", name, "--device", "cpu", *extra]  # fmt: skip
    return _server(command, port, "scoder serve")


def transformers_serve(
    model: str, *, continuous_batching: bool = False
) -> contextlib.AbstractContextManager:
    port = free_port()
    command = [str(Path(sys.executable).with_name("transformers")), "serve", "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", model]  # fmt: skip
    if continuous_batching:
        command.append("--continuous-batching")
    return _server(command, port, "transformers serve")


__all__ = ["free_port", "scoder_serve", "transformers_serve"]
