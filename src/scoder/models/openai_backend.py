"""Generation through any OpenAI-compatible server (hosted APIs, vLLM, SGLang, TGI, `scoder serve`).

Async requests with bounded concurrency; the official client retries 429/5xx/timeouts/connection
errors with exponential backoff (honouring Retry-After). `n` samples go in one request while the
server honours `n`, else one request per sample. Token usage is summed (and priced when a price
table is given). With a request log, every finished request is appended as it completes, so a
crash or Ctrl-C loses nothing and a re-run sends only the requests that are missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scoder.errors import ScoderError
from scoder.models.base import Chat, Completion, SamplingParams


class OpenAIBackend:
    # the server applies the model's chat template to every request
    uses_chat_template = True

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        max_concurrency: int = 16,
        max_retries: int = 5,
        timeout_s: float = 300.0,
        price_per_million_tokens: dict[str, float] | None = None,
        check_server: bool = True,
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
        self.base_url = base_url
        self.model_id = model
        self.max_concurrency = max_concurrency
        self.price = price_per_million_tokens
        self.usage = {
            "requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cached_requests": 0,
        }
        self.request_log: Path | None = None
        self._supports_n: bool | None = None
        self._client_args = dict(
            base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout_s
        )
        self._openai = openai
        if check_server:
            self._check_server()

    def _check_server(self) -> None:
        client = self._openai.OpenAI(**{**self._client_args, "max_retries": 1})
        try:
            served = [m.id for m in client.models.list()]
        except self._openai.APIConnectionError:
            raise ScoderError(
                f"cannot reach the OpenAI-compatible server at {self.base_url}"
            ) from None
        except self._openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise ScoderError(
                    f"the server at {self.base_url} refused the API key ({exc.status_code})"
                ) from None
            return  # some servers do not list models; requests will tell
        if served and self.model_id not in served:
            raise ScoderError(
                f"the server at {self.base_url} does not serve {self.model_id!r} (it serves: {', '.join(served)})"
            )

    def use_request_log(self, path: Path) -> None:
        """Keep finished requests in `path` (JSONL) and answer repeated requests from it."""
        self.request_log = path

    def load_adapters(self, adapters: Mapping[str, Path]) -> None:
        raise ScoderError(
            "multi-checkpoint sampling needs the checkpoints loaded in process (model.backend="
            "transformers): this backend cannot attach LoRA adapters to a remote server's model"
        )

    @contextmanager
    def adapter(self, name: str | None) -> Iterator[None]:
        if name is not None:
            self.load_adapters({name: Path(name)})
        yield

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": self.model_id,
            "backend": "openai",
            "base_url": self.base_url,
            # weights behind an API are not ours to hash: the identity is the endpoint + name
            "digest": "api:"
            + hashlib.sha256(f"{self.base_url}|{self.model_id}".encode()).hexdigest()[:16],
            "source": "api",
            "usage": dict(self.usage),
        }
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
        return asyncio.run(self._generate(chats, n, params))

    # --------------------------------------------------------------------------------------

    def _body(self, chat: Chat, n: int, params: SamplingParams, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": chat,
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "seed": seed,
        }
        if chat and chat[-1]["role"] == "assistant":
            # vLLM's (and scoder serve's) way to continue a prefilled answer
            body["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
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
        self, chats: Sequence[Chat], n: int, params: SamplingParams
    ) -> list[list[Completion]]:
        client = self._openai.AsyncOpenAI(**self._client_args)
        semaphore = asyncio.Semaphore(self.max_concurrency)
        done = self._load_log()
        log = self.request_log.open("a", encoding="utf-8") if self.request_log else None
        if self.request_log:
            self.request_log.parent.mkdir(parents=True, exist_ok=True)

        async def request(body: dict[str, Any]) -> list[dict[str, Any]]:
            key = self._key(body)
            if key in done:
                self.usage["cached_requests"] += 1
                return done[key]
            async with semaphore:
                response = await client.chat.completions.create(**body)
            completions = [
                {
                    "text": choice.message.content or "",
                    "finish_reason": "length" if choice.finish_reason == "length" else "stop",
                    "prompt_tokens": response.usage.prompt_tokens if response.usage else 0,
                    "completion_tokens": 0,
                }
                for choice in response.choices
            ]
            if response.usage and completions:
                share = response.usage.completion_tokens / len(completions)
                for c in completions:
                    c["completion_tokens"] = round(share)
                self.usage["prompt_tokens"] += response.usage.prompt_tokens
                self.usage["completion_tokens"] += response.usage.completion_tokens
            self.usage["requests"] += 1
            if log:
                log.write(json.dumps({"key": key, "completions": completions}) + "\n")
                log.flush()
                os.fsync(log.fileno())
            done[key] = completions
            return completions

        async def one_chat(i: int, chat: Chat) -> list[Completion]:
            seed = params.seed + i * 1000
            if self._supports_n is not False and n > 1:
                got = await request(self._body(chat, n, params, seed))
                if len(got) == n:
                    self._supports_n = True
                    return [Completion(**c) for c in got]
                self._supports_n = False  # the server ignored n: ask once per sample
            samples = await asyncio.gather(
                *(request(self._body(chat, 1, params, seed + j)) for j in range(n))
            )
            return [Completion(**got[0]) for got in samples]

        try:
            return list(await asyncio.gather(*(one_chat(i, chat) for i, chat in enumerate(chats))))
        except self._openai.APIConnectionError as exc:
            raise ScoderError(
                f"lost the server at {self.base_url} ({exc}); finished requests are kept, run again to resume"
            ) from None
        except self._openai.APIStatusError as exc:
            raise ScoderError(
                f"the server at {self.base_url} answered {exc.status_code}: {str(exc)[:300]}; "
                "finished requests are kept, run again to resume"
            ) from None
        except (
            json.JSONDecodeError,
            self._openai.APIResponseValidationError,
            AttributeError,
            TypeError,
        ) as exc:
            raise ScoderError(
                f"the server at {self.base_url} sent a malformed response ({type(exc).__name__}: "
                f"{str(exc)[:200]}); finished requests are kept, run again to resume"
            ) from None
        finally:
            if log:
                log.close()
            await client.close()
