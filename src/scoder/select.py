"""`scoder select`: keep k candidates by a selection strategy; the method's is gradient influence.

Selection strategies are functions of one shape, chosen by name (`loop.selection`): the
candidates, k and a random seed in, the candidates in the order the strategy ranks them out (the
first k are kept). `influence` ranks by the candidates' influence on D_p, `judge` by their
weighted judge score, `rds` by RDS+ similarity to D_p (scoder.representation), `random` draws k
at random, `passed_random` draws k among those whose own tests passed (then the rest), `all`
keeps every candidate. Beside the kept set the stage writes the budget-matched baselines
random@k and judge-top@k, so every selection can be compared (`scoder experiment` compares them
all, trained).

Influence, for each of the last select.checkpoints synthesizer checkpoints k: candidates' LoRA
gradients, Adam-preconditioned with that checkpoint's optimizer state, and D_p's plain gradients,
both projected and normalised (scoder.influence), on the very tokens the synthesizer's trainer
trains on. Influence(z) = sum_k lr_k * mean_{z' in D_p} cos(...). Features are stored per
checkpoint as numpy arrays keyed by a hash of each sample's token ids, saved a chunk at a time as
they are computed, and reused when neither the tokens nor the checkpoint changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

import numpy as np

from scoder import executors
from scoder.checkpoints import check_checkpoint, read_checkpoint
from scoder.config import Config, SelectConfig, SelectionName
from scoder.errors import ScoderError
from scoder.feature_store import cached_features
from scoder.filters import DROPPED, KEPT, DropReasons, Partition, write_partition
from scoder.influence import Example, gradient_features, influence_scores
from scoder.models import load_causal_lm, load_tokenizer, resolve_model, swap_adapter
from scoder.progress import track
from scoder.records import Candidate, StoredRecords, rebase_raw, scan_candidates
from scoder.representation import compute_rds, sample_tokens
from scoder.store import (
    RunDir,
    file_digest,
    fingerprint,
    jsonl_writer,
    read_jsonl,
    write_json,
)
from scoder.train import training_examples

STAGE = "select"
VERSION = "select/2"  # bump when the same inputs would select other candidates
SelectDrop = Literal["influence_undefined", "below_top_k"]
REASONS = DropReasons(STAGE, SelectDrop)


# --- selection strategies ------------------------------------------------------------------------


class Rankable(Protocol):
    """What a strategy ranks by: a Candidate, or a pool's `Ranked` (its small fields)."""

    @property
    def id(self) -> str: ...

    @property
    def score(self) -> float | None: ...

    @property
    def influence(self) -> float | None: ...

    @property
    def rds(self) -> float | None: ...

    @property
    def passed(self) -> bool: ...


C = TypeVar("C", bound=Rankable)
Strategy = Callable[[Sequence[Any], int, int], list[Any]]  # (Sequence[C], k, seed) -> list[C]


def influence_top_k(candidates: Sequence[C], k: int, seed: int) -> list[C]:
    """Highest influence on D_p first (ties by id)."""
    return sorted(candidates, key=lambda c: (-_defined(c.influence), c.id))


def judge_top_k(candidates: Sequence[C], k: int, seed: int) -> list[C]:
    """Highest weighted judge score first (unscored last, ties by id): judge-top@k."""
    return sorted(candidates, key=lambda c: (-_defined(c.score), c.id))


def rds_top_k(candidates: Sequence[C], k: int, seed: int) -> list[C]:
    """Most similar to D_p first by RDS+ (ties by id)."""
    return sorted(candidates, key=lambda c: (-_defined(c.rds), c.id))


def random_k(candidates: Sequence[C], k: int, seed: int) -> list[C]:
    """k drawn at random without replacement (in input order), then the rest: random@k."""
    rng = np.random.default_rng(seed)
    k = min(k, len(candidates))
    drawn = sorted(rng.choice(len(candidates), size=k, replace=False).tolist()) if k else []
    chosen = set(drawn)
    return [candidates[i] for i in drawn] + [c for i, c in enumerate(candidates) if i not in chosen]


def passed_random_k(candidates: Sequence[C], k: int, seed: int) -> list[C]:
    """random@k among the candidates whose own tests passed (trusted), then, when fewer passed
    than k, random@k of the others: execution-passed-random@k."""
    passed = [c for c in candidates if c.passed]
    rest = [c for c in candidates if not c.passed]
    return random_k(passed, k, seed) + random_k(rest, max(0, k - len(passed)), seed)


def all_candidates(candidates: Sequence[C], k: int, seed: int) -> list[C]:
    """Every candidate, in input order (no selection: the run's k is the pool)."""
    return list(candidates)


# Settings that change how fast and in how much memory features are computed, not what they are:
# changing them re-runs nothing.
HOW_NOT_WHAT = {"batch_tokens", "chunk_rows", "loss_chunk_tokens", "gradient_checkpointing"}


def select_reads(cfg: SelectConfig, strategy: SelectionName = "influence") -> dict[str, Any]:
    """The select settings a selection by `strategy` depends on (its identity in the stage and
    the loop)."""
    ignored = HOW_NOT_WHAT | (set() if strategy == "rds" else {"rds_aggregate"})
    return cfg.model_dump(mode="json", exclude=ignored)


def _defined(value: float | None) -> float:
    return value if value is not None else -np.inf


STRATEGIES: dict[SelectionName, Strategy] = {
    "influence": influence_top_k,
    "judge": judge_top_k,
    "rds": rds_top_k,
    "random": random_k,
    "passed_random": passed_random_k,
    "all": all_candidates,
}
# The budget-matched comparison sets written beside every selection: file name -> strategy.
BASELINES: dict[str, SelectionName] = {"random_at_k": "random", "judge_top_at_k": "judge"}


def choose(
    strategy: SelectionName, candidates: Sequence[Candidate], k: int, seed: int
) -> Partition[Candidate]:
    """The first k of the strategy's ranking kept, the rest dropped with their rank."""
    ranked = STRATEGIES[strategy](candidates, k, seed)
    out: Partition[Candidate] = Partition(ranked[:k])
    for rank, c in enumerate(ranked[k:], start=k + 1):
        out.dropped.append(REASONS.drop(c, "below_top_k", below_detail(strategy, rank, k)))
    return out


def below_detail(strategy: str, rank: int, k: int) -> str:
    """Why a candidate ranked below k was dropped, in words."""
    drawn = strategy in ("random", "passed_random")
    return f"{'not drawn' if drawn else f'rank {rank} > k={k}'} ({strategy})"


# --- influence -------------------------------------------------------------------------------------


def _adapter_info(path: Path) -> dict[str, Any]:
    config = json.loads((path / "adapter_config.json").read_text())
    return {
        key: config.get(key)
        for key in ("r", "lora_alpha", "target_modules", "base_model_name_or_path")
    }


@dataclass
class Influence:
    """Each candidate's influence on D_p (NaN where undefined), and how it was computed."""

    scores: np.ndarray
    checkpoints: list[dict[str, Any]]
    features_reused: int
    truncated: list[str]  # ids of candidates longer than the truncation length (kept, flagged)
    tokens: int = 0  # forward + backward tokens of the gradient features


def influence_checkpoints(checkpoints: Sequence[Path], last: int | None) -> list[Path]:
    """The checkpoints influence is taken at: the last `last` of them (all when None)."""
    if last and len(checkpoints) < last:
        raise ScoderError(
            f"select.checkpoints={last}, but only {len(checkpoints)} checkpoint(s) were given"
        )
    return list(checkpoints[-last:] if last else checkpoints)


def compute_influence(
    config: Config,
    root: Path,
    candidates: Sequence[Candidate],
    candidates_source: str,
    dp_path: Path,
    checkpoints: Sequence[Path],
    *,
    shard_tag: str = "part",
) -> Influence:
    """Gradient features of the candidates and D_p at every checkpoint (cached in ROOT/features/),
    summed into influence scores. One base model stays loaded; each checkpoint swaps its adapter
    and optimizer state in; with an executor, its workers compute them (`_features_on`)."""
    ref = resolve_model(config.model.name, revision=config.model.revision)
    tokenizer = load_tokenizer(ref)
    cand_examples = training_examples(
        [c.model_dump() for c in candidates], tokenizer, config, candidates_source
    )
    dp_examples = training_examples(read_jsonl(dp_path), tokenizer, config, str(dp_path))
    max_length = config.select.max_length or config.train.max_length
    executor = executors.current()
    pad = tokenizer.pad_token_id
    if executor is not None:
        _features_on(executor, config, root, checkpoints, cand_examples, dp_examples, pad)
    cand_feats, dp_feats, lrs, info, reused = checkpoint_features(
        config,
        root,
        checkpoints,
        cand_examples,
        dp_examples,
        pad_token_id=pad,
        tag=shard_tag,
        # with workers, their features are all in the store: here only checkpoints are read
        device="cpu" if executor is not None else config.model.device,
    )
    truncated = [
        c.id
        for c, ex in zip(candidates, cand_examples)
        if len(ex.prompt_ids) + len(ex.response_ids) > max_length
    ]
    # a gradient feature is a forward and a backward pass over every token, at each checkpoint
    tokens = len(checkpoints) * sum(
        len(sample_tokens(ex, max_length)) for ex in cand_examples + dp_examples
    )
    scores = influence_scores(cand_feats, dp_feats, lrs)
    return Influence(scores, info, reused, truncated, tokens)


def checkpoint_features(
    config: Config,
    root: Path,
    checkpoints: Sequence[Path],
    cand_examples: list[Example],
    dp_examples: list[Example],
    *,
    pad_token_id: int | None,
    tag: str = "part",
    device: str = "auto",
) -> tuple[list[np.ndarray], list[np.ndarray], list[float], list[dict[str, Any]], int]:
    """Candidate and D_p features at each checkpoint, from the store under RUN/features/ where it
    has them, else computed (and saved there) on one base model whose adapter and optimizer state
    each checkpoint swaps in. Also each checkpoint's mean lr and info, and the rows reused."""
    cfg = config.select
    ref = resolve_model(config.model.name, revision=config.model.revision)
    max_length = cfg.max_length or config.train.max_length
    spec = dict(
        projection_dim=cfg.projection_dim,
        seed=cfg.projection_seed,
        max_length=max_length,
        loss="mean",  # per-sample loss: mean over response tokens (select/1 summed them)
    )
    # how to compute them: the spec (what they are) plus settings of speed and memory
    run_spec = dict(
        {k: v for k, v in spec.items() if k != "loss"},
        batch_tokens=cfg.batch_tokens,
        loss_chunk_tokens=cfg.loss_chunk_tokens,
        gradient_checkpointing=cfg.gradient_checkpointing,
        pad_token_id=pad_token_id,
    )
    cand_feats, dp_feats, lrs, info, reused = [], [], [], [], 0
    model = load_causal_lm(ref, device=device, dtype=config.model.dtype)
    for path in checkpoints:
        # gradients of the adapter are what influence is made of: trainable, on the one base model
        model = swap_adapter(model, path, trainable=True)
        ckpt = read_checkpoint(path, model, missing_state=cfg.missing_optimizer_state)
        # Features depend only on (checkpoint, projection, tokens): one store per checkpoint and
        # projection, shared by every select run and shard in this run directory.
        digest = file_digest(Path(path) / "adapter_model.safetensors")
        store = root / "features" / digest.split(":")[-1][:16] / fingerprint(spec)
        store.mkdir(parents=True, exist_ok=True)
        write_json(
            store / "spec.json",
            {**spec, "kind": "srht", "checkpoint": str(path), "adapter": _adapter_info(path)},
        )
        state = ckpt.optimizer_state
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if state is not None and cfg.missing_optimizer_state == "plain" and set(state) != trainable:
            state = None  # recorded below as adam_preconditioned: false

        def features_with(optimizer_state, model=model):
            return lambda examples: gradient_features(
                model, examples, optimizer_state=optimizer_state, **run_spec
            ).numpy()

        kind = "adam" if state else "plain"
        c, n_reused = cached_features(
            store / f"candidates-{kind}",
            cand_examples,
            features_with(state),
            chunk_rows=cfg.chunk_rows,
            tag=tag,
            description=f"gradient features: candidates at {Path(path).name}",
        )
        d, m_reused = cached_features(
            store / "dp-plain",
            dp_examples,
            features_with(None),
            chunk_rows=cfg.chunk_rows,
            tag=tag,
            description=f"gradient features: D_p at {Path(path).name}",
        )
        reused += n_reused + m_reused
        cand_feats.append(c)
        dp_feats.append(d)
        lrs.append(ckpt.mean_lr)
        info.append(
            {
                "path": str(path),
                "mean_lr": ckpt.mean_lr,
                "step": ckpt.step,
                "adam_preconditioned": state is not None,
            }
        )
    return cand_feats, dp_feats, lrs, info, reused


@dataclass(frozen=True)
class _FeatureShard:
    config: Config
    root: Path
    checkpoints: list[Path]
    candidates: list[Example]
    dp: list[Example]
    pad_token_id: int | None


def _feature_shard(job: _FeatureShard) -> int:
    """A worker's share: its examples' features at every checkpoint, saved as parts in the run's
    shared store (content-addressed, so shards never write the same file)."""
    return checkpoint_features(
        job.config,
        job.root,
        job.checkpoints,
        job.candidates,
        job.dp,
        pad_token_id=job.pad_token_id,
        tag="worker",
    )[-1]


def _features_on(
    executor: executors.Executor,
    config: Config,
    root: Path,
    checkpoints: Sequence[Path],
    cand_examples: list[Example],
    dp_examples: list[Example],
    pad_token_id: int | None,
) -> None:
    """Split the examples over one task per GPU of the cluster (per CPU without GPUs); each
    loads the base model once and goes through every checkpoint, as the local path does."""
    workers = executor.gpus or executor.cpus
    jobs = [
        _FeatureShard(
            config,
            root,
            list(checkpoints),
            cand_examples[i::workers],
            dp_examples[i::workers],
            pad_token_id,
        )
        for i in range(workers)
        if cand_examples[i::workers] or dp_examples[i::workers]
    ]
    with track("gradient features (workers)", total=len(jobs), unit="shards") as progress:
        executor.map(
            _feature_shard,
            jobs,
            num_gpus=1 if executor.gpus else 0,
            on_done=lambda _: progress.advance(),
        )


# --- the stage -------------------------------------------------------------------------------------


@dataclass
class SelectResult:
    """What the stage wrote; the records are read from its files when used."""

    kept: Sequence[Candidate] = field(default_factory=list)
    dropped: Sequence[Candidate] = field(default_factory=list)
    baselines: dict[str, Sequence[Candidate]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


class Ranked(NamedTuple):
    """What a strategy ranks a candidate by, without its texts: a pool's ranking holds these."""

    id: str
    score: float | None
    influence: float | None
    position: int  # in the stage's input
    passed: bool = False
    rds: float | None = None


def run_select(
    config: Config,
    candidates_path: Path | None = None,
    *,
    strategy: SelectionName = "influence",
    dp: Path | None = None,
    checkpoints: Sequence[Path] = (),
    k: int | None = None,
    seed: int | None = None,
    run: RunDir | None = None,
    shard: tuple[int, int] | None = None,
    features_root: Path | None = None,
    force: bool = False,
) -> tuple[RunDir, SelectResult]:
    """Keep k candidates by `strategy` into RUN/select/ (kept.jsonl, dropped.jsonl,
    baselines/random_at_k.jsonl and judge_top_at_k.jsonl, summary.json).

    Influence and RDS+ need the D_p file `dp` and the synthesizer `checkpoints` (RDS+ embeds at
    the last). k defaults to select.k, else select.fraction of the candidates (strategy all:
    every candidate); `seed` (default random_seed) draws random@k. With `shard=(i, n)` only the
    features of every n-th candidate (starting at the i-th, 1-based) are computed into
    RUN/features/ (or `features_root`/features/, a store several selections share), for a later
    full run to reuse. The manifest records what the ranking signal cost (`selection_cost`).

    Ranking holds each candidate's id and scores (`Ranked`); the records stay on disk and are
    written one at a time, their raw texts still referred to where the score stage stored them.
    """
    cfg = config.select
    run = run or RunDir(config.run_dir)
    seed = config.random_seed if seed is None else seed
    candidates_path = Path(candidates_path or run.stage_dir("score") / "kept.jsonl")
    entries: list[Ranked] = []

    def note(c: Candidate) -> None:
        entries.append(Ranked(c.id, c.score, c.influence, len(entries), c.passed))

    candidates = scan_candidates(candidates_path, "score", each=note)
    needs_influence = strategy == "influence" or shard is not None
    needs_model = needs_influence or strategy == "rds"
    signal = "influence" if needs_influence else "RDS+"
    problems = []
    if needs_model and (dp is None or not Path(dp).is_file()):
        problems.append(f"the D_p file (JSONL) is needed for {signal}; got {dp}")
    if needs_model and not checkpoints:
        problems.append(f"name the synthesizer checkpoints to compute {signal} with")
    if problems:
        raise ScoderError("select: " + "; ".join(problems))
    checkpoints = [check_checkpoint(p) for p in checkpoints] if needs_model else []
    if needs_influence:
        checkpoints = influence_checkpoints(checkpoints, cfg.checkpoints)
    elif needs_model:
        checkpoints = checkpoints[-1:]  # RDS+: the synthesizer the candidates come from
    if shard is not None:
        index, count = shard
        if not 1 <= index <= count:
            raise ScoderError(
                f"--shard {index}/{count}: the shard number must be between 1 and {count}"
            )
        candidates = candidates[index - 1 :: count]
        entries = [e._replace(position=i) for i, e in enumerate(entries[index - 1 :: count])]
    if needs_model and not read_jsonl(dp):
        raise ScoderError(f"select: the D_p file {dp} holds no samples")
    # the model only matters to influence and RDS+ (judge-top and random rank without it)
    ref = resolve_model(config.model.name, revision=config.model.revision) if needs_model else None
    stage_fp = fingerprint(
        {
            "select": select_reads(cfg, strategy),
            "strategy": strategy,
            "k": k,
            "seed": seed,
            "model": ref.digest if ref is not None else None,
            "checkpoints": [file_digest(p / "adapter_model.safetensors") for p in checkpoints],
            "candidates": file_digest(candidates_path),
            "dp": file_digest(dp) if needs_model else None,
            # the trainer's tokens: its format and truncation decide what gradients are taken on
            "train_format": [config.train.template, config.train.max_length]
            if needs_model
            else None,
            "version": VERSION,
        }
    )
    stage = STAGE if shard is None else f"{STAGE}-shard-{shard[0]}-of-{shard[1]}"
    with run.stage(stage, config=config, fingerprint=stage_fp, force=force) as record:
        out = run.stage_dir(stage)
        pool, undefined = entries, []
        influence = None
        root = Path(features_root) if features_root is not None else run.path
        started = time.perf_counter()
        if strategy == "rds":
            rds = compute_rds(
                config, root, candidates, str(candidates_path), Path(dp), checkpoints[-1]
            )
            pool, undefined = _with_signal(entries, rds.scores, "rds")
            record.counts["features_reused"] = rds.features_reused
            record.info["selection_cost"] = _cost("RDS+", started, rds.tokens, rds.features_reused)
        if needs_influence:
            tag = "part" if shard is None else f"shard-{shard[0]}-of-{shard[1]}"
            influence = compute_influence(
                config, root, candidates, str(candidates_path), Path(dp), checkpoints, shard_tag=tag
            )
            record.info["selection_cost"] = _cost(
                "influence", started, influence.tokens, influence.features_reused
            )
            record.info.update(
                {"checkpoints": influence.checkpoints, "truncated_candidates": influence.truncated}
            )
            if shard is not None:
                record.counts = {
                    "candidates": len(candidates),
                    "features_reused": influence.features_reused,
                }
                return run, SelectResult(
                    summary={"shard": list(shard), "candidates": len(candidates)}
                )
            pool, undefined = _with_signal(entries, influence.scores, "influence")
        if strategy == "all":
            k = len(pool)
        k = k or cfg.k or max(1, round(cfg.fraction * len(pool)))
        ranked: list[Ranked] = STRATEGIES[strategy](pool, k, seed)
        chosen = {name: STRATEGIES[base](pool, k, seed)[:k] for name, base in BASELINES.items()}
        writer = _Writer(
            candidates, candidates_path.parent, influence is not None, strategy == "rds"
        )
        counts = write_partition(
            out,
            writer.records(ranked[:k], out),
            writer.dropped(undefined, ranked[k:], k, strategy, out),
        )
        baselines: dict[str, Sequence[Candidate]] = {}
        for name, picked in chosen.items():
            path = out / "baselines" / f"{name}.jsonl"
            with jsonl_writer(path) as write:
                for c in writer.records(picked, path.parent):
                    write(c)
            baselines[name] = StoredRecords(path, Candidate, count=len(picked))
        candidates.close()
        record.counts = {
            **record.counts,
            "candidates": len(candidates),
            "strategy": strategy,
            "selected": counts["kept"],
            "rejected_by_reason": counts["dropped_by_reason"],
        }
        summary: dict[str, Any] = {
            "strategy": strategy,
            "k": k,
            "overlap_with_judge_top_at_k": len(
                {e.id for e in ranked[:k]} & {e.id for e in chosen["judge_top_at_k"]}
            ),
        }
        if influence is not None:
            record.counts.update(
                features_reused=influence.features_reused, truncated=len(influence.truncated)
            )
            record.info["projection"] = {
                "dim": cfg.projection_dim,
                "seed": cfg.projection_seed,
                "kind": "srht",
            }
            summary["checkpoints"] = influence.checkpoints
        write_json(out / "summary.json", summary)
    kept = StoredRecords(out / KEPT, Candidate, count=counts["kept"])
    dropped = StoredRecords(out / DROPPED, Candidate, count=counts["dropped"])
    return run, SelectResult(kept, dropped, baselines, summary)


UNDEFINED = "gradient or representation undefined (no response tokens or not finite)"


def _with_signal(
    entries: list[Ranked], scores: np.ndarray, name: Literal["influence", "rds"]
) -> tuple[list[Ranked], list[int]]:
    """Candidates with their influence (or RDS+ similarity), and the positions of those for
    which it is undefined (dropped)."""
    pool, undefined = [], []
    for e, value in zip(entries, scores):
        if np.isnan(value):
            undefined.append(e.position)
        else:
            pool.append(e._replace(**{name: float(value)}))
    return pool, undefined


def _cost(signal: str, started: float, tokens: int, reused: int) -> dict[str, Any]:
    """What computing the ranking signal cost here: seconds, model tokens, rows reused."""
    seconds = round(time.perf_counter() - started, 3)
    return {"signal": signal, "seconds": seconds, "tokens": tokens, "features_reused": reused}


@dataclass
class _Writer:
    """The records of a ranking read back from the stage's input, as its output files hold them:
    with their influence, their raw references relative to the file they go into."""

    candidates: StoredRecords[Candidate]
    source: Path  # the input's directory, which its raw references are relative to
    with_influence: bool
    with_rds: bool = False

    def records(self, ranked: Sequence[Ranked], into: Path) -> Iterator[Candidate]:
        for e, c in zip(ranked, self.candidates.read(e.position for e in ranked)):
            if self.with_influence:
                c = c.model_copy(update={"influence": e.influence})
            if self.with_rds:
                c = c.model_copy(update={"rds": e.rds})
            yield rebase_raw(c, self.source, into)

    def dropped(
        self,
        undefined: list[int],
        below: Sequence[Ranked],
        k: int,
        strategy: str,
        into: Path,
    ) -> Iterator[Candidate]:
        for c in self.candidates.read(undefined):
            yield rebase_raw(REASONS.drop(c, "influence_undefined", UNDEFINED), self.source, into)
        for rank, c in enumerate(self.records(below, into), start=k + 1):
            yield REASONS.drop(c, "below_top_k", below_detail(strategy, rank, k))
