"""The parsers on real answers: Qwen2.5-Coder-0.5B-Instruct's own synthesis answers and judge
answers, collected by bench/bench_real_model.py through both paths (in process, where synthesis
is prefilled with `### Problem`; and `transformers serve`, where nothing is prefilled and the judge
is read as text), each kept with the verdict a reader gives it (tests/data/real_outputs/README.md).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from scoder.config import ScoreConfig
from scoder.parsing import Parsed, parse_judgement, parse_synthesis
from scoder.sandbox import is_assertion

DATA = Path(__file__).parent / "data" / "real_outputs"
SYNTHESIS = [json.loads(line) for line in (DATA / "synthesis.jsonl").read_text().splitlines()]
JUDGE = [json.loads(line) for line in (DATA / "judge.jsonl").read_text().splitlines()]
ASPECTS = [a.name for a in ScoreConfig().aspects]


def test_the_corpora_cover_both_paths():
    assert {row["path"] for row in SYNTHESIS} == {"in process", "transformers serve"}
    assert {row["path"] for row in JUDGE} >= {"transformers serve"}


@pytest.mark.parametrize("row", SYNTHESIS, ids=lambda r: f"{r['path']}-{r['id']}")
def test_real_synthesis_answers_get_their_verdict(row):
    result = parse_synthesis(row["raw"], row["finish"])
    verdict = "parsed" if isinstance(result, Parsed) else result.reason
    assert verdict == row["verdict"], getattr(result, "detail", "")
    if isinstance(result, Parsed):
        assert result.problem.strip() and result.problem in row["raw"]
        ast.parse(result.solution)
        assert any(is_assertion(node) for node in ast.walk(ast.parse(result.tests)))


@pytest.mark.parametrize("row", JUDGE, ids=lambda r: f"{r['path']}-{r['id']}")
def test_real_judge_answers_get_their_verdict(row):
    scores, reason = parse_judgement(row["raw"], ASPECTS)
    verdict = "scored" if scores is not None else reason.split(":")[0]
    assert verdict == row["verdict"], reason
    if row.get("scores") is not None:
        assert scores == row["scores"]
