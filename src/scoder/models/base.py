"""The narrow generation interface every backend implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

Chat = list[dict[str, str]]


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def for_chunk(cls, cfg: Any, random_seed: int, chunk_number: int) -> SamplingParams:
        """The sampling of one saved chunk of work: the config's temperature, top-p and length,
        and a seed fixed by the chunk's place, so a resumed run draws the same samples."""
        return cls(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            seed=random_seed * 100_003 + chunk_number * cfg.chunk_size,
        )


@dataclass(frozen=True)
class Completion:
    text: str  # the generated text only (without the prompt or a continued assistant prefix)
    prompt_tokens: int
    completion_tokens: int  # real tokens, up to and including the end-of-sequence token
    finish_reason: Literal["stop", "length"]


@runtime_checkable
class GenerationBackend(Protocol):
    """Chats in, n completions per chat out.

    A chat whose last message has role "assistant" is continued from that message's text
    (response prefill); otherwise the assistant turn starts fresh.
    """

    model_id: str
    # Whether prompts go through a chat template (an instruct model, or any API server, which
    # applies its own), rather than the plain transcript a base model is trained on.
    uses_chat_template: bool

    def generate(
        self, chats: Sequence[Chat], n: int, params: SamplingParams
    ) -> list[list[Completion]]: ...

    def describe(self) -> dict[str, Any]:
        """Identity for the manifest: model id, weight digest, device, dtype, batch size."""
        ...

    def use_request_log(self, path: Path) -> None:
        """Keep every finished request in `path` and answer repeated ones from it, so a re-run
        never pays twice (API backends; an in-process model has nothing to keep)."""
        ...

    def load_adapters(self, adapters: Mapping[str, Path]) -> None:
        """Make LoRA adapters (checkpoint directories) available by name."""
        ...

    def adapter(self, name: str | None) -> AbstractContextManager[None]:
        """Within the block, generate with adapter `name` (None: the base model alone)."""
        ...
