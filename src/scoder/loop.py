"""`scoder run`: the SCoder algorithm as one resumable command.

    D_p (teacher) -> enhance the synthesizer on D_p (round 0: M checkpoints)
    for r = 1..T:
        fresh seed slice -> M x N samples from round r-1's checkpoints -> decontaminate
        -> verify + multi-aspect score -> best per seed -> influence against D_p
        -> top-k (+ random@k, judge-top@k beside it) -> train round r's synthesizer -> summary
    final: the last synthesizer writes K samples on fresh seeds -> (score) -> dataset + data card
        -> (code-model SFT) -> (evaluation)

The loop only composes stages (each writes through `store` into its own directory) and keeps a
ledger, RUN/loop.json, of the steps it finished. A re-run skips finished steps; the stage that was
cut short resumes from its own saved chunks (generation, judging, influence features) or runs
again from its start (training, which is deterministic on CPU), so a killed run finishes with the
same dataset as an uninterrupted one. The ledger holds the fingerprint of the whole config: a run
directory made with another config is refused, never mixed.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scoder.config import Config, fingerprint
from scoder.errors import ScoderError
from scoder.records import Candidate
from scoder.store import RunDir, now_iso, read_jsonl, write_json, write_jsonl

LEDGER = "loop.json"
# What the loop creates in a run directory (and --force removes): nothing else is touched.
LOOP_OUTPUTS = ("seeds", "decontaminate", "teacher", "dp", "rounds", "final", "eval", "code-model")
BASELINES = ("random_at_k", "judge_top_at_k")


def _section(config: Config, name: str, **updates: Any) -> Any:
    return getattr(config, name).model_copy(update=updates)


def _at(config: Config, run_dir: Path, **sections: Any) -> Config:
    """The config of one stage call: its own run directory, some sections changed."""
    return config.model_copy(update={"run_dir": run_dir, **sections})


def _identity(config: Config) -> str:
    data = config.model_dump(mode="json")
    data.pop("run_dir")  # a moved run directory is the same run
    return fingerprint(data)


class Ledger:
    """RUN/loop.json: the steps finished (with what later steps need from them)."""

    def __init__(self, run: RunDir, identity: str, force: bool) -> None:
        self.path = run.path / LEDGER
        self.run = run
        data = json.loads(self.path.read_text()) if self.path.is_file() else None
        if data and data.get("fingerprint") != identity and not force:
            raise ScoderError(
                f"{run.path} holds a `scoder run` made with another config or model "
                f"(fingerprint {data.get('fingerprint')} != {identity}). Use another run "
                "directory, or --force to discard it and start afresh."
            )
        if force or (data and data.get("fingerprint") != identity):
            for name in (*LOOP_OUTPUTS, LEDGER, "manifest.json"):
                target = run.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            data = None
        self.data = data or {
            "fingerprint": identity,
            "created_at": now_iso(),
            "done": {},
            "stopped": None,
        }
        run.path.mkdir(parents=True, exist_ok=True)
        self.save()

    def save(self) -> None:
        self.data["updated_at"] = now_iso()
        write_json(self.path, self.data)

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run `fn` unless an earlier run finished it; either way return what it reported."""
        done = self.data["done"]
        if name in done:
            return done[name]
        info = fn()
        done[name] = info
        self.save()
        return info


# ----------------------------------------------------------------------------- selection helpers


def pick_random_per_seed(candidates: list[Candidate], seed: int) -> list[Candidate]:
    """The 'no scorer' ablation: one candidate per seed, chosen at random (reproducibly)."""
    by_seed: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_seed.setdefault(c.seed_id, []).append(c)
    rng = random.Random(seed)
    return [rng.choice(sorted(group, key=lambda c: c.id)) for _, group in sorted(by_seed.items())]


def diversity(candidates: list[Candidate], n: int = 4) -> dict[str, float | int]:
    """Distinct word n-grams over all n-grams of the problems + solutions: near 1 for varied
    samples, falling towards 0 as they collapse onto each other."""
    from scoder.decontaminate import words

    grams: list[tuple[str, ...]] = []
    for c in candidates:
        tokens = words(f"{c.problem or ''} {c.solution or ''}")
        grams += [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return {
        f"distinct_{n}grams": round(len(set(grams)) / len(grams), 4) if grams else 0.0,
        "samples": len(candidates),
    }


def training_rows(selected: list[Candidate], dp: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
            "id": d["id"],
            "seed_text": d["seed_text"],
            "problem": d["problem"],
            "solution": d["solution"],
            "tests": d.get("tests"),
            "origin": "dp",
        }
        for d in dp
    ]
    return rows


def dataset_row(c: Candidate) -> dict[str, Any]:
    """One record of the final dataset: the sample and where it came from (no timings, so a
    resumed run writes the same bytes)."""
    passed = c.execution.trusted_pass if c.execution else None
    return {
        "id": c.id,
        "problem": c.problem,
        "solution": c.solution,
        "tests": c.tests,
        "language": "python",
        "seed": c.seed_text,
        "seed_kind": c.seed_source.kind,
        "seed_location": c.seed_source.location,
        "seed_name": c.seed_source.name,
        "model": c.model,
        "model_digest": c.model_digest,
        "round": c.round,
        "checkpoint": c.checkpoint,
        "sample_index": c.sample_index,
        "template": c.template,
        "template_digest": c.template_digest,
        "score": c.score,
        "tests_passed": passed,
    }


# ----------------------------------------------------------------------------- the loop


class _Run:
    """The steps of one `scoder run`, in order; state lives in the ledger and on disk."""

    def __init__(self, config: Config, force: bool) -> None:
        self.config = config
        self.run = RunDir(config.run_dir)
        self.ledger = Ledger(self.run, _identity(config), force)
        self.path = self.run.path

    # -- data in -----------------------------------------------------------------------------

    def seeds(self) -> dict[str, Any]:
        from scoder.seeds import run_seeds

        loop, final = self.config.loop, self.config.final
        needed = loop.rounds * loop.seeds_per_round + final.samples
        margin = math.ceil(needed * 1.25) + 4  # decontamination and dedup drop a few
        mine = max(self.config.seeds.max_seeds or 0, margin)
        cfg = _at(self.config, self.path, seeds=_section(self.config, "seeds", max_seeds=mine))
        _, kept, _ = run_seeds(cfg)
        if loop.decontaminate:
            kept = self._decontaminate(kept, "seed", self.run, "decontaminate/seeds")
        if len(kept) < needed:
            raise ScoderError(
                f"the seed source gave {len(kept)} usable seeds; {loop.rounds} rounds x "
                f"{loop.seeds_per_round} seeds + {final.samples} final samples need {needed}. "
                "Lower loop.seeds_per_round / final.samples, or add seeds."
            )
        start = 0
        for r in range(1, loop.rounds + 1):
            write_jsonl(self._round(r) / "seeds.jsonl", kept[start : start + loop.seeds_per_round])
            start += loop.seeds_per_round
        write_jsonl(self.path / "final" / "seeds.jsonl", kept[start : start + final.samples])
        return {"usable": len(kept), "needed": needed}

    def dp(self) -> dict[str, Any]:
        from scoder.teacher import run_teacher

        _, samples = run_teacher(_at(self.config, self.path))
        if self.config.loop.decontaminate:
            samples = self._decontaminate(samples, "dp", self.run, "decontaminate/dp")
        order = sorted(samples, key=lambda s: s.id)
        random.Random(self.config.random_seed).shuffle(order)
        heldout = order[: self.config.loop.dp_heldout]
        train = order[self.config.loop.dp_heldout :]
        if not train:
            raise ScoderError(
                f"D_p has {len(samples)} usable samples and loop.dp_heldout="
                f"{self.config.loop.dp_heldout}: nothing is left to train on"
            )
        write_jsonl(self.path / "dp" / "train.jsonl", train)
        write_jsonl(self.path / "dp" / "heldout.jsonl", heldout)
        return {"train": len(train), "heldout": len(heldout)}

    def _decontaminate(self, records: list, kind: str, run: RunDir, stage: str) -> list:
        from scoder.decontaminate import run_decontaminate

        kept, _ = run_decontaminate(self.config, run, records, kind, stage=stage)
        return list(kept)

    # -- training ----------------------------------------------------------------------------

    def train(
        self,
        where: Path,
        rows: list[dict[str, Any]],
        init_adapter: str | None,
        previous: dict[str, Any] | None = None,
    ) -> dict:
        from scoder.train import run_train

        if not rows:
            if previous is None:
                raise ScoderError(f"{where}: nothing to train on")
            # nothing survived selection and D_p is not mixed in: keep the previous synthesizer
            return {
                **previous,
                "heldout_losses": [],
                "losses": [],
                "rows": 0,
                "skipped": "nothing selected (and loop.mix_dp=false): previous synthesizer kept",
            }
        data = where / "train_data.jsonl"
        write_jsonl(data, rows)
        heldout = self.path / "dp" / "heldout.jsonl"
        cfg = _at(
            self.config,
            where,
            train=_section(
                self.config,
                "train",
                data=data,
                eval_data=heldout if self.config.loop.dp_heldout else None,
                init_adapter=Path(init_adapter) if init_adapter else None,
                merge=False,
            ),
        )
        _, out = run_train(cfg)
        return {
            "checkpoints": [c["path"] for c in out["checkpoints"]],
            "heldout_loss": out["eval_losses"][-1] if out["eval_losses"] else None,
            "heldout_losses": out["eval_losses"],
            "losses": [out["losses"][0], out["losses"][-1]] if out["losses"] else [],
            "rows": len(rows),
        }

    def _dp_rows(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / "dp" / "train.jsonl")

    # -- sampling (a round's or the final stage's) ---------------------------------------------

    def _sample(self, prefix: str, where: Path, at: Config, round_number: int) -> dict[str, Any]:
        """Two steps: generate from `where`/seeds.jsonl with `at`'s checkpoints, then
        decontaminate the parsed candidates into `where`/pool.jsonl."""

        def synthesize() -> dict:
            from scoder.synthesize import run_synthesize

            _, result = run_synthesize(at, where / "seeds.jsonl", round_number=round_number)
            return {"generated": len(result.accepted) + len(result.rejected)}

        def decontaminate() -> dict:
            pool = read_jsonl(where / "synthesize" / "candidates.jsonl", Candidate)
            if self.config.loop.decontaminate and pool:
                pool = self._decontaminate(pool, "candidate", RunDir(where), "decontaminate")
            write_jsonl(where / "pool.jsonl", pool)
            return {"kept": len(pool)}

        return {
            "synthesize": self.ledger.step(f"{prefix}/synthesize", synthesize),
            "decontaminate": self.ledger.step(f"{prefix}/decontaminate", decontaminate),
        }

    # -- one round ---------------------------------------------------------------------------

    def _round(self, r: int) -> Path:
        return self.path / "rounds" / str(r)

    def round(self, r: int, previous: dict[str, Any]) -> dict[str, Any]:
        loop, cfg = self.config.loop, self.config
        where = self._round(r)
        checkpoints = (
            previous["checkpoints"][-loop.checkpoints :]
            if loop.checkpoints
            else list(previous["checkpoints"])
        )
        at = _at(
            cfg,
            where,
            synthesis=_section(cfg, "synthesis", checkpoints=[Path(p) for p in checkpoints]),
        )
        step = self.ledger.step
        counts: dict[str, Any] = self._sample(f"round-{r}", where, at, r)

        def score() -> dict:
            pool = read_jsonl(where / "pool.jsonl", Candidate)
            if not pool:
                best: list[Candidate] = []
            elif loop.scorer:
                from scoder.score import run_score

                run_score(at, where / "pool.jsonl")
                best = read_jsonl(where / "score" / "selected.jsonl", Candidate)
            else:
                best = pick_random_per_seed(pool, cfg.random_seed * 1_000 + r)
            write_jsonl(where / "best.jsonl", best)
            return {"best_per_seed": len(best)}

        counts["score"] = step(f"round-{r}/score", score)

        def select() -> dict:
            best = read_jsonl(where / "best.jsonl", Candidate)
            sets = self._select(at, where, best, checkpoints, r)
            write_jsonl(where / "selected.jsonl", sets["selected"])
            for name in BASELINES:
                write_jsonl(where / "baselines" / f"{name}.jsonl", sets[name])
            scores = [c.score for c in sets["selected"] if c.score is not None]
            return {
                "selected": len(sets["selected"]),
                "mean_selected_score": sum(scores) / len(scores) if scores else None,
            }

        counts["select"] = step(f"round-{r}/select", select)
        selected = read_jsonl(where / "selected.jsonl", Candidate)
        dp_rows = self._dp_rows() if loop.mix_dp else []
        init = previous["checkpoints"][-1] if loop.continue_from == "previous" else None
        trained = step(
            f"round-{r}/train",
            lambda: self.train(where, training_rows(selected, dp_rows), init, previous),
        )
        baselines: dict[str, Any] = {}
        if loop.train_baselines:
            for name in BASELINES:
                chosen = read_jsonl(where / "baselines" / f"{name}.jsonl", Candidate)
                baselines[name] = step(
                    f"round-{r}/baseline-{name}",
                    lambda chosen=chosen, name=name: self.train(
                        where / "baselines" / name, training_rows(chosen, dp_rows), init, previous
                    ),
                )

        def summarize() -> dict:
            summary = {
                "round": r,
                "sampled_from": checkpoints,
                "counts": counts,
                "selection": loop.selection,
                "mean_selected_score": counts["select"]["mean_selected_score"],
                "heldout_dp_loss": {
                    loop.selection: trained["heldout_loss"],
                    **{name: b["heldout_loss"] for name, b in baselines.items()},
                }
                if loop.dp_heldout
                else None,
                "diversity": diversity(selected),
                "trained": {k: trained[k] for k in ("checkpoints", "rows", "losses")},
            }
            write_json(where / "summary.json", summary)
            return summary

        return step(f"round-{r}/summary", summarize)

    def _select(
        self, at: Config, where: Path, best: list[Candidate], checkpoints: list[str], r: int
    ) -> dict[str, list[Candidate]]:
        import numpy as np

        from scoder.select import select_top_k

        if not best:
            return {"selected": [], **{name: [] for name in BASELINES}}
        k = at.select.k or max(1, round(at.select.fraction * len(best)))
        if self.config.loop.selection == "influence":
            from scoder.select import run_select

            cfg = _at(
                at,
                where,
                select=_section(
                    at,
                    "select",
                    dp=self.path / "dp" / "train.jsonl",
                    checkpoints=[Path(p) for p in checkpoints],
                    k=k,
                ),
            )
            run_select(cfg, where / "best.jsonl")  # written by the score step
            out = where / "select"
            return {
                "selected": read_jsonl(out / "selected.jsonl", Candidate),
                **{
                    name: read_jsonl(out / "baselines" / f"{name}.jsonl", Candidate)
                    for name in BASELINES
                },
            }
        # no influence computed: select_top_k's zero influence is stripped, and the selection
        # is one of its baselines (judge-top@k or random@k)
        sets = {
            name: [c.model_copy(update={"influence": None}) for c in chosen]
            for name, chosen in select_top_k(
                best, np.zeros(len(best)), {}, k, self.config.random_seed * 1_000 + r
            ).items()
        }
        which = "random_at_k" if self.config.loop.selection == "random" else "judge_top_at_k"
        return {"selected": sets[which], **{name: sets[name] for name in BASELINES}}

    # -- stopping ----------------------------------------------------------------------------

    def should_stop(self, summaries: list[dict[str, Any]]) -> str | None:
        loop = self.config.loop
        if summaries and summaries[-1]["counts"]["select"]["selected"] == 0 and not loop.mix_dp:
            return "empty_selection: no candidate survived to be selected"
        if loop.stop_metric == "none" or len(summaries) < 2:
            return None

        def value(s: dict[str, Any]) -> float | None:
            if loop.stop_metric == "mean_selected_score":
                return s["mean_selected_score"]
            losses = s["heldout_dp_loss"] or {}
            loss = losses.get(loop.selection)
            return -loss if loss is not None else None  # lower loss is better

        before, now = value(summaries[-2]), value(summaries[-1])
        if before is None or now is None:
            return None
        if now - before < loop.stop_min_delta:
            return (
                f"{loop.stop_metric} improved by {now - before:.4g} < stop_min_delta="
                f"{loop.stop_min_delta} in round {summaries[-1]['round']}"
            )
        return None

    # -- final -------------------------------------------------------------------------------

    def final(self, synthesizer: str | None) -> dict[str, Any]:
        where = self.path / "final"
        cfg = self.config
        adapters = [Path(synthesizer)] if synthesizer else []
        at = _at(cfg, where, synthesis=_section(cfg, "synthesis", checkpoints=adapters))
        step = self.ledger.step
        final_round = len([k for k in self.ledger.data["done"] if k.endswith("/summary")]) + 1
        if not read_jsonl(where / "seeds.jsonl"):
            return {"samples": 0}
        self._sample("final", where, at, final_round)

        def score() -> dict:
            pool = read_jsonl(where / "pool.jsonl", Candidate)
            if cfg.final.score and pool:
                from scoder.score import run_score

                run_score(at, where / "pool.jsonl")
                pool = read_jsonl(where / "score" / "selected.jsonl", Candidate)
            write_jsonl(where / "kept.jsonl", pool)
            return {"kept": len(pool)}

        step("final/score", score)
        return step("final/export", lambda: self.export(synthesizer))

    def export(self, synthesizer: str | None) -> dict[str, Any]:
        from datasets import Dataset

        from scoder.models import resolve_model

        where = self.path / "final"
        kept = read_jsonl(where / "kept.jsonl", Candidate)
        rows = [dataset_row(c) for c in kept]
        write_jsonl(where / "dataset.jsonl", rows)
        table = Dataset.from_list(rows) if rows else None
        if table is not None:
            table.to_parquet(str(where / "dataset.parquet"))
        ref = resolve_model(self.config.model.name, revision=self.config.model.revision)
        counts = self._stage_counts()
        (where / "README.md").write_text(data_card(self.config, ref, synthesizer, rows, counts))
        return {"samples": len(rows), "dataset": str(where / "dataset.jsonl")}

    def _stage_counts(self) -> dict[str, Any]:
        done = self.ledger.data["done"]
        return {name: info for name, info in done.items() if not name.endswith("/summary")}

    def code_model(self) -> dict[str, Any]:
        from scoder.train import run_train

        where = self.path / "code-model"
        cfg = self.config
        model = cfg.model
        if cfg.final.code_model_name:
            model = model.model_copy(update={"name": cfg.final.code_model_name})
        at = _at(
            cfg,
            where,
            model=model,
            train=_section(
                cfg,
                "train",
                task="code",
                data=self.path / "final" / "dataset.jsonl",
                eval_data=None,
                init_adapter=None,
                merge=True,
            ),
        )
        _, out = run_train(at)
        return {"model": str(out["merged_model"]), "checkpoints": len(out["checkpoints"])}


def data_card(
    config: Config, ref: Any, synthesizer: str | None, rows: list[dict[str, Any]], counts: dict
) -> str:
    """README.md of the final dataset: what it is, where it came from, how it was filtered."""
    final_license = config.final.license or "unknown: set final.license"
    dp = (
        f"route `{config.teacher.route}`, source `{config.teacher.source}`, license "
        f"{config.teacher.license or 'as the source'}"
        if config.loop.enhance
        else "none (the synthesizer was not enhanced)"
    )
    passed = sum(1 for r in rows if r["tests_passed"])
    return f"""---
license: {config.final.license or "other"}
task_categories: [text-generation]
language: [en]
tags: [code, synthetic, scoder]
---

# Synthetic code-instruction dataset (scoder)

{len(rows)} Python problems with solutions and unit tests, written by a small open model
fine-tuned with the SCoder method (iterative self-distillation) by
[scoder](https://github.com/scoder). Load it with

```python
from datasets import load_dataset
ds = load_dataset("json", data_files="dataset.jsonl", split="train")  # or dataset.parquet
```

## Sources
- Seeds: `{config.seeds.source}` (kind of source per record in `seed_kind`, file in
  `seed_location`).
- D_p (superior samples the synthesizer was first tuned on): {dp}.

## Models
- Base model: `{ref.id}` (weights digest `{ref.digest}`).
- Synthesizer that wrote the dataset: {f"LoRA adapter `{synthesizer}`" if synthesizer else "the base model itself"}, after {config.loop.rounds}
  self-distillation round(s) of {config.loop.seeds_per_round} seeds each.
- Template: `{config.synthesis.template}`; sampling: temperature {config.synthesis.temperature},
  top-p {config.synthesis.top_p}, {config.synthesis.max_new_tokens} new tokens at most.

## Filters
- Decontamination against evaluation benchmarks (substring, word {config.decontaminate.ngram}-grams)
  and MinHash near-duplicate removal: {"on" if config.loop.decontaminate else "off"}.
- Execution in a sandbox + multi-aspect judge, best sample per seed: {"on" if config.final.score else "off"}.
- Records whose tests passed in the sandbox: {passed} of {len(rows)} (`tests_passed`).

## Counts per stage
```json
{json.dumps(counts, indent=2)}
```

## License
Dataset: {final_license}. Seeds keep their source's license; generated text follows the base
model's terms.
"""


def run_loop(config: Config, *, force: bool = False) -> dict[str, Any]:
    """`scoder run`: every step of the method, resumable; returns the run's summary."""
    loop = _Run(config, force)
    ledger, step = loop.ledger, loop.ledger.step
    step("seeds", loop.seeds)
    previous: dict[str, Any] = {"checkpoints": []}  # the base model, no adapter
    if config.loop.enhance:
        step("dp", loop.dp)
        previous = step("round-0/train", lambda: loop.train(loop._round(0), loop._dp_rows(), None))
    summaries: list[dict[str, Any]] = []
    for r in range(1, config.loop.rounds + 1):
        if ledger.data["stopped"]:
            break
        summaries.append(loop.round(r, previous))
        previous = ledger.data["done"][f"round-{r}/train"]
        reason = loop.should_stop(summaries)
        if reason and r < config.loop.rounds:
            ledger.data["stopped"] = {"after_round": r, "reason": reason}
            ledger.save()
    final = loop.final(previous["checkpoints"][-1] if previous["checkpoints"] else None)
    result: dict[str, Any] = {
        "rounds": summaries,
        "final": final,
        "stopped": ledger.data["stopped"],
    }
    if config.final.code_model and final.get("samples"):
        result["code_model"] = step("code-model", loop.code_model)
    if config.final.eval_benchmarks and "code_model" in result:
        result["eval"] = step("eval", lambda: evaluate_code_model(config, result["code_model"]))
    write_json(loop.path / "summary.json", result)
    return result


def evaluate_code_model(config: Config, code_model: dict[str, Any]) -> dict[str, Any]:
    """`scoder eval` of the tuned code model on each configured benchmark (RUN/eval/<bench>/)."""
    from scoder.evaluate import run_eval

    at = config.model_copy(
        update={"model": config.model.model_copy(update={"name": code_model["model"]})}
    )
    out = {}
    for bench in config.final.eval_benchmarks:
        result = run_eval(at, bench)
        out[bench] = {
            "pass_at_k": result.results["pass_at_k"],
            "results": str(result.results_path),
        }
    return out


def push_to_hub(run_dir: Path, repo: str) -> str:
    """Upload RUN/final (dataset + data card) to a Hugging Face dataset repository."""
    final = Path(run_dir) / "final"
    if not (final / "dataset.jsonl").is_file():
        raise ScoderError(f"no final dataset in {final}: run `scoder run` to the end first")
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo, repo_type="dataset", exist_ok=True)
        api.upload_folder(
            folder_path=str(final),
            repo_id=repo,
            repo_type="dataset",
            allow_patterns=["dataset.jsonl", "dataset.parquet", "README.md"],
        )
    except Exception as exc:  # network, auth, permissions: one message
        raise ScoderError(f"could not push to the hub repository {repo}: {exc}") from None
    return f"https://huggingface.co/datasets/{repo}"
