"""Model loading and generation backends, chosen by config (`model.backend`)."""

from __future__ import annotations

from collections.abc import Callable

from scoder import executors
from scoder.config import ModelConfig
from scoder.models.base import Chat, Completion, GenerationBackend, SamplingParams
from scoder.models.hf import TransformersBackend
from scoder.models.loading import (
    EMBEDDED_MODEL_ID,
    ModelRef,
    load_causal_lm,
    load_tokenizer,
    pick_device,
    pick_dtype,
    resolve_model,
    swap_adapter,
    weights_digest,
)
from scoder.models.openai_backend import OpenAIBackend
from scoder.models.ray_backend import RayGenerationBackend


def _transformers_backend(cfg: ModelConfig, plain_transcript: bool = False) -> GenerationBackend:
    executor = executors.current()
    if executor is not None and executor.generation_actors:
        return RayGenerationBackend(
            executor, cfg, actors=executor.generation_actors, plain_transcript=plain_transcript
        )
    return TransformersBackend.from_config(cfg, plain_transcript=plain_transcript)


def _openai_backend(cfg: ModelConfig, plain_transcript: bool = False) -> GenerationBackend:
    # a server renders prompts with its own chat template
    return OpenAIBackend(
        base_url=cfg.base_url or "",
        model=cfg.served_name or cfg.name or "",
        api_key_env=cfg.api_key_env,
        max_concurrency=cfg.max_concurrency,
        max_retries=cfg.max_retries,
        timeout_s=cfg.request_timeout_s,
        price_per_million_tokens=cfg.price_per_million_tokens,
        lora_adapters=cfg.lora_adapters,
        lora_path_map=cfg.lora_path_map,
    )


BACKENDS: dict[str, Callable[[ModelConfig, bool], GenerationBackend]] = {
    "transformers": _transformers_backend,
    "openai": _openai_backend,
}


def load_backend(cfg: ModelConfig, *, plain_transcript: bool = False) -> GenerationBackend:
    """The backend `cfg` names. `plain_transcript`: prompt an in-process model with the plain
    transcript (it was trained on it) even when its tokenizer has a chat template."""
    return BACKENDS[cfg.backend](cfg, plain_transcript)


__all__ = [
    "BACKENDS",
    "EMBEDDED_MODEL_ID",
    "Chat",
    "Completion",
    "GenerationBackend",
    "ModelRef",
    "SamplingParams",
    "TransformersBackend",
    "OpenAIBackend",
    "load_backend",
    "load_causal_lm",
    "load_tokenizer",
    "pick_device",
    "pick_dtype",
    "resolve_model",
    "swap_adapter",
    "weights_digest",
]
