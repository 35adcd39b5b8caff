"""Model loading and generation backends, chosen by config (`model.backend`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scoder.config import ModelConfig
from scoder.models.base import Chat, Completion, GenerationBackend, SamplingParams
from scoder.models.loading import EMBEDDED_MODEL_ID, ModelRef, resolve_model


def _transformers_backend(cfg: ModelConfig) -> GenerationBackend:
    from scoder.models.hf import TransformersBackend

    return TransformersBackend(
        resolve_model(cfg.name, revision=cfg.revision),
        device=cfg.device,
        dtype=cfg.dtype,
        batch_size=cfg.batch_size,
        trust_remote_code=cfg.trust_remote_code,
    )


def _openai_backend(cfg: ModelConfig) -> GenerationBackend:
    from scoder.models.openai_backend import OpenAIBackend

    return OpenAIBackend(
        base_url=cfg.base_url or "",
        model=cfg.name or "",
        api_key_env=cfg.api_key_env,
        max_concurrency=cfg.max_concurrency,
        max_retries=cfg.max_retries,
        timeout_s=cfg.request_timeout_s,
        price_per_million_tokens=cfg.price_per_million_tokens,
    )


BACKENDS: dict[str, Callable[[ModelConfig], GenerationBackend]] = {
    "transformers": _transformers_backend,
    "openai": _openai_backend,
}


def load_backend(cfg: ModelConfig) -> GenerationBackend:
    return BACKENDS[cfg.backend](cfg)


def log_requests(backend: GenerationBackend, stage_dir: Path) -> None:
    """API backends keep finished requests in the stage's directory: a re-run never pays twice."""
    if hasattr(backend, "use_request_log"):
        backend.use_request_log(stage_dir / "requests.jsonl")


__all__ = [
    "BACKENDS",
    "EMBEDDED_MODEL_ID",
    "Chat",
    "Completion",
    "GenerationBackend",
    "ModelRef",
    "SamplingParams",
    "load_backend",
    "log_requests",
    "resolve_model",
]
