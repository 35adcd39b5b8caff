"""No input crashes a parser or a loader (issue 18): every function that reads what a user or a
model hands scoder returns a value (or a declared drop reason), or raises scoder's own error with
one clear message naming the file (and line); never another exception.

Hypothesis generates the hostile inputs: arbitrary text and bytes (invalid UTF-8, NUL bytes, lone
surrogates, huge lines, nesting too deep for the parser), JSON and YAML of the wrong shape, odd
files. Derandomized and without an example database, so a run is reproducible and cannot flake.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from scoder.config import ConfigError, SeedsConfig, load_config
from scoder.errors import ScoderError
from scoder.eval.benchmarks import BenchmarkTask, load_benchmark
from scoder.eval.extract import extract_program
from scoder.eval.samples import load_samples
from scoder.parsing import (
    SYNTHESIS,
    JudgeFailure,
    Parsed,
    normalize_tests,
    parse_judgement,
    parse_synthesis,
)
from scoder.records import Drop
from scoder.sandbox import parse_code
from scoder.seeds import REASONS as SEED_REASONS
from scoder.seeds import mine_seeds
from scoder.store import read_jsonl, write_jsonl
from scoder.templates import EVAL_TEMPLATES, JUDGE_TEMPLATES, SYNTHESIS_TEMPLATES, render_plain


def examples(n: int) -> settings:
    """`n` examples, the same ones every run (derandomized, no example database: no flakes)."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        # no shrinking: hostile inputs are big, and a failure is printed as it was generated
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- hostile text --------------------------------------------------------------------------------

DEEP = 500  # deeper than ast.unparse (and the compiler) recurse, shallow enough to parse
HOSTILE = [
    "\x00", "\ud800", "\udfff", "\x0c", "\u2028", "\x85", "\r", "\r\n", "\t", "\ufeff", "\x1b[31m",
    "(" * 300, "[" * 3000, "{" * 3000, '{"a":' * 3000,
    "x = " + "+".join(["a"] * DEEP) + "\n",
    "x = " + "-" * 5000 + "1\n",
    "x = " + "not " * 2000 + "1\n",
    "a" * 20_000,
    "if " + "+".join(["a"] * DEEP) + " == __name__:\n    pass\n",
    "class C(" + ".".join(["a"] * DEEP) + "):\n    pass\n",
    "(" + "+".join(["a"] * DEEP) + ")()\n",
    "".join(" " * i + "if 1:\n" for i in range(120)) + " " * 120 + "pass\n",
]  # fmt: skip
SYNTHESIS_PIECES = [
    "### Problem\n", "**Solution:**\n", "Tests:\n", "### Test Cases\n", "### Explanation\n",
    "Problem: write f.\n", "Write a function f that returns its argument.\n",
    "```python\n", "```\n", "~~~\n", "````py\n", "```json\n",
    "def f(x):\n    return x\n", "    return x\n", "assert f(1) == 1\n",
    "class T(unittest.TestCase):\n", "    def test_a(self):\n        self.assertEqual(f(1), 1)\n",
    "if __name__ == '__main__':\n", "    unittest.main()\n", "import pytest\n",
    "def test_x():\n    assert f(2) == 2\n", "@pytest.mark.parametrize('a', [1])\n",
    "print(f(1))\n", "\n", "Sure! Here is the problem:\n",
]  # fmt: skip
JUDGE_PIECES = [
    "{", "}", '"consistency": ', '"correctness": ', '"Consistency Score": ', "8", "8.5", '"8/10"',
    "-1", "10", "1" * 5000, "1e999", "NaN", "null", "true", '{"score": 8}', "[", "]", ", ", ":",
    "```json\n", "```\n", "consistency: 8\n", "correctness = 7\n", '"', "\\u",
]  # fmt: skip


def hostile_text(pieces: list[str], max_size: int = 25) -> st.SearchStrategy[str]:
    """Text made of the pieces a parser looks for, hostile fragments and arbitrary characters."""
    part = st.one_of(st.sampled_from(pieces), st.sampled_from(HOSTILE), st.text(max_size=30))
    return st.lists(part, max_size=max_size).map("".join)


INTERNAL_REPR = re.compile(r"<[A-Za-z_][\w.]* object at 0x[0-9a-f]+>|<class '|Traceback")


def assert_clear(message: str, *, names: str | None = None, max_lines: int = 1) -> None:
    """One clear message: printable, a line (or `max_lines`), no repr of scoder's objects, and
    naming `names` (the file, or the file and line) where given."""
    assert message.strip(), "an empty message"
    message.encode("utf-8")  # printable: no lone surrogate
    lines = message.splitlines()
    assert len(lines) <= max_lines, message[:2000]
    assert all(len(line) <= 600 for line in lines), message[:2000]
    assert not INTERNAL_REPR.search(message), message
    if names is not None:
        assert names in message, (names, message)


def outcome(call: Callable[[], Any], error: type[Exception] = ScoderError) -> tuple[Any, Any]:
    """(what `call` returns, None), or (None, the error): the only exception allowed is `error`."""
    try:
        return call(), None
    except error as exc:
        return None, exc


# --- model answers: parsing.py, eval/extract.py --------------------------------------------------


@examples(150)
@given(hostile_text(SYNTHESIS_PIECES), st.sampled_from(["stop", "length"]))
def test_the_synthesis_parser_returns_a_sample_or_a_declared_reason(text: str, finish: str):
    result = parse_synthesis(text, finish)
    if isinstance(result, Parsed):
        assert result.problem.strip() and result.solution.strip() and result.tests.strip()
        assert parse_code(result.solution) is not None and parse_code(result.tests) is not None
    else:
        assert isinstance(result, Drop) and result.stage == "synthesize"
        assert result.reason in SYNTHESIS.reasons
        assert_clear(result.detail or result.reason)


@examples(100)
@given(hostile_text(SYNTHESIS_PIECES))
def test_normalizing_tests_never_crashes(text: str):
    assert isinstance(normalize_tests(text), str)


@examples(150)
@given(hostile_text(JUDGE_PIECES, max_size=30))
def test_the_judge_parser_returns_scores_or_a_declared_reason(text: str):
    aspects = ["consistency", "correctness"]
    scores, reason = parse_judgement(text, aspects)
    if scores is not None:
        assert reason is None and set(scores) == set(aspects)
        assert all(0 <= v <= 9 for v in scores.values())
    else:
        assert reason is not None and reason.split(":")[0] in get_args(JudgeFailure)
        assert_clear(reason)


HUMANEVAL_TASK = BenchmarkTask(
    task_id="HumanEval/0",
    prompt='from typing import List\n\n\ndef helper(x):\n    return x\n\n\ndef f(x: int) -> int:\n    """Return x."""\n',
    entry_point="f",
    canonical_solution="",
    tests="assert f(1) == 1\n",
)
MBPP_TASK = BenchmarkTask(
    task_id="Mbpp/2", prompt="Write f.", entry_point="f", canonical_solution="", tests=""
)


@examples(60)
@given(
    hostile_text(SYNTHESIS_PIECES),
    st.sampled_from(["humaneval", "mbppplus", "mbpp"]),
    st.sampled_from(["", HUMANEVAL_TASK.prompt, "\ud800(((", "def f(x):\n"]),
)
def test_extracting_a_program_from_an_answer_never_crashes(text: str, benchmark: str, prefix: str):
    task = HUMANEVAL_TASK if benchmark == "humaneval" else MBPP_TASK
    program, how = extract_program(text, task, benchmark, prefix)
    assert isinstance(program, str) and how.split("+")[0] in ("fenced", "unfenced", "none")
    if program:
        assert parse_code(program) is not None, program


@examples(50)
@given(st.text(max_size=200), st.text(max_size=50))
def test_prompts_take_any_text(text: str, other: str):
    synthesis = SYNTHESIS_TEMPLATES["oss-instruct-v1"]
    render_plain(synthesis.chat(text, prefill=True))
    synthesis.answer(text, other, text or None)
    judge = JUDGE_TEMPLATES["judge-v2"]
    judge.chat([("consistency", other)], text, other, text, other)
    task = BenchmarkTask(
        task_id="t", prompt=text, entry_point=other, canonical_solution="", tests=other
    )
    for template in EVAL_TEMPLATES.values():
        for benchmark in ("humaneval", "mbpp"):
            render_plain(template.chat(task, benchmark))


# --- JSON lines of the wrong shape ---------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def rows_of(fields: list[str]) -> st.SearchStrategy[Any]:
    """A row as a loader wants it (some of `fields`, values of any type, extra keys), or not."""
    good = st.fixed_dictionaries(
        {},
        optional={
            f: st.one_of(JSON_VALUES, st.sampled_from(["def f(x):\n    return x\n", "f", ""]))
            for f in fields
        },
    )
    return st.one_of(good, good, JSON_VALUES)


RAW_LINES = st.sampled_from(
    [
        b"", b"   ", b"{", b"not json", b"\xff\xfe{}", b'{"a": "\xc3\x28"}', b"\x00", b"[]", b"null",
        b"[" * 5000, b'{"a": ' + b"1" * 5000 + b"}", b'{"a": "\\ud800"}', b"\r", b'{"a": 1}\r',
        b"\xef\xbb\xbf{}", b"NaN", b"1e999",
    ]
)  # fmt: skip


def jsonl_bytes(fields: list[str]) -> st.SearchStrategy[bytes]:
    def line(row: Any, ascii_only: bool) -> bytes:
        return json.dumps(row, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")

    encoded = st.builds(line, rows_of(fields), st.booleans())
    return st.lists(st.one_of(encoded, encoded, RAW_LINES), max_size=6).map(b"\n".join)


def bad_line(data: bytes) -> int | None:
    """The number of the first line a JSONL reader must refuse (not UTF-8 or not JSON), if any."""
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
            if line.strip():
                json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return number
    return None


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- seeds: directories, JSONL files --------------------------------------------------------------

SOURCE_PIECES = [
    "def f(x):\n", "    return x\n", "    y = x + 1\n", "class C:\n", "    def m(self):\n",
    "        return 1\n", "@decorator\n", "import os\n", "\n", "# comment\n", '    """doc"""\n',
    "async def g():\n    await x\n", "x = 1\n",
]  # fmt: skip


def source_bytes() -> st.SearchStrategy[bytes]:
    text = hostile_text(SOURCE_PIECES, max_size=15)
    encodings = st.sampled_from(["utf-8", "utf-16", "latin-1", "surrogate"])

    def encode(text: str, how: str) -> bytes:
        if how == "surrogate":
            return text.encode("utf-8", "surrogatepass")
        return text.encode(how, "replace")

    return st.one_of(st.builds(encode, text, encodings), st.binary(max_size=200))


def check_seeds(mined: Any, out: Path) -> None:
    for seed in mined.kept:
        tree = parse_code(seed.text)
        assert tree is not None, seed.text
        if seed.source.name:  # a definition: the snippet is that definition
            assert [getattr(n, "name", None) for n in tree.body] == [seed.source.name], seed.text
    for seed in mined.dropped:
        assert seed.drop.reason in SEED_REASONS.reasons
        assert_clear(seed.drop.detail or seed.drop.reason)
    out.mkdir(exist_ok=True)
    mined.write(out)  # what was mined can be written, and read back
    read_jsonl(out / "kept.jsonl")
    read_jsonl(out / "dropped.jsonl")


@examples(60)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a.py", "b c.py", "-x.py", "[x].py", "*.py", "ünï.py", "sub/d.py"]),
            source_bytes(),
        ),
        max_size=4,
    ),
    st.sampled_from(["definition", "whole"]),
    st.booleans(),
    st.integers(min_value=1, max_value=400),
)
def test_mining_a_directory_keeps_or_drops_every_file(
    files: list[tuple[str, bytes]], unit: str, pure: bool, max_bytes: int
):
    with tempfile.TemporaryDirectory() as name:
        root = Path(name) / "src"
        for rel, data in files:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        root.mkdir(exist_ok=True)
        cfg = SeedsConfig(
            source=str(root),
            max_seeds=None,
            min_lines=1,
            unit=unit,
            pure_functions=pure,
            max_file_bytes=max_bytes,
            exclude=["[", "*.pyc"],
        )
        check_seeds(mine_seeds(cfg), Path(name) / "out")


def test_odd_files_in_a_directory_source_are_dropped_with_their_reason(tmp_path: Path):
    root = tmp_path / "src"
    root.mkdir()
    files = {
        "empty.py": b"",
        "blank.py": b"\n \n\t\n",
        "nul.py": b"def f(x):\n    return x\x00\n",
        "latin.py": "def f(x):\n    return 'é'\n".encode("latin-1"),
        "bom.py": "\ufeffdef f(x):\n    return x\n".encode(),
        "utf16.py": "def f(x):\n    return x\n".encode("utf-16"),
        "crlf.py": b"def f(x):\r\n    y = x\r\n    return y\r\n",
        "cr.py": b"def f(x):\r    y = x\r    return y\r",
        "feed.py": b"\x0c\ndef f(x):\n    y = x  # \xe2\x80\xa8 \x0c\n    return y\n\n\x0c\ndef g(z):\n    return z\n",
        "deep.py": ("x = " + "+".join(["a"] * DEEP) + "\ndef f(x):\n    return x\n").encode(),
        "deeper.py": ("x = " + "-" * 5000 + "1\n").encode(),
        "nested.py": ("x = " + "not " * 2000 + "1\n").encode(),
        "huge line.py": b"x = '" + b"a" * 100_000 + b"'\n",
        "new\nline.py": b"def f(x):\n    return x\n",
        " lead.py": b"def f(x):\n    return x\n",
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    (root / "dir.py").mkdir()
    os.symlink("loop.py", root / "loop.py")
    os.symlink("missing.py", root / "dangling.py")
    os.symlink("/etc/hostname", root / "outside.py")
    os.mkfifo(root / "fifo.py")
    os.symlink("b.py", root / "a2.py")
    os.symlink("a2.py", root / "b.py")
    (root / os.fsdecode(b"bad\xff.py")).write_bytes(b"def f(x):\n    return x\n")
    cfg = SeedsConfig(source=str(root), max_seeds=None, min_lines=1)
    check_seeds(mine_seeds(cfg), tmp_path / "out")
    (root / ".git").mkdir()  # a broken checkout: git fails, the files are listed anyway
    check_seeds(mine_seeds(cfg), tmp_path / "out2")


@examples(80)
@given(jsonl_bytes(["content", "text"]), st.sampled_from(["definition", "whole"]))
def test_a_jsonl_seed_file_is_mined_or_refused_naming_its_line(data: bytes, unit: str):
    with tempfile.TemporaryDirectory() as name:
        path = _write(Path(name) / "seeds.jsonl", data)
        cfg = SeedsConfig(source=str(path), max_seeds=None, min_lines=1, unit=unit)
        mined, error = outcome(lambda: mine_seeds(cfg))
        line = bad_line(data)
        if error is not None:
            where = f"{path}:{line}" if line else str(path)
            assert_clear(str(error), names=where)
        else:
            assert line is None
            check_seeds(mined, Path(name) / "out")


# --- D_p sources (teacher import / derive), samples files, benchmark files -----------------------


@examples(80)
@given(
    jsonl_bytes(["seed", "problem", "solution", "tests", "q"]),
    st.sampled_from(["import", "derive"]),
    st.sampled_from([{}, {"problem": "q"}, {"tests": "missing"}]),
)
def test_a_teacher_file_gives_samples_or_one_error_naming_the_file(
    data: bytes, route: str, fields: dict[str, str]
):
    from scoder.config import Config
    from scoder.teacher import from_table

    with tempfile.TemporaryDirectory() as name:
        path = _write(Path(name) / "dp.jsonl", data)
        config = Config.model_validate(
            {"teacher": {"route": route, "source": str(path), "fields": fields}}
        )
        samples, error = outcome(lambda: from_table(config))
        if error is not None:
            line = bad_line(data)
            assert_clear(str(error), names=f"{path}:{line}" if line else str(path))
        else:
            for sample in samples:
                assert sample.problem.strip() and sample.solution.strip() and sample.seed_text
            write_jsonl(Path(name) / "kept.jsonl", samples)
            read_jsonl(Path(name) / "kept.jsonl")


TASKS = [HUMANEVAL_TASK, BenchmarkTask("HumanEval/1", "def g():\n", "g", "", "")]


@examples(80)
@given(
    st.lists(
        st.one_of(
            st.builds(
                lambda row, ascii_only: json.dumps(row, ensure_ascii=ascii_only).encode(
                    "utf-8", "surrogatepass"
                ),
                st.one_of(
                    rows_of(["task_id", "solution", "completion"]),
                    st.fixed_dictionaries(
                        {"task_id": st.sampled_from(["HumanEval/0", "HumanEval/1", "x" * 300])},
                        optional={"solution": JSON_VALUES, "completion": JSON_VALUES},
                    ),
                ),
                st.booleans(),
            ),
            RAW_LINES,
        ),
        max_size=6,
    ).map(b"\n".join),
    st.sampled_from(["humaneval", "mbppplus"]),
)
def test_a_samples_file_gives_samples_or_one_error_naming_its_line(data: bytes, benchmark: str):
    with tempfile.TemporaryDirectory() as name:
        path = _write(Path(name) / "samples.jsonl", data)
        samples, error = outcome(lambda: load_samples(path, benchmark, TASKS))
        if error is not None:
            # a row of the wrong shape is refused before any line that is not JSON
            assert_clear(str(error), names=f"{path}:" if bad_line(data) else str(path))
        else:
            assert samples and all(
                isinstance(s["solution"], str) for v in samples.values() for s in v
            )


BENCHMARK_FIELDS = {
    "humaneval": ["task_id", "prompt", "canonical_solution", "test", "entry_point"],
    "mbppplus": [
        "task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input",
        "assertion", "atol",
    ],
    "mbpp": ["task_id", "text", "code", "test_list", "test_setup_code"],
}  # fmt: skip


@examples(120)
@given(
    st.sampled_from(sorted(BENCHMARK_FIELDS)).flatmap(
        lambda name: st.tuples(
            st.just(name),
            jsonl_bytes(BENCHMARK_FIELDS[name]),
            st.sampled_from(["plain", "gzip", "not-gzip", "cut-gzip"]),
        )
    )
)
def test_a_benchmark_file_gives_tasks_or_one_error_naming_the_file(case: tuple[str, bytes, str]):
    name, data, packing = case
    with tempfile.TemporaryDirectory() as tmp:
        if packing == "plain":
            path = _write(Path(tmp) / "bench.jsonl", data)
        else:
            packed = gzip.compress(data) if packing != "not-gzip" else data
            if packing == "cut-gzip":
                packed = packed[: len(packed) // 2]
            path = _write(Path(tmp) / "bench.jsonl.gz", packed)
        tasks, error = outcome(lambda: load_benchmark(name, path))
        if error is not None:
            line = bad_line(data) if packing in ("plain", "gzip") else None
            assert_clear(str(error), names=f"{path}:{line}" if line else str(path))
        else:
            for task in tasks:
                assert all(
                    isinstance(getattr(task, f), str)
                    for f in ("task_id", "prompt", "entry_point", "canonical_solution", "tests")
                )


# --- the config: YAML files and --set overrides ---------------------------------------------------

SECTIONS = ["seeds", "synthesis", "score", "teacher", "train", "loop", "eval", "model", "executor"]
KEYS = ["n", "source", "max_seeds", "temperature", "weights", "aspects", "fields", "k", "name",
        "base_url", "exclude", "judge", "unit", "device", "benchmarks", "kind", "bogus"]  # fmt: skip
YAML_VALUES = st.recursive(
    st.one_of(SCALARS, st.sampled_from(["auto", "stdlib", "http://h:1/v1", "2001-01-01"])),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=8,
)
YAML_DOCS = st.one_of(
    st.dictionaries(
        st.one_of(st.sampled_from(SECTIONS + ["random_seed", "run_dir"]), st.text(max_size=5)),
        st.one_of(st.dictionaries(st.sampled_from(KEYS), YAML_VALUES, max_size=4), YAML_VALUES),
        max_size=4,
    ).map(lambda doc: yaml.safe_dump(doc, allow_unicode=True)),
    st.sampled_from(
        [
            "", "---\n", "[1, 2]\n", "just a string\n", "42\n", "~\n", "seeds: [\n", "a: b: c\n",
            "seeds: !!python/object:os.system {}\n", "seeds: !!python/name:os.system\n",
            "x: !!binary '%%%'\n", "random_seed: !!int abc\n", "random_seed: !!float abc\n",
            "run_dir: !!timestamp 'not a date'\n", "seeds: *undefined\n", "? [a, b]\n: 1\n",
            "seeds: {source: a}\nseeds: {source: b}\n", "\tseeds: 1\n", "seeds:\n  - &a [*a]\n",
            "1: 2\n", "null: {}\n", "true: {}\n", "seeds: {1: 2}\n", "<<: {seeds: {}}\n",
            "[" * 3000, "seeds: " + "[" * 3000 + "]" * 3000 + "\n", "{a: " * 2000,
            "x: &a [1, 1, 1, 1, 1, 1]\n" + "".join(
                f"x{i}: &a{i} [{', '.join(['*a' if i == 0 else f'*a{i - 1}'] * 6)}]\n"
                for i in range(6)
            ) + "seeds: {exclude: *a5, source: *a5}\nscore: {weights: *a5}\nrun_dir: *a5\n",
            "seeds: {source: '" + "s" * 5000 + "'}\n", "seeds: {source: \"\\ud800\"}\n",
            "random_seed: 2001-01-01\n", "run_dir: 1e999\n", "model: {base_url: 'http://[::1'}\n",
            "teacher: {model: {nme: x}}\n", "score: {aspects: [{name: A}], weights: {A: -1}}\n",
        ]
    ),
)  # fmt: skip
RAW_YAML = st.sampled_from([b"\xff\xfe\x00", b"seeds: '\xc3\x28'\n", b"\x00", b"\xef\xbb\xbf{}"])
OVERRIDES = st.lists(
    st.one_of(
        st.builds(
            lambda key, value: f"{key}={value}",
            st.lists(st.sampled_from(SECTIONS + KEYS + ["", " "]), min_size=1, max_size=3).map(
                ".".join
            ),
            st.one_of(
                st.text(max_size=15),
                st.sampled_from(["[", "{a: ", "[" * 3000, "!!python/name:os.system", "*a", "1e9"]),
            ),
        ),
        st.text(max_size=15),
    ),
    max_size=3,
)


@examples(40)
@given(st.one_of(YAML_DOCS.map(lambda s: s.encode("utf-8", "surrogatepass")), RAW_YAML), OVERRIDES)
def test_a_config_loads_or_is_one_error_naming_the_file(data: bytes, overrides: list[str]):
    with tempfile.TemporaryDirectory() as name:
        path = _write(Path(name) / "config.yaml", data)
        config, error = outcome(lambda: load_config(path, overrides), ConfigError)
        if error is not None:
            message = str(error)
            assert_clear(message, max_lines=1 + message.count("\n  "))
            if not message.startswith("--set"):
                assert str(path) in message, message


@examples(20)
@given(OVERRIDES)
def test_set_overrides_alone_load_or_are_one_error(overrides: list[str]):
    config, error = outcome(lambda: load_config(None, overrides), ConfigError)
    if error is not None:
        message = str(error)
        assert_clear(message, max_lines=1 + message.count("\n  "))
