"""Run model-written Python (a solution plus its assert tests) in a sandbox, one process per program.

The code is hostile until it has run here. Each program gets one fresh process running a small
harness (`scoder.sandbox.harness`): it reads its job from stdin (then swaps stdin for /dev/null),
sets the rlimits, compiles and runs the solution (optimize=0: asserts stay), then the test
statements one at a time, and reports each step on a dedicated pipe, every record tagged with a
random nonce that the program never sees on any channel it writes to. A run without a valid final
record is never "passed". `split_tests` decides what a test is: a top-level statement that runs an
assert (or calls a top-level function of the tests that asserts, as in HumanEval's
`check(candidate)`).

Two ways to get that process (`prefork`, on run_program and run_many):

- pre-forked (the default, at the levels with a pid namespace: bwrap, unshare): each worker thread
  starts one sandbox, with the same launch and (as root) its own uid, running a warm interpreter,
  the zygote (`scoder.sandbox.zygote`, host side `scoder.sandbox.pool`), which forks a fresh child
  per program, one at a time; between two programs every other process of the sandbox is killed
  and the sandbox's writable trees are put back as they were. The zygote ends when run_many does.
- one sandbox per program (prefork=False, and always at the rlimits level, which has no pid
  namespace to sweep): each program gets a fresh interpreter (`python -I -S`) in a fresh sandbox.

Both give the same verdicts; a pre-forked run costs a fork where the other costs namespaces and an
interpreter start. ExecResult.prefork says which way a run went.

Isolation levels, strongest first (`available_isolation` probes them once and keeps the first that
really runs a program here):

- ``bwrap``: bubblewrap with every namespace unshared (no network, own pid namespace, nested user
  namespaces disabled), a read-only root holding only /usr (plus the /lib, /lib64, /bin links) and
  the interpreter's prefix, a fresh work dir bound as /tmp (also cwd and HOME), a cleared
  environment, uid 65534 inside, no_new_privs.
- ``unshare``: user + pid + net + mount + ipc + uts namespaces via unshare(1), /proc remounted, the
  work dir bound over /tmp, fresh tmpfs over /var/tmp and /dev/shm. NOT isolated: the rest of the
  host filesystem is visible, readable as "other" would read it and writable where "other" may
  write; SysV/abstract-socket names are private (ipc + net namespaces) but not the filesystem's.
- ``rlimits``: a plain child process with the rlimits, a cleared environment and a fresh cwd and
  HOME. No namespaces: it shares the network and the whole filesystem.

Every level sets RLIMIT_CPU (about the timeout), RLIMIT_AS (memory_mb), RLIMIT_NPROC (64),
RLIMIT_FSIZE (16 MiB per file; the total written to the work dir is not capped), RLIMIT_CORE (0) and
RLIMIT_NOFILE (256). The parent enforces the wall clock, reads stderr with a cap (stdout goes to
/dev/null: ExecResult has no field for it, so nothing can fill or block), and kills everything the
program started when it ends: the pid namespace dies with its first process (bwrap, unshare); for
rlimits, the session is killed and so is every process of the run's uid.

When we are root, every sandbox also gets a random unprivileged uid of its own (why, and how the
interpreter stays reachable for it: `scoder.sandbox.isolation`); pre-forked, the programs of one
zygote share it, one after another.

What the in-process harness cannot stop: code that deliberately walks the harness's frames (or uses
gc/ctypes) can read the nonce and forge a report; a solution returning an object equal to anything
passes `assert f(x) == y`. It does stop the accidental and the crude: prints, writes to any fd,
sys.exit/os._exit, forks (only the original process reports), patched builtins (restored before
every test statement), trace hooks, tests raising SystemExit/KeyboardInterrupt/BaseException.

Linux only (namespaces, pidfd).

The package, one concern a module: `statements` (what a test is), `harness` (what runs inside),
`isolation` (where and as whom it runs), `process` (the process seen from the host), `zygote` (the
pre-forking server inside a sandbox), `pool` (a worker's zygote seen from the host), `verdict`
(what came of it), `result` (what the caller gets back); this module runs programs with them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

from scoder import executors
from scoder.progress import track
from scoder.sandbox.isolation import (
    RESET_ROOTS,
    build_launch,
    cpu_count,
    get_host,
    rlimits,
    work_dir,
)
from scoder.sandbox.pool import Worker
from scoder.sandbox.process import Process
from scoder.sandbox.result import (
    LEVELS,
    ExecResult,
    ExecStatus,
    IsolationLevel,
    SandboxError,
    one_line,
)
from scoder.sandbox.statements import SplitTests, is_assertion, parse_code, split_tests
from scoder.sandbox.verdict import judge

__all__ = [
    "LEVELS",
    "ExecResult",
    "ExecStatus",
    "IsolationLevel",
    "SandboxError",
    "SplitTests",
    "available_isolation",
    "is_assertion",
    "parse_code",
    "run_many",
    "run_program",
    "split_tests",
]

_probed: dict[str, str] = {}  # level -> "" when it works, else why not
_probed_prefork: dict[str, str] = {}  # the same, for a zygote at that level
_probe_lock = threading.Lock()


def _execute(
    code: str,
    tests: str,
    timeout_s: float,
    memory_mb: int,
    level: IsolationLevel,
    cancel: threading.Event | None = None,
    worker: Worker | None = None,
) -> ExecResult:
    """One program: in a sandbox of its own, or as a child of `worker`'s zygote."""
    start = time.perf_counter()
    plan = split_tests(tests)

    def result(status: ExecStatus, passed: int, stderr: str, detail: str) -> ExecResult:
        wall = time.perf_counter() - start
        return ExecResult(
            status, plan.tests_total, passed, wall, level, stderr, detail, worker is not None
        )

    if plan.error:
        return result("error", 0, "", plan.error)
    if plan.tests_total == 0:
        return result("error", 0, "", "no tests")

    nonce = secrets.token_hex(16)  # per program: a zygote never sees it, its child only its own
    limits = rlimits(timeout_s, memory_mb)
    if worker is None:
        host = get_host()
        with work_dir(host) as (work, uid):
            launch = build_launch(level, host, work, uid)
            job = (launch.cwd, limits, launch.sweep, code, plan.statements)
            try:
                outcome = Process(launch, nonce, job, cancel).run(timeout_s)
            except OSError as e:  # e.g. out of processes or fds: not the program's doing
                return result("error", 0, "", one_line(f"sandbox failed to start: {one_line(e)}"))
    else:
        # a zygote's child runs in /tmp, never with a uid sweep (there is a pid namespace)
        job = ("/tmp", limits, False, code, plan.statements)
        try:
            outcome, launch = worker.run(nonce, job, timeout_s, cancel)
        except (OSError, SandboxError) as e:  # no zygote would start: not the program's doing
            return result("error", 0, "", one_line(f"sandbox failed to start: {one_line(e)}"))
    status, passed, detail = judge(plan, outcome, launch, timeout_s)
    return result(status, passed, outcome.stderr, detail)


def _probe(level: IsolationLevel) -> str:
    """Why `level` cannot run a trivial program here ("" when it can). Cached."""
    with _probe_lock:
        if level not in _probed:
            _probed[level] = _try_level(level)
        return _probed[level]


def _try_level(level: IsolationLevel) -> str:
    if not hasattr(os, "pidfd_open"):
        return "needs Linux >= 5.3 (pidfd_open)"
    host = get_host()
    needed = {"bwrap": ["bwrap"], "unshare": ["unshare"], "rlimits": []}[level]
    if host.as_root:
        needed += ["setpriv", "kill"] + (["nsenter"] if host.hidden else [])
    missing = [name for name in needed if not host.tools[name]]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        res = _execute("x = 1", "assert x == 1", 30.0, 512, level)
    except (OSError, SandboxError, subprocess.SubprocessError) as e:
        return one_line(e)
    if res.status != "passed":
        return one_line(f"{res.status}: {res.detail} {res.stderr}")
    return ""


def _probe_prefork(level: IsolationLevel) -> str:
    """Why a zygote cannot run a trivial program at `level` here ("" when it can). Cached."""
    if level not in RESET_ROOTS:
        return f"no pid namespace at the {level!r} level"
    why = _probe(level)
    if why:
        return why
    with _probe_lock:
        if level not in _probed_prefork:
            try:
                with Worker(level) as worker:
                    res = _execute("x = 1", "assert x == 1", 30.0, 512, level, worker=worker)
                why = "" if res.status == "passed" else f"{res.status}: {res.detail} {res.stderr}"
            except (OSError, SandboxError, subprocess.SubprocessError) as e:
                why = str(e)
            _probed_prefork[level] = one_line(why) if why else ""
        return _probed_prefork[level]


def _pre_forked(prefork: bool, level: IsolationLevel) -> bool:
    # where a zygote cannot work (no pid namespace, or it fails here), one sandbox per program
    # isolates as well: it only costs more
    return prefork and not _probe_prefork(level)


def available_isolation() -> IsolationLevel:
    """The strongest isolation level that actually runs a program here (probed once, cached)."""
    reasons = []
    for level in LEVELS:
        why = _probe(level)
        if not why:
            return level
        reasons.append(f"{level}: {why}")
    raise SandboxError("no sandbox works here: " + "; ".join(reasons))


def _resolve(isolation: IsolationLevel | Literal["auto"]) -> IsolationLevel:
    if isolation == "auto":
        return available_isolation()
    if isolation not in LEVELS:
        raise ValueError(f"unknown isolation level {isolation!r}; expected one of {LEVELS}")
    why = _probe(isolation)
    if why:
        raise SandboxError(f"isolation {isolation!r} does not work here: {why}")
    return isolation


def run_program(
    code: str,
    tests: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    isolation: IsolationLevel | Literal["auto"] = "auto",
    prefork: bool = True,
) -> ExecResult:
    """Run `code`, then the test statements of `tests`, in one sandboxed process: with `prefork`
    (where the level has a pid namespace), the child of a zygote started for it."""
    level = _resolve(isolation)
    if _pre_forked(prefork, level):
        with Worker(level) as worker:
            return _execute(code, tests, timeout_s, memory_mb, level, worker=worker)
    return _execute(code, tests, timeout_s, memory_mb, level)


def run_many(
    programs: Sequence[tuple[str, str]],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int | None = None,
    isolation: IsolationLevel | Literal["auto"] = "auto",
    progress: str | None = None,
    prefork: bool = True,
) -> list[ExecResult]:
    """Run (code, tests) pairs on a pool of `workers` threads (default: one per core), each waiting
    on one sandboxed process; on the active executor's cluster instead when there is one
    (`scoder.executors`). Results come back in input order. `progress` names a progress line
    (scoder.progress) to show while they run.

    With `prefork` (where the level has a pid namespace: bwrap, unshare), each thread starts one
    zygote and runs its programs one after another as children of it (`scoder.sandbox.zygote`);
    the zygotes end before this returns. Without, every program gets a sandbox of its own."""
    programs = list(programs)
    if not programs:
        return []
    executor = executors.current()
    if executor is not None:
        return _run_on(executor, programs, timeout_s, memory_mb, isolation, progress, prefork)
    level = _resolve(isolation)
    pre_forked = _pre_forked(prefork, level)
    workers_made: list[Worker] = []
    local = threading.local()
    made_lock = threading.Lock()

    def execute(code: str, tests: str) -> ExecResult:
        worker = None
        if pre_forked:
            worker = getattr(local, "worker", None)
            if worker is None:  # this thread's own: siblings in one zygote run one at a time
                worker = local.worker = Worker(level)
                with made_lock:
                    workers_made.append(worker)
        return _execute(code, tests, timeout_s, memory_mb, level, cancel, worker)

    results: list[ExecResult | None] = [None] * len(programs)
    cancel = threading.Event()
    futures: dict = {}
    pool = ThreadPoolExecutor(max_workers=workers or cpu_count(), thread_name_prefix="sandbox")
    with (
        track(progress, total=len(programs), unit="programs") if progress else nullcontext()
    ) as bar:
        try:
            futures = {
                pool.submit(execute, code, tests): i for i, (code, tests) in enumerate(programs)
            }
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if bar is not None:
                    bar.advance()
        except BaseException:
            cancel.set()  # running programs are killed at once, queued ones never start
            for future in futures:
                future.cancel()
            raise
        finally:
            pool.shutdown(wait=True)
            _close_all(workers_made)
    return results  # type: ignore[return-value]


def _close_all(workers: list[Worker]) -> None:
    """End every zygote: all killed first (they die together, not one after another), then each
    waited for and cleaned up, even when one of them fails to be."""
    for worker in workers:
        worker.kill()
    with contextlib.ExitStack() as stack:
        for worker in workers:
            stack.callback(worker.close)


def _run_on(
    executor: executors.Executor,
    programs: list[tuple[str, str]],
    timeout_s: float,
    memory_mb: int,
    isolation: IsolationLevel | Literal["auto"],
    progress: str | None,
    prefork: bool,
) -> list[ExecResult]:
    # Each task runs its shard one program at a time on one CPU of its node (one zygote per task
    # with `prefork`), with the strongest isolation that node has (for "auto"): nodes need not be
    # alike.
    shards = executors.shards_of(programs, executor)
    jobs = [_ShardJob(shard, timeout_s, memory_mb, isolation, prefork) for shard in shards]
    with (
        track(progress, total=len(programs), unit="programs") if progress else nullcontext()
    ) as bar:
        done = executor.map(
            _run_shard, jobs, on_done=(lambda i: bar.advance(len(shards[i]))) if bar else None
        )
    return [result for shard in done for result in shard]


@dataclass(frozen=True)
class _ShardJob:
    programs: list[tuple[str, str]]
    timeout_s: float
    memory_mb: int
    isolation: IsolationLevel | Literal["auto"]
    prefork: bool = True


def _run_shard(job: _ShardJob) -> list[ExecResult]:
    return run_many(
        job.programs,
        timeout_s=job.timeout_s,
        memory_mb=job.memory_mb,
        workers=1,
        isolation=job.isolation,
        prefork=job.prefork,
    )
