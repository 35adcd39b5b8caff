"""In-process generation on a Ray cluster: the transformers backend in one actor per GPU (or as
many as `executor.generation_actors` says), behind the same Protocol.

A call's rows are cut into the very batches one process would make (same order, same seeds,
same shared prefix), and actor k takes every m-th batch from the k-th (`share=(k, m)`), so the
rows put back together equal one process's: the same completions and judge probabilities, on
more devices. A judge's digit probabilities are shared the same way.

An actor whose process dies is restarted by Ray (`executor.max_retries`) and its call run again:
it keeps nothing a call needs, since every call names the adapters it uses and an actor loads
those it lacks. The run directory (adapters) must be readable by every node.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scoder.config import ModelConfig
from scoder.errors import ScoderError
from scoder.executors import Executor
from scoder.models.base import Capabilities, Chat, Completion, SamplingParams
from scoder.models.hf import TransformersBackend


class GenerationActor:
    """One in-process backend, living in a Ray actor."""

    def __init__(self, cfg: ModelConfig, plain_transcript: bool):
        self.backend = TransformersBackend.from_config(cfg, plain_transcript=plain_transcript)

    def info(self) -> tuple[dict[str, Any], bool, Capabilities]:
        b = self.backend
        return b.describe(), b.uses_chat_template, b.capabilities()

    def _with(self, adapters: Mapping[str, Path]) -> None:
        missing = {
            name: path for name, path in adapters.items() if name not in self.backend.adapters
        }
        if missing:
            self.backend.load_adapters(missing)

    def generate(
        self,
        chats: Sequence[Chat],
        n: int,
        params: SamplingParams,
        adapter: str | None,
        adapters: Mapping[str, Path],
        share: tuple[int, int],
    ) -> list[list[Completion | None]]:
        self._with(adapters)
        with self.backend.adapter(adapter):
            return self.backend.generate(chats, n, params, share=share)

    def choices(
        self,
        chats: Sequence[Chat],
        steps: Sequence[tuple[str, Sequence[str]]],
        adapter: str | None,
        adapters: Mapping[str, Path],
        share: tuple[int, int],
    ) -> list[list[dict[str, float]]]:
        self._with(adapters)
        with self.backend.adapter(adapter):
            return self.backend.choice_probabilities(chats, steps, share=share)


class RayGenerationBackend:
    def __init__(
        self, executor: Executor, cfg: ModelConfig, *, actors: int, plain_transcript: bool = False
    ):
        self._executor = executor
        self._actors = executor.actors(
            GenerationActor, actors, cfg, plain_transcript, num_gpus=1 if executor.gpus else 0
        )
        self._describe, self.uses_chat_template, self._capabilities = executor.call(
            [self._actors[0].info.remote()]
        )[0]
        self.adapters: dict[str, Path] = {}
        self._active: str | None = None

    def capabilities(self) -> Capabilities:
        return self._capabilities

    def describe(self) -> dict[str, Any]:
        return {**self._describe, "ray_actors": len(self._actors)}

    def use_request_log(self, path: Path) -> None:
        """Nothing to keep: the model is in the actors, a re-run generates again."""

    def load_adapters(self, adapters: Mapping[str, Path]) -> None:
        for name, path in adapters.items():
            if not (Path(path) / "adapter_config.json").is_file():
                raise ScoderError(f"{path} is not a LoRA adapter directory")
            self.adapters[name] = Path(path)

    @contextmanager
    def adapter(self, name: str | None) -> Iterator[None]:
        if name is not None and name not in self.adapters:
            raise ScoderError(
                f"no adapter named {name!r} (loaded: {', '.join(self.adapters) or 'none'})"
            )
        before, self._active = self._active, name
        try:
            yield
        finally:
            self._active = before

    def _shares(self, method: str, *args: Any) -> list[Any]:
        m = len(self._actors)
        return self._executor.call(
            [
                getattr(actor, method).remote(*args, self._active, self.adapters, (k, m))
                for k, actor in enumerate(self._actors)
            ]
        )

    def generate(
        self, chats: Sequence[Chat], n: int, params: SamplingParams
    ) -> list[list[Completion]]:
        shares = self._shares("generate", list(chats), n, params)
        return [
            [next(s[i][j] for s in shares if s[i][j] is not None) for j in range(n)]
            for i in range(len(chats))
        ]

    def choice_probabilities(
        self, chats: Sequence[Chat], steps: Sequence[tuple[str, Sequence[str]]]
    ) -> list[list[dict[str, float]]]:
        shares = self._shares("choices", list(chats), list(steps))
        return [next((s[i] for s in shares if s[i]), []) for i in range(len(chats))]
