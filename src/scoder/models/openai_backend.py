"""Generation through any OpenAI-compatible server (hosted APIs, vLLM, SGLang, TGI, `scoder serve`).

Async requests with bounded concurrency; the official client retries 429/5xx/timeouts/connection
errors with exponential backoff (honouring Retry-After). `n` samples go in one request while the
server honours `n`, else one request per sample. Token usage is summed (and priced when a price
table is given). With a request log, every finished request is appended as it completes, so a
crash or Ctrl-C loses nothing and a re-run sends only the requests that are missing.

Servers differ in what they take beyond plain chat completion: vLLM continues a trailing assistant
message (`continue_final_message`), returns logprobs and enforces JSON schemas; `transformers
serve` answers 422 to fields it does not know and ignores `logprobs` and `response_format`;
hosted APIs refuse vLLM's fields with 400. So `capabilities()` finds out, once per backend (one
server and model), with a few tiny probe requests (see `_probe`; not counted in `usage`), and a
request carries a field beyond plain chat completion only where the server honours it: vLLM's
continuation fields, `logprobs`/`top_logprobs` (SamplingParams.logprobs), a strict
`response_format` json_schema (SamplingParams.json_schema). The answer is kept beside the request
log (`<log>.capabilities.json`), so a resumed run sends the very same requests (and finds them in
the log) without asking again.

LoRA checkpoints: `load_adapters` registers each checkpoint with the server (POST
/v1/load_lora_adapter, as vLLM with runtime LoRA updating and `scoder serve` take) under a name
unique to the checkpoint's content, or, with lora_adapters="preloaded", checks that the server
already serves each under its own name; `adapter(name)` then sends requests to that model name.

Several endpoints (`base_url` a list, e.g. one vLLM server per GPU, all serving one model) are
one backend: a request goes to the least busy live one (scoder.models.endpoints); one failing
after the client's retries (connection lost, timeout, 5xx) is marked down for a while (a warning
line; `usage["endpoint_failures"]`) and the request goes to another; the run stops, resumably,
only when none is left. At start unreachable ones start down (one serving another model is an
error). Capabilities are probed once, on the first live endpoint: they serve one model, and a
request built for a capability one of them lacked is refused with a clear error anyway.
Adapters are registered on (preloaded: checked on) every live endpoint, and adapter requests go
only to endpoints that have them.

Identity (`describe()["digest"]`, read by stage fingerprints): weights behind an API are not ours
to hash, so it is the address(es) and the model name. One endpoint keeps the identity it always
had; several, their sorted set: order does not matter, while adding or removing one changes it
as changing the one URL does (scoder cannot tell that a new address serves the same weights, and
the loop's fingerprints read the config's `model.base_url`, sorted there, the same way). An
endpoint that went down need not leave the list: the run goes on without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from scoder.errors import ScoderError
from scoder.models.base import Capabilities, Chat, Completion, SamplingParams, TokenLogprob
from scoder.models.endpoints import Endpoint, EndpointLost, EndpointPool, NoEndpointLeft
from scoder.store import file_digest, write_json

# The probe for structured output: an answer that only a server enforcing the schema gives to
# "Say hello".
_DIGIT_SCHEMA = {
    "type": "object",
    "properties": {"digit": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["digit"],
    "additionalProperties": False,
}


class OpenAIBackend:
    # the server applies the model's chat template to every request
    uses_chat_template = True

    def __init__(
        self,
        *,
        base_url: str | Sequence[str],
        model: str,
        api_key_env: str | None = None,
        max_concurrency: int = 16,
        max_retries: int = 5,
        timeout_s: float = 300.0,
        price_per_million_tokens: dict[str, float] | None = None,
        lora_adapters: str = "load",
        lora_path_map: Mapping[str, str] | None = None,
        check_server: bool = True,
        down_for_s: float = 30.0,
    ):
        import openai

        if api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise ScoderError(
                    f"model.api_key_env names {api_key_env!r}, but that environment variable is not set"
                )
        else:
            api_key = "none"  # local servers take any key
        self.base_url = base_url  # as given: one URL, or the list
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.pool = EndpointPool(urls, max_concurrency=max_concurrency, down_for_s=down_for_s)
        self.model_id = model
        self.max_concurrency = max_concurrency
        self.price = price_per_million_tokens
        self.usage: dict[str, Any] = {
            "requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cached_requests": 0,
            "per_endpoint": dict.fromkeys(urls, 0),  # answered requests: the spread
        }
        self.request_log: Path | None = None
        self._supports_n: bool | None = None
        if lora_adapters not in ("load", "preloaded"):
            raise ScoderError(f"model.lora_adapters is load or preloaded (got {lora_adapters!r})")
        self.lora_adapters = lora_adapters
        self.lora_path_map = dict(lora_path_map or {})
        self.adapters: dict[str, str] = {}  # checkpoint name -> the model name the server uses
        self._active: str | None = None  # the served name requests go to (None: the base model)
        self._probe_result: Capabilities | None = None  # n aside: found out by the first n > 1
        self._client_args = dict(api_key=api_key, max_retries=max_retries, timeout=timeout_s)
        self._openai = openai
        if check_server:
            self._check_server()

    def _client(self, url: str, **overrides: Any) -> Any:
        return self._openai.OpenAI(base_url=url, **{**self._client_args, **overrides})

    def _check_server(self) -> None:
        """Every endpoint answers and serves the model; with several, an unreachable one starts
        down (the others carry the run) and only none reachable is an error."""
        for endpoint in self.pool.endpoints:
            url = endpoint.url
            client = self._client(url, max_retries=1)
            try:
                served = [m.id for m in client.models.list()]
            except self._openai.APIConnectionError:
                self._endpoint_lost(endpoint, f"cannot reach the OpenAI-compatible server at {url}")
                continue
            except self._openai.APIStatusError as exc:
                if exc.status_code in (401, 403):
                    raise ScoderError(
                        f"the server at {url} refused the API key ({exc.status_code})"
                    ) from None
                continue  # some servers do not list models; requests will tell
            finally:
                client.close()
            if served and self.model_id not in served:
                raise ScoderError(
                    f"the server at {url} does not serve {self.model_id!r} (it serves: {', '.join(served)})"
                )
        if not self.pool.live():
            raise self._nothing_left()

    def _endpoint_lost(self, endpoint: Endpoint, reason: str) -> None:
        self.pool.mark_down(endpoint, reason)
        self.usage["endpoint_failures"] = self.pool.failures()

    def _nothing_left(self, resumable: bool = False, skip: Sequence[int] = ()) -> ScoderError:
        return self.pool.nothing_left(self._active, skip=skip, resumable=resumable)

    def use_request_log(self, path: Path) -> None:
        """Keep finished requests in `path` (JSONL) and answer repeated requests from it."""
        self.request_log = path

    # -- capabilities -----------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        """What this server does for this model: recorded beside the request log by an earlier
        run, else probed (once); `n` as far as requests have shown it."""
        found = self._recorded_capabilities() or self._probed()
        n_known = {
            None: "not tried yet",
            True: "honoured",
            False: "ignored (one request per sample)",
        }[self._supports_n]
        return replace(found, n=self._supports_n is True, how=f"{found.how}; n: {n_known}")

    def _probed(self) -> Capabilities:
        """Probed once, on the first live endpoint (see the module docstring); one lost while
        probing is marked down and the next is asked."""
        while self._probe_result is None:
            live = self.pool.live()
            if not live:
                raise self._nothing_left(resumable=True)
            try:
                self._probe_result = self._probe(live[0].url)
            except EndpointLost as lost:
                self._endpoint_lost(live[0], lost.reason)
        return self._probe_result

    def _probe(self, url: str) -> Capabilities:
        """Tiny requests (a few tokens, temperature 0) that tell what the server does.

        continuation: the chat [user, assistant] sent with vLLM's continue_final_message and
        add_generation_prompt=false, then without them: a server that continues the message
        renders fewer prompt tokens (no end of turn, no new assistant header); a refusal (4xx),
        equal counts (the fields were ignored) or no usage mean no. logprobs: asked for with
        top_logprobs=2, yes when the answer carries them. json_schema: a schema demanding
        {"digit": 0-9} and the prompt "Say hello": yes only when the answer follows the schema.
        A lost connection is an error; any other failure means no.
        """
        client = self._client(url)
        notes: list[str] = []

        def ask(what: str, messages: Chat, max_tokens: int, **fields: Any) -> Any:
            try:
                return client.chat.completions.create(
                    model=self.model_id,
                    messages=messages,
                    max_tokens=max_tokens,
                    temperature=0,
                    **fields,
                )
            except self._openai.APIConnectionError as exc:
                raise EndpointLost(
                    f"cannot reach the OpenAI-compatible server at {url} ({exc})"
                ) from None
            except self._openai.APIStatusError as exc:
                notes.append(f"{what}: refused ({exc.status_code})")
            except (self._openai.APIError, ValueError, TypeError) as exc:
                notes.append(f"{what}: failed ({type(exc).__name__})")
            return None

        def prompt_tokens(response: Any) -> int | None:
            usage = getattr(response, "usage", None)
            return getattr(usage, "prompt_tokens", None) if usage else None

        try:
            hello: Chat = [{"role": "user", "content": "Say hello"}]
            prefilled: Chat = [*hello, {"role": "assistant", "content": "Hello"}]
            continued = ask(
                "continuation",
                prefilled,
                1,
                extra_body={"continue_final_message": True, "add_generation_prompt": False},
            )
            continuation = False
            if continued is not None:
                fresh = ask("continuation (new turn)", prefilled, 1)
                a, b = prompt_tokens(continued), prompt_tokens(fresh)
                continuation = bool(a and b and a < b)
                notes.append(f"continuation: prompt tokens {a} continued, {b} as a new turn")
            answer = ask("logprobs", hello, 1, logprobs=True, top_logprobs=2)
            choices = getattr(answer, "choices", None) or [None]
            logprobs = bool(_choice_logprobs(choices[0]))
            if answer is not None:
                notes.append(f"logprobs: {'returned' if logprobs else 'not returned'}")
            answer = ask(
                "json_schema",
                hello,
                8,
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "digit", "schema": _DIGIT_SCHEMA, "strict": True},
                },
            )
            choices = getattr(answer, "choices", None) or [None]
            message = getattr(choices[0], "message", None)
            json_schema = _follows_digit_schema(getattr(message, "content", None))
            if answer is not None:
                notes.append(f"json_schema: {'followed' if json_schema else 'not followed'}")
        finally:
            client.close()
        return Capabilities(
            continuation=continuation,
            logprobs=logprobs,
            json_schema=json_schema,
            n=False,
            how="probed: " + "; ".join(notes),
        )

    def _recorded_capabilities(self) -> Capabilities | None:
        """The capabilities kept beside the request log by an earlier run for this model. They
        belong with the log (whose requests were built with them), as the log does not depend
        on the server's address either: delete the file to probe again."""
        path = self._capabilities_path()
        if path is None or not path.is_file():
            return None
        try:
            kept = json.loads(path.read_text(encoding="utf-8"))
            if kept["model"] != self.model_id:
                return None
            caps = Capabilities(**kept["capabilities"])
            return replace(caps, how=f"recorded beside the request log ({caps.how})")
        except (json.JSONDecodeError, KeyError, TypeError):
            return None

    def _capabilities_path(self) -> Path | None:
        if self.request_log is None:
            return None
        return self.request_log.with_name(self.request_log.stem + ".capabilities.json")

    def _request_capabilities(self) -> Capabilities:
        """The capabilities requests are built with: those recorded beside the request log (so
        a resumed run sends the requests it logged), else probed, and then recorded there."""
        recorded = self._recorded_capabilities()
        if recorded is not None:
            return recorded
        probed = self._probed()
        path = self._capabilities_path()
        if path is not None:
            kept = {"base_url": self.base_url, "model": self.model_id}
            write_json(path, {**kept, "capabilities": probed.to_dict()})
        return probed

    # -- LoRA checkpoints -------------------------------------------------------------------

    def load_adapters(self, adapters: Mapping[str, Path]) -> None:
        """Make each checkpoint servable by its name on every live endpoint (see the module
        docstring); an endpoint lost meanwhile is marked down and gets no adapter requests."""
        names: dict[str, str] = {}  # checkpoint name -> the model name the servers use
        for name, path in adapters.items():
            weights = Path(path) / "adapter_model.safetensors"
            if self.lora_adapters == "preloaded":
                names[name] = name
            elif not (Path(path) / "adapter_config.json").is_file() or not weights.is_file():
                raise ScoderError(
                    f"{path} is not a LoRA adapter directory (adapter_config.json and "
                    "adapter_model.safetensors)"
                )
            else:
                names[name] = f"{name}-{file_digest(weights).removeprefix('sha256:')[:8]}"
        for endpoint in self.pool.live():
            try:
                if self.lora_adapters == "preloaded":
                    self._check_preloaded(endpoint.url, list(names))
                else:
                    self._load_on_endpoint(endpoint.url, adapters, names)
            except EndpointLost as lost:
                self._endpoint_lost(endpoint, lost.reason)
                continue
            endpoint.adapters.update(names.values())
        if not any(set(names.values()) <= e.adapters for e in self.pool.endpoints):
            raise self._nothing_left()
        self.adapters.update(names)

    def _check_preloaded(self, url: str, names: list[str]) -> None:
        served = self._served_models(url)
        missing = [name for name in names if name not in served]
        if missing:
            raise ScoderError(
                f"the server at {url} does not serve the LoRA checkpoint(s) "
                f"{', '.join(missing)} (model.lora_adapters=preloaded expects each under its "
                f"own name, e.g. vllm serve --lora-modules NAME=PATH; it serves: "
                f"{', '.join(served) or 'nothing listed'})"
            )

    def _load_on_endpoint(
        self, url: str, adapters: Mapping[str, Path], names: Mapping[str, str]
    ) -> None:
        client = self._client(url)
        try:
            for name, path in adapters.items():
                remote = self._server_path(Path(path))
                self._load_on_server(client, url, name, names[name], remote)
        finally:
            client.close()

    def _load_on_server(self, client: Any, base: str, name: str, served: str, remote: str) -> None:
        url = base.rstrip("/").removesuffix("/v1") + "/v1/load_lora_adapter"
        try:
            client.post(url, cast_to=str, body={"lora_name": served, "lora_path": remote})
        except self._openai.APIConnectionError:
            raise EndpointLost(f"cannot reach the OpenAI-compatible server at {base}") from None
        except self._openai.APIStatusError as exc:
            text = exc.response.text
            if exc.status_code == 400 and "already" in text.lower():
                return  # the same content under the same name: loaded by an earlier run
            hint = ""
            if exc.status_code in (404, 405) and "not found" in text.lower() and "detail" in text:
                hint = (
                    "; this server cannot load adapters at run time (vLLM needs --enable-lora "
                    "and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), or serve the checkpoints "
                    "yourself and set model.lora_adapters=preloaded"
                )
            raise ScoderError(
                f"the server at {base} did not load LoRA checkpoint {name!r} from "
                f"{remote} ({exc.status_code}: {text[:300]}){hint}"
            ) from None

    def _server_path(self, path: Path) -> str:
        """`path` as the server sees it: rewritten by lora_path_map (the longest match wins)."""
        path = path.absolute()
        best: tuple[int, str] | None = None
        for local, remote in self.lora_path_map.items():
            root = Path(local).absolute()
            if path == root or root in path.parents:
                rel = path.relative_to(root).as_posix()
                mapped = remote if rel == "." else f"{remote.rstrip('/')}/{rel}"
                if best is None or len(root.parts) > best[0]:
                    best = (len(root.parts), mapped)
        return best[1] if best else str(path)

    def _served_models(self, url: str) -> list[str]:
        client = self._client(url, max_retries=1)
        try:
            return [m.id for m in client.models.list()]
        except self._openai.APIConnectionError:
            raise EndpointLost(f"cannot reach the OpenAI-compatible server at {url}") from None
        except self._openai.APIStatusError as exc:
            raise ScoderError(
                f"the server at {url} does not list its models ({exc.status_code})"
            ) from None
        finally:
            client.close()

    @contextmanager
    def adapter(self, name: str | None) -> Iterator[None]:
        if name is not None and name not in self.adapters:
            raise ScoderError(
                f"no adapter named {name!r} (loaded: {', '.join(self.adapters) or 'none'})"
            )
        previous, self._active = self._active, None if name is None else self.adapters[name]
        try:
            yield
        finally:
            self._active = previous

    def describe(self) -> dict[str, Any]:
        # weights behind an API are not ours to hash: the identity is the endpoint(s) + name
        if len(self.pool.endpoints) > 1:
            urls: str | list[str] = sorted(self.pool.urls)
            address = json.dumps(urls)  # one string that no single URL can be
        else:
            urls = address = self.pool.urls[0]
        usage = {k: dict(v) if isinstance(v, dict) else v for k, v in self.usage.items()}
        info: dict[str, Any] = {
            "id": self.model_id,
            "backend": "openai",
            "base_url": urls,
            "digest": "api:"
            + hashlib.sha256(f"{address}|{self.model_id}".encode()).hexdigest()[:16],
            "source": "api",
            "usage": usage,
            "capabilities": self.capabilities().to_dict(),
        }
        down = {e.url: e.reason for e in self.pool.down()}
        if down:
            info["endpoints_down"] = down
        if self.adapters:
            info["adapters"] = dict(self.adapters)  # checkpoint name -> name on the server
        if self.price:
            info["usage"]["cost"] = round(
                self.usage["prompt_tokens"] / 1e6 * self.price.get("prompt", 0.0)
                + self.usage["completion_tokens"] / 1e6 * self.price.get("completion", 0.0),
                6,
            )
        return info

    def generate(
        self, chats: Sequence[Chat], n: int, params: SamplingParams
    ) -> list[list[Completion]]:
        caps = None
        prefilled = any(_ends_with_assistant(chat) for chat in chats)
        if prefilled or params.logprobs > 0 or params.json_schema is not None:
            caps = self._request_capabilities()
            if prefilled and not caps.continuation:
                raise self._cannot_continue()
        return asyncio.run(self._generate(chats, n, params, caps))

    # --------------------------------------------------------------------------------------

    def _cannot_continue(self) -> ScoderError:
        where = ", ".join(self.pool.urls)
        return ScoderError(
            f"the server at {where} does not continue a trailing assistant message "
            f"for {self.model_id} (capabilities().continuation is false): send chats that end "
            "with a user turn to it"
        )

    def _body(
        self,
        chat: Chat,
        n: int,
        params: SamplingParams,
        seed: int,
        caps: Capabilities | None = None,
    ) -> dict[str, Any]:
        """One request; a field beyond plain chat completion only where the server honours it."""
        body: dict[str, Any] = {
            "model": self._active or self.model_id,
            "messages": chat,
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "seed": seed,
        }
        if _ends_with_assistant(chat) or params.logprobs > 0 or params.json_schema is not None:
            caps = caps or self._request_capabilities()
        if _ends_with_assistant(chat):
            if not caps.continuation:
                raise self._cannot_continue()
            # vLLM's (and scoder serve's) way to continue a prefilled answer
            body["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        if params.logprobs > 0 and caps.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = params.logprobs
        if params.json_schema is not None and caps.json_schema:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": params.json_schema, "strict": True},
            }
        return body

    @staticmethod
    def _key(body: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def _load_log(self) -> dict[str, list[dict[str, Any]]]:
        done: dict[str, list[dict[str, Any]]] = {}
        if self.request_log and self.request_log.is_file():
            for line in self.request_log.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    done[entry["key"]] = entry["completions"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut by a crash: that request is simply sent again
        return done

    async def _generate(
        self,
        chats: Sequence[Chat],
        n: int,
        params: SamplingParams,
        caps: Capabilities | None = None,
    ) -> list[list[Completion]]:
        pool = self.pool
        clients = [
            self._openai.AsyncOpenAI(base_url=e.url, **self._client_args) for e in pool.endpoints
        ]
        pool.start()
        done = self._load_log()
        if self.request_log:
            self.request_log.parent.mkdir(parents=True, exist_ok=True)
        log = self.request_log.open("a", encoding="utf-8") if self.request_log else None

        async def send(body: dict[str, Any]) -> tuple[Any, Endpoint]:
            """The response to `body` from the least busy live endpoint, or from another when
            that one fails after the client's retries."""
            failed: list[int] = []
            base = body["model"] == self.model_id
            lacking = [
                e.index for e in pool.endpoints if not base and body["model"] not in e.adapters
            ]
            while True:
                try:
                    endpoint = await pool.acquire([*failed, *lacking])
                except NoEndpointLeft:
                    raise self._nothing_left(resumable=True, skip=failed) from None
                url = endpoint.url
                try:
                    return await clients[endpoint.index].chat.completions.create(**body), endpoint
                except self._openai.APIConnectionError as exc:  # timeouts too
                    self._endpoint_lost(endpoint, f"lost the server at {url} ({exc})")
                except self._openai.InternalServerError as exc:  # 5xx
                    said = f"answered {exc.status_code}: {str(exc)[:300]}"
                    self._endpoint_lost(endpoint, f"the server at {url} {said}")
                except self._openai.APIStatusError as exc:  # 4xx: the request, on any endpoint
                    raise ScoderError(
                        f"the server at {url} answered {exc.status_code}: {str(exc)[:300]}; "
                        "finished requests are kept, run again to resume"
                    ) from None
                except (json.JSONDecodeError, self._openai.APIResponseValidationError) as exc:
                    raise _malformed(url, exc) from None
                finally:
                    pool.release(endpoint)
                failed.append(endpoint.index)

        async def request(body: dict[str, Any]) -> list[dict[str, Any]]:
            key = self._key(body)
            if key in done:
                self.usage["cached_requests"] += 1
                return done[key]
            response, endpoint = await send(body)
            try:
                completions = _completions(response, bool(body.get("logprobs")))
            except (AttributeError, TypeError) as exc:
                raise _malformed(endpoint.url, exc) from None
            if response.usage and completions:
                self.usage["prompt_tokens"] += response.usage.prompt_tokens
                self.usage["completion_tokens"] += response.usage.completion_tokens
            self.usage["requests"] += 1
            self.usage["per_endpoint"][endpoint.url] += 1
            if log:
                log.write(json.dumps({"key": key, "completions": completions}) + "\n")
                log.flush()
                os.fsync(log.fileno())
            done[key] = completions
            return completions

        async def one_chat(i: int, chat: Chat) -> list[Completion]:
            seed = params.seed + i * 1000
            got: list[dict[str, Any]] = []
            if n > 1:
                asked = self._body(chat, n, params, seed, caps)
                if self._supports_n is not False or self._key(asked) in done:
                    got = (await request(asked))[:n]
                    if len(got) == n:
                        self._supports_n = True
                        return [_completion(c) for c in got]
                    self._supports_n = False  # the server ignored n: ask for the rest one by one
            rest = await asyncio.gather(
                *(request(self._body(chat, 1, params, seed + j, caps)) for j in range(len(got), n))
            )
            return [_completion(c) for c in got] + [_completion(r[0]) for r in rest]

        tasks = [asyncio.ensure_future(one_chat(i, chat)) for i, chat in enumerate(chats)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            # The others stop before the log closes: a request either finished and was written,
            # or is sent again by the next run.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if log:
                log.close()
            for client in clients:
                await client.close()


def _malformed(url: str, exc: Exception) -> ScoderError:
    return ScoderError(
        f"the server at {url} sent a malformed response ({type(exc).__name__}: "
        f"{str(exc)[:200]}); finished requests are kept, run again to resume"
    )


def _completions(response: Any, logprobs: bool) -> list[dict[str, Any]]:
    """A response's choices as the request log keeps them (completion tokens shared out)."""
    completions = [
        {
            "text": choice.message.content or "",
            "finish_reason": "length" if choice.finish_reason == "length" else "stop",
            "prompt_tokens": response.usage.prompt_tokens if response.usage else 0,
            "completion_tokens": 0,
            **({"logprobs": _logprobs_entry(_choice_logprobs(choice))} if logprobs else {}),
        }
        for choice in response.choices
    ]
    if response.usage and completions:
        share = response.usage.completion_tokens / len(completions)
        for c in completions:
            c["completion_tokens"] = round(share)
    return completions


def _ends_with_assistant(chat: Chat) -> bool:
    return bool(chat) and chat[-1]["role"] == "assistant"


def _choice_logprobs(choice: Any) -> list[Any] | None:
    """`choices[i].logprobs.content` of a response, where there is one."""
    logprobs = getattr(choice, "logprobs", None)
    return getattr(logprobs, "content", None) if logprobs is not None else None


def _logprobs_entry(content: list[Any] | None) -> list[list[Any]] | None:
    """The logprobs of one choice as the request log keeps them: [token, logprob, [[token,
    logprob], ...]] per generated token."""
    if not content:
        return None
    return [
        [t.token, t.logprob, [[alt.token, alt.logprob] for alt in t.top_logprobs or []]]
        for t in content
    ]


def _completion(entry: dict[str, Any]) -> Completion:
    """A Completion from a response's (or the request log's) entry."""
    logprobs = entry.get("logprobs")
    return Completion(
        text=entry["text"],
        prompt_tokens=entry["prompt_tokens"],
        completion_tokens=entry["completion_tokens"],
        finish_reason=entry["finish_reason"],
        logprobs=None
        if logprobs is None
        else tuple(
            TokenLogprob(token, lp, tuple((alt, alt_lp) for alt, alt_lp in top))
            for token, lp, top in logprobs
        ),
    )


def _follows_digit_schema(text: str | None) -> bool:
    try:
        answer = json.loads(text or "")
    except json.JSONDecodeError:
        return False
    if not isinstance(answer, dict) or set(answer) != {"digit"}:
        return False
    return type(answer["digit"]) is int and 0 <= answer["digit"] <= 9
