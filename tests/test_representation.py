"""RDS+ (scoder.representation) and the selection strategies `scoder experiment` compares: the
embedding is the position-weighted mean of the final hidden states, batched or alone; an exact
copy of a D_p row ranks first; embeddings are computed once into a store several selections
share; execution-passed-random draws among the passed; `all` keeps the whole pool."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_candidate
from test_select import train_checkpoints, write_inputs

from scoder.config import load_config
from scoder.influence import Example
from scoder.models import load_causal_lm, resolve_model, swap_adapter
from scoder.records import Execution
from scoder.representation import embeddings, rds_scores
from scoder.select import STRATEGIES, choose, run_select
from scoder.store import RunDir, read_jsonl


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir, tmp_path_factory):
    return train_checkpoints(tiny_model_dir, tmp_path_factory.mktemp("ckpts"))


def test_the_embedding_is_the_position_weighted_mean_of_final_hidden_states(
    tiny_model_dir, checkpoints
):
    """By hand, one sample alone: sum_t t * h_t / sum_t t, unit length; the batched, padded
    computation gives the same rows in the input's order."""
    model = swap_adapter(
        load_causal_lm(resolve_model(str(tiny_model_dir)), device="cpu"),
        checkpoints[-1],
        trainable=False,
    )
    examples = [
        Example(prompt_ids=[5, 6, 7], response_ids=[8, 9]),
        Example(prompt_ids=[11], response_ids=[12, 13, 14, 15, 16, 17]),
        Example(prompt_ids=[3, 4], response_ids=[]),
    ]
    batched = embeddings(model, examples, pad_token_id=0, max_length=6, batch_tokens=64)
    for row, ex in zip(batched, examples):
        ids = (ex.prompt_ids + ex.response_ids)[:6]
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        h = hidden.hidden_states[-1][0].float()
        weights = torch.arange(1, len(ids) + 1, dtype=torch.float32).unsqueeze(-1)
        expected = (h * weights).sum(0) / weights.sum()
        expected = (expected / expected.norm()).numpy()
        np.testing.assert_allclose(row, expected, atol=2e-5)
    alone = embeddings(model, examples[1:2], pad_token_id=0, max_length=6)
    np.testing.assert_allclose(alone[0], batched[1], atol=2e-5)


def test_rds_scores_are_cosines_to_the_nearest_or_the_mean_target():
    cands = np.array([[1.0, 0.0], [0.0, 1.0], [np.nan, np.nan]], np.float32)
    targets = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    nearest = rds_scores(cands, targets, "max")
    assert nearest[:2].tolist() == pytest.approx([1.0, 0.8]) and np.isnan(nearest[2])
    centre = np.array([0.8, 0.4]) / np.linalg.norm([0.8, 0.4])
    assert rds_scores(cands, targets, "mean")[:2].tolist() == pytest.approx(centre.tolist())


def test_an_exact_copy_of_a_dp_row_ranks_first_and_embeddings_are_computed_once(
    tmp_path, tiny_model_dir, checkpoints
):
    """The copy has cosine 1 with its D_p row (the nearest); a second selection pointed at the
    same feature store (another seed's arm) embeds nothing again and ranks alike."""
    cands, dp = write_inputs(tmp_path)
    rows = read_jsonl(cands)
    twin = next(r for r in rows if r["id"] == "c4")
    others = [
        {"seed_text": "x = 1", "problem": "Set x.", "solution": "x = 1", "tests": "assert x"},
        {
            "seed_text": "y = []",
            "problem": "A list.",
            "solution": "y = []",
            "tests": "assert not y",
        },
    ]  # D_p: two rows no candidate copies, and the copy
    dp.write_text("".join(json.dumps(r) + "\n" for r in [others[0], twin, others[1]]))
    sets = [f"model.name={tiny_model_dir}", "model.device=cpu", "select.k=2"]
    store = tmp_path / "shared"
    ranked = []
    for arm in ("a", "b"):
        config = load_config(None, [*sets, f"run_dir={tmp_path / arm}"])
        run, out = run_select(
            config, cands, strategy="rds", dp=dp, checkpoints=checkpoints, features_root=store
        )
        stage = run.load_manifest()["stages"]["select"]
        ranked.append([(c.id, c.rds) for c in out.kept])
        expected_reused = 0 if arm == "a" else len(rows) + 3
        assert stage["counts"]["features_reused"] == expected_reused
        cost = stage["selection_cost"]
        assert cost["signal"] == "RDS+" and cost["tokens"] > 0 and cost["seconds"] >= 0
        assert all(c.influence is None for c in out.kept)
    assert ranked[0] == ranked[1]
    assert ranked[0][0][0] == "c4" and ranked[0][0][1] == pytest.approx(1.0, abs=1e-5)
    assert ranked[0][1][1] < ranked[0][0][1]
    assert list(store.rglob("candidates/part-*.npy")) and not (tmp_path / "a" / "features").exists()


def _passed(status: str) -> Execution:
    return Execution(
        status=status,
        tests_total=1,
        tests_passed=int(status == "passed"),
        pass_rate=float(status == "passed"),
        isolation="bwrap",
    )


def test_passed_random_draws_among_the_passed_and_all_keeps_the_pool(tmp_path):
    pool = [
        make_candidate(
            id=f"c{i}",
            seed_id=f"s{i}",
            score=float(i),
            execution=_passed("passed" if i % 2 else "failed"),
        )
        for i in range(8)
    ]
    drawn = choose("passed_random", pool, 3, 5).kept
    assert len(drawn) == 3 and all(c.passed for c in drawn)
    assert drawn == choose("passed_random", pool, 3, 5).kept
    short = choose("passed_random", pool, 6, 5).kept  # 4 passed: 2 more drawn among the rest
    assert [c.passed for c in short] == [True] * 4 + [False] * 2
    assert {c.drop.detail for c in choose("passed_random", pool, 3, 5).dropped} == {
        "not drawn (passed_random)"
    }
    assert [c.id for c in STRATEGIES["all"](pool, 2, 0)] == [c.id for c in pool]
    cands = tmp_path / "pool.jsonl"
    cands.write_text("".join(c.model_dump_json() + "\n" for c in pool))
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "select.k=2"])
    _, everything = run_select(cfg, cands, strategy="all")
    assert len(everything.kept) == len(pool) and not everything.dropped
    _, passed = run_select(cfg, cands, strategy="passed_random", run=RunDir(tmp_path / "p"))
    assert len(passed.kept) == 2 and all(c.passed for c in passed.kept)
