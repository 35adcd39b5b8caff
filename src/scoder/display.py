"""What the command line shows: stage summaries, the plan, the loop's step lines, round tables.

Kept apart from the commands (scoder.cli) so that each reads as what it is: the commands parse and
call, this module formats. The step and round lines print names and reasons without markup
interpretation; the stage tables and example panels still pass text to Rich as markup.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from scoder.config import Config
from scoder.ledger import Decision
from scoder.loop import LoopResult, plan_experiment, plan_loop
from scoder.report.facts import RunFacts, run_facts
from scoder.store import RunDir, read_jsonl

# Nothing printed is read as markup unless its call says so (markup=True): paths, model output,
# drop reasons and values are text, and a `[/x]` in one can neither crash a print nor vanish.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def print_eval_table(runs: list) -> None:
    table = Table(title="scoder eval (pass@k by execution)")
    for column in ("benchmark", "tasks", "n", "base tests", "base + plus (MBPP+)"):
        table.add_column(column)
    table.add_column("excluded", justify="right")
    for r in runs:
        res = r.results
        scores = res["pass_at_k"]
        table.add_row(
            r.benchmark,
            str(res["tasks"]),
            str(res["n"]),
            ", ".join(f"{k} {v:.4f}" for k, v in scores["base"].items()) or "-",
            ", ".join(f"{k} {v:.4f}" for k, v in scores.get("plus", {}).items()) or "-",
            str(len(res["excluded"])),
        )
    console.print(table)
    for r in runs:
        console.print(f"  {r.results_path}", soft_wrap=True, highlight=False)


ACTION_STYLE = {"reuse": "green", "resume": "yellow", "run": "cyan", "re-run": "magenta"}


def decision_printer(total: int) -> Callable[[Decision], None]:
    """Prints each step as the loop reaches it: which of how many, what happens and why."""
    seen = [0]

    def show(decision: Decision) -> None:
        seen[0] += 1
        style = ACTION_STYLE[decision.action]
        err_console.print(
            f"[dim]\\[{seen[0]}/{max(total, seen[0])}][/] [{style}]{decision.action:>7}[/]  "
            f"{escape(decision.step)}  [dim]{escape(decision.why)}[/]",
            highlight=False,
            soft_wrap=True,
            markup=True,
        )

    return show


def print_plan(cfg: Config, command: str = "run") -> None:
    decisions = plan_experiment(cfg) if command == "experiment" else plan_loop(cfg)
    table = Table(title=f"scoder {command} --dry-run: {cfg.run_dir}")
    for column in ("step", "action", "why"):
        table.add_column(column, overflow="fold")
    for d in decisions:
        table.add_row(d.step, Text(d.action, style=ACTION_STYLE[d.action]), d.why)
    console.print(table)
    if any(d.action != "reuse" for d in decisions) and cfg.loop.stop_metric != "none":
        console.print(
            "steps after a round that runs are listed as if the stopping rule lets the loop go on"
        )


def print_experiment(table: dict[str, Any]) -> None:
    """The experiment's table: per arm, each metric's mean ± std over seeds (≈: within random@k's
    seed spread), and what the arm's selection cost."""
    metrics = table["metrics"]
    out = Table(title="scoder experiment (mean ± std over seeds; ≈ within random@k's spread)")
    for column in ("arm", *(m["label"] for m in metrics.values()), "selection s", "tokens"):
        out.add_column(column, overflow="fold")
    for arm, entry in table["arms"].items():
        cells = []
        for name in metrics:
            s = entry["metrics"][name]
            mark = {"within spread": " ≈", "better": " ▲", "worse": " ▼"}.get(
                (entry.get("versus_random") or {}).get(name) or "", ""
            )
            std = "" if s["std"] is None else f" ± {s['std']:.3f}"
            cells.append("-" if s["mean"] is None else f"{s['mean']:.3f}{std}{mark}")
        cost = entry["cost"]
        seconds = "-" if cost["seconds"] is None else f"{cost['seconds']:.1f}"
        out.add_row(arm, *cells, seconds, "-" if cost["tokens"] is None else str(cost["tokens"]))
    console.print(out)
    for line in table.get("findings", []):
        console.print(f"- {line}", highlight=False, soft_wrap=True)


def print_rounds(result: LoopResult) -> None:
    """A line per round: a table's cells would wrap on a narrow terminal, a line never hides."""
    for s in result.rounds:
        unscored = "-" if s.unscored_rate is None else f"{s.unscored_rate:.0%}"
        losses = ", ".join(f"{k} {_fmt(v)}" for k, v in (s.heldout_dp_loss or {}).items())
        console.print(
            f"round {s.round}: {s.generated} generated, {s.best_per_seed} best per seed "
            f"({unscored} unscored), {s.selected} selected by {s.selection} (mean score "
            f"{_fmt(s.mean_selected_score)}), distinct 4-grams "
            f"{_fmt(s.diversity['distinct_4grams'])}"
            + (f"; held-out D_p loss: {losses}" if losses else ""),
            highlight=False,
            soft_wrap=True,
        )


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_files(directory: Path, *names: str) -> None:
    for name in names:
        console.print(f"  {directory / name}", soft_wrap=True, highlight=False)


def print_stage_summary(run: RunDir, stage: str) -> None:
    entry = run.load_manifest().get("stages", {}).get(stage, {})
    table = Table(title=f"{stage} ({entry.get('duration_s', 0):.1f} s)", show_header=False)
    for key, value in entry.get("counts", {}).items():
        if isinstance(value, dict):
            value = (
                ", ".join(f"{k}: {v}" for k, v in sorted(value.items(), key=lambda kv: -kv[1]))
                or "-"
            )
        table.add_row(key, str(value))
    throughput = entry.get("throughput")
    if throughput and throughput.get("generated_tokens"):
        table.add_row(
            "generation",
            f"{throughput['generated_tokens']} tokens in {throughput['generation_seconds']:.1f} s "
            f"= {throughput['tokens_per_second']:.1f} tokens/s",
        )
    console.print(table)


def print_score_summary(summary: dict) -> None:
    statuses = summary.get("execution_status", {})
    console.print(
        "execution of each solution against its own tests: "
        + (", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())) or "-")
        + f" (vacuous tests: {summary.get('vacuous_tests', 0)})"
    )
    calib = summary.get("calibration", {})
    table = Table(title="judge calibration against execution (AUC: 0.5 = no signal)")
    table.add_column("aspect")
    table.add_column("mean score")
    table.add_column("AUC")
    table.add_column("point-biserial r")
    means = summary.get("mean_aspect_scores", {})
    for name in [*means, "score"]:
        entry = calib.get(name, {})
        table.add_row(
            name,
            str(means.get(name, "")),
            str(entry.get("auc", "-")),
            str(entry.get("point_biserial", "-")),
        )
    console.print(table)
    if "note" in calib:
        console.print(
            f"calibration: {calib['note']} ({calib['n']} scored, {calib['passed']} passed)"
        )
    weights = summary.get("weights", {})
    console.print(
        "weights ("
        + str(weights.get("source"))
        + "): "
        + ", ".join(f"{k}={v:.3f}" for k, v in weights.get("weights", {}).items())
    )
    if "heldout_agreement" in weights:
        console.print(
            f"fit on {weights['n']} {weights['kind']} labels: held-out agreement "
            f"{weights['heldout_agreement']:.3f} (equal weights: "
            f"{weights['equal_weights_heldout_agreement']:.3f})"
        )


def print_examples(accepted: list, limit: int = 2) -> None:
    for cand in accepted[:limit]:
        body = Syntax(cand.solution, "python", theme="ansi_dark", word_wrap=True)
        console.print(
            Panel(  # model output and file names are text, never markup
                Text(cand.problem or ""),
                title=Text(f"problem  ({cand.seed_source.location}:{cand.seed_source.name})"),
            )
        )
        console.print(Panel(body, title="solution"))


# The funnel a person wants to see: how much of what was generated survives each gate.
FUNNEL_COLUMNS = (
    ("generated", "generated"),
    ("parsed", "parsed"),
    ("executed and passed", "passed their own tests"),
)


def print_demo_outcome(run_dir: Path, facts: RunFacts | None = None, examples: int = 2) -> None:
    """The funnel of every round and of the final stage in one table, then `examples` rows of the
    final dataset (problem, solution, tests) as plain text: model output is never markup.
    `facts`: the run's, when the caller has read them already."""
    facts = facts or run_facts(run_dir, sample_limit=0)
    table = Table(title="funnel", title_justify="left")
    table.add_column("stage")
    for _, header in FUNNEL_COLUMNS:
        table.add_column(header, justify="right")
    table.add_column("selected", justify="right")
    stages = [(f"round {r.round}", r, "selected") for r in facts.rounds]
    if facts.final:
        stages.append(("final dataset", facts.final, "best per seed"))
    for label, stage, chosen in stages:
        counts = dict(stage.funnel)
        cells = [counts.get(key) for key, _ in FUNNEL_COLUMNS] + [counts.get(chosen)]
        table.add_row(label, *("-" if c is None else str(c) for c in cells))
    console.print(table)
    dataset = run_dir / "final" / "dataset.jsonl"
    rows = read_jsonl(dataset)[:examples] if dataset.is_file() else []
    for i, row in enumerate(rows, 1):
        verdict = "passes its tests" if row.get("tests_passed") else "does not pass its tests"
        console.print(f"\n--- example {i} of the final dataset ({verdict}) ---", highlight=False)
        for part in ("problem", "solution", "tests"):
            console.print(f"# {part}", style="bold", highlight=False)
            console.print(str(row.get(part, "")).strip(), highlight=False)
