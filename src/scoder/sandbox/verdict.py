"""A run's verdict: what the harness reported (or, without a final report, how the process
ended) turned into a status, the tests passed, and one line saying why.

A run without a valid final record is never "passed".
"""

from __future__ import annotations

import signal

from scoder.sandbox.isolation import Launch
from scoder.sandbox.process import Final, Outcome
from scoder.sandbox.result import ExecStatus, one_line
from scoder.sandbox.statements import SplitTests


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _statement(plan: SplitTests, index: int | None) -> str:
    if index is None:
        return "the solution"
    if index >= len(plan.statements):
        return "the harness, after the tests"
    kind = "test" if plan.statements[index][0] else "test setup"
    return f"{kind} at line {plan.linenos[index]}"


def judge(
    plan: SplitTests, outcome: Outcome, launch: Launch, timeout_s: float
) -> tuple[ExecStatus, int, str]:
    reports = outcome.reports
    tests = {i for i, (is_test, _) in enumerate(plan.statements) if is_test}
    results = {i: reports.done[i] for i in tests if i in reports.done}
    passed = sum(outcome == "1" for outcome, _ in results.values())
    final = reports.final
    if final is not None:
        return _reported(plan, final, results, passed, len(tests))

    # no final report: it timed out, was killed, or exited behind the harness's back
    running = None if not reports.solution_done else max(reports.done, default=-1) + 1
    where = "in " + _statement(plan, running)
    rc = outcome.returncode
    signum = -rc if rc < 0 else 0
    if launch.signal_base and rc > launch.signal_base:
        signum = rc - launch.signal_base
    if outcome.timed_out:
        return "timeout", passed, f"wall-clock limit of {timeout_s:g}s hit {where}"
    if signum == signal.SIGXCPU:
        return "timeout", passed, f"CPU time limit hit {where}"
    if "MemoryError" in outcome.stderr:
        return "memory", passed, f"out of memory {where}; the harness could not report"
    if not reports.ready:
        return (
            "error",
            passed,
            one_line(f"sandbox failed to start (status {rc}): {outcome.stderr}"),
        )
    if signum:
        return "killed", passed, f"killed by {_signal_name(signum)} {where}"
    return (
        "killed",
        passed,
        one_line(
            f"exited with status {rc} {where} before the harness could report"
            " (os._exit? report pipe closed?)"
        ),
    )


def _reported(
    plan: SplitTests, final: Final, results: dict[int, tuple[str, str]], passed: int, total: int
) -> tuple[ExecStatus, int, str]:
    where = _statement(plan, final.index)
    if final.kind == "ok":
        failed = sorted(i for i, (outcome, _) in results.items() if outcome != "1")
        if not failed:
            return "passed", passed, ""
        first = failed[0]
        detail = one_line(
            f"{len(failed)} of {total} tests failed; first at line {plan.linenos[first]}: "
            f"{results[first][1] or 'failed'}"
        )
        memory = any(outcome == "m" for outcome, _ in results.values())
        return ("memory" if memory else "failed"), passed, detail
    if final.kind == "compile":
        return "error", passed, one_line(f"solution does not compile: {final.text}")
    if final.kind == "exit":
        code = final.text.partition(": ")[2] or "None"
        when = " before the tests ran" if final.index is None else ""
        return "killed", passed, one_line(f"{where} called sys.exit({code}){when}")
    if final.kind == "memory":
        return "memory", passed, one_line(f"{where} ran out of memory: {final.text}")
    return "error", passed, one_line(f"{where} raised {final.text}")
