"""Verification, judge parsing, weights, best-per-seed selection and calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_candidate

from scoder.config import ScoreConfig, load_config
from scoder.records import Execution, Judgement
from scoder.score import (
    calibration,
    combined_score,
    equal_weights,
    fit_weights,
    run_score,
    select_best,
    vacuous_tests,
)

ASPECTS = ["consistency", "correctness", "clarity", "relevance", "difficulty"]


@pytest.mark.parametrize(
    ("solution", "tests", "reason"),
    [
        ("def f(x):\n    return x", "assert f(1) == 1", None),
        ("def f(x):\n    return x", "def test():\n    assert f(1) == 1\ntest()", None),
        ("def f(x):\n    return x", "print(f(1))", "no assert statement"),
        (
            "def f(x):\n    return x",
            "assert True\nassert 1 == 1",
            "every assert is constant (e.g. assert True)",
        ),
        (
            "def f(x):\n    return x",
            "x = 3\nassert x == 3",
            "no assert uses a name the solution defines",
        ),
        ("def f(x):\n    return x", "assert f(", "tests do not parse"),
        ("VALUE = 3", "assert VALUE == 3", None),
    ],
)
def test_vacuous_tests(solution, tests, reason):
    assert vacuous_tests(solution, tests) == reason


def candidate(
    cid,
    seed_id,
    scores=None,
    status="passed",
    pass_rate=1.0,
    vacuous=None,
    checkpoint="base",
    reason=None,
):
    return make_candidate(
        id=cid,
        seed_id=seed_id,
        checkpoint=checkpoint,
        execution=Execution(
            status=status,
            tests_total=2,
            tests_passed=int(2 * pass_rate),
            pass_rate=pass_rate,
            isolation="bwrap",
            vacuous=vacuous,
        ),
        judge=Judgement(scores=scores, reason=reason),
    )


def scored(cands, weights):
    return [c.model_copy(update={"score": combined_score(c, weights)}) for c in cands]


def test_select_best_per_seed_with_reasons_and_deterministic_ties():
    cfg = ScoreConfig()
    w = equal_weights(cfg)
    high, low = dict.fromkeys(ASPECTS, 8), dict.fromkeys(ASPECTS, 3)
    cands = scored(
        [
            candidate("a1", "A", high, pass_rate=0.5),
            candidate("a2", "A", high, pass_rate=1.0),  # same score, higher pass rate wins
            candidate("a3", "A", low),
            candidate("b2", "B", high),
            candidate("b1", "B", high),  # full tie: the smaller id wins
            candidate("c1", "C", None, reason="malformed_json: x"),
        ],
        w,
    )
    best = select_best(cands, cfg)
    selected, rejected = best.kept, best.dropped
    assert [c.id for c in selected] == ["a2", "b1"]
    reasons = {c.id: c.drop.reason for c in rejected}
    assert reasons == {
        "a1": "not_best_for_seed",
        "a3": "not_best_for_seed",
        "b2": "not_best_for_seed",
        "c1": "unscored",
    }
    assert next(c for c in rejected if c.id == "c1").drop.detail == "malformed_json: x"
    # the same input in another order gives the same choice
    again = select_best(list(reversed(cands)), cfg).kept
    assert [c.id for c in again] == ["a2", "b1"]
    assert next(c for c in rejected if c.id == "a1").drop.related == "a2"


def test_require_pass_and_min_score():
    cfg = ScoreConfig(require_pass=True, min_score=5.0)
    w = equal_weights(cfg)
    high, low = dict.fromkeys(ASPECTS, 8), dict.fromkeys(ASPECTS, 3)
    cands = scored(
        [
            candidate("a1", "A", high, status="failed", pass_rate=0.5),
            candidate("a2", "A", high, vacuous="every assert is constant (e.g. assert True)"),
            candidate("a3", "A", low),
            candidate("b1", "B", high),
        ],
        w,
    )
    best = select_best(cands, cfg)
    selected, rejected = best.kept, best.dropped
    assert [c.id for c in selected] == ["b1"]
    reasons = {c.id: (c.drop.reason, c.drop.detail) for c in rejected}
    assert reasons["a1"] == ("execution_failed", "failed")
    assert reasons["a2"] == ("execution_failed", "every assert is constant (e.g. assert True)")
    assert reasons["a3"][0] == "below_min_score"


def _synthetic(n=120, seed=0):
    rng = np.random.default_rng(seed)
    true_w = np.array([0.7, 0.3, 0.0, 0.0, 0.0])
    cands, labels = [], []
    for i in range(n):
        x = rng.integers(0, 10, size=5)
        cands.append(candidate(f"c{i:03d}", f"s{i // 4}", dict(zip(ASPECTS, map(int, x)))))
        labels.append(float(x @ true_w + rng.normal(0, 0.3)))
    return cands, labels


def test_fit_quality_weights_recovers_the_signal(tmp_path):
    cands, labels = _synthetic()
    path = tmp_path / "labels.jsonl"
    path.write_text(
        "".join(
            json.dumps({"candidate_id": c.id, "label": y}) + "\n" for c, y in zip(cands, labels)
        )
    )
    info = fit_weights(cands, path, ASPECTS)
    w = info["weights"]
    assert info["kind"] == "quality" and info["n"] == 120
    assert w["consistency"] > w["correctness"] > max(w["clarity"], w["relevance"], w["difficulty"])
    assert all(v >= 0 for v in w.values()) and abs(sum(w.values()) - 1) < 1e-9
    assert info["heldout_agreement"] > info["equal_weights_heldout_agreement"]
    assert info["heldout_agreement"] > 0.85


def test_fit_pairwise_weights(tmp_path):
    cands, labels = _synthetic(seed=1)
    rows = []
    for a, ya, b, yb in zip(cands[::2], labels[::2], cands[1::2], labels[1::2]):
        rows.append(
            {"preferred": a.id, "rejected": b.id}
            if ya > yb
            else {"preferred": b.id, "rejected": a.id}
        )
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = fit_weights(cands, path, ASPECTS)
    assert info["kind"] == "pairwise" and info["n"] == 60
    assert max(info["weights"], key=info["weights"].get) == "consistency"
    assert info["heldout_agreement"] >= info["equal_weights_heldout_agreement"]


def test_calibration_finds_the_aspect_that_predicts_execution():
    rng = np.random.default_rng(0)
    cands = []
    for i in range(60):
        passed = i % 2 == 0
        scores = {
            "consistency": 8 if passed else 2,
            "correctness": int(rng.integers(0, 10)),
            "clarity": 5,
            "relevance": 5,
            "difficulty": 5,
        }
        cands.append(
            candidate(
                f"c{i}",
                f"s{i}",
                scores,
                status="passed" if passed else "failed",
                pass_rate=1.0 if passed else 0.0,
            )
        )
    cal = calibration(scored(cands, equal_weights(ScoreConfig())), ASPECTS)
    assert cal["n"] == 60 and cal["passed"] == 30
    assert cal["consistency"]["auc"] == 1.0 and cal["consistency"]["point_biserial"] > 0.99
    assert 0.25 < cal["correctness"]["auc"] < 0.75
    assert cal["clarity"]["point_biserial"] is None  # constant: no signal, not a number


def test_run_score_executes_and_records_everything(tmp_path, tiny_model_dir):
    """The stage on a hand-made candidates file: real sandbox, a (useless) real judge."""
    rows = [
        candidate("good", "A", None).model_copy(
            update={
                "solution": "def add(a, b):\n    return a + b",
                "tests": "assert add(1, 2) == 3\nassert add(0, 0) == 0",
                "execution": None,
                "judge": None,
            }
        ),
        candidate("wrong", "A", None).model_copy(
            update={
                "solution": "def add(a, b):\n    return a - b",
                "tests": "assert add(1, 2) == 3\nassert add(0, 0) == 0",
                "execution": None,
                "judge": None,
            }
        ),
        candidate("vacuous", "B", None).model_copy(
            update={
                "solution": "def f():\n    return 1",
                "tests": "assert True",
                "execution": None,
                "judge": None,
            }
        ),
        candidate("loop", "B", None).model_copy(
            update={
                "solution": "def f():\n    while True: pass",
                "tests": "assert f() == 1",
                "execution": None,
                "judge": None,
            }
        ),
    ]
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    cfg = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            f"score.judge.name={tiny_model_dir}",
            "score.judge.device=cpu",
            "score.max_new_tokens=8",
            "score.sandbox.timeout_s=2",
        ],
    )
    run, result = run_score(cfg, path)
    by_id = {c.id: c for c in result.scored}
    assert by_id["good"].execution.status == "passed" and by_id["good"].execution.tests_passed == 2
    assert (
        by_id["wrong"].execution.status == "failed" and by_id["wrong"].execution.tests_passed == 1
    )
    assert by_id["vacuous"].execution.vacuous and not by_id["vacuous"].execution.trusted_pass
    assert by_id["loop"].execution.status == "timeout"
    # in process even a random judge answers: its digits' probabilities are read, not its text
    assert all(c.judge.method == "choices" and c.score is not None for c in result.scored)
    assert sorted(c.seed_id for c in result.selected) == ["A", "B"]
    assert {c.drop.reason for c in result.rejected} == {"not_best_for_seed"}
    manifest = run.load_manifest()["stages"]["score"]
    assert manifest["counts"]["candidates"] == 4 and manifest["counts"]["executed_passed"] == 1
    assert manifest["judging"]["unscored_rate"] == 0.0
    assert manifest["judging"]["judge_methods"] == {"choices": 4}
    assert manifest["sandbox"]["isolation_used"] in ("bwrap", "unshare", "rlimits")
    assert manifest["judge"]["source"] == "local" and manifest["template"]["digest"].startswith(
        "sha256:"
    )
    for name in (
        "scored.jsonl",
        "kept.jsonl",
        "dropped.jsonl",
        "weights.json",
        "summary.json",
    ):
        assert (run.stage_dir("score") / name).is_file()


def test_execution_records_carry_no_timing():
    """An older run's record with its wall time still loads; none is written (the same
    selection is the same bytes on every run; the manifest keeps the stage's time)."""
    old = {"status": "passed", "tests_total": 1, "tests_passed": 1, "pass_rate": 1.0}
    record = Execution.model_validate({**old, "wall_s": 0.25, "isolation": "bwrap"})
    assert "wall_s" not in record.model_dump(mode="json")


def test_concordance_equals_counting_every_pair_without_listing_them():
    """The rank agreement weight fitting reports, computed in O(n log n), equals the count over
    all pairs (ties in labels, in predictions, and both); 100K candidates take no n x n matrix."""
    from scoder.score import _concordance

    def by_pairs(pred, label):
        agree = ties = total = 0
        for i in range(len(pred)):
            for j in range(i + 1, len(pred)):
                if label[i] == label[j]:
                    continue
                total += 1
                d = (pred[i] - pred[j]) * (label[i] - label[j])
                agree += d > 0
                ties += pred[i] == pred[j]
        return (agree + 0.5 * ties) / total

    rng = np.random.default_rng(0)
    for n, levels in [(2, 2), (7, 3), (40, 4), (120, 10), (90, 2)]:
        label = rng.integers(0, levels, n).astype(float)
        pred = rng.integers(0, 5, n) + (label * rng.random(n) > 1.0)
        if len(set(label)) > 1:
            assert _concordance(pred, label) == pytest.approx(by_pairs(pred, label), abs=1e-9)
    assert _concordance(np.zeros(5), np.arange(5.0)) == 0.5
    assert np.isnan(_concordance(np.arange(5.0), np.ones(5)))
    big = rng.random(100_000)
    assert _concordance(big, big) == pytest.approx(1.0)
    assert _concordance(-big, big) == pytest.approx(0.0)


def _stage_inputs(tmp_path, cands, chunk_size):
    """The stage's input file and its finished parts (executed and judged): run_score resumes
    every chunk, so it runs and judges nothing and does only what follows."""
    path = tmp_path / "candidates.jsonl"
    unjudged = [c.model_copy(update={"execution": None, "judge": None}) for c in cands]
    path.write_text("".join(c.model_dump_json() + "\n" for c in unjudged))
    parts = tmp_path / "run" / "score" / "parts"
    parts.mkdir(parents=True)
    for number, start in enumerate(range(0, len(cands), chunk_size)):
        chunk = cands[start : start + chunk_size]
        (parts / f"part-{number:05d}.jsonl").write_text(
            "".join(c.model_dump_json() + "\n" for c in chunk)
        )
    return path


def test_the_streamed_stage_decides_as_the_functions_over_candidates_and_refers_raw_texts(
    tmp_path,
):
    """run_score reads its pool a chunk at a time and keeps only small fields (a Pool); its
    weights, calibration and best per seed equal those of the functions over whole candidates,
    and its files refer to raw texts stored once in raw.jsonl, capped, that load back."""
    from scoder.records import (
        RAW_FILE,
        RAW_OUTPUT_CAP,
        STDERR_CAP,
        RawTexts,
        read_candidates_with_raw,
    )
    from scoder.score import EXECUTION_FEATURE
    from scoder.store import read_jsonl

    rng = np.random.default_rng(3)
    cands = []
    for i in range(30):
        status = "passed" if i % 3 else "failed"
        c = candidate(
            f"c{i:02d}",
            f"s{i // 4}",
            dict(zip(ASPECTS, map(int, rng.integers(0, 10, 5)))) if i % 11 else None,
            status=status,
            pass_rate=1.0 if status == "passed" else 0.5,
            vacuous="no assert statement" if i == 7 else None,
            reason=None if i % 11 else "malformed_json: x",
        )
        stderr = "" if status == "passed" else f"Traceback {i}\n" + "x" * (5000 if i == 3 else 50)
        c = c.model_copy(
            update={
                "raw_output": f"raw {i} " + "y" * (RAW_OUTPUT_CAP + 10 if i == 3 else 100),
                "execution": c.execution.model_copy(update={"stderr": stderr}),
            }
        )
        cands.append(c)
    path = _stage_inputs(tmp_path, cands, chunk_size=7)
    cfg = load_config(
        None,
        [f"run_dir={tmp_path / 'run'}", "score.chunk_size=7", "score.sandbox.isolation=rlimits"],
    )
    run, result = run_score(cfg, path, fit_labels="execution")

    names = ASPECTS + [EXECUTION_FEATURE]
    fitted = fit_weights(cands, "execution", names, seed=cfg.random_seed)
    assert result.weights["weights"] == fitted["weights"]
    expected = select_best(scored(cands, fitted["weights"]), cfg.score)
    assert [c.id for c in result.selected] == [c.id for c in expected.kept]
    drops = [(c.id, c.drop.reason, c.drop.detail, c.drop.related) for c in result.rejected]
    assert drops == [(c.id, c.drop.reason, c.drop.detail, c.drop.related) for c in expected.dropped]
    assert result.summary["calibration"] == calibration(scored(cands, fitted["weights"]), ASPECTS)
    out = run.stage_dir("score")
    # every file that holds a candidate refers to its texts; raw.jsonl holds them once
    for name in ("scored.jsonl", "kept.jsonl", "dropped.jsonl"):
        for row in read_jsonl(out / name):
            assert row["raw_output"] == "" and row["execution"]["stderr"] == ""
            assert row["raw_ref"].startswith(f"{RAW_FILE}#")
    raw = {r.id: r for r in read_jsonl(out / RAW_FILE, RawTexts)}
    assert len(raw) == len(cands) == len(read_jsonl(out / RAW_FILE))
    assert raw["c03"].raw_output_chars == RAW_OUTPUT_CAP + 16  # "raw 3 " + cap + 10
    assert len(raw["c03"].raw_output) == RAW_OUTPUT_CAP and len(raw["c03"].stderr) == STDERR_CAP
    back = {c.id: c for c in read_candidates_with_raw(out / "kept.jsonl")}
    for c in expected.kept:  # as kept, but for the caps
        capped = c.model_copy(
            update={
                "raw_output": c.raw_output[:RAW_OUTPUT_CAP],
                "execution": c.execution.model_copy(
                    update={"stderr": c.execution.stderr[-STDERR_CAP:]}
                ),
            }
        )
        assert back[c.id] == capped


def test_an_older_run_s_records_with_inline_raw_texts_load_as_they_are(tmp_path):
    """Records written before the raw store (no raw_ref, texts inline) load, and reading them
    with their raw texts changes nothing."""
    from scoder.records import Candidate, read_candidates_with_raw

    row = candidate("old", "A", dict.fromkeys(ASPECTS, 5)).model_dump(mode="json")
    row.pop("raw_ref")
    row["raw_output"], row["execution"]["stderr"] = "### Problem\n...", "Traceback ..."
    path = tmp_path / "kept.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (loaded,) = read_candidates_with_raw(path)
    assert loaded == Candidate.model_validate(row) and loaded.raw_ref is None
    assert loaded.execution.stderr == "Traceback ..."
