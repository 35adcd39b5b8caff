"""Tuning the synthesizer: on D_p (round 0), then on each round's selection (+ D_p)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from scoder import train
from scoder.ledger import Step
from scoder.loop.context import Run, training_reads
from scoder.loop.results import Dp, Selection, Synthesizer
from scoder.records import Candidate, DpSample
from scoder.store import read_jsonl, write_jsonl


def _train(
    run: Run,
    where: str,
    data: Path,
    dp: Step[Dp] | None,
    init_adapter: str | None,
    discard: bool,
) -> Synthesizer:
    """Tune the synthesizer on `data` into `where`/train/ (checkpoints per epoch); its loss on
    held-out D_p is measured before training and after every epoch."""
    heldout = dp.result.heldout if dp is not None else None
    _, out = train.run_train(
        run.config,
        data,
        eval_data=run.file(heldout) if heldout else None,
        init_adapter=run.file(init_adapter) if init_adapter else None,
        run=run.at(where),
        force=discard,
    )
    return Synthesizer(
        checkpoints=[run.rel(c["path"]) for c in out["checkpoints"]],
        heldout_loss=out["eval_losses"][-1] if out["eval_losses"] else None,
        heldout_losses=out["eval_losses"],
        losses=[out["losses"][0], out["losses"][-1]] if out["losses"] else [],
        rows=len(read_jsonl(data)),
    )


def enhance(run: Run, dp: Step[Dp]) -> Step[Synthesizer]:
    """Round 0: tune the base synthesizer on D_p."""
    return run.ledger.step(
        "round-0/train",
        Synthesizer,
        code=train.VERSION,
        reads=training_reads(run.config),
        after=[dp],
        outputs=["rounds/0/train"],
        run=lambda discard: _train(run, "rounds/0", run.file(dp.result.train), dp, None, discard),
    )


def training_rows(selected: list[Candidate], dp: list[DpSample]) -> list[dict[str, Any]]:
    """The rows a round's synthesizer trains on: the selection, then D_p (when mixed)."""
    rows = [
        {
            "id": c.id,
            "seed_text": c.seed_text,
            "problem": c.problem,
            "solution": c.solution,
            "tests": c.tests,
            "origin": "selected",
        }
        for c in selected
    ]
    rows += [
        {
            "id": d.id,
            "seed_text": d.seed_text,
            "problem": d.problem,
            "solution": d.solution,
            "tests": d.tests,
            "origin": "dp",
        }
        for d in dp
    ]
    return rows


def retrain(
    run: Run,
    name: str,
    where: str,
    chosen: Callable[[], str | None],
    dp: Step[Dp] | None,
    previous: Step[Synthesizer],
    after: Step[Selection],
) -> Step[Synthesizer]:
    """Round r's synthesizer, tuned on a selection (+ D_p), from round r-1's last adapter."""
    loop = run.config.loop

    def make(discard: bool) -> Synthesizer:
        selected_file = chosen()
        picked = read_jsonl(run.file(selected_file), Candidate) if selected_file else []
        mixed = read_jsonl(run.file(dp.result.train), DpSample) if dp and loop.mix_dp else []
        rows = training_rows(picked, mixed)
        before = previous.result
        if not rows:  # nothing survived selection and D_p is not mixed in
            return before.model_copy(
                update={
                    "heldout_losses": [],
                    "losses": [],
                    "rows": 0,
                    "skipped": "nothing selected (and loop.mix_dp=false): previous synthesizer kept",
                }
            )
        data = run.path / where / "train_data.jsonl"
        write_jsonl(data, rows)
        init = before.checkpoints[-1] if loop.continue_from == "previous" else None
        return _train(run, where, data, dp, init, discard)

    return run.ledger.step(
        name,
        Synthesizer,
        code=train.VERSION,
        reads={
            **training_reads(run.config),
            "mix_dp": loop.mix_dp,
            "continue_from": loop.continue_from,
        },
        after=[after, dp, previous],
        outputs=[f"{where}/train", f"{where}/train_data.jsonl"],
        run=make,
    )
