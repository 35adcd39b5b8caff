"""`scoder eval`: pass@k, code extraction, verdicts on the real benchmarks, hostile samples, CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from test_cli import scoder as run_scoder

from scoder.config import SandboxConfig, load_config
from scoder.errors import ScoderError
from scoder.eval import (
    EXCLUDED,
    evaluate_solutions,
    extract_program,
    load_benchmark,
    mean_pass_at_k,
    pass_at_k,
    run_eval,
    summarize,
)
from scoder.eval import mbppplus as mbppplus_module
from scoder.models.hf import TransformersBackend
from scoder.models.loading import resolve_model
from scoder.models.openai_backend import OpenAIBackend
from scoder.sandbox import LEVELS, _probe
from scoder.templates import EVAL_TEMPLATES

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
MBPPPLUS = SHARED_DATA / "MbppPlus-pre-2023-11.jsonl"
MBPP = SHARED_DATA / "mbpp.jsonl"
SANDBOX = SandboxConfig(timeout_s=5.0)
needs_sandbox = pytest.mark.skipif(
    all(_probe(level) for level in LEVELS), reason="no sandbox works on this machine"
)
needs_data = pytest.mark.skipif(not MBPPPLUS.is_file(), reason="../shared/data is not here")


@pytest.fixture(scope="module")
def humaneval():
    return {t.task_id: t for t in load_benchmark("humaneval")}


@pytest.fixture(scope="module")
def mbppplus():
    return {t.task_id: t for t in load_benchmark("mbppplus", MBPPPLUS)}


def scoder(*args: str, cwd: Path | None = None):
    """The CLI as a subprocess; these tests check the exit status themselves."""
    return run_scoder(*args, cwd=cwd, check=False)


def canonical_rows(tasks) -> dict[str, list[dict]]:
    return {t.task_id: [{"solution": t.canonical_solution}] for t in tasks}


def test_mbppplus_arguments_get_their_types_back(mbppplus):
    base, plus = mbppplus_module.mbppplus_inputs(mbppplus["Mbpp/2"])
    assert base[0] == [(3, 4, 5, 6), (5, 7, 4, 10)]
    base, plus = mbppplus_module.mbppplus_inputs(mbppplus["Mbpp/124"])
    assert base[0] == [0.0, 1j] and type(base[0][1]) is complex
    base, _ = mbppplus_module.mbppplus_inputs(mbppplus["Mbpp/115"])
    assert base[1] == [[{1, 2}, {}, {}]]
    base, _ = mbppplus_module.mbppplus_inputs(mbppplus["Mbpp/580"])
    assert base[0] == [(4, 5, (7, 6, (2, 4)), 6, 8)]
    base, plus = mbppplus_module.mbppplus_inputs(mbppplus["Mbpp/17"])  # no conversion
    assert base == [[10], [5], [4]] and len(plus) > 10
    assert (
        mbppplus_module.mbppplus_inputs(mbppplus["Mbpp/793"])[1] == []
    )  # stored as {} in the file


# --- pass@k --------------------------------------------------------------------------------------


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 6, 5) == 1.0  # n - c < k: every draw of k holds a correct one
    assert pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(1, 1, 1) == 1.0
    # the product form stays finite where the binomials overflow a float
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 6)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)


def test_mean_pass_at_k_reports_only_k_every_task_allows():
    counts = [(10, 3), (10, 0), (5, 5)]
    got = mean_pass_at_k(counts, [1, 5, 10])
    assert set(got) == {"pass@1", "pass@5"}
    assert got["pass@1"] == pytest.approx((0.3 + 0.0 + 1.0) / 3)


# --- prompts -------------------------------------------------------------------------------------


def test_templates_and_mode(humaneval, mbppplus, tiny_model_dir, tiny_base_model_dir):
    chat = EVAL_TEMPLATES["eval-chat-v1"]
    completion = EVAL_TEMPLATES["eval-completion-v1"]
    he = humaneval["HumanEval/12"]
    assert chat.chat(he, "humaneval")[-1]["role"] == "user"
    assert he.prompt in chat.chat(he, "humaneval")[-1]["content"]
    assert completion.chat(he, "humaneval") == [{"role": "assistant", "content": he.prompt}]
    mb = completion.text(mbppplus["Mbpp/2"], "mbppplus")
    assert mb.startswith('"""\nWrite a function') and "assert similar_elements(" in mb
    assert "similar_elements" in chat.text(mbppplus["Mbpp/2"], "mbppplus")
    assert chat.digest != completion.digest

    # `prompt: auto` goes by this: an instruct model (a chat template) and any API server (it
    # applies its own) take chats, a base model a plain completion prompt
    def uses_chat_template(model_dir: Path) -> bool:
        return TransformersBackend(resolve_model(str(model_dir)), device="cpu").uses_chat_template

    assert uses_chat_template(tiny_model_dir) is True
    assert uses_chat_template(tiny_base_model_dir) is False
    assert OpenAIBackend.uses_chat_template is True


# --- extraction ----------------------------------------------------------------------------------

# (task, mode, model output): realistic answers, each of which must yield a passing program
CORPUS = [
    (
        "HumanEval/34",
        "chat",
        "Sure! Here is the implementation:\n\n```python\ndef unique(l: list):\n"
        '    """Return sorted unique elements in a list"""\n    return sorted(set(l))\n```\n\n'
        "This works by converting the list to a set.",
    ),
    (
        "HumanEval/34",
        "chat",
        "```python\nprint(unique([3, 1, 3]))\n```\nand the function:\n```py\ndef unique(l):\n"
        "    return sorted(set(l))\n\n\nif __name__ == '__main__':\n    import doctest\n"
        "    doctest.testmod()\n```",
    ),
    (
        "HumanEval/34",
        "chat",
        "Here's a solution.\n\ndef unique(l: list):\n    return sorted(set(l))\n\n"
        "Explanation: set() removes duplicates, sorted() orders them.",
    ),
    (
        "HumanEval/34",
        "completion",
        "    return sorted(set(l))\n\n\ndef check(x):\n    pass\n\nprint(unique",
    ),
    ("HumanEval/34", "chat", "```python\n    return sorted(set(l))\n```"),
    ("HumanEval/34", "chat", "```python\nreturn sorted(set(l))\n```"),
    (
        "HumanEval/12",  # the answer forgets the prompt's `from typing import ...`
        "chat",
        "```python\ndef longest(strings: List[str]) -> Optional[str]:\n    if not strings:\n"
        "        return None\n    return max(strings, key=len)\n```",
    ),
    (
        "HumanEval/12",  # the prompt repeated, then the body; \r\n line ends
        "chat",
        "```python\r\nfrom typing import List, Optional\r\n\r\n\r\ndef longest(strings: "
        'List[str]) -> Optional[str]:\r\n    """ Out of list of strings... """\r\n'
        "    if not strings:\r\n        return None\r\n    return max(strings, key=len)\r\n```",
    ),
    (
        "HumanEval/38",  # only decode_cyclic: the prompt's encode_cyclic must be kept
        "chat",
        "```python\ndef decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n```",
    ),
    (
        "HumanEval/38",
        "completion",
        "    return encode_cyclic(encode_cyclic(s))\n",
    ),
    (
        "HumanEval/53",  # a helper in a second block, asserts and prints around
        "chat",
        "```python\ndef add(x: int, y: int):\n    return _plus(x, y)\n\nassert add(1, 2) == 3\n"
        "print(add(2, 3))\n```\nwith the helper\n```python\ndef _plus(a, b):\n    return a + b\n```",
    ),
    (
        "HumanEval/53",  # cut off by max_new_tokens in a second function
        "chat",
        "```python\ndef add(x: int, y: int):\n\treturn x + y\n\n\ndef test_add():\n    assert add(",
    ),
    (
        "HumanEval/53",  # a second, different definition later on: the first one counts
        "chat",
        "```python\ndef add(x, y):\n    return x + y\n```\nOr shorter:\n```python\n"
        "def add(x, y): return x - y\n```",
    ),
    (
        "Mbpp/2",
        "chat",
        "To find the shared elements:\n\n```Python\ndef similar_elements(a, b):\n"
        "    return tuple(sorted(set(a) & set(b)))\n\n# Test\nprint(similar_elements((1, 2), (2, 3)))\n```",
    ),
    (
        "Mbpp/17",
        "completion",
        "def square_perimeter(a):\n    return 4 * a\n\n\nassert square_perimeter(10) == 40\n"
        'print("ok")\n"""\nWrite a function to',
    ),
]


@pytest.fixture(scope="module")
def corpus_tasks(humaneval, mbppplus):
    return {**humaneval, **{k: v for k, v in mbppplus.items() if k in ("Mbpp/2", "Mbpp/17")}}


def _extract(case, tasks):
    task_id, mode, text = case
    benchmark = "humaneval" if task_id.startswith("HumanEval") else "mbppplus"
    template = EVAL_TEMPLATES[f"eval-{mode}-v1"]
    task = tasks[task_id]
    prefix = template.text(task, benchmark) if mode == "completion" else ""
    return benchmark, task, *extract_program(text, task, benchmark, prefix)


def test_extraction_shapes(corpus_tasks):
    shapes = [_extract(case, corpus_tasks) for case in CORPUS]
    code, how = shapes[1][2], shapes[1][3]
    assert how == "fenced" and "print(" not in code and "__main__" not in code
    assert "This works" not in shapes[0][2] and "Explanation" not in shapes[2][2]
    assert shapes[3][3] == "unfenced+body" and shapes[4][3] == "fenced+body"
    assert shapes[6][2].startswith("from typing import List, Optional")
    assert "def encode_cyclic" in shapes[8][2]
    assert "def _plus" in shapes[10][2] and "assert add" not in shapes[10][2]
    assert "test_add" not in shapes[11][2]
    assert "x - y" not in shapes[12][2]
    assert extract_program(
        "I cannot help with that.", corpus_tasks["HumanEval/34"], "humaneval"
    ) == (
        "",
        "none",
    )


@needs_sandbox
def test_extracted_corpus_passes(corpus_tasks):
    by_benchmark: dict[str, dict] = {"humaneval": {}, "mbppplus": {}}
    for index, case in enumerate(CORPUS):
        benchmark, task, code, how = _extract(case, corpus_tasks)
        by_benchmark[benchmark].setdefault(task.task_id, []).append(
            {"solution": code, "sample_index": index, "extraction": how}
        )
    failed = []
    for benchmark, rows in by_benchmark.items():
        tasks = [corpus_tasks[t] for t in rows]
        outcome = evaluate_solutions(benchmark, tasks, rows, SANDBOX, benchmark_sha="test")
        failed += [
            (s.sample_index, s.extraction, s.detail) for s in outcome.samples if not s.passed
        ]
    assert failed == []


# --- verdicts on the real benchmarks ---------------------------------------------------------------


@needs_sandbox
def test_humaneval_canonical_solutions_all_pass_and_resume_per_chunk(
    humaneval, tmp_path, monkeypatch
):
    from scoder.eval import execute

    tasks = list(humaneval.values())
    monkeypatch.setattr(execute, "EXECUTION_CHUNK", 50)
    parts = tmp_path / "executed"
    outcome = evaluate_solutions(
        "humaneval", tasks, canonical_rows(tasks), SandboxConfig(), parts_dir=parts
    )
    summary = summarize("humaneval", outcome.samples, [1])
    assert len(outcome.samples) == 164
    assert [s.task_id for s in outcome.samples if not s.passed] == []
    assert summary["pass_at_k"] == {"base": {"pass@1": 1.0}}
    # a kill after the third chunk: the evaluation again runs only the last one
    assert len(list(parts.glob("part-*.jsonl"))) == 4
    (parts / "part-00003.jsonl").unlink()
    ran = []
    real = execute.run_batch
    monkeypatch.setattr(
        execute, "run_batch", lambda programs, *a: ran.append(len(programs)) or real(programs, *a)
    )
    again = evaluate_solutions(
        "humaneval", tasks, canonical_rows(tasks), SandboxConfig(), parts_dir=parts
    )
    assert ran == [14] and again.samples == outcome.samples


@needs_sandbox
@needs_data
def test_mbpp_canonical_solutions_pass_but_the_excluded(tmp_path):
    tasks = load_benchmark("mbpp", MBPP)
    assert len(tasks) == 500
    kept = [t for t in tasks if t.task_id not in EXCLUDED["mbpp"]]
    outcome = evaluate_solutions("mbpp", kept, canonical_rows(kept), SandboxConfig())
    assert [(s.task_id, s.detail) for s in outcome.samples if not s.passed] == []
    excluded = [t for t in tasks if t.task_id in EXCLUDED["mbpp"]]
    outcome = evaluate_solutions("mbpp", excluded, canonical_rows(excluded), SandboxConfig())
    assert not any(s.passed for s in outcome.samples)  # the exclusions are real


# tasks that exercise every input conversion and oracle: tuples (2), sets of dicts (115), complex
# (124), float atol (124, 82), not-None (737), set equality (2), special oracles (164, 295, 581),
# outputs too big to ship back (630, checked in-process)
MBPPPLUS_SAMPLE = ["Mbpp/2", "Mbpp/115", "Mbpp/124", "Mbpp/82", "Mbpp/737", "Mbpp/164", "Mbpp/295"]
MBPPPLUS_SAMPLE += ["Mbpp/581", "Mbpp/630", "Mbpp/17"]


@needs_sandbox
@needs_data
def test_mbppplus_verdicts_base_and_plus(mbppplus, monkeypatch):
    tasks = [mbppplus[t] for t in MBPPPLUS_SAMPLE]
    rows = canonical_rows(tasks)
    # right on the base inputs (ints), wrong on the plus inputs (floats too)
    rows["Mbpp/17"].append(
        {"solution": "def square_perimeter(a):\n    return 4 * a if type(a) is int else 0\n"}
    )
    rows["Mbpp/17"].append(
        {"solution": "def square_perimeter(a):\n    return 4.0 * a\n"}
    )  # 40.0 == 40
    rows["Mbpp/17"].append({"solution": "def square_perimeter(a):\n    return str(4 * a)\n"})
    rows["Mbpp/2"].append(  # the order of the shared elements does not matter
        {
            "solution": "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b)))[::-1]\n"
        }
    )
    rows["Mbpp/2"].append({"solution": "def similar_elements(a, b):\n    return list(a)\n"})
    rows["Mbpp/737"].append(  # a bool is compared as the not-None oracle's bool
        {"solution": "import re\ndef check_str(s):\n    return bool(re.match('[aeiouAEIOU]', s))\n"}
    )
    rows["Mbpp/124"].append(  # within atol 1e-4, but not exact
        {
            "solution": "import cmath\ndef angle_complex(a, b):\n    return cmath.phase(a + b) + 5e-5\n"
        }
    )
    rows["Mbpp/124"].append(
        {
            "solution": "import cmath\ndef angle_complex(a, b):\n    return cmath.phase(a + b) + 1e-3\n"
        }
    )
    sha = "sha256:test-" + MBPPPLUS.name
    outcome = evaluate_solutions("mbppplus", tasks, rows, SANDBOX, benchmark_sha=sha)
    assert outcome.excluded == {}
    got = {(s.task_id, s.sample_index): (s.passed, s.plus_passed) for s in outcome.samples}
    canonical = {(t, 0): (True, True) for t in MBPPPLUS_SAMPLE}
    assert {k: v for k, v in got.items() if k in canonical} == canonical, [
        (s.task_id, s.detail) for s in outcome.samples if not s.plus_passed
    ]
    assert got[("Mbpp/17", 1)] == (True, False)
    assert got[("Mbpp/17", 2)] == (True, True)
    assert got[("Mbpp/17", 3)] == (False, False)
    assert got[("Mbpp/2", 1)] == (True, True)
    assert got[("Mbpp/2", 2)] == (False, False)
    assert got[("Mbpp/737", 1)] == (True, True)
    assert got[("Mbpp/124", 1)] == (True, True)
    assert got[("Mbpp/124", 2)] == (False, False)
    summary = summarize("mbppplus", outcome.samples, [1])
    assert set(summary["pass_at_k"]) == {"base", "plus"}

    # the expected outputs are cached by benchmark hash: a second evaluation computes nothing
    def no_recompute(*args, **kwargs):
        raise AssertionError("expected outputs computed again")

    monkeypatch.setattr(mbppplus_module, "_compute_expected", no_recompute)
    again = evaluate_solutions("mbppplus", tasks, canonical_rows(tasks), SANDBOX, benchmark_sha=sha)
    assert all(s.plus_passed for s in again.samples)


@pytest.mark.slow
@needs_sandbox
@needs_data
def test_mbppplus_canonical_solutions_all_pass(mbppplus):
    """Every MBPP+ canonical solution but the excluded ones scores 1.0, base and plus (~80 s)."""
    tasks = [t for t in mbppplus.values() if t.task_id not in EXCLUDED["mbppplus"]]
    assert len(tasks) == 399 - len(EXCLUDED["mbppplus"])
    outcome = evaluate_solutions(
        "mbppplus", tasks, canonical_rows(tasks), SandboxConfig(), benchmark_sha="sha256:full"
    )
    assert outcome.excluded == {}
    assert [(s.task_id, s.detail) for s in outcome.samples if not s.plus_passed] == []
    summary = summarize("mbppplus", outcome.samples, [1])
    assert summary["pass_at_k"] == {"base": {"pass@1": 1.0}, "plus": {"pass@1": 1.0}}


# --- hostile samples -------------------------------------------------------------------------------

CORRECT_0 = (
    "def has_close_elements(numbers, threshold):\n"
    "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)\n"
    "               for j, b in enumerate(numbers) if i != j)\n"
)
WRONG_0 = "def has_close_elements(numbers, threshold):\n    return False\n"
# correct only when what it found in LEAK is the secret
LEAKED = CORRECT_0.replace("has_close_elements", "_correct") + (
    "has_close_elements = _correct if 'hunter2' in LEAK else None\n"
)
LEAKS = ("reads a secret file", "reads the environment")


def hostile_corpus(outside: Path, secret_file: Path) -> dict[str, str]:
    """Each sample is wrong unless its attack works (then it would pass)."""
    return {
        "infinite loop": "while True:\n    pass\n",
        "loop in the function": "def has_close_elements(n, t):\n    while True:\n        pass\n",
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
        "        pass\n",
        "memory hog": "x = [bytearray(1 << 26) for _ in range(1000)]\n" + CORRECT_0,
        "sys.exit(0) first": "import sys\nsys.exit(0)\n" + CORRECT_0,
        "os._exit(0) first": "import os\nos._exit(0)\n",
        "os._exit(0) when called": "import os\ndef has_close_elements(n, t):\n    os._exit(0)\n",
        "SystemExit when called": "def has_close_elements(n, t):\n    raise SystemExit(0)\n",
        "own check": "def check(candidate):\n    pass\n" + WRONG_0,
        "equal to anything": "class Yes:\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = None\n"
        "def has_close_elements(n, t):\n    return Yes()\n",
        "bool subclass": "class B(int):\n    def __eq__(self, other):\n        return True\n"
        "def has_close_elements(n, t):\n    return B(1)\n",
        "patched builtins": "import builtins\nbuiltins.AssertionError = KeyError\n"
        "builtins.abs = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n" + WRONG_0,
        "trace hook": "import sys\nsys.settrace(lambda *a: None)\n" + WRONG_0,
        "rebound names": "type = len = isinstance = lambda *a: 0\n"
        + WRONG_0.replace("return False", "return type(1)"),
        "delete and write outside": f"import os, shutil\nshutil.rmtree({str(outside)!r}, "
        f"ignore_errors=True)\ntry:\n    open({str(outside / 'pwned')!r}, 'w').write('x')\n"
        "except OSError:\n    pass\n" + WRONG_0,
        "reads a secret file": "import os\n"
        f"LEAK = open({str(secret_file)!r}).read() if os.access({str(secret_file)!r}, os.R_OK) "
        "else ''\n" + LEAKED,
        "reads the environment": "import os\n"
        "LEAK = os.environ.get('SCODER_TEST_SECRET', '')\n"
        "try:\n    LEAK += open('/proc/1/environ', 'rb').read().decode(errors='ignore')\n"
        "except OSError:\n    pass\n" + LEAKED,
        "reads ~/.ssh": "import os, glob\n"
        "LEAK = ''.join(glob.glob(os.path.expanduser('~/.ssh/*')) + glob.glob('/root/.ssh/*'))\n"
        + LEAKED.replace("'hunter2' in LEAK", "LEAK"),
    }


@needs_sandbox
def test_hostile_samples_fail_and_stay_inside(humaneval, tmp_path, monkeypatch):
    monkeypatch.setenv("SCODER_TEST_SECRET", "hunter2")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("hunter2")
    secret_file.chmod(0o600)
    corpus = hostile_corpus(outside, secret_file)
    task = humaneval["HumanEval/0"]
    rows = {
        task.task_id: [
            {"solution": code, "sample_index": i}
            for i, code in enumerate([CORRECT_0, *corpus.values()])
        ]
    }
    # the leaking samples work outside the sandbox: they fail inside because nothing leaks
    for name in LEAKS:
        scope: dict = {}
        exec(corpus[name], scope)
        exec(task.tests, scope)
        scope["check"](scope["has_close_elements"])
    outcome = evaluate_solutions("humaneval", [task], rows, SandboxConfig(timeout_s=3.0))
    verdicts = dict(zip(["(the correct one)", *corpus], outcome.samples))
    assert verdicts.pop("(the correct one)").passed
    passed = {name: s.detail for name, s in verdicts.items() if s.passed}
    assert passed == {}
    assert verdicts["sys.exit(0) first"].status == "killed"
    assert verdicts["os._exit(0) first"].status == "killed"
    assert verdicts["infinite loop"].status == "timeout"
    assert (outside / "keep.txt").read_text() == "keep"
    assert not (outside / "pwned").exists()
    assert os.waitpid(os.spawnv(os.P_NOWAIT, "/bin/true", ["true"]), 0)[1] == 0  # can still fork


@needs_sandbox
@needs_data
def test_hostile_mbppplus_outputs_fail(mbppplus):
    task = mbppplus["Mbpp/17"]
    samples = [
        "class Yes(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "def square_perimeter(a):\n    return Yes(0)\n",
        "import sys\ndef square_perimeter(a):\n    sys.exit(0)\n",
        "import os\ndef square_perimeter(a):\n    os._exit(0)\n",
        "import builtins\nbuiltins.type = lambda x: int\ndef square_perimeter(a):\n    return 0\n",
        "def square_perimeter(a):\n    globals()['_scoder_check'] = lambda *a: True\n    return 0\n",
    ]
    rows = {task.task_id: [{"solution": s, "sample_index": i} for i, s in enumerate(samples)]}
    outcome = evaluate_solutions("mbppplus", [task], rows, SANDBOX, benchmark_sha="sha256:hostile")
    assert [(s.sample_index, s.detail) for s in outcome.samples if s.passed or s.plus_passed] == []


# --- the stage and the command line ------------------------------------------------------------------


def write_samples(path: Path, tasks, make) -> Path:
    with path.open("w") as fh:
        for t in tasks:
            fh.write(json.dumps({"task_id": t.task_id, **make(t)}) + "\n")
    return path


@needs_sandbox
def test_cli_scores_a_samples_file_of_wrong_solutions(humaneval, tmp_path):
    wrong = [
        "    return None\n",
        "    raise NotImplementedError\n",
        "    return args[0] if args else 0\n",
    ]
    tasks = list(humaneval.values())
    samples = write_samples(
        tmp_path / "wrong.jsonl",
        tasks,
        lambda t: {
            "solution": f"def {t.entry_point}(*args, **kwargs):\n"
            + wrong[int(t.task_id.split("/")[1]) % 3]
        },
    )
    proc = scoder(
        "eval",
        "--samples",
        str(samples),
        "--benchmark",
        "humaneval",
        "--out",
        str(tmp_path / "run"),
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "run" / "eval" / "humaneval" / "results.json").read_text())
    assert results["pass_at_k"] == {"base": {"pass@1": 0.0}}
    assert results["tasks"] == 164 and results["n"] == 1
    assert results["source"]["sha256"].startswith("sha256:")
    assert results["benchmark_file"]["sha256"].startswith("sha256:")
    assert results["sandbox"]["isolation"] in LEVELS
    assert "pass@1 0.0000" in proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "run/eval/humaneval/samples.jsonl").open()]
    assert len(rows) == 164 and not any(r["passed"] for r in rows)
    assert {"task_id", "solution", "status", "detail"} <= set(rows[0])


@needs_sandbox
def test_run_eval_refuses_to_mix_and_force_restarts(humaneval, tmp_path):
    tasks = list(humaneval.values())[:3]
    good = write_samples(tmp_path / "a.jsonl", tasks, lambda t: {"solution": t.canonical_solution})
    completions = write_samples(  # HumanEval completions are appended to the prompt
        tmp_path / "b.jsonl", tasks, lambda t: {"completion": t.canonical_solution[len(t.prompt) :]}
    )
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    first = run_eval(cfg, "humaneval", samples_path=good)
    assert first.results["pass_at_k"]["base"]["pass@1"] == 1.0
    assert first.results["tasks_without_samples"] == 164 - 3
    run_eval(cfg, "humaneval", samples_path=good)  # same input: fine
    with pytest.raises(ScoderError, match="--force"):
        run_eval(cfg, "humaneval", samples_path=completions)
    forced = run_eval(cfg, "humaneval", samples_path=completions, force=True)
    assert forced.results["pass_at_k"]["base"]["pass@1"] == 1.0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["eval/humaneval"]["status"] == "done"
    # --limit: the file's samples of other tasks are left out, not errors
    limited = load_config(None, [f"run_dir={tmp_path / 'limited'}", "eval.limit=2"])
    assert run_eval(limited, "humaneval", samples_path=good).results["tasks"] == 2


@pytest.mark.parametrize(
    ("args", "samples", "message"),
    [
        (["--benchmark", "humanevalplus"], None, "unknown benchmark 'humanevalplus'"),
        (
            ["--benchmark", "mbppplus", "--set", "benchmark_files.mbppplus=/nonexistent.jsonl"],
            None,
            "benchmark file for mbppplus not found",
        ),
        (["--benchmark", "mbppplus"], None, "needs a file: set benchmark_files.mbppplus"),
        (
            ["--benchmark", "humaneval"],
            '{"task_id": "HumanEval/0", "solution": "x"}\n{oops\n',
            ":2: not JSON",
        ),
        (
            ["--benchmark", "humaneval"],
            '{"task_id": "HumanEval/999", "solution": "x"}\n',
            "unknown task id",
        ),
        (["--benchmark", "humaneval"], '{"task_id": "HumanEval/1"}\n', "solution or completion"),
        (["--benchmark", "humaneval", "--benchmark", "mbpp"], "", "--samples scores one benchmark"),
    ],
)
def test_cli_bad_input_is_one_clear_error(tmp_path, args, samples, message):
    extra = []
    if samples is not None:
        (tmp_path / "s.jsonl").write_text(samples)
        extra = ["--samples", str(tmp_path / "s.jsonl")]
    proc = scoder("eval", *args, *extra, "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr


@needs_sandbox
def test_cli_generates_with_a_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--model", str(tiny_model_dir), "--benchmark", "humaneval", "--limit", "3"]
    args += ["--set", "eval.max_new_tokens=16", "--out", str(out)]
    proc = scoder(*args)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "eval" / "humaneval" / "results.json").read_text())
    assert results["tasks"] == 3 and results["n"] == 1
    assert results["model"]["digest"].startswith("sha256:")
    assert results["prompt"]["mode"] == "chat" and results["prompt"]["template"] == "eval-chat-v1"
    assert results["prompt"]["digest"].startswith("sha256:")
    assert results["decoding"]["temperature"] == 0.0
    assert results["timings"]["generated_tokens"] > 0
    rows = [json.loads(line) for line in (out / "eval/humaneval/samples.jsonl").open()]
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all("completion" in r and "extraction" in r for r in rows)
    # another decoding config into the same run directory is refused
    proc = scoder(*args, "--temperature", "0.7")
    assert proc.returncode == 2 and "--force" in proc.stderr


@needs_sandbox
def test_eval_through_an_openai_compatible_server(server, tmp_path):
    """The same stage over the OpenAI backend (`scoder serve` on the tiny model): n = 2 samples
    per task with temperature, so pass@1 is over two samples; completions are kept in the run
    directory's request log."""
    cfg = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            "model.backend=openai",
            f"model.base_url={server}",
            "model.name=tiny",
            "eval.limit=2",
            "eval.n=2",
            "eval.temperature=0.8",
            "eval.max_new_tokens=8",
        ],
    )
    run = run_eval(cfg, "humaneval")
    assert run.results["model"]["backend"] == "openai"
    assert run.results["prompt"]["mode"] == "chat"  # the server applies the chat template
    assert run.results["n"] == 2 and run.results["tasks"] == 2
    assert set(run.results["pass_at_k"]["base"]) == {"pass@1"}
    assert (tmp_path / "run" / "eval" / "humaneval" / "requests.jsonl").is_file()


@pytest.mark.slow
@needs_sandbox
def test_cli_eval_with_the_embedded_model(tmp_path):
    out = tmp_path / "run"
    proc = scoder(
        "eval", "--model", "embedded", "--benchmark", "humaneval", "--limit", "2",
        "--set", "eval.max_new_tokens=48", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "eval" / "humaneval" / "results.json").read_text())
    assert results["model"]["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert results["prompt"]["mode"] == "chat"
    assert results["tasks"] == 2 and 0.0 <= results["pass_at_k"]["base"]["pass@1"] <= 1.0
