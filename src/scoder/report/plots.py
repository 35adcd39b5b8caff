"""The report's figures (matplotlib, drawn off screen), each returned as an embeddable PNG."""

from __future__ import annotations

import base64
import io
import textwrap
from collections.abc import Sequence
from typing import Any

from scoder.report.experiment import ExperimentFacts
from scoder.report.facts import RoundFacts

COLORS = {"kept": "#2b6cb0", "random_at_k": "#dd6b20", "judge_top_at_k": "#38a169"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display, no window: a file is all that is wanted
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    _pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def funnel(facts: RoundFacts) -> str:
    plt = _pyplot()
    steps = [(name, n) for name, n in facts.funnel if n is not None]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(steps) + 0.8))
    names = [name for name, _ in steps][::-1]
    values = [n for _, n in steps][::-1]
    ax.barh(names, values, color=COLORS["kept"])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v}", va="center")
    ax.set_xlabel("samples")
    ax.set_title(f"round {facts.round}: what survived each step" if facts.round else "final")
    ax.margins(x=0.15)
    return _png(fig)


def score_histograms(facts: RoundFacts) -> str | None:
    panels = [(a, facts.aspect_scores.get(a, [])) for a in facts.aspects]
    panels.append(("weighted score", facts.weighted_scores))
    panels = [(name, values) for name, values in panels if values]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], panels):
        # integer scores centred on their bars; the weighted score in half-point bins
        bins = (
            [b - 0.5 for b in range(11)] if name != "weighted score" else [b / 2 for b in range(19)]
        )
        ax.hist(values, bins=bins, color=COLORS["kept"])
        ax.set_title(name, fontsize=9)
        ax.set_xlim(-0.5, 9.5)
    axes[0][0].set_ylabel("candidates")
    return _png(fig)


def influence(facts: RoundFacts) -> str | None:
    if not facts.influence:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 2.6))
    ax.hist(facts.influence, bins=min(30, max(5, len(facts.influence))), color="#a0aec0")
    if facts.top_k_cut is not None:
        ax.axvline(facts.top_k_cut, color=COLORS["kept"], linestyle="--", label="top-k cut")
    top = ax.get_ylim()[1]
    for i, (name, values) in enumerate(facts.baseline_influence.items()):
        ax.plot(
            values,
            [top * (0.95 - 0.08 * i)] * len(values),
            "|",
            markersize=12,
            color=COLORS[name],
            label=name.replace("_at_", "@"),
        )
    ax.set_xlabel("influence on D_p")
    ax.set_ylabel("candidates")
    ax.legend(fontsize=8)
    return _png(fig)


def per_checkpoint(facts: RoundFacts) -> str | None:
    if not facts.per_checkpoint:
        return None
    plt = _pyplot()
    keys = ["generated", "parsed", "passed", "best per seed", "selected"]
    names = list(facts.per_checkpoint)
    fig, ax = plt.subplots(figsize=(7, 2.6))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        values = [facts.per_checkpoint[n].get(key, 0) for n in names]
        ax.bar([x + i * width for x in range(len(names))], values, width, label=key)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names)
    ax.set_ylabel("samples")
    ax.legend(fontsize=8, ncols=len(keys))
    return _png(fig)


def trends(rounds: Sequence[RoundFacts]) -> str | None:
    if not rounds:
        return None
    plt = _pyplot()
    xs = [r.round for r in rounds]
    series = {
        "mean selected score": [r.mean_selected_score for r in rounds],
        "held-out D_p loss": [
            (r.heldout_dp_loss or {}).get(r.selection or "") if r.heldout_dp_loss else None
            for r in rounds
        ],
        "distinct 4-grams": [(r.diversity or {}).get("distinct_4grams") for r in rounds],
    }
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.4))
    for ax, (name, values) in zip(axes, series.items()):
        points = [(x, v) for x, v in zip(xs, values) if v is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=COLORS["kept"])
        ax.set_title(name, fontsize=9)
        ax.set_xticks(xs)
        ax.set_xlabel("round")
    return _png(fig)


def experiment(facts: ExperimentFacts) -> str | None:
    """One panel per measured metric: x = arm, each seed's value a dot, the mean over seeds a
    horizontal tick with a +-std bar (random@k in its own colour)."""
    metrics = facts.measured()
    if not metrics:
        return None
    plt = _pyplot()
    arms = facts.arm_order()
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.9 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for x, arm in enumerate(arms):
            color = COLORS["random_at_k"] if arm == "random" else COLORS["kept"]
            points = [v for _, v in facts.values(arm, metric)]
            # the seeds side by side around the arm's position, in the file's order
            n = len(points)
            offsets = [0.25 * (i / (n - 1) - 0.5) if n > 1 else 0.0 for i in range(n)]
            ax.plot([x + o for o in offsets], points, "o", color=color, alpha=0.55, markersize=4)
            mean, std = facts.mean_std(arm, metric)
            if mean is not None:
                ax.errorbar(
                    [x],
                    [mean],
                    yerr=[std or 0.0],
                    fmt="_",
                    color=color,
                    markersize=18,
                    capsize=4,
                    elinewidth=1.2,
                )
        spec = facts.metrics[metric]
        title = f"{spec.label} ({spec.better} is better)"
        ax.set_title(textwrap.fill(title, 40), fontsize=9)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(arms) - 0.4)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)
