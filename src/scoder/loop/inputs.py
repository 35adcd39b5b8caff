"""The data a run starts from: the seed pool every round and the final stage take a slice of,
and D_p, the superior samples."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from scoder import decontaminate, seeds, teacher
from scoder.builtin import builtin_path
from scoder.config import Config
from scoder.errors import ScoderError
from scoder.ledger import Step
from scoder.loop.context import Run, decontamination_reads, model_reads, synthesis_reads
from scoder.loop.results import Dp, SeedPool, Seeds
from scoder.records import Seed
from scoder.store import RunDir, file_digest, read_jsonl, write_jsonl


def teacher_seeds(config: Config) -> int:
    """How many seeds of the pool the teacher writes D_p from (route generate): its own, after
    the rounds' and the final stage's, so D_p never shares a seed with them."""
    generated = config.loop.enhance and config.teacher.route == "generate"
    return (config.teacher.limit or 0) if generated else 0


def seed_pool(run: Run) -> Step[SeedPool]:
    """Every seed the run needs, mined once and decontaminated: each round, the final stage and
    the teacher take a fresh slice. Mining more seeds of the same config starts with the same
    seeds, so a pool grown for more rounds or final samples leaves every slice already taken
    unchanged."""
    config = run.config
    loop, final = config.loop, config.final
    needed = loop.rounds * loop.seeds_per_round + final.samples + teacher_seeds(config)
    mine = max(config.seeds.max_seeds or 0, math.ceil(needed * 1.25) + 4)  # filters drop a few
    reads: dict[str, Any] = {
        "seeds": config.seeds.model_dump(mode="json", exclude={"max_seeds"}),
        "random_seed": config.random_seed,
        "decontaminate": decontamination_reads(config) if loop.decontaminate else None,
    }

    def too_small(pool: SeedPool) -> str | None:
        if pool.mined_for < mine:
            return (
                f"the pool was mined for {pool.mined_for} seeds and this config needs {mine}: "
                "mining more (the slices already taken stay the same)"
            )
        return None

    def make(discard: bool) -> SeedPool:
        top = RunDir(run.path)
        _, mined = seeds.run_seeds(config, run=top, max_seeds=mine, force=discard)
        kept, where = mined.kept, "seeds/kept.jsonl"
        if loop.decontaminate:
            stage = "decontaminate/seeds"
            kept = decontaminate.run_decontaminate(
                config, top, kept, "seed", stage=stage, force=discard
            ).kept
            where = f"{stage}/kept.jsonl"
        if len(kept) < needed:
            raise ScoderError(
                f"the seed source gave {len(kept)} usable seeds; {loop.rounds} rounds x "
                f"{loop.seeds_per_round} seeds + {final.samples} final samples (+ "
                f"{teacher_seeds(config)} for the teacher) need {needed}. Lower "
                "loop.seeds_per_round / final.samples / teacher.limit, or add seeds."
            )
        return SeedPool(seeds=where, usable=len(kept), mined_for=mine)

    outputs = ["seeds", *(["decontaminate/seeds"] if loop.decontaminate else [])]
    return run.ledger.step(
        "seeds",
        SeedPool,
        code=f"{seeds.VERSION}+{decontaminate.VERSION}",
        reads=reads,
        outputs=outputs,
        run=make,
        still_valid=too_small,
    )


def seed_slice(
    run: Run, pool: Step[SeedPool], name: str, where: str, start: int, count: int
) -> Step[Seeds]:
    """A fresh slice of the pool for one round (or the final stage)."""

    def make(discard: bool) -> Seeds:
        usable = read_jsonl(run.file(pool.result.seeds), Seed)
        if len(usable) < start + count:
            raise ScoderError(
                f"{name}: the seed pool holds {len(usable)} usable seeds, this step needs seeds "
                f"{start + 1}-{start + count}. Lower loop.seeds_per_round / final.samples, or add "
                "seeds."
            )
        write_jsonl(run.path / where / "seeds.jsonl", usable[start : start + count])
        return Seeds(seeds=f"{where}/seeds.jsonl", count=count)

    return run.ledger.step(
        name,
        Seeds,
        code="slice/1",
        reads={"start": start, "count": count},
        after=[pool],
        outputs=[f"{where}/seeds.jsonl"],
        run=make,
    )


def superior_samples(run: Run, pool: Step[SeedPool]) -> Step[Dp]:
    """D_p from the teacher, decontaminated, shuffled and split into train and held-out. A
    teacher that generates writes from seeds of its own (round 0's slice, after every other)."""
    config = run.config
    cfg = config.teacher
    generated = cfg.route == "generate"
    loop = config.loop
    own = None
    if generated:
        start = loop.rounds * loop.seeds_per_round + config.final.samples
        own = seed_slice(run, pool, "round-0/seeds", "rounds/0", start, teacher_seeds(config))
    reads: dict[str, Any] = {
        "teacher": cfg.model_dump(mode="json"),
        "random_seed": config.random_seed,
        "dp_heldout": config.loop.dp_heldout,
        "decontaminate": decontamination_reads(config) if config.loop.decontaminate else None,
    }
    source = builtin_path(cfg.source) if cfg.source else None
    source = source or (Path(cfg.source) if cfg.source else None)
    if source is not None and source.is_file():
        reads["source_digest"] = file_digest(source)
    if generated:  # the teacher model (or the synthesizer) writes with the synthesis prompt
        reads["synthesis"] = synthesis_reads(config)
        reads["model"] = model_reads(cfg.model or config.model)

    def make(discard: bool) -> Dp:
        top = RunDir(run.path)
        seeds_file = run.file(own.result.seeds) if own else None
        _, samples = teacher.run_teacher(config, seeds_file, run=top, force=discard)
        if config.loop.decontaminate:
            samples = decontaminate.run_decontaminate(
                config, top, samples, "dp", stage="decontaminate/dp", force=discard
            ).kept
        order = sorted(samples, key=lambda s: s.id)
        random.Random(config.random_seed).shuffle(order)
        heldout = order[: config.loop.dp_heldout]
        trainable = order[config.loop.dp_heldout :]
        if not trainable:
            raise ScoderError(
                f"D_p has {len(samples)} usable samples and loop.dp_heldout="
                f"{config.loop.dp_heldout}: nothing is left to train on"
            )
        write_jsonl(run.path / "dp" / "train.jsonl", trainable)
        write_jsonl(run.path / "dp" / "heldout.jsonl", heldout)
        return Dp(
            train="dp/train.jsonl",
            heldout="dp/heldout.jsonl" if heldout else None,
            train_count=len(trainable),
            heldout_count=len(heldout),
        )

    return run.ledger.step(
        "dp",
        Dp,
        code=f"{teacher.VERSION}+{decontaminate.VERSION}",
        reads=reads,
        after=[own] if own else [],
        outputs=["teacher", "dp", *(["decontaminate/dp"] if config.loop.decontaminate else [])],
        run=make,
    )
