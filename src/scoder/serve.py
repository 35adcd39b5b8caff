"""`scoder serve`: an OpenAI-compatible HTTP server over the transformers backend.

Serves the base model and any number of LoRA adapters by model name (as `vllm serve
--lora-modules` does), so CPU users and the tests run the real OpenAI client path end to end, and
one process can serve every checkpoint of a round. Endpoints, as vLLM has them:

- GET /v1/models: the base model and the loaded adapters;
- POST /v1/chat/completions (non-streaming): `n`, `seed`, `temperature`, `top_p`, `max_tokens`;
  `logprobs: true` + `top_logprobs: k` return `choices[i].logprobs.content` (each generated
  token, up to the end token, with its log-probability under the distribution it was sampled
  from and the k most likely tokens there); a trailing assistant message is a finished turn
  answered by a new one, unless `continue_final_message: true` (with `add_generation_prompt:
  false`, or left out) continues it; `response_format` is accepted and ignored (no structured
  output, as with `transformers serve`), other unknown fields are ignored too;
- POST /v1/load_lora_adapter {"lora_name", "lora_path"} loads an adapter at run time (200 with a
  plain-text message; 400 for a bad path or a name already loaded), POST
  /v1/unload_lora_adapter {"lora_name"} removes one (404 for a name not loaded).

One worker thread owns the model: generation and adapter loading both go through its queue, so
an adapter is never loaded while a batch is generating.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scoder.errors import ScoderError
from scoder.models.base import Completion, SamplingParams
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
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # vLLM's rendering flags; add_generation_prompt left out = "not when continuing"
    continue_final_message: bool = False
    add_generation_prompt: bool | None = None
    response_format: dict[str, Any] | None = None  # accepted and ignored


class LoadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str = ""
    lora_path: str = ""


class UnloadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str = ""


class Refused(Exception):
    """A request the server turns down with `status` and `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


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
    from fastapi.responses import JSONResponse, PlainTextResponse

    adapters = dict(adapters or {})  # changed by the batcher thread alone
    if adapters:
        backend.load_adapters({name: Path(path) for name, path in adapters.items()})
    batcher = _Batcher(backend, served_name, max_batch=max_batch, wait_s=batch_wait_s)
    app = FastAPI(title="scoder serve")
    created = int(time.time())

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse(
            status_code=status,
            content={"error": {"message": message, "type": kind, "code": status}},
        )

    def serving() -> str:
        return ", ".join([served_name, *list(adapters)])

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        base = {"id": served_name, "root": served_name, "parent": None}
        loaded = [{"id": n, "root": p, "parent": served_name} for n, p in list(adapters.items())]
        return {
            "object": "list",
            "data": [
                {**card, "object": "model", "created": created, "owned_by": "scoder"}
                for card in [base, *loaded]
            ],
        }

    @app.post("/v1/chat/completions")
    def chat(request: ChatRequest) -> Any:
        if request.model != served_name and request.model not in adapters:
            return error(
                404,
                f"model {request.model!r} is not served here (serving: {serving()})",
                "model_not_found",
            )
        chat_messages = [m.model_dump() for m in request.messages]
        if request.top_logprobs is not None and not request.logprobs:
            return error(400, "when using `top_logprobs`, `logprobs` must be set to true")
        if request.continue_final_message and request.add_generation_prompt:
            return error(
                400, "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
            )
        if request.continue_final_message and chat_messages[-1]["role"] != "assistant":
            return error(400, "continue_final_message needs a final assistant message to continue")
        continuing = request.continue_final_message
        rendering = (
            continuing,
            not continuing
            if request.add_generation_prompt is None
            else request.add_generation_prompt,
        )
        top = request.top_logprobs or 0
        params = SamplingParams(
            temperature=request.temperature,
            top_p=request.top_p,
            max_new_tokens=request.max_completion_tokens
            or request.max_tokens
            or DEFAULT_MAX_TOKENS,
            seed=request.seed if request.seed is not None else 0,
            # the chosen tokens' logprobs come with at least one alternative; cut to `top` below
            logprobs=max(top, 1) if request.logprobs else 0,
        )
        try:
            completions = batcher.submit(request.model, chat_messages, rendering, request.n, params)
        except ScoderError as exc:  # e.g. the adapter was unloaded since the check above
            return error(404, str(exc), "model_not_found")
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
                    "logprobs": _logprobs_json(c, top) if request.logprobs else None,
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

    def load(name: str, path: str) -> None:  # on the batcher thread
        if name == served_name or name in adapters:
            raise Refused(400, f"The lora adapter '{name}' has already been loaded.")
        try:
            backend.load_adapters({name: Path(path)})
        except Exception as exc:
            raise Refused(400, f"cannot load LoRA adapter '{name}' from {path}: {exc}") from None
        adapters[name] = path

    def unload(name: str) -> None:  # on the batcher thread
        if name not in adapters:
            raise Refused(404, f"The lora adapter '{name}' cannot be found.")
        backend.unload_adapter(name)
        del adapters[name]

    @app.post("/v1/load_lora_adapter")
    def load_lora_adapter(request: LoadAdapterRequest) -> Any:
        if not request.lora_name or not request.lora_path:
            return error(400, "Both 'lora_name' and 'lora_path' must be provided.")
        try:
            batcher.run(lambda: load(request.lora_name, request.lora_path))
        except Refused as exc:
            return error(exc.status, exc.message)
        return PlainTextResponse(f"Success: LoRA adapter '{request.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    def unload_lora_adapter(request: UnloadAdapterRequest) -> Any:
        if not request.lora_name:
            return error(400, "'lora_name' needs to be provided to unload a LoRA adapter.")
        try:
            batcher.run(lambda: unload(request.lora_name))
        except Refused as exc:
            return error(exc.status, exc.message, "not_found_error")
        return PlainTextResponse(
            f"Success: LoRA adapter '{request.lora_name}' removed successfully."
        )

    return app


def _logprobs_json(completion: Completion, top: int) -> dict[str, Any]:
    """OpenAI's `choices[i].logprobs`."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {
            "token": token,
            "logprob": logprob,
            "bytes": list(token.encode("utf-8", errors="replace")),
        }

    return {
        "content": [
            {
                **entry(t.token, t.logprob),
                "top_logprobs": [entry(alt, lp) for alt, lp in t.top[:top]],
            }
            for t in completion.logprobs or ()
        ],
        "refusal": None,
    }


@dataclass
class _Job:
    model: str
    chat: list[dict]
    rendering: tuple[bool, bool]
    n: int
    params: SamplingParams
    future: Future


@dataclass
class _Task:
    fn: Callable[[], Any]
    future: Future


class _Batcher:
    """Requests that arrive together are generated together.

    One worker thread owns the model. It takes the first waiting request, gathers whatever else
    arrives within `wait_s` (up to `max_batch` rows), and runs each group of the same model
    (adapter), n and sampling settings as one `generate` call, so concurrent clients get the
    batched throughput of the in-process backend. A group shares one seeded random stream: the
    first request's seed. Other work on the model (loading an adapter) waits in the same queue
    and runs between batches, in the order it arrived.
    """

    def __init__(
        self,
        backend: TransformersBackend,
        served_name: str,
        *,
        max_batch: int,
        wait_s: float,
    ):
        self.backend, self.served_name = backend, served_name
        self.max_batch, self.wait_s = max_batch, wait_s
        self.queue: queue.Queue[_Job | _Task] = queue.Queue()
        threading.Thread(target=self._work, daemon=True, name="scoder-serve-batcher").start()

    def submit(
        self,
        model_name: str,
        chat: list[dict],
        rendering: tuple[bool, bool],
        n: int,
        params: SamplingParams,
    ) -> list[Completion]:
        future: Future = Future()
        self.queue.put(_Job(model_name, chat, rendering, n, params, future))
        return future.result()

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the worker thread, between batches; its result or its exception."""
        future: Future = Future()
        self.queue.put(_Task(fn, future))
        return future.result()

    def _work(self) -> None:
        pending: _Job | _Task | None = None
        while True:
            first = pending or self.queue.get()
            pending = None
            if isinstance(first, _Task):
                self._run_task(first)
                continue
            batch = [first]
            rows = first.n
            deadline = time.monotonic() + self.wait_s
            while rows < self.max_batch:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if isinstance(item, _Task):
                    pending = item  # after the jobs that came before it
                    break
                batch.append(item)
                rows += item.n
            groups: dict[tuple, list[_Job]] = {}
            for job in batch:
                p = job.params
                key = (job.model, job.n, p.temperature, p.top_p, p.max_new_tokens, p.logprobs)
                groups.setdefault(key, []).append(job)
            for jobs in groups.values():
                try:
                    results = self._generate(jobs)
                    for job, completions in zip(jobs, results):
                        job.future.set_result(completions)
                except Exception as exc:  # the clients get the error, the worker lives on
                    for job in jobs:
                        job.future.set_exception(exc)

    def _run_task(self, task: _Task) -> None:
        try:
            task.future.set_result(task.fn())
        except Exception as exc:
            task.future.set_exception(exc)

    def _generate(self, jobs: list[_Job]) -> list[list[Completion]]:
        first = jobs[0]
        with self.backend.adapter(None if first.model == self.served_name else first.model):
            return self.backend.generate(
                [job.chat for job in jobs],
                first.n,
                first.params,
                rendering=[job.rendering for job in jobs],
            )


def serve(
    backend: TransformersBackend, served_name: str, adapters: dict[str, str], host: str, port: int
) -> None:
    import uvicorn

    uvicorn.run(
        create_app(backend, served_name, adapters), host=host, port=port, log_level="warning"
    )
