"""Decontamination against real HumanEval / MBPP+ / MBPP and near-duplicate removal, on real code:
copies are caught verbatim and reformatted, unrelated code (the stdlib, MBPP train) is left alone
except for overlaps explained below, and the CLI fails with one clear message on bad input."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from conftest import SHARED, make_candidate
from typer.testing import CliRunner

from scoder.cli import app
from scoder.config import DecontaminateConfig, SeedsConfig, load_config
from scoder.decontaminate import (
    BenchmarkIndex,
    decontaminate,
    load_index,
    load_records,
    run_decontaminate,
    words,
)
from scoder.eval.benchmarks import BenchmarkTask, load_benchmark
from scoder.records import Candidate, DpSample, Seed, SeedSource
from scoder.seeds import mine_seeds
from scoder.store import RunDir, StoreError, read_jsonl

MBPPPLUS = SHARED / "data" / "MbppPlus-pre-2023-11.jsonl"
MBPP = SHARED / "data" / "mbpp.jsonl"
BENCH_FILES = [f"benchmark_files.mbppplus={MBPPPLUS}", f"benchmark_files.mbpp={MBPP}"]
SHIPPED_DP = Path(str(resources.files("scoder") / "data" / "dp_mbpp_train.jsonl"))

pytestmark = pytest.mark.skipif(
    not (MBPPPLUS.is_file() and MBPP.is_file()), reason="needs ../shared/data (MBPP, MBPP+)"
)


def split(records, kind, index, cfg):
    """(kept, dropped) of one decontamination; each dropped record carries its drop."""
    result = decontaminate(records, kind, index, cfg).records
    return result.kept, result.dropped


def task_of(record) -> str:
    """The benchmark task a dropped record overlaps (its drop says `benchmark:task_id`)."""
    return record.drop.related.split(":", 1)[1]


def similarity(record) -> float:
    return float(re.search(r"Jaccard ([0-9.]+)", record.drop.detail).group(1))


def config(tmp_path: Path, *overrides: str):
    return load_config(None, [*BENCH_FILES, f"run_dir={tmp_path / 'run'}", *overrides])


@pytest.fixture(scope="module")
def all_benchmarks(tmp_path_factory):
    """The index over humaneval + mbppplus + mbpp (test split), built once for the module."""
    cfg = config(tmp_path_factory.mktemp("index"))
    index, info = load_index(cfg)
    assert set(info) == {"humaneval", "mbppplus", "mbpp"}
    return index, cfg.decontaminate


@pytest.fixture(scope="module")
def tasks():
    return {
        **{t.task_id: t for t in load_benchmark("humaneval")},
        **{t.task_id: t for t in load_benchmark("mbppplus", MBPPPLUS)},
    }, {t.task_id: t for t in load_benchmark("mbpp", MBPP)}


def reformat(code: str) -> str:
    """What a copy looks like after light editing: 2-space indentation, ''' docstrings re-wrapped
    (a line break after every comma, a blank line after every sentence) and a trailing comment on
    every code line."""
    tree = ast.parse(code)
    fn = next(node for node in tree.body if isinstance(node, ast.FunctionDef))
    doc = fn.body[0]
    out = []
    for number, line in enumerate(code.splitlines(), 1):
        body = line.lstrip(" ")
        indent = "  " * ((len(line) - len(body)) // 4)
        if doc.lineno <= number <= doc.end_lineno:
            body = body.replace('"""', "'''").replace(", ", ",\n" + indent)
            out.append(indent + body.replace(". ", ".\n\n" + indent))
        else:
            out.append(indent + body + "  # edited" if body else "")
    result = "\n".join(out) + "\n"
    ast.parse(result)  # still Python, so seed mining keeps it
    return result


UNRELATED = '''def merge_intervals(intervals):
    """Merge overlapping closed intervals given as (start, end) pairs."""
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
'''

HUMANEVAL_IDS = ("HumanEval/0", "HumanEval/12", "HumanEval/31")


def test_humaneval_prompt_in_seed_files_is_caught_verbatim_and_reformatted(
    tmp_path, all_benchmarks, tasks
):
    index, cfg = all_benchmarks
    root = tmp_path / "code"
    root.mkdir()
    for task_id in HUMANEVAL_IDS:
        task = tasks[0][task_id]
        name = task_id.split("/")[1]
        (root / f"verbatim_{name}.py").write_text(task.canonical_solution)
        (root / f"edited_{name}.py").write_text(reformat(task.canonical_solution))
    (root / "unrelated.py").write_text(UNRELATED)
    seeds = mine_seeds(SeedsConfig(source=str(root), max_seeds=None), 0).kept
    assert len(seeds) == 2 * len(HUMANEVAL_IDS) + 1

    kept, dropped = split(seeds, "seed", index, cfg)

    assert [s.source.location for s in kept] == ["unrelated.py"]
    by_file = {d.source.location: d for d in dropped}
    for task_id in HUMANEVAL_IDS:
        name = task_id.split("/")[1]
        verbatim, edited = by_file[f"verbatim_{name}.py"], by_file[f"edited_{name}.py"]
        # the seed is the function without any imports above it: (inside) the canonical solution
        assert verbatim.drop.reason == "benchmark_substring"
        assert verbatim.drop.detail.startswith(f"humaneval {task_id}: the record's text ")
        assert verbatim.drop.detail.endswith(" its canonical_solution")
        assert edited.drop.reason == "benchmark_ngram"
        assert edited.drop.detail.startswith(f"humaneval {task_id}: ")
        assert edited.drop.detail.endswith(" shared 10-grams")
        assert int(edited.drop.detail.split(": ")[1].split()[0]) >= 10
        assert (
            edited.drop.related == f"humaneval:{task_id}" and edited.drop.stage == "decontaminate"
        )


def test_mbppplus_solution_inside_a_candidate_is_caught(all_benchmarks, tasks):
    index, cfg = all_benchmarks
    task = tasks[0]["Mbpp/556"]  # not in MBPP's test split: only MBPP+ can match
    helper = "import sys\n\n\ndef read_numbers():\n    return [int(x) for x in sys.stdin.read().split()]\n\n\n"
    edited = (
        task.canonical_solution.replace("    ", "  ")
        .replace(" : ", ":  # loop\n")
        .replace("(0,N)", "(0, N)")
        .replace("oddPair+=1", "oddPair += 1\n")
    )
    candidates = [
        make_candidate(id="verbatim", solution=helper + task.canonical_solution),
        make_candidate(id="edited", solution=helper + edited, problem="Count pairs."),
        make_candidate(id="unrelated", solution=UNRELATED, problem="Merge intervals."),
    ]
    kept, dropped = split(candidates, "candidate", index, cfg)
    assert [c.id for c in kept] == ["unrelated"]
    verbatim, edited_drop = dropped
    assert verbatim.drop.reason == "benchmark_substring"
    chars = len(" ".join(task.canonical_solution.split()))
    assert verbatim.drop.detail == (
        f"mbppplus Mbpp/556: its canonical_solution ({chars} chars) appears in the record's solution"
    )
    assert edited_drop.drop.reason == "benchmark_ngram"
    assert edited_drop.drop.detail.startswith("mbppplus Mbpp/556: ")


def test_mbpp_problem_inside_a_dp_sample_is_caught(all_benchmarks, tasks):
    index, cfg = all_benchmarks
    text = tasks[1]["Mbpp/23"].prompt  # an MBPP test task that MBPP+ does not hold

    def sample(id: str, problem: str) -> DpSample:
        return DpSample(
            id=id, seed_text="x = 1", problem=problem, solution="pass", route="import", source="t"
        )

    samples = [
        sample("verbatim", f"You are given a list of lists. {text} Return an int."),
        sample("edited", "TASK -- " + text.lower().replace(" ", "  ").rstrip(".") + "!!"),
        sample("exact-short", tasks[1]["Mbpp/248"].prompt),  # 54 chars, one 10-gram
        sample("unrelated", "Write a function that merges overlapping intervals."),
    ]
    kept, dropped = split(samples, "dp", index, cfg)
    assert [s.id for s in kept] == ["unrelated"]
    details = {d.id: d.drop.detail for d in dropped}
    assert {d.drop.reason for d in dropped} == {"benchmark_substring"}
    chars = len(" ".join(text.split()))
    assert (
        details["verbatim"]
        == f"mbpp Mbpp/23: its prompt ({chars} chars) appears in the record's problem"
    )
    assert details["edited"] == details["verbatim"]  # compared as words: case and spacing aside
    assert details["exact-short"] == "mbpp Mbpp/248: the record's problem is its prompt"


def _task(task_id: str, prompt: str, solution: str) -> BenchmarkTask:
    return BenchmarkTask(
        task_id=task_id, prompt=prompt, entry_point="f", canonical_solution=solution, tests=""
    )


def test_one_liners_and_boilerplate_match_nothing():
    bench = {
        "toy": [
            _task("T/1", "Add two numbers.", "def add(a, b):\n    return a + b\n"),
            *(
                _task(
                    f"T/{i}",
                    f"Write a python function to check whether the given number is {w}.",
                    f"def is_{w}(n):\n    return check_{w}(n)\n",
                )
                for i, w in enumerate(["even", "odd", "prime"], 2)
            ),
            _task(
                "T/9",
                "Return the Levenshtein edit distance between two unicode strings.",  # 9 words
                "def lev(a, b):\n    return distance(a, b)\n",
            ),
        ]
    }
    index = BenchmarkIndex(bench)
    assert index.match({"solution": "def plus(x, y):\n    return a + b  # same line\n"}) is None
    # a phrase in three tasks of one benchmark identifies none of them ...
    phrase = "Write a python function to check whether the given number is a perfect square."
    assert index.match({"problem": phrase}) is None
    assert BenchmarkIndex(bench, max_ngram_tasks=None).match({"problem": phrase}) is not None
    # ... and a short text (fewer words than an n-gram) is still found when copied
    found = index.match(
        {
            "problem": "TASK: return the Levenshtein edit-distance between two"
            " Unicode strings, in O(n*m)."
        }
    )
    assert found is not None and found.task_id == "T/9" and found.reason == "benchmark_substring"


def test_substring_check_misses_nothing_a_brute_force_search_finds(all_benchmarks):
    """The n-gram index only narrows down where to look: compare it with every pair."""
    index, cfg = all_benchmarks
    _, samples, _ = load_records(SHIPPED_DP)
    for sample in samples:
        fields = {"problem": sample.problem, "solution": sample.solution}
        brute = set()
        for raw in fields.values():
            form = " " + " ".join(words(raw)) + " "
            chars = len(" ".join(raw.split()))
            for t in index.texts:
                if (
                    form == t.words
                    or (t.chars >= cfg.min_chars and t.words in form)
                    or (chars >= cfg.min_chars and form in t.words)
                ):
                    brute.add(t.task_id)
        found = index.match(fields)
        if brute:
            assert found is not None and found.reason == "benchmark_substring", sample.row
            assert found.task_id in brute
        else:
            assert found is None or found.reason == "benchmark_ngram"


def test_stdlib_seeds_are_left_alone(all_benchmarks):
    """The default seed source shares nothing with the benchmarks; its few near-duplicates are
    real (e.g. getregentry of encodings/latin_1.py and iso8859_1.py differ by `Codec()`)."""
    index, cfg = all_benchmarks
    seeds = mine_seeds(SeedsConfig(max_seeds=None), 0).kept
    assert len(seeds) > 1000
    kept, dropped = split(seeds, "seed", index, cfg)
    assert [d for d in dropped if d.drop.reason != "near_duplicate"] == []
    kept_ids = {s.id for s in kept}
    assert len(dropped) <= 10
    for d in dropped:
        assert d.drop.related in kept_ids and similarity(d) >= 0.85


def _shipped_dp_drops(cfg) -> dict[int, DpSample]:
    index, _ = load_index(cfg)
    _, samples, _ = load_records(SHIPPED_DP)
    assert len(samples) == 374
    _, dropped = split(samples, "dp", index, cfg.decontaminate)
    return {d.row: d for d in dropped}


def _shared(record: DpSample) -> int:
    return int(record.drop.detail.split(": ")[1].split()[0])


def test_shipped_dp_against_humaneval(tmp_path):
    """MBPP train vs HumanEval: six false positives at the default threshold (1 shared 10-gram),
    each a stock idiom of 10+ words in the solution, 1-3 shared 10-grams:
    `for i in range(n): for j in range(i + 1, n)` (HumanEval/147; D_p 831, 841),
    `for i in range(n): for j in range(n)` (HumanEval/129; 839),
    `if n == 0: return 0 / if n == 1: return 1` (HumanEval/55 fib; 845, 960) and
    `for i in range(len(s) - 2): if s[i] == s[i + 2]` (HumanEval/80; 914).
    Four shared 10-grams (`decontaminate.min_ngram_matches=4`) leave none."""
    drops = _shipped_dp_drops(config(tmp_path, "decontaminate.benchmarks=[humaneval]"))
    assert {row: task_of(d) for row, d in drops.items()} == {
        831: "HumanEval/147",
        839: "HumanEval/129",
        841: "HumanEval/147",
        845: "HumanEval/55",
        914: "HumanEval/80",
        960: "HumanEval/55",
    }
    assert all(d.drop.reason == "benchmark_ngram" and _shared(d) <= 3 for d in drops.values())


def test_shipped_dp_against_mbpp_test_split(tmp_path):
    """MBPP's own train and test splits overlap. Whole-text copies: identical problems (e.g. 704 =
    Mbpp/248, 872 = Mbpp/216) or solutions (841 = Mbpp/296, 964 = Mbpp/79); one-word variants
    ("fourth" / "fifth power", "even" / "odd", "upper" / "lower case") with near-identical code
    share 4 or more 10-grams. About 40 more share only 1-3: MBPP's stock phrasing ("write a
    python function to check whether the given two ...") or a code idiom, false positives of the
    default threshold that `min_ngram_matches=4` removes while keeping the copies."""
    drops = _shipped_dp_drops(config(tmp_path, "decontaminate.benchmarks=[mbpp]"))
    copies = {704: "Mbpp/248", 872: "Mbpp/216", 841: "Mbpp/296", 964: "Mbpp/79"}
    for row, task_id in copies.items():
        assert task_of(drops[row]) == task_id and drops[row].drop.reason == "benchmark_substring"
    assert task_of(drops[634]) == "Mbpp/271"  # sum of fourth vs fifth power of n even numbers
    weak = [d for d in drops.values() if d.drop.reason == "benchmark_ngram" and _shared(d) <= 3]
    assert len(drops) <= 95 and len(weak) <= 45

    strict = _shipped_dp_drops(
        config(tmp_path, "decontaminate.benchmarks=[mbpp]", "decontaminate.min_ngram_matches=4")
    )
    assert set(strict) == set(drops) - {d.row for d in weak}
    assert all(task_of(strict[row]) == task_id for row, task_id in copies.items())


def test_shipped_dp_against_mbppplus(tmp_path):
    """EvalPlus took 111 of MBPP+'s tasks from MBPP's *train* split (601-974): the shipped D_p
    holds those very tasks, and most are caught as themselves. The rest were reworded by EvalPlus
    (prompt and solution), beyond what a lexical check can see."""
    drops = _shipped_dp_drops(config(tmp_path, "decontaminate.benchmarks=[mbppplus]"))
    plus_ids = {t.task_id for t in load_benchmark("mbppplus", MBPPPLUS)}
    in_plus = [row for row in range(601, 975) if f"Mbpp/{row}" in plus_ids]
    assert len(in_plus) == 111
    themselves = [row for row in in_plus if row in drops and task_of(drops[row]) == f"Mbpp/{row}"]
    assert len(themselves) >= 90


def _seed(id: str, text: str) -> Seed:
    return Seed(id=id, text=text, source=SeedSource(kind="dir", location=f"{id}.py"))


NEAR = UNRELATED.replace("    ", "  ") + "\n# e.g. merge_intervals([(1, 3), (2, 4)])\n"
DISTINCT = [
    "def mean(xs):\n    total = sum(xs)\n    count = len(xs)\n    return total / count if count else 0.0\n",
    "class Counter:\n    def __init__(self):\n        self.n = 0\n\n    def tick(self):\n        self.n += 1\n",
    "def chunks(items, size):\n    for start in range(0, len(items), size):\n        yield items[start:start + size]\n",
]


def test_near_duplicates_keep_the_first_and_name_it():
    cfg = DecontaminateConfig(benchmarks=[])
    original = UNRELATED + "\n\ndef helper():\n    return merge_intervals([(0, 1)])\n"
    near = original.replace("    ", "  ") + "# same thing, reformatted and commented\n"
    seeds = [_seed("a", original), *(_seed(f"d{i}", t) for i, t in enumerate(DISTINCT))]
    seeds.append(_seed("b", near))
    kept, dropped = split(seeds, "seed", None, cfg)
    assert [s.id for s in kept] == ["a", "d0", "d1", "d2"]
    (dup,) = dropped
    assert (dup.id, dup.drop.reason, dup.drop.related) == ("b", "near_duplicate", "a")
    assert dup.drop.detail == f"near-duplicate of a (estimated Jaccard {similarity(dup):.2f})"
    assert similarity(dup) >= 0.85

    # input order decides which one is kept, and the same input always gives the same answer
    kept_rev, dropped_rev = split(seeds[::-1], "seed", None, cfg)
    assert dropped_rev[0].id == "a" and dropped_rev[0].drop.related == "b"
    assert split(seeds, "seed", None, cfg)[1] == dropped


def test_candidates_of_one_seed_are_not_duplicates_by_their_seed():
    cfg = DecontaminateConfig(benchmarks=[])
    seed_text = UNRELATED
    cands = [
        make_candidate(id=f"c{i}", seed_text=seed_text, problem=f"Problem {i}.", solution=code)
        for i, code in enumerate(DISTINCT)
    ]
    kept, dropped = split(cands, "candidate", None, cfg)
    assert len(kept) == 3 and dropped == []


def test_run_decontaminate_writes_a_stage_and_refuses_to_mix_configs(tmp_path):
    cfg = config(tmp_path, "decontaminate.benchmarks=[humaneval]")
    run = RunDir(cfg.run_dir)
    he = load_benchmark("humaneval")[0]
    cands = [
        make_candidate(id="copy", solution=he.canonical_solution),
        make_candidate(id="clean", solution=UNRELATED),
    ]
    stage = "rounds/1/decontaminate-candidates"
    result = run_decontaminate(cfg, run, cands, stage=stage)
    kept, dropped = result.kept, result.dropped
    assert [c.id for c in kept] == ["clean"] and [d.id for d in dropped] == ["copy"]
    out = run.stage_dir(stage)
    assert [c["id"] for c in read_jsonl(out / "kept.jsonl")] == ["clean"]
    assert read_jsonl(out / "dropped.jsonl", Candidate)[0].drop.reason == "benchmark_substring"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dropped_by_benchmark"] == {"humaneval": 1}
    assert run.load_manifest()["stages"][stage]["counts"]["kept"] == 1

    other = config(tmp_path, "decontaminate.benchmarks=[humaneval]", "decontaminate.ngram=8")
    with pytest.raises(StoreError, match="different config"):
        run_decontaminate(other, run, cands, stage=stage)
    run_decontaminate(other, run, cands, stage=stage, force=True)


# -- the command line ----------------------------------------------------------------------------


def scoder(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scoder.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_cli_end_to_end_is_consistent_and_deterministic(tmp_path, tasks):
    he, plus = tasks[0]["HumanEval/12"], tasks[0]["Mbpp/556"]
    rows = [
        make_candidate(id="he", solution=he.canonical_solution),
        make_candidate(id="a", solution=UNRELATED),
        make_candidate(id="plus", solution=plus.canonical_solution),
        make_candidate(id="a2", solution=NEAR),
        *(make_candidate(id=f"d{i}", solution=t) for i, t in enumerate(DISTINCT)),
    ]
    # one upstream-dropped record is skipped and counted
    rows.append(make_candidate(id="gone", drop={"stage": "score", "reason": "not_best_for_seed"}))
    data = tmp_path / "candidates.jsonl"
    data.write_text("".join(r.model_dump_json() + "\n" for r in rows))

    outs = []
    for hash_seed in ("1", "2"):  # the n-gram index uses salted hashes: results must not
        out = tmp_path / f"run{hash_seed}"
        proc = scoder(
            "decontaminate",
            "--input",
            str(data),
            "--out",
            str(out),
            "--set",
            BENCH_FILES[0],
            env={"PYTHONHASHSEED": hash_seed},
        )
        assert proc.returncode == 0, proc.stderr
        outs.append(out / "decontaminate")
    summary = json.loads((outs[0] / "summary.json").read_text())
    assert summary["kind"] == "candidate"
    assert summary["input"] == len(rows) == summary["kept"] + summary["dropped"] + 1
    assert summary["skipped_dropped_upstream"] == 1
    assert summary["dropped_by_reason"] == {"benchmark_substring": 2, "near_duplicate": 1}
    assert summary["dropped_by_benchmark"] == {"humaneval": 1, "mbppplus": 1}
    assert set(summary["benchmarks"]) == {"humaneval", "mbppplus"}
    kept = [r["id"] for r in read_jsonl(outs[0] / "kept.jsonl")]
    assert kept == ["a", "d0", "d1", "d2"]
    dropped = read_jsonl(outs[0] / "dropped.jsonl", Candidate)
    assert [(d.id, d.drop.reason) for d in dropped] == [
        ("he", "benchmark_substring"),
        ("plus", "benchmark_substring"),
        ("a2", "near_duplicate"),
    ]
    assert dropped[2].drop.related == "a"
    assert dropped[0].drop.related == "humaneval:HumanEval/12"
    for name in ("kept.jsonl", "dropped.jsonl"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


@pytest.fixture
def seed_file(tmp_path) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text(_seed("s1", UNRELATED).model_dump_json() + "\n")
    return path


@pytest.mark.parametrize(
    ("args", "lines", "message"),
    [
        (["--input", "missing.jsonl"], None, "input file not found: missing.jsonl"),
        ([], None, "pass --input FILE"),
        (
            ["--kind", "snippet"],
            None,
            "unknown kind 'snippet'; expected one of seed, dp, candidate",
        ),
        (["--benchmarks", "humaneval,apps"], None, "decontaminate.benchmarks.1: Input should be"),
        (["--benchmarks", "mbppplus"], None, "set benchmark_files.mbppplus in the config"),
        (
            ["--set", "benchmark_files.mbpp=nope.jsonl"],
            None,
            "benchmark file not found: nope.jsonl",
        ),
        ([], ["{not json"], "seeds.jsonl:2: not JSON"),
        (
            [],
            ['{"id": "s2", "source": {"kind": "dir", "location": "x"}}'],
            ":2: not a valid seed record (text: Field required)",
        ),
        ([], ["[1, 2]"], "seeds.jsonl:2: expected a JSON object per line"),
        (["--kind", "dp"], None, ":1: not a valid dp record (seed_text: Field required)"),
    ],
)
def test_cli_bad_input_is_one_clear_message(tmp_path, seed_file, args, lines, message):
    if lines:
        with seed_file.open("a") as fh:
            fh.write("".join(line + "\n" for line in lines))
    if "--input" not in args and message != "pass --input FILE":
        args = ["--input", str(seed_file), *args]
    result = CliRunner().invoke(app, ["decontaminate", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no records"),
        (
            '{"problem": "p", "answer": "a"}\n',
            "cannot tell which kind of record this is (fields: problem, answer)",
        ),
    ],
)
def test_cli_unusable_file_is_one_clear_message(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    result = CliRunner().invoke(
        app, ["decontaminate", "--input", str(path), "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
