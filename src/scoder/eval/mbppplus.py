"""MBPP+ judged as EvalPlus does it: the arguments brought back to their types, the special
oracles, and the expected outputs (computed by the canonical solution in the sandbox, cached).

The entry point is called on every input (`base_input`, then `plus_input`); each output is compared
with the canonical solution's output on the same input: `==`, then, if the expected output is a
float (or a list/tuple of floats) or the task has an `atol`, "same type, same length,
numpy-`allclose`" with rtol 1e-7 and the task's atol (1e-6 when 0) (`scoder.eval.checker` does the
comparing). EvalPlus's special oracles (set equality, output-is-not-None, four task-specific checks)
apply, and the arguments EvalPlus stores lossily in JSON (tuples, sets, complex numbers) are turned
back into those types.

The expected outputs come from the canonical solution, run in the sandbox and shipped back through
its stderr (compressed, in 3 KB chunks), cached under $SCODER_CACHE/eval/expected/ by the benchmark
file's hash; the two tasks whose outputs are megabytes (Mbpp/462, Mbpp/630) instead run the
canonical solution inside each sample's process, before the sample's code
(`scoder.eval.programs.in_process_oracle`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scoder.config import SandboxConfig
from scoder.eval.benchmarks import BenchmarkTask
from scoder.eval.sandboxed import EMIT, EVALUATOR_VERSION, blobs, run_batch
from scoder.models.loading import scoder_cache_dir
from scoder.sandbox import ExecResult
from scoder.store import atomic_write_text

# --- arguments and oracles -----------------------------------------------------------------------


def _tuples(x: Any) -> Any:
    return tuple(x)


def _deep_tuples(x: Any) -> Any:
    return tuple(_deep_tuples(v) for v in x) if isinstance(x, list) else x


def _each(convert: Callable[[Any], Any]) -> Callable[[list], list]:
    return lambda args: [convert(a) for a in args]


def _items(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda arg: [convert(v) for v in arg]


def _first(convert: Callable[[Any], Any]) -> Callable[[list], list]:
    return lambda args: [convert(args[0]), *args[1:]]


def _second(convert: Callable[[Any], Any]) -> Callable[[list], list]:
    return lambda args: [args[0], convert(args[1]), *args[2:]]


def _set_or_empty_dict(x: Any) -> Any:
    # EvalPlus stores Mbpp/115's empty sets as [] and reads them back as {} (an empty dict)
    return set(x) if isinstance(x, list) and x else {}


# EvalPlus's MBPP+ file is JSON, which has no tuples, sets or complex numbers: for these tasks
# EvalPlus converts the stored arguments back before calling anything (task number -> how the
# argument list is converted). Same conversions, our own table.
_ARG_CONVERSIONS: dict[int, Callable[[list], list]] = {
    **dict.fromkeys(
        [2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630]
        + [726, 740, 744, 809],
        _each(_tuples),
    ),
    **dict.fromkeys(
        [63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780],
        _each(_items(_tuples)),
    ),
    **dict.fromkeys([75, 413, 444, 753], _first(_items(_tuples))),
    **dict.fromkeys([106, 750], _second(_tuples)),
    115: _first(_items(_set_or_empty_dict)),
    124: lambda args: [float(args[0]), complex(args[1])],
    **dict.fromkeys([250, 405, 446, 617, 720, 763, 808, 307], _first(_tuples)),
    **dict.fromkeys([259, 401, 445], _each(lambda a: tuple(tuple(v) for v in a))),
    278: _first(lambda a: tuple(tuple(v) if isinstance(v, list) else v for v in a)),
    722: _first(lambda d: {k: tuple(v) for k, v in d.items()}),
    252: lambda args: [complex(args[0])],
    **dict.fromkeys([580, 615, 791], lambda args: list(_deep_tuples(args))),
}

# EvalPlus's special oracles, by entry point (MBPP+ only).
_ORACLES: dict[str, str] = {
    # the output is compared only on whether it is None (re.Match objects cannot be compared)
    **dict.fromkeys(["check_str", "text_match_three", "text_starta_endb"], "not_none"),
    # any order (and multiplicity) of the same elements is right
    **dict.fromkeys(
        [
            "similar_elements",
            "find_char_long",
            "common_in_nested_lists",
            "extract_singly",
            "larg_nnum",
            "intersection_array",
            "find_dissimilar",
            "Diff",
        ],
        "set_eq",
    ),
    "are_equivalent": "any",  # Mbpp/164: the canonical solution disagrees with the task's asserts
    "sum_div": "or_zero",  # Mbpp/295
    "surface_Area": "surface_area",  # Mbpp/581: two readings of "height"
    "digit_distance_nums": "digit_distance",  # Mbpp/558: numbers of different lengths
}


def mbppplus_inputs(task: BenchmarkTask) -> tuple[list[list], list[list]]:
    """Base and plus argument lists of an MBPP+ task, with EvalPlus's type conversions."""
    number = int(task.task_id.rsplit("/", 1)[-1])
    convert = _ARG_CONVERSIONS.get(number, list)
    return [convert(a) for a in task.base_inputs], [convert(a) for a in task.plus_inputs]


def oracle_of(task: BenchmarkTask) -> str:
    return _ORACLES.get(task.entry_point, "equal")


@dataclass
class Expected:
    """What an MBPP+ task's samples are compared with."""

    outputs: list | None = None  # plain values, one per input (base then plus)
    seconds: float = 0.0  # the canonical solution's time on all inputs
    error: str | None = None  # why the canonical solution cannot be the oracle
    # outputs too big to ship back through the sandbox's 4 KB of stderr (a few MB for Mbpp/630):
    # the canonical solution runs again inside each sample's own process, before the sample
    in_process: bool = False


# --- expected outputs ----------------------------------------------------------------------------

_CHUNK_CHARS = 3000  # of base64 per run: the sandbox keeps 4 KB of stderr
_MAX_CHUNKS = 4  # more than this: the outputs are recomputed inside each sample's process
# what `checker.emit` writes: chunk, chunk count, digest of the whole, seconds, the chunk
_MARK = re.compile(r"@@scoder (\d+) (\d+) ([0-9a-f]{16}) (\S+)@@([A-Za-z0-9+/=]*)@@")


def expected_tests(task: BenchmarkTask, chunk: int) -> str:
    """The test statement that has the canonical solution (the program) emit chunk `chunk` of
    its outputs on all inputs."""
    base, plus = mbppplus_inputs(task)
    return (
        f"assert {EMIT}({task.entry_point}, {blobs(base + plus)}, "
        f"{oracle_of(task)!r}, {chunk}, {_CHUNK_CHARS})\n"
    )


def _expected_cache_path(benchmark_sha: str) -> Path:
    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    name = f"mbppplus-{benchmark_sha.removeprefix('sha256:')[:16]}-{EVALUATOR_VERSION}-{py}.json"
    return scoder_cache_dir() / "eval" / "expected" / name


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def expected_outputs(
    tasks: Sequence[BenchmarkTask],
    benchmark_sha: str,
    sandbox: SandboxConfig,
    timeout_s: float,
) -> dict[str, Expected]:
    """The canonical solution's output on every input of every task, computed in the sandbox (and
    cached by benchmark file hash: a second eval reads them back)."""
    path = _expected_cache_path(benchmark_sha)
    cache = _read_cache(path)
    todo = [t for t in tasks if t.task_id not in cache]
    if todo:
        cache.update(_compute_expected(todo, sandbox, timeout_s))
        merged = {**_read_cache(path), **cache}
        atomic_write_text(path, json.dumps(merged, separators=(",", ":")))
    out = {}
    for task in tasks:
        entry = cache[task.task_id]
        outputs = None
        if entry.get("outputs") is not None:
            outputs = decode_tagged(entry["outputs"])
        out[task.task_id] = Expected(
            outputs, entry.get("seconds", 0.0), entry.get("error"), entry.get("in_process", False)
        )
    return out


def _compute_expected(
    tasks: Sequence[BenchmarkTask], sandbox: SandboxConfig, timeout_s: float
) -> dict:
    first = run_batch(
        [(t.canonical_solution, expected_tests(t, 0)) for t in tasks], sandbox, timeout_s
    )
    parts: dict[str, dict[int, tuple]] = {}
    found: dict[str, dict] = {}
    more: list[tuple[BenchmarkTask, int]] = []
    for task, result in zip(tasks, first):
        mark = _mark(result)
        if isinstance(mark, str):
            found[task.task_id] = {"error": mark}
            continue
        if mark[1] > _MAX_CHUNKS:
            found[task.task_id] = {"in_process": True, "seconds": round(mark[3], 4)}
            continue
        parts[task.task_id] = {0: mark}
        more += [(task, k) for k in range(1, mark[1])]
    if more:
        rest = run_batch(
            [(t.canonical_solution, expected_tests(t, k)) for t, k in more], sandbox, timeout_s
        )
        for (task, k), result in zip(more, rest):
            mark = _mark(result)
            if isinstance(mark, str):
                found[task.task_id] = {"error": mark}
            elif task.task_id in parts:
                parts[task.task_id][k] = mark
    for task_id, got in parts.items():
        if task_id not in found:
            found[task_id] = _assemble(got)
    return found


def _mark(result: ExecResult) -> tuple[int, int, str, float, str] | str:
    if result.status != "passed":
        what = "too slow" if result.status == "timeout" else f"{result.status}"
        return f"canonical solution {what}: {result.detail}"[:400]
    match = _MARK.search(result.stderr)
    if not match:
        return "canonical solution: no outputs came back from the sandbox"
    chunk, count, digest, seconds, data = match.groups()
    return int(chunk), int(count), digest, float(seconds), data


def _assemble(parts: dict[int, tuple]) -> dict:
    count, digest, seconds = parts[0][1], parts[0][2], parts[0][3]
    if len(parts) != count or any(p[2] != digest for p in parts.values()):
        return {"error": "canonical solution gives different outputs from run to run"}
    blob = "".join(parts[k][4] for k in range(count))
    payload = zlib.decompress(base64.b64decode(blob))
    if hashlib.sha256(payload).hexdigest()[:16] != digest:
        return {"error": "canonical outputs were damaged on the way back"}
    data = json.loads(payload)
    if data["error"]:
        return {"error": f"canonical solution failed on {data['error']}", "seconds": seconds}
    return {"outputs": data["outputs"], "seconds": round(seconds, 4), "error": None}


def decode_tagged(value: Any) -> Any:
    """The host side of `checker.enc`: tagged JSON -> Python values."""
    if isinstance(value, list):
        return [decode_tagged(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise ValueError(f"not a tagged value: {str(value)[:80]}")
    ((tag, body),) = value.items()
    if tag == "t":
        return tuple(decode_tagged(v) for v in body)
    if tag == "s":
        return {decode_tagged(v) for v in body}
    if tag == "f":
        return frozenset(decode_tagged(v) for v in body)
    if tag == "d":
        return {decode_tagged(k): decode_tagged(v) for k, v in body}
    if tag == "c":
        return complex(body[0], body[1])
    if tag == "b":
        return bytes.fromhex(body)
    raise ValueError(f"unknown tag {tag!r}")
