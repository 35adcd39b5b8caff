"""`scoder eval`: HumanEval, MBPP+ and MBPP by execution, pass@k.

A stage in two halves, both plain functions: `generate_solutions` (tasks + a backend -> the
model's answers, saved chunk by chunk, turned into programs by `extract_program`) and
`evaluate_solutions` (tasks + programs -> verdicts, each sample run in `scoder.sandbox` in a
process of its own). `run_eval` wires them to the run directory (RUN/eval/<benchmark>/results.json
and samples.jsonl) under the stage fingerprint of everything the scores depend on.

The package, one concern a module:

- `benchmarks`: the tasks (and `EXCLUDED`, those whose canonical solution cannot be the oracle)
- `generate`, `extract`: a model's answers, and the program found in each
- `samples`: EvalPlus-format samples files, scored instead of generating
- `programs`: the (code, tests) program the sandbox runs for one sample, by benchmark
- `checker`: the judge that runs inside the sandbox; `sandboxed` ships it there
- `mbppplus`: MBPP+ as EvalPlus judges it (argument types, special oracles, expected outputs)
- `execute`: every sample in the sandbox, and its verdict
- `passk`, `runner`: the scores, and the stage
"""

from scoder.eval.benchmarks import EXCLUDED, BenchmarkTask, load_benchmark
from scoder.eval.execute import EvalOutcome, SampleResult, evaluate_solutions
from scoder.eval.extract import extract_program
from scoder.eval.generate import GeneratedSample, generate_solutions
from scoder.eval.passk import mean_pass_at_k, pass_at_k
from scoder.eval.runner import BenchmarkRun, benchmark_file, run_eval, summarize
from scoder.eval.samples import load_samples
from scoder.eval.sandboxed import EVALUATOR_VERSION

__all__ = [
    "EVALUATOR_VERSION",
    "EXCLUDED",
    "BenchmarkRun",
    "BenchmarkTask",
    "EvalOutcome",
    "GeneratedSample",
    "SampleResult",
    "benchmark_file",
    "evaluate_solutions",
    "extract_program",
    "generate_solutions",
    "load_benchmark",
    "load_samples",
    "mean_pass_at_k",
    "pass_at_k",
    "run_eval",
    "summarize",
]
