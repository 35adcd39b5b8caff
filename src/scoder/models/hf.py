"""Generation with transformers: batched, left-padded, chat template applied."""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from scoder.config import ModelConfig
from scoder.errors import ScoderError
from scoder.models.base import Capabilities, Chat, Completion, SamplingParams, TokenLogprob
from scoder.models.choices import choice_probabilities
from scoder.models.loading import ModelRef, load_causal_lm, load_tokenizer, resolve_model
from scoder.templates import render_plain

# One decoding step costs about the same at batch 1 and batch 16 on a CPU (weight reads dominate),
# and at batch 1 and 64 on a GPU (per-step Python overhead dominates): see BENCHMARKS.md.
AUTO_BATCH_SIZE = {"cpu": 16, "cuda": 64}
# Below this many shared prompt tokens, computing a shared prefix is not worth a forward pass.
MIN_SHARED_PREFIX = 16


class TransformersBackend:
    """A causal LM from a local directory, generating for many chats at once."""

    def __init__(
        self,
        ref: ModelRef,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | str = "auto",
        trust_remote_code: bool = False,
        plain_transcript: bool = False,
    ):
        self.ref = ref
        self.model_id = ref.id
        self.tokenizer = load_tokenizer(ref, trust_remote_code=trust_remote_code)
        self.model = load_causal_lm(
            ref, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
        self.device = self.model.device
        self.dtype = self.model.dtype
        self.batch_size = (
            AUTO_BATCH_SIZE.get(self.device.type, 16) if batch_size == "auto" else int(batch_size)
        )
        # A model trained on the plain transcript is prompted with it, chat template or not.
        self.uses_chat_template = bool(self.tokenizer.chat_template) and not plain_transcript
        self.adapters: dict[str, Path] = {}
        # transformers >= 5.2x names the generate/forward argument `cache`; older ones
        # `past_key_values`.
        forward_args = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward_args else "past_key_values"
        self.eos_ids = self._eos_ids()
        self._token_texts: dict[int, str] = {}

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, *, plain_transcript: bool = False
    ) -> TransformersBackend:
        """The model `cfg` describes, loaded here."""
        return cls(
            resolve_model(cfg.name, revision=cfg.revision),
            device=cfg.device,
            dtype=cfg.dtype,
            batch_size=cfg.batch_size,
            trust_remote_code=cfg.trust_remote_code,
            plain_transcript=plain_transcript,
        )

    def capabilities(self) -> Capabilities:
        return Capabilities(
            continuation=True,
            logprobs=True,
            json_schema=False,
            n=True,
            how="in process",
            choices=True,
        )

    def choice_probabilities(
        self,
        chats: Sequence[Chat],
        steps: Sequence[tuple[str, Sequence[str]]],
        *,
        share: tuple[int, int] = (0, 1),
    ) -> list[list[dict[str, float]]]:
        return choice_probabilities(
            self.model,
            self.tokenizer,
            self.encode(chats),
            steps,
            batch_size=self.batch_size,
            share=share,
        )

    def use_request_log(self, path: Path) -> None:
        """Nothing to keep: the model is here, a re-run generates again."""

    def load_adapters(self, adapters: Mapping[str, Path]) -> None:
        """Attach each LoRA adapter to the one loaded base model, under its name."""
        from peft import PeftModel

        for name, path in adapters.items():
            if not (Path(path) / "adapter_config.json").is_file():
                raise ScoderError(f"{path} is not a LoRA adapter directory")
            try:
                if not isinstance(self.model, PeftModel):
                    self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
                else:
                    self.model.load_adapter(path, adapter_name=name)
            except Exception:
                # leave no half-loaded adapter behind (a later load may reuse the name)
                if isinstance(self.model, PeftModel) and name in self.model.peft_config:
                    self._drop_adapter(name)
                raise
            self.adapters[name] = Path(path)
        self.model.eval()

    def unload_adapter(self, name: str) -> None:
        """Detach a loaded adapter; after the last one the model is the plain base model again."""
        if name not in self.adapters:
            raise ScoderError(f"no adapter named {name!r}")
        self._drop_adapter(name)
        del self.adapters[name]

    def _drop_adapter(self, name: str) -> None:
        if set(self.model.peft_config) == {name}:
            self.model = self.model.unload()  # removes the LoRA layers without merging them
        else:
            self.model.delete_adapter(name)

    @contextmanager
    def adapter(self, name: str | None) -> Iterator[None]:
        if name is None:
            with self.model.disable_adapter() if self.adapters else nullcontext():
                yield
            return
        if name not in self.adapters:
            raise ScoderError(
                f"no adapter named {name!r} (loaded: {', '.join(self.adapters) or 'none'})"
            )
        self.model.set_adapter(name)
        yield

    def _eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for value in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif value:
                ids.update(value)
        return sorted(ids)

    def describe(self) -> dict[str, Any]:
        return {
            **self.ref.describe(),
            "backend": "transformers",
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "batch_size": self.batch_size,
        }

    def render(
        self,
        chat: Chat,
        *,
        continue_final: bool | None = None,
        add_generation_prompt: bool | None = None,
    ) -> tuple[str, bool]:
        """The prompt text for a chat, and whether it already holds the special tokens.

        By default (the Protocol's rule) a trailing assistant message is continued and any other
        chat opens a new assistant turn. `continue_final` and `add_generation_prompt` are vLLM's
        request flags (scoder serve passes a request's): a trailing assistant message that is not
        continued is a finished turn, and the generation prompt opens a new one after it.
        """
        last_is_assistant = bool(chat) and chat[-1]["role"] == "assistant"
        continuing = last_is_assistant if continue_final is None else continue_final
        if continuing and not last_is_assistant:
            raise ScoderError("only a chat that ends with an assistant message can be continued")
        opening = not continuing if add_generation_prompt is None else add_generation_prompt
        if continuing and opening:
            raise ScoderError("a continued assistant message cannot also open a new turn")
        if self.uses_chat_template:
            text = self.tokenizer.apply_chat_template(
                chat,
                tokenize=False,
                add_generation_prompt=opening,
                continue_final_message=continuing,
            )
            return text, True
        # Base models without a chat template get the plain transcript they are trained on.
        text = render_plain(chat)
        if last_is_assistant and not continuing and opening:
            text += "\n\n### Response\n"
        elif not last_is_assistant and not opening:
            text = text.removesuffix("\n\n### Response\n")
        return text, False

    def encode(
        self, chats: Sequence[Chat], rendering: Sequence[tuple[bool, bool]] | None = None
    ) -> list[list[int]]:
        out = []
        for k, chat in enumerate(chats):
            flags = {}
            if rendering is not None:
                flags = dict(zip(("continue_final", "add_generation_prompt"), rendering[k]))
            text, has_special = self.render(chat, **flags)
            out.append(self.tokenizer(text, add_special_tokens=not has_special)["input_ids"])
        return out

    def generate(
        self,
        chats: Sequence[Chat],
        n: int,
        params: SamplingParams,
        *,
        rendering: Sequence[tuple[bool, bool]] | None = None,
        share: tuple[int, int] = (0, 1),
    ) -> list[list[Completion]]:
        """`rendering`: per chat, vLLM's (continue_final_message, add_generation_prompt) flags
        (scoder serve's requests); None: the Protocol's rule (see `render`). `share`: only this
        process's share of the batches (see `_generate`)."""
        import torch

        with torch.inference_mode():
            return self._generate(chats, n, params, rendering, share=share)

    def _generate(
        self,
        chats: Sequence[Chat],
        n: int,
        params: SamplingParams,
        rendering: Sequence[tuple[bool, bool]] | None = None,
        *,
        share: tuple[int, int] = (0, 1),
    ) -> list[list[Completion]]:
        """Every (chat, sample) row, or with `share=(k, m)` only the rows of every m-th batch from
        the k-th (None elsewhere): m processes that each take a share make the very batches, seeds
        and shared prefix one process makes, so their rows together equal its."""
        prompts = self.encode(chats, rendering)
        shared = self._shared_prefix(prompts)
        # Each (prompt, sample) is one row; rows of similar length share a batch to waste
        # little compute on padding.
        jobs = sorted(
            ((i, j) for i in range(len(prompts)) for j in range(n)),
            key=lambda ij: (-len(prompts[ij[0]]), ij),
        )
        results: list[list[Completion | None]] = [[None] * n for _ in prompts]
        batches = [jobs[k : k + self.batch_size] for k in range(0, len(jobs), self.batch_size)]
        mine = [(b, batch) for b, batch in enumerate(batches) if b % share[1] == share[0]]
        total = sum(len(batch) for _, batch in mine)
        bar = tqdm(total=total, desc="generating", unit="seq", disable=not sys.stderr.isatty())
        for batch_index, batch in mine:
            rows = [prompts[i] for i, _ in batch]
            for (i, j), completion in zip(
                batch, self._generate_batch(rows, params, batch_index, shared)
            ):
                results[i][j] = completion
            bar.update(len(batch))
        bar.close()
        return results  # type: ignore[return-value]

    def _shared_prefix(self, prompts: list[list[int]]) -> tuple[int, Any] | None:
        """The KV cache of the token prefix every prompt shares (the template), computed once.

        On a CPU prefill is compute-bound and the synthesis template is about two thirds of each
        prompt, so computing it once per call instead of once per row is most of the speed-up of
        batching. Rows then hold [prefix][padding][own tokens]; the padding is masked and the
        positions continue from the prefix, so the result equals unshared generation.
        """
        if not prompts:
            return None
        length = 0
        shortest = min(len(p) for p in prompts)
        first = prompts[0]
        while length < shortest - 1 and all(p[length] == first[length] for p in prompts):
            length += 1
        if length < MIN_SHARED_PREFIX:
            return None
        import torch

        out = self.model(
            input_ids=torch.tensor([first[:length]], device=self.device), use_cache=True
        )
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if not hasattr(cache, "batch_repeat_interleave"):
            return None  # a cache type we cannot copy per row: generate without sharing
        return length, cache

    def _generate_batch(
        self,
        rows: list[list[int]],
        params: SamplingParams,
        batch_index: int,
        shared: tuple[int, Any] | None = None,
    ) -> list[Completion]:
        import torch

        pad = self.tokenizer.pad_token_id
        prefix_len = shared[0] if shared else 0
        prefix = rows[0][:prefix_len]
        tails = [r[prefix_len:] for r in rows]
        width = max(len(t) for t in tails)
        input_ids = torch.tensor(
            [prefix + [pad] * (width - len(t)) + t for t in tails], device=self.device
        )
        attention_mask = torch.tensor(
            [[1] * prefix_len + [0] * (width - len(t)) + [1] * len(t) for t in tails],
            device=self.device,
        )
        extra: dict[str, Any] = {}
        if shared:
            cache = copy.deepcopy(shared[1])
            cache.batch_repeat_interleave(len(rows))
            extra[self._cache_kwarg] = cache
        torch.manual_seed(params.seed + batch_index)
        sampling: dict[str, Any] = (
            {
                "do_sample": True,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": 0,
            }
            if params.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        if params.logprobs > 0:
            # Only then: keeping every step's scores costs memory (steps x rows x vocabulary).
            extra.update(output_scores=True, return_dict_in_generate=True)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=self.eos_ids,
            **sampling,
            **extra,
        )
        sequences = output.sequences if params.logprobs > 0 else output
        generated_ids = sequences[:, input_ids.shape[1] :]
        logprobs = (
            self._token_logprobs(output.scores, generated_ids, params.logprobs)
            if params.logprobs > 0
            else None
        )
        completions = []
        for r, (row, generated) in enumerate(zip(rows, generated_ids.tolist())):
            stop = next((k for k, tok in enumerate(generated) if tok in self.eos_ids), None)
            tokens = generated if stop is None else generated[: stop + 1]
            completions.append(
                Completion(
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                    prompt_tokens=len(row),
                    completion_tokens=len(tokens),
                    finish_reason="length" if stop is None else "stop",
                    logprobs=tuple(logprobs[r][: len(tokens)]) if logprobs is not None else None,
                )
            )
        return completions

    def _token_logprobs(self, scores: Any, generated: Any, k: int) -> list[list[TokenLogprob]]:
        """Per row, per generated step: the token, its log-probability and the `k` most likely
        tokens. The distribution is generate's *processed* scores (`output_scores=True`: the
        logits after the logits processors, i.e. after temperature and top-p for sampling, the
        logits themselves for greedy decoding), so each logprob is under the distribution the
        token was drawn from. Tokens that top-p ruled out (log-probability -inf) are not listed
        as alternatives."""
        import torch

        k = min(k, scores[0].shape[-1])
        chosen, top_values, top_ids = [], [], []
        for step, step_scores in enumerate(scores):
            logp = torch.log_softmax(step_scores.float(), dim=-1)
            chosen.append(logp.gather(1, generated[:, step : step + 1]).squeeze(1))
            values, ids = logp.topk(k, dim=-1)
            top_values.append(values)
            top_ids.append(ids)
        chosen_l = torch.stack(chosen, 1).tolist()
        values_l = torch.stack(top_values, 1).tolist()
        ids_l = torch.stack(top_ids, 1).tolist()
        text = self._token_text
        return [
            [
                TokenLogprob(
                    token=text(token),
                    logprob=lp,
                    top=tuple(
                        (text(i), v) for i, v in zip(ids_l[r][t], values_l[r][t]) if v > -1e30
                    ),
                )
                for t, (token, lp) in enumerate(zip(generated[r].tolist(), chosen_l[r]))
            ]
            for r in range(len(chosen_l))
        ]

    def _token_text(self, token_id: int) -> str:
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode([token_id])
        return text
