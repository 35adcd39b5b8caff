"""`scoder serve`: an OpenAI-compatible HTTP server over the transformers backend.

Serves the base model and any number of LoRA adapters by model name (as `vllm serve
--lora-modules` does), so CPU users and the tests run the real OpenAI client path end to end, and
one process can serve every checkpoint of a round. Endpoints: GET /v1/models, POST
/v1/chat/completions (non-streaming). As with vLLM, `continue_final_message: true` continues a
trailing assistant message instead of starting a new turn.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scoder.models.base import SamplingParams
from scoder.models.hf import TransformersBackend


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use
    model: str
    messages: list[Message] = Field(min_length=1)
    n: int = Field(default=1, ge=1, le=128)
    temperature: float = Field(default=1.0, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    continue_final_message: bool = False


DEFAULT_MAX_TOKENS = 512


def create_app(
    backend: TransformersBackend,
    served_name: str,
    adapters: dict[str, str] | None = None,
    *,
    max_batch: int = 64,
    batch_wait_s: float = 0.02,
) -> Any:
    """The FastAPI app. `adapters` maps a served model name to a LoRA adapter directory."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    adapters = adapters or {}
    if adapters:
        backend.load_adapters({name: Path(path) for name, path in adapters.items()})
    batcher = _Batcher(backend, adapters, max_batch=max_batch, wait_s=batch_wait_s)
    app = FastAPI(title="scoder serve")
    created = int(time.time())

    def error(status: int, message: str, kind: str) -> JSONResponse:
        return JSONResponse(
            status_code=status,
            content={"error": {"message": message, "type": kind, "code": status}},
        )

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "scoder",
                    "root": served_name,
                }
                for name in [served_name, *adapters]
            ],
        }

    @app.post("/v1/chat/completions")
    def chat(request: ChatRequest) -> Any:
        if request.model != served_name and request.model not in adapters:
            return error(
                404,
                f"model {request.model!r} is not served here (serving: {', '.join([served_name, *adapters])})",
                "model_not_found",
            )
        chat_messages = [m.model_dump() for m in request.messages]
        if chat_messages[-1]["role"] == "assistant" and not request.continue_final_message:
            return error(
                400,
                "a trailing assistant message needs continue_final_message: true",
                "invalid_request_error",
            )
        params = SamplingParams(
            temperature=request.temperature,
            top_p=request.top_p,
            max_new_tokens=request.max_completion_tokens
            or request.max_tokens
            or DEFAULT_MAX_TOKENS,
            seed=request.seed if request.seed is not None else 0,
        )
        completions = batcher.submit(request.model, chat_messages, request.n, params)
        prompt_tokens = completions[0].prompt_tokens
        completion_tokens = sum(c.completion_tokens for c in completions)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(completions)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    return app


class _Batcher:
    """Requests that arrive together are generated together.

    One worker thread owns the model. It takes the first waiting request, gathers whatever else
    arrives within `wait_s` (up to `max_batch` rows), and runs each group of the same model
    (adapter), n and sampling settings as one `generate` call, so concurrent clients get the
    batched throughput of the in-process backend. A group shares one seeded random stream: the
    first request's seed.
    """

    def __init__(
        self,
        backend: TransformersBackend,
        adapters: dict[str, str],
        *,
        max_batch: int,
        wait_s: float,
    ):
        self.backend, self.adapters = backend, adapters
        self.max_batch, self.wait_s = max_batch, wait_s
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._work, daemon=True, name="scoder-serve-batcher").start()

    def submit(
        self, model_name: str, chat: list[dict], n: int, params: SamplingParams
    ) -> list[Any]:
        future: Future = Future()
        self.queue.put((model_name, chat, n, params, future))
        return future.result()

    def _work(self) -> None:
        while True:
            batch = [self.queue.get()]
            rows = batch[0][2]
            deadline = time.monotonic() + self.wait_s
            while rows < self.max_batch:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                batch.append(item)
                rows += item[2]
            groups: dict[tuple, list] = {}
            for item in batch:
                name, _, n, params, _ = item
                key = (name, n, params.temperature, params.top_p, params.max_new_tokens)
                groups.setdefault(key, []).append(item)
            for (name, n, *_), items in groups.items():
                try:
                    results = self._generate(name, [i[1] for i in items], n, items[0][3])
                    for item, completions in zip(items, results):
                        item[4].set_result(completions)
                except Exception as exc:  # the clients get the error, the worker lives on
                    for item in items:
                        item[4].set_exception(exc)

    def _generate(
        self, name: str, chats: list[list[dict]], n: int, params: SamplingParams
    ) -> list[list[Any]]:
        with self.backend.adapter(name if name in self.adapters else None):
            return self.backend.generate(chats, n, params)


def serve(
    backend: TransformersBackend, served_name: str, adapters: dict[str, str], host: str, port: int
) -> None:
    import uvicorn

    uvicorn.run(
        create_app(backend, served_name, adapters), host=host, port=port, log_level="warning"
    )
