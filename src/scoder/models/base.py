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
    # the log-probabilities of this many most likely tokens at every generated position (0: none),
    # where the backend has them (Capabilities.logprobs)
    logprobs: int = 0
    # a JSON schema the answer must follow, where the backend enforces one (Capabilities.json_schema)
    json_schema: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def for_chunk(
        cls, cfg: Any, random_seed: int, chunk_number: int, stream: int = 0
    ) -> SamplingParams:
        """The sampling of one saved chunk of work: the config's temperature, top-p and length,
        and a seed fixed by the chunk's place (and `stream`: one per checkpoint, so that nearby
        checkpoints do not draw correlated samples), so a resumed run draws the same samples."""
        return cls(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            seed=random_seed * 100_003 + chunk_number * cfg.chunk_size + stream * 1_000_003,
        )


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token, its log-probability, and the most likely tokens at its position."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond plain chat completion; none of it is required by any stage."""

    continuation: bool  # continues a trailing assistant message (prefill) instead of a new turn
    logprobs: bool  # returns the log-probabilities of generated tokens (and top alternatives)
    json_schema: bool  # enforces a JSON schema on the answer (structured output)
    n: bool  # returns n samples of one prompt from one request
    how: str = ""  # how it was found out (for the manifest)
    choices: bool = False  # scores teacher-forced choices (choice_probabilities): in process

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Completion:
    text: str  # the generated text only (without the prompt or a continued assistant prefix)
    prompt_tokens: int
    completion_tokens: int  # real tokens, up to and including the end-of-sequence token
    finish_reason: Literal["stop", "length"]
    logprobs: tuple[TokenLogprob, ...] | None = None  # when asked for and available


@runtime_checkable
class GenerationBackend(Protocol):
    """Chats in, n completions per chat out.

    A chat whose last message has role "assistant" is continued from that message's text
    (response prefill) by a backend whose capabilities() say `continuation`; callers send one only
    then. Otherwise the assistant turn starts fresh.
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

    def capabilities(self) -> Capabilities:
        """What this backend (this server, this model) can do, found out once and cached."""
        ...

    def choice_probabilities(
        self, chats: Sequence[Chat], steps: Sequence[tuple[str, Sequence[str]]]
    ) -> list[list[dict[str, float]]]:
        """Teacher-forced multiple choice (capabilities().choices): for each chat, whose last
        message is an assistant turn to continue, each step's text is appended in turn and the
        probabilities of its choices (single tokens) as the next token read off; the likeliest
        choice is appended before the next step. Raises NotSingleTokens (scoder.models.choices)
        when a choice is not one token."""
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
