"""One `scoder run` as its steps see it: the config, the ledger, the run directory; and what each
step reads of the config (the values its outputs depend on, which make up its identity)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoder import decontaminate
from scoder.config import Config, ModelConfig
from scoder.errors import ScoderError
from scoder.eval import benchmark_file
from scoder.ledger import Ledger
from scoder.models import weights_digest
from scoder.store import RunDir, file_digest
from scoder.templates import JUDGE_TEMPLATES, SYNTHESIS_TEMPLATES


def model_reads(cfg: ModelConfig, *, generation: bool = True) -> dict[str, Any]:
    """A model's identity and what changes its outputs (not how requests are sent)."""
    keys = {"name", "revision", "backend", "base_url", "device", "dtype", "trust_remote_code"}
    if generation:
        keys.add("batch_size")  # batch composition changes the sampled tokens
    out = cfg.model_dump(mode="json", include=keys)
    if cfg.name and Path(cfg.name).expanduser().is_dir():  # weights rewritten in place
        out["weights"] = weights_digest(Path(cfg.name).expanduser())
    return out


def decontamination_reads(config: Config) -> dict[str, Any]:
    files = decontaminate.benchmark_files(config)
    return {
        "decontaminate": config.decontaminate.model_dump(mode="json"),
        "benchmarks": {name: file_digest(benchmark_file(config, name)) for name in sorted(files)},
    }


def score_reads(config: Config) -> dict[str, Any]:
    cfg = config.score
    out = cfg.model_dump(mode="json", exclude={"judge"})
    out["judge"] = model_reads(cfg.judge)
    out["template_digest"] = JUDGE_TEMPLATES[cfg.template].digest
    if cfg.weights_file and Path(cfg.weights_file).is_file():
        out["weights_file_digest"] = file_digest(cfg.weights_file)
    return out


def synthesis_reads(config: Config) -> dict[str, Any]:
    return {
        "model": model_reads(config.model),
        "synthesis": config.synthesis.model_dump(mode="json"),
        "template_digest": SYNTHESIS_TEMPLATES[config.synthesis.template].digest,
        "random_seed": config.random_seed,
    }


def training_reads(config: Config) -> dict[str, Any]:
    return {
        "model": model_reads(config.model, generation=False),
        "train": config.train.identity(),
        "template_digest": SYNTHESIS_TEMPLATES[config.synthesis.template].digest,
        "random_seed": config.random_seed,
    }


# --- one run -----------------------------------------------------------------------------------


@dataclass
class Run:
    """One `scoder run`: its config, its ledger, and where its files are."""

    config: Config
    ledger: Ledger

    @property
    def path(self) -> Path:
        return self.ledger.root

    def at(self, rel: str) -> RunDir:
        return RunDir(self.path / rel, root=self.path)

    def file(self, rel: str | None) -> Path:
        if rel is None:
            raise ScoderError("internal: a step consumed a result that has no file")
        return self.ledger.abs(rel)

    def rel(self, path: str | Path) -> str:
        return self.ledger.rel(path)
