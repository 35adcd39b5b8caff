"""The report as one self-contained HTML page: figures and data embedded, no external resource.

The facts behind every table are embedded too (`<script type="application/json"
id="scoder-facts">`), so a reader (or a test) can parse back exactly what the page shows.
"""

from __future__ import annotations

import dataclasses
import html
import json
from typing import Any

from scoder.report import plots
from scoder.report.experiment import ExperimentFacts
from scoder.report.facts import RoundFacts, RunFacts

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1a202c;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #e2e8f0; margin-top: 2em; }
h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #e2e8f0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f7fafc; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.muted { color: #718096; } .grid { display: flex; flex-wrap: wrap; gap: 2em; }
#samples { table-layout: fixed; width: 100%; } #samples td { overflow-wrap: anywhere; } #samples pre { white-space: pre-wrap; margin: 0; font-size: 12px;
       max-height: 12em; overflow: auto; }
.controls input, .controls select { margin: 0 1em 0.5em 0; padding: 3px; }
.measured { white-space: nowrap; }
"""

BROWSER = """
const samples = JSON.parse(document.getElementById('scoder-samples').textContent);
const body = document.querySelector('#samples tbody');
const esc = (s) => String(s ?? '').replace(/[&<>"]/g, (c) => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
const num = (v) => (v === null || v === undefined) ? '' : Number(v).toPrecision(4);
function render() {
  const q = document.getElementById('q').value.toLowerCase();
  const round = document.getElementById('round').value;
  const status = document.getElementById('status').value;
  const exec = document.getElementById('exec').value;
  const rows = samples.filter((s) =>
    (round === '' || String(s.round_label) === round) &&
    (status === '' || s.status === status) &&
    (exec === '' || String(s.execution) === exec) &&
    (q === '' || JSON.stringify(s).toLowerCase().includes(q)));
  document.getElementById('shown').textContent = rows.length + ' of ' + samples.length;
  body.innerHTML = rows.slice(0, 500).map((s) => '<tr><td>' + esc(s.round_label) + '<br>' +
    esc(s.checkpoint) + '<br><span class="muted">' + esc(s.seed_id) + '</span></td><td>' +
    esc(s.status) + '<br>' + esc(s.drop) + '<br><span class="muted">' + esc(s.drop_detail) +
    '</span></td><td><pre>' + esc(s.problem) + '</pre></td><td><pre>' + esc(s.solution) +
    '</pre></td><td><pre>' + esc(s.tests) + '</pre></td><td>' + esc(s.execution) + ' ' +
    (s.tests_total ? esc(s.tests_passed) + '/' + esc(s.tests_total) : '') + '</td><td>' +
    (s.scores ? Object.entries(s.scores).map(([k, v]) => esc(k) + ' ' + esc(v)).join('<br>') : '') +
    '<br><b>' + num(s.score) + '</b></td><td class="n">' + num(s.influence) + '</td></tr>').join('');
}
for (const id of ['q', 'round', 'status', 'exec']) {
  document.getElementById(id).addEventListener('input', render);
}
render();
"""


class _Markup(str):
    """A table cell already rendered as HTML (its text escaped): shown as is, right-aligned."""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, _Markup):
        return value
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return _e(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_fmt(c)}</td>'
            if isinstance(c, int | float | _Markup)
            else f"<td>{_fmt(c)}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(src: str | None, alt: str) -> str:
    return f'<img src="{src}" alt="{_e(alt)}">' if src else ""


def _round_section(facts: RoundFacts, title: str) -> str:
    parts = [f'<h2 id="{_e(title.replace(" ", "-"))}">{_e(title)}</h2>']
    parts.append("<h3>Funnel</h3>")
    parts.append(_img(plots.funnel(facts), "funnel"))
    parts.append(_table(["step", "samples"], [[name, n] for name, n in facts.funnel]))
    if facts.drops:
        rows = [
            [stage, reason, n]
            for stage, reasons in facts.drops.items()
            for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])
        ]
        parts.append("<h3>Why samples were dropped</h3>")
        parts.append(_table(["stage", "reason", "samples"], rows) if rows else "<p>none</p>")
    hist = plots.score_histograms(facts)
    if hist:
        parts.append("<h3>Judge scores</h3>" + _img(hist, "score histograms"))
    if facts.influence:
        parts.append(
            f"<h3>Influence</h3><p>selection: {_e(facts.selection)}, k = {_fmt(facts.k)}, top-k "
            f"cut {_fmt(facts.top_k_cut)}; random@k and judge-top@k members marked.</p>"
        )
        parts.append(_img(plots.influence(facts), "influence"))
    if facts.per_checkpoint:
        keys = ["generated", "parsed", "passed", "best per seed", "selected"]
        parts.append("<h3>Yield per checkpoint</h3>")
        parts.append(_img(plots.per_checkpoint(facts), "yield per checkpoint"))
        parts.append(
            _table(
                ["checkpoint", *keys],
                [[name, *(c.get(k, 0) for k in keys)] for name, c in facts.per_checkpoint.items()],
            )
        )
    if facts.agreement:
        parts.append("<h3>Judge against execution</h3>")
        parts.append(
            "<p class='muted'>Per aspect: the mean judge score of candidates that passed their "
            "tests and of those that did not, and the AUC of the score at telling them apart "
            "(0.5 = chance).</p>"
        )
        parts.append(
            _table(
                ["aspect", "mean (passed)", "mean (failed)", "AUC", "passed", "failed"],
                [
                    [a.aspect, a.mean_passed, a.mean_failed, a.auc, a.n_passed, a.n_failed]
                    for a in facts.agreement
                ],
            )
        )
    extra = []
    if facts.diversity:
        extra.append(_table(["diversity", "value"], [[k, v] for k, v in facts.diversity.items()]))
    if facts.heldout_dp_loss:
        extra.append(
            _table(
                ["trained on", "held-out D_p loss"],
                [[k, v] for k, v in facts.heldout_dp_loss.items()],
            )
        )
    if extra:
        parts.append("<div class='grid'>" + "".join(extra) + "</div>")
    parts.append("<h3>Time and tokens per stage</h3>")
    parts.append(
        _table(
            ["stage", "seconds", "prompt tokens", "completion tokens"],
            [[c.stage, c.seconds, c.prompt_tokens, c.completion_tokens] for c in facts.costs],
        )
    )
    return "\n".join(parts)


# how an arm compares to random@k on a metric (experiment.json's versus_random)
VERDICTS = {
    "within spread": ("≈", "within the seed spread of random@k"),
    "better": ("▲", "better than random@k, outside its seed spread"),
    "worse": ("▼", "worse than random@k, outside its seed spread"),
}


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if value and abs(value) < 0.001 else f"{value:.3f}"


def _measured(exp: ExperimentFacts, arm: str, metric: str) -> _Markup:
    mean, std = exp.mean_std(arm, metric)
    text = _num(mean) if mean is None or std is None else f"{_num(mean)} ± {_num(std)}"
    verdict = exp.verdict(arm, metric)
    if verdict in VERDICTS:
        mark, title = VERDICTS[verdict]
        return _Markup(f'<span class="measured" title="{_e(title)}">{_e(text)} {mark}</span>')
    return _Markup(f'<span class="measured">{_e(text)}</span>')


def _experiment_section(exp: ExperimentFacts | str) -> str:
    """RUN/experiment.json: each arm's metrics over seeds against random@k, and its cost."""
    parts = ['<h2 id="experiment">Selection experiment</h2>']
    if isinstance(exp, str):
        return "\n".join([*parts, f"<p>{_e(exp)}</p>"])
    d = exp.design
    every = " (all: every one)" if "all" in d.arms else ""
    model = f" (model {_e(d.model)})" if d.model else ""
    parts.append(
        f"<p>One pool of {_fmt(d.pool)} candidates; each arm keeps k = {_fmt(d.k)} of it{every}, "
        f"trains once per seed ({_e(', '.join(map(str, d.seeds)))}), and is measured on "
        f"{_fmt(d.heldout_dp)} held-out D_p rows and on the next round sampled from "
        f"{_fmt(d.next_seeds)} fresh seeds{model}.</p>"
    )
    if exp.findings:
        parts.append("<ul>" + "".join(f"<li>{_e(f)}</li>" for f in exp.findings) + "</ul>")
    if exp.shared:
        shared = ", ".join(
            f"{_e(k[:-2])} {_fmt(v)} s" if k.endswith("_s") else f"{_e(k)} {_fmt(v)}"
            for k, v in exp.shared.items()
        )
        parts.append(f"<p class='muted'>shared by every arm: {shared}</p>")
    metrics = list(exp.metrics)
    rows = []
    for arm in exp.arm_order():
        cost = exp.arms[arm].cost if arm in exp.arms else None
        spent = [cost.seconds, cost.tokens, cost.what] if cost else [None, None, None]
        rows.append([arm, *(_measured(exp, arm, m) for m in metrics), *spent])
    header = ["arm", *(exp.metrics[m].label for m in metrics)]
    parts.append(_table([*header, "selection seconds", "tokens", "what it costs"], rows))
    legend = [f"{mark}: {title}" for v, (mark, title) in VERDICTS.items() if v != "within spread"]
    parts.append(
        "<p class='muted'>mean ± std over seeds. ≈: within the seed spread of random@k (the "
        f"ranges over seeds overlap); {_e('; '.join(legend))}.</p>"
    )
    parts.append(_img(plots.experiment(exp), "each arm's metrics over seeds"))
    return "\n".join(parts)


def _json_script(element_id: str, value: Any) -> str:
    text = json.dumps(value, default=str).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def render(facts: RunFacts) -> str:
    """The whole report page."""
    sections = [_round_section(r, f"Round {r.round}") for r in facts.rounds]
    if facts.final:
        sections.append(_round_section(facts.final, "Final dataset"))
    trend = plots.trends(facts.rounds) if len(facts.rounds) > 1 else None
    head = [f"<h1>scoder run report</h1><p class='muted'>{_e(facts.path)}</p>"]
    if facts.experiment is not None:
        head.append(_experiment_section(facts.experiment))
    rows = [
        [
            r.round,
            dict(r.funnel).get("generated"),
            dict(r.funnel).get("best per seed"),
            dict(r.funnel).get("selected"),
            r.mean_selected_score,
            (r.heldout_dp_loss or {}).get(r.selection or ""),
            (r.diversity or {}).get("distinct_4grams"),
        ]
        for r in facts.rounds
    ]
    head.append("<h2 id='rounds'>Rounds at a glance</h2>")
    head.append(
        _table(
            [
                "round",
                "generated",
                "best per seed",
                "selected",
                "mean selected score",
                "held-out D_p loss",
                "distinct 4-grams",
            ],
            rows,
        )
        if rows
        else "<p>no rounds</p>"
    )
    if facts.stopped:
        head.append(f"<p>stopped: {_e(facts.stopped)}</p>")
    if trend:
        head.append(_img(trend, "trends across rounds"))
    if facts.evaluation:
        head.append("<h2 id='evaluation'>Evaluation</h2>")
        head.append(
            _table(
                ["benchmark", "pass@k"],
                [
                    [name, ", ".join(f"{k}: {v:.3f}" for k, v in s.items())]
                    for name, s in facts.evaluation.items()
                ],
            )
        )
    samples = []
    for r in [*facts.rounds, *([facts.final] if facts.final else [])]:
        label = f"round {r.round}" if r.round else "final"
        samples += [{**s, "round_label": label} for s in r.samples]
    labels = sorted({s["round_label"] for s in samples})
    options = "".join(f"<option>{_e(label)}</option>" for label in labels)
    statuses = "".join(f"<option>{_e(s)}</option>" for s in sorted({s["status"] for s in samples}))
    execs = "".join(
        f"<option>{_e(s)}</option>" for s in sorted({str(s["execution"]) for s in samples})
    )
    browser = f"""<h2 id="samples-browser">Samples</h2>
<div class="controls"><input id="q" placeholder="search text, ids, reasons" size="30">
<select id="round"><option value="">every round</option>{options}</select>
<select id="status"><option value="">kept and dropped</option>{statuses}</select>
<select id="exec"><option value="">any execution</option>{execs}</select>
<span id="shown"></span> <span class="muted">(the first 500 matches are listed)</span></div>
<table id="samples"><thead><tr><th>where</th><th>status</th><th>problem</th><th>solution</th>
<th>tests</th><th>execution</th><th>scores</th><th>influence</th></tr></thead><tbody></tbody></table>"""
    data = dataclasses.asdict(facts)
    data["path"] = str(facts.path)
    if isinstance(facts.experiment, ExperimentFacts):
        data["experiment"] = facts.experiment.model_dump(mode="json")
    for r in [*data["rounds"], *([data["final"]] if data["final"] else [])]:
        r.pop("samples")
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>scoder report: {_e(facts.path.name)}</title><style>{STYLE}</style></head>",
            "<body>",
            *head,
            *sections,
            browser,
            _json_script("scoder-facts", data),
            _json_script("scoder-samples", samples),
            f"<script>{BROWSER}</script>",
            "</body></html>",
        ]
    )
