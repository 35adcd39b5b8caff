"""The sandbox, with real processes: normal verdicts, and hostile programs that must not get out.

run_program and run_many pre-fork by default (a zygote per worker at the bwrap and unshare levels):
every test below runs that way; those parametrized over MODES also run one sandbox per program.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from scoder import sandbox
from scoder.sandbox import (
    LEVELS,
    ExecResult,
    isolation,
    pool,
    run_many,
    run_program,
    split_tests,
)

AVAILABLE = [level for level in LEVELS if not sandbox._probe(level)]
NAMESPACED = [level for level in AVAILABLE if level != "rlimits"]
PRE_FORKED = [level for level in NAMESPACED if not sandbox._probe_prefork(level)]
# (level, prefork): the rlimits level has no pid namespace, hence no zygote: one mode only
MODES = [
    pytest.param(level, prefork, id=level if level == "rlimits" else f"{level}-{mode}")
    for level in AVAILABLE
    for prefork, mode in ((True, "prefork"), (False, "per-program"))
    if prefork or level != "rlimits"
]
T = 2.0  # short timeouts keep the file fast

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="no sandbox works on this machine")


def _processes_with(marker: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline and int(entry) != os.getpid():
                found.append(int(entry))
    return found


def _processes_of(uids: set[int]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            real_uid = int(status.split("\nUid:")[1].split()[0])
            state = status.split("\nState:")[1].split()[0]
            if real_uid in uids and state not in ("Z", "X"):  # a zombie is dead, awaiting reaping
                found.append(int(entry))
    return found


def _work_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("scoder-sbx-")}


@pytest.fixture
def host_clean(monkeypatch):
    """After the run: no process of it left, no work dir left, and the host can still fork.

    As root every run has its own uid (recorded here as it is claimed), which tells our leftovers
    from those of other sandboxes running on the machine at the same time.
    """
    uids: set[int] = set()
    claim = isolation.claim_uid

    def recording_claim() -> int:
        uid = claim()
        uids.add(uid)
        return uid

    monkeypatch.setattr(isolation, "claim_uid", recording_claim)
    before = _work_dirs()
    yield
    if os.geteuid() == 0:
        assert uids, "no run claimed a uid through isolation.claim_uid: the checks below saw none"
        assert _processes_of(uids) == []
        leftovers = [
            p for p in _work_dirs() if os.stat(Path(tempfile.gettempdir(), p)).st_uid in uids
        ]
        assert leftovers == []
    else:
        assert _processes_with(b"def _harness():") == []
        assert _work_dirs() <= before
    assert os.waitpid(os.spawnv(os.P_NOWAIT, "/bin/true", ["true"]), 0)[1] == 0


ADD = "def add(a, b):\n    return a + b\n"


# --- splitting ----------------------------------------------------------------------------------


def test_split_tests_counts_statements_that_assert():
    tests = (
        "import math\n"
        "x = 2\n"
        "assert add(1, 1) == x\n"
        "for i in range(3):\n    assert add(i, 0) == i\n"
        "def helper(v):\n    return v\n"
        "assert helper(1) == 1; assert True\n"
    )
    plan = split_tests(tests)
    assert [is_test for is_test, _ in plan.statements] == [
        False,
        False,
        True,
        True,
        False,
        True,
        True,
    ]
    assert plan.tests_total == 4
    assert plan.linenos == [1, 2, 3, 4, 6, 8, 8]


def test_split_tests_humaneval_check_is_one_test():
    plan = split_tests("def check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)\n")
    assert [is_test for is_test, _ in plan.statements] == [False, True]


def test_exec_result_helpers():
    res = ExecResult("failed", 4, 3, 0.1, "rlimits", "", "x")
    assert res.pass_rate == 0.75
    assert res.to_dict()["tests_passed"] == 3
    assert ExecResult("error", 0, 0, 0.0, "rlimits", "").pass_rate == 0.0


# --- normal programs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "prefork"), MODES)
def test_passed(level, prefork, host_clean):
    res = run_program(
        ADD,
        "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n",
        timeout_s=T,
        isolation=level,
        prefork=prefork,
    )
    assert (res.status, res.tests_total, res.tests_passed) == ("passed", 2, 2)
    assert res.isolation == level and res.detail == ""
    assert res.prefork == (prefork and level in PRE_FORKED)


@pytest.mark.parametrize(("level", "prefork"), MODES)
def test_failed_counts_each_test(level, prefork, host_clean):
    tests = (
        "assert add(1, 2) == 3\n"
        "assert add(1, 2) == 4, 'wrong sum'\n"
        "values = [1, 2]\n"  # setup between tests
        "assert add(*values) == 3\n"
        "assert add(None, 1) == 1\n"  # raises TypeError inside the test: that test fails
        "assert add(2, 2) == 4\n"
    )
    res = run_program(ADD, tests, timeout_s=T, isolation=level, prefork=prefork)
    assert (res.status, res.tests_total, res.tests_passed) == ("failed", 5, 3)
    assert "2 of 5 tests failed" in res.detail and "line 2" in res.detail
    assert "wrong sum" in res.detail
    assert res.pass_rate == 0.6


@pytest.mark.parametrize("level", AVAILABLE)
def test_error_in_solution(level, host_clean):
    res = run_program("raise ValueError('boom')", "assert True", timeout_s=T, isolation=level)
    assert (res.status, res.tests_total, res.tests_passed) == ("error", 1, 0)
    assert "ValueError: boom" in res.detail


def test_syntax_errors():
    res = run_program("def f(:\n", "assert f() == 1", timeout_s=T)
    assert (res.status, res.tests_total) == ("error", 1)
    assert "does not compile" in res.detail and "SyntaxError" in res.detail
    res = run_program(ADD, "assert add(1, 2) == (3\n", timeout_s=T)
    assert (res.status, res.tests_total) == ("error", 0)
    assert res.detail.startswith("tests do not compile")


def test_no_tests():
    for tests in ("", "x = add(1, 2)\nprint(x)\n"):
        res = run_program(ADD, tests, timeout_s=T)
        assert (res.status, res.tests_total, res.tests_passed, res.detail) == (
            "error",
            0,
            0,
            "no tests",
        )


def test_setup_error_and_humaneval_style(host_clean):
    res = run_program(ADD, "import no_such_module\nassert add(1, 1) == 2\n", timeout_s=T)
    assert (res.status, res.tests_total) == ("error", 1)
    assert "line 1" in res.detail and "ModuleNotFoundError" in res.detail
    check = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(0, 0) == 0\ncheck(add)\n"
    res = run_program(ADD, check, timeout_s=T)
    assert (res.status, res.tests_total, res.tests_passed) == ("passed", 1, 1)


def test_main_block_of_solution_does_not_run_but_tests_run_as_main(host_clean):
    code = ADD + "if __name__ == '__main__':\n    input()\n"
    res = run_program(code, "if __name__ == '__main__':\n    assert add(2, 2) == 4\n", timeout_s=T)
    assert res.status == "passed"


def test_run_many_keeps_input_order(host_clean):
    programs = [
        (ADD, "assert add(1, 1) == 2"),
        (ADD, "assert add(1, 1) == 3"),
        ("raise RuntimeError", "assert True"),
        (ADD, "assert add(2, 2) == 4\nassert add(0, 0) == 1"),
    ] * 3
    results = run_many(programs, timeout_s=T, workers=2)
    assert [r.status for r in results] == ["passed", "failed", "error", "failed"] * 3
    assert [r.tests_passed for r in results] == [1, 0, 0, 1] * 3
    assert run_many([]) == []


def test_available_isolation_is_the_strongest_that_works():
    level = sandbox.available_isolation()
    assert level == AVAILABLE[0]
    assert sandbox.available_isolation() == level  # cached
    if isolation.get_host().tools["bwrap"]:
        # installed but not working would silently weaken every run: say why
        assert sandbox._probe("bwrap") == "" and level == "bwrap", sandbox._probe("bwrap")


# --- hostile programs ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", AVAILABLE)
def test_infinite_loop_times_out(level, host_clean):
    start = time.monotonic()
    res = run_program("while True:\n    pass\n", "assert True", timeout_s=T, isolation=level)
    assert res.status == "timeout" and "in the solution" in res.detail
    assert T <= res.wall_s < T + 1.5 and time.monotonic() - start < T + 2


@pytest.mark.parametrize("level", AVAILABLE)
def test_cpu_burning_threads_time_out(level, host_clean):
    # hashing releases the GIL: on several cores, RLIMIT_CPU fires before the wall clock
    code = (
        "import hashlib, threading\n"
        "def burn():\n"
        "    while True:\n"
        "        hashlib.sha256(b'x' * 10**6).digest()\n"
        "threads = [threading.Thread(target=burn) for _ in range(4)]\n"
        "for t in threads:\n"
        "    t.start()\n"
        "threads[0].join()\n"
    )
    res = run_program(code, "assert True", timeout_s=T, isolation=level)
    assert res.status == "timeout" and "in the solution" in res.detail
    assert "CPU time limit" in res.detail or "wall-clock limit" in res.detail


@pytest.mark.parametrize("level", AVAILABLE)
def test_timeout_in_a_test_keeps_the_passes_so_far(level, host_clean):
    code = ADD + "def spin():\n    while True:\n        pass\n"
    res = run_program(
        code, "assert add(1, 1) == 2\nassert spin()\nassert True\n", timeout_s=1, isolation=level
    )
    assert (res.status, res.tests_total, res.tests_passed) == ("timeout", 3, 1)
    assert "test at line 2" in res.detail


@pytest.mark.parametrize(("level", "prefork"), MODES)
def test_fork_bomb_is_contained(level, prefork, host_clean):
    # RLIMIT_NPROC (64, for the run's own uid) stops it: fork fails in the original process too
    code = "import os\nwhile True:\n    os.fork()\n"
    res = run_program(code, "assert True", timeout_s=T, isolation=level, prefork=prefork)
    assert res.status == "error" and "BlockingIOError" in res.detail
    assert res.wall_s < T


@pytest.mark.parametrize("level", AVAILABLE)
def test_memory_bomb(level, host_clean):
    res = run_program(
        "big = bytearray(1 << 40)", "assert True", timeout_s=T, memory_mb=256, isolation=level
    )
    assert res.status == "memory" and "MemoryError" in res.detail
    grow = (
        "def grow():\n    chunks = []\n    while True:\n        chunks.append(bytearray(1 << 20))\n"
    )
    res = run_program(
        grow, "assert grow()\nassert True\n", timeout_s=T, memory_mb=256, isolation=level
    )
    assert (res.status, res.tests_passed) == ("memory", 1)


@pytest.mark.parametrize("level", AVAILABLE)
def test_huge_output_is_capped(level, host_clean):
    code = "import sys\nprint('x' * 30_000_000)\nsys.stderr.write('y' * 5_000_000 + 'END')\n"
    res = run_program(code, "assert True", timeout_s=5, isolation=level)
    assert res.status == "passed"
    assert len(res.stderr) < 5000 and res.stderr.endswith("END") and "bytes dropped" in res.stderr


@pytest.mark.parametrize("level", NAMESPACED)
def test_filesystem_writes_stay_inside(level, host_clean):
    name = f"scoder-pwned-{uuid.uuid4().hex}"
    home = Path.home() / name
    outside = Path("/tmp") / name
    code = (
        "import os\n"
        f"os.system('touch ~/{name} /tmp/{name}-sh {home}-sh')\n"
        f"open(os.path.expanduser('~/{name}-py'), 'w').write('x')\n"
        "def attempt(path):\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        return True\n"
        "    except OSError:\n"
        "        return False\n"
        f"inside = attempt('/tmp/{name}')\n"
        f"at_home = attempt('{home}')\n"
    )
    tests = f"assert inside\nassert os.path.exists('/tmp/{name}-sh')\nassert not at_home\n"
    res = run_program(code, tests, timeout_s=T, isolation=level)
    assert (res.status, res.tests_passed) == ("passed", 3)
    for path in (home, outside, Path(f"{outside}-sh"), Path(f"{home}-sh"), Path(f"{home}-py")):
        assert not path.exists()


def test_rlimits_home_is_the_work_dir(host_clean):
    if "rlimits" not in AVAILABLE:
        pytest.skip("rlimits level not available")
    name = f"scoder-pwned-{uuid.uuid4().hex}"
    code = f"import os\nos.system('touch ~/{name}')\n"
    res = run_program(
        code,
        f"assert os.path.exists(os.path.expanduser('~/{name}'))",
        timeout_s=T,
        isolation="rlimits",
    )
    assert res.status == "passed"
    assert not (Path.home() / name).exists()


@pytest.fixture
def listening_server():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _accepted(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


NET_CODE = (
    "import socket\n"
    "def reach(port):\n"
    "    try:\n"
    "        socket.create_connection(('127.0.0.1', port), timeout=1).close()\n"
    "        return True\n"
    "    except OSError:\n"
    "        return False\n"
)


@pytest.mark.parametrize("level", NAMESPACED)
def test_no_network(level, listening_server, host_clean):
    port = listening_server.getsockname()[1]
    res = run_program(NET_CODE, f"assert not reach({port})", timeout_s=T, isolation=level)
    assert res.status == "passed"
    assert not _accepted(listening_server)


def test_rlimits_level_does_have_network(listening_server, host_clean):
    # the control for the test above: the weakest level really is weaker, and says so
    if "rlimits" not in AVAILABLE:
        pytest.skip("rlimits level not available")
    port = listening_server.getsockname()[1]
    res = run_program(NET_CODE, f"assert reach({port})", timeout_s=T, isolation="rlimits")
    assert res.status == "passed" and res.isolation == "rlimits"
    assert _accepted(listening_server)


@pytest.mark.parametrize("level", AVAILABLE)
def test_environment_is_cleared(level, monkeypatch, host_clean):
    monkeypatch.setenv("SCODER_TEST_SECRET", "hunter2-secret")
    code = "import os\nenv = repr(dict(os.environ))\n"
    tests = "assert 'SCODER_TEST_SECRET' not in env\nassert 'hunter2' not in env\nassert os.environ['LANG'] == 'C.UTF-8'\n"
    res = run_program(code, tests, timeout_s=T, isolation=level)
    assert (res.status, res.tests_passed) == ("passed", 3)


@pytest.mark.parametrize(("level", "prefork"), MODES)
def test_killing_the_parent_or_everything(level, prefork, host_clean):
    # pre-forked, the parent is the zygote: pid 1 of the namespace, which ignores them
    if level == "rlimits" and os.geteuid() != 0:
        pytest.skip("without its own uid, the rlimits level can signal our processes")
    code = (
        "import os, signal\n"
        "for target in (os.getppid(), -1):\n"
        "    try:\n"
        "        os.kill(target, signal.SIGKILL)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    me = os.getpid()
    results = run_many(
        [(code, "assert True"), (ADD, "assert add(1, 1) == 2")] * 2,
        timeout_s=T,
        isolation=level,
        prefork=prefork,
    )
    assert os.getpid() == me  # still here
    assert [r.status for r in results] == ["passed"] * 4


@pytest.mark.parametrize(("level", "prefork"), MODES)
def test_sys_exit_before_tests_is_not_a_pass(level, prefork, host_clean):
    def run(code: str, tests: str) -> ExecResult:
        return run_program(code, tests, timeout_s=T, isolation=level, prefork=prefork)

    res = run(ADD + "import sys\nsys.exit(0)\n", "assert add(1, 1) == 2")
    assert (res.status, res.tests_passed) == ("killed", 0)
    assert "sys.exit(0)" in res.detail
    res = run(ADD + "import os\nos._exit(0)\n", "assert add(1, 1) == 2")
    assert (res.status, res.tests_passed) == ("killed", 0)
    assert "status 0" in res.detail and "before the harness could report" in res.detail
    res = run(ADD + "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", "assert True")
    assert res.status == "killed" and "SIGSEGV" in res.detail


@pytest.mark.parametrize("level", AVAILABLE)
def test_monkey_patching_and_forged_reports(level, host_clean):
    code = (
        ADD + "import builtins, os, sys\n"
        "class Nope(Exception):\n    pass\n"
        "builtins.AssertionError = Nope\n"
        "builtins.len = lambda x: 3\n"
        "builtins.isinstance = lambda *a: True\n"
        "builtins.print = lambda *a, **k: None\n"
        "builtins.BaseException = Nope\n"
        "sys.exit = lambda *a: None\n"
        "os._exit = lambda *a: None\n"
        "globals()['__builtins__'] = {'len': lambda x: 3}\n"
        "sys.settrace(lambda *a: None)\n"
        # forged reports everywhere the program can write
        "print('E ok')\n"
        "sys.stderr.write('E ok\\n')\n"
        "for fd in range(3, 300):\n"
        "    try:\n"
        "        os.write(fd, b'R\\nD 1 1\\nD 2 1\\nD 3 1\\nE ok\\n')\n"
        "    except OSError:\n"
        "        pass\n"
    )
    tests = (
        "assert add(1, 1) == 2\n"
        "assert len([1]) == 3\n"
        "assert isinstance(1, str)\n"
        "assert add(1, 1) == 3\n"
    )
    res = run_program(code, tests, timeout_s=T, isolation=level)
    assert (res.status, res.tests_total, res.tests_passed) == ("failed", 4, 1)


@pytest.mark.parametrize("level", AVAILABLE)
def test_tests_raising_base_exceptions_count_as_failures(level, host_clean):
    code = ADD + "def boom(exc):\n    raise exc\n"
    tests = (
        "assert boom(SystemExit(0))\n"
        "assert boom(KeyboardInterrupt())\n"
        "class Odd(BaseException):\n    pass\n"
        "assert boom(Odd())\n"
        "assert add(1, 1) == 2\n"
    )
    res = run_program(code, tests, timeout_s=T, isolation=level)
    assert (res.status, res.tests_total, res.tests_passed) == ("failed", 4, 1)
    assert "SystemExit" in res.detail


@pytest.mark.parametrize(("level", "prefork"), MODES)
def test_forks_do_not_report_and_grandchildren_die(level, prefork, host_clean):
    marker = f"100.{uuid.uuid4().int % 10**9}"
    code = (
        ADD + "import os, subprocess\n"
        f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
        "if os.fork() == 0:\n"  # a daemon: new session, double fork, then sleep
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
        "    os._exit(0)\n"
        "if os.fork() == 0:\n"  # a fork that runs on into the tests: it must not report
        "    pass\n"
    )
    res = run_program(code, "assert add(1, 1) == 3", timeout_s=T, isolation=level, prefork=prefork)
    assert (res.status, res.tests_passed) == ("failed", 0)
    deadline = time.monotonic() + 2
    while _processes_with(marker.encode()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker.encode()) == []


# --- pre-forked: programs that share a zygote, one after another -----------------------------------


@pytest.fixture
def zygotes(monkeypatch):
    """The zygotes started while the test runs."""
    started: list[pool.Zygote] = []
    init = pool.Zygote.__init__

    def recording_init(self, level):
        init(self, level)
        started.append(self)

    monkeypatch.setattr(pool.Zygote, "__init__", recording_init)
    return started


NR_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(platform.machine(), 0)
NR_ADD_KEY = {"x86_64": 248, "aarch64": 217}.get(platform.machine(), 0)

LEAVE_BEHIND = f"""
import ctypes, os
open('/tmp/left-behind', 'w').write('x')
os.makedirs('/tmp/locked/deeper')
os.chmod('/tmp/locked', 0)
os.mkfifo('/tmp/fifo')
open('/dev/shm/left-behind', 'w').write('x')
if os.access('/dev', os.W_OK):  # bwrap's /dev is a tmpfs of the sandbox's uid
    os.unlink('/dev/stdin')
    os.symlink('/tmp/left-behind', '/dev/stdin')
    open('/dev/left-behind', 'w').write('x')
libc = ctypes.CDLL(None, use_errno=True)
# IPC_PRIVATE, IPC_CREAT: SysV objects outlive their creator
libc.shmget(0, 1 << 20, 0o1666), libc.msgget(0, 0o1666), libc.semget(0, 1, 0o1666)
if {NR_ADD_KEY}:
    libc.syscall({NR_ADD_KEY}, b'user', b'scoder-left', b'x', 1, ctypes.c_long(-4))  # @u
if os.fork() == 0:  # a daemon: new session, double fork, then sleep
    os.setsid()
    if os.fork() == 0:
        os.execv('/bin/sleep', ['sleep', MARKER])
    os._exit(0)
os.chmod('/tmp', 0)
"""

FIND_LEFTOVERS = f"""
import ctypes, os
here = os.listdir('/tmp')
others = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getpid())]
shm = os.listdir('/dev/shm')
dev_file = os.path.exists('/dev/left-behind')
stdin_link = os.readlink('/dev/stdin')
segments = []
for kind in ('shm', 'msg', 'sem'):
    with open(f'/proc/sysvipc/{{kind}}') as fh:
        segments += fh.read().splitlines()[1:]
libc = ctypes.CDLL(None, use_errno=True)
key = {NR_KEYCTL} and libc.syscall({NR_KEYCTL}, 10, ctypes.c_long(-4), b'user', b'scoder-left', 0)
"""

NOTHING_LEFT = """assert here == [], here
assert others == [], others
assert shm == [] and not dev_file
assert stdin_link == '/proc/self/fd/0'
assert segments == [], segments
assert key in (0, -1), key
assert os.getppid() == 1
"""


@pytest.mark.parametrize("level", PRE_FORKED)
def test_the_next_program_in_a_zygote_finds_nothing_left(level, host_clean, zygotes):
    marker = f"100.{uuid.uuid4().int % 10**9}"
    leave = f"MARKER = {marker!r}\n" + LEAVE_BEHIND
    programs = [(leave, "assert True"), (FIND_LEFTOVERS, NOTHING_LEFT)]
    results = run_many(programs, timeout_s=T, workers=1, isolation=level)
    assert [(r.status, r.prefork) for r in results] == [("passed", True)] * 2, results[1].detail
    assert len(zygotes) == 1  # both ran in the same one
    assert _processes_with(marker.encode()) == []


ZYGOTE_ATTEMPTS = """
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
zygote = os.getppid()

def refused(path):
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError:
        return True
    return False

mem, environ = refused(f'/proc/{zygote}/mem'), refused(f'/proc/{zygote}/environ')
fds = [n for n in (0, 1, 2, 100) if not refused(f'/proc/{zygote}/fd/{n}')]
traced = libc.ptrace(16, zygote, None, None)  # PTRACE_ATTACH
grabbed = libc.syscall(438, os.pidfd_open(zygote), 100, 0)  # pidfd_getfd: its control socket
for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGSTOP, signal.SIGSEGV):
    os.kill(zygote, sig)
"""


@pytest.mark.parametrize("level", PRE_FORKED)
def test_a_program_cannot_read_trace_or_kill_its_zygote(level, host_clean, zygotes):
    tests = "assert zygote == 1 and mem and environ\nassert fds == [], fds\nassert traced == -1\n"
    tests += "assert grabbed == -1\n"
    programs = [(ZYGOTE_ATTEMPTS, tests), (ADD, "assert add(1, 1) == 2")]
    results = run_many(programs, timeout_s=T, workers=1, isolation=level)
    assert [r.status for r in results] == ["passed", "passed"], results[0].detail
    assert len(zygotes) == 1


def _zygote_pid(zygote: pool.Zygote) -> int:
    """The zygote's pid on the host: the one child of bwrap (or unshare)."""
    pid = zygote.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.mark.parametrize("level", PRE_FORKED)
def test_a_zygote_that_dies_under_a_program(level, host_clean):
    # nothing inside can kill it: this stands for what outside can (the OOM killer, a bug)
    with pool.Worker(level) as worker:
        first = sandbox._execute(ADD, "assert add(1, 1) == 2", T, 256, level, worker=worker)
        zygote = worker.zygote
        assert first.status == "passed" and zygote is not None
        threading.Timer(0.3, os.kill, (_zygote_pid(zygote), signal.SIGKILL)).start()
        code = "import time\nprint('ok')\ntime.sleep(5)\n"
        res = sandbox._execute(code, "assert True", T, 256, level, worker=worker)
        assert res.status == "killed" and "SIGKILL" in res.detail and res.wall_s < T
        assert zygote.dead and worker.zygote is None
        after = sandbox._execute(ADD, "assert add(1, 1) == 2", T, 256, level, worker=worker)
        assert after.status == "passed" and worker.zygote is not zygote


@pytest.mark.parametrize("level", PRE_FORKED[:1])
def test_a_zygote_that_does_not_answer_is_replaced(level, host_clean):
    with pool.Worker(level) as worker:
        sandbox._execute(ADD, "assert add(1, 1) == 2", T, 256, level, worker=worker)
        zygote = worker.zygote
        time.sleep(0.1)  # its reset is done: it waits for the next job
        os.kill(_zygote_pid(zygote), signal.SIGSTOP)
        res = sandbox._execute(ADD, "assert add(1, 1) == 2", 0.5, 256, level, worker=worker)
        assert res.status == "timeout" and 0.5 + pool.ANSWER_MARGIN_S <= res.wall_s < 3
        after = sandbox._execute(ADD, "assert add(1, 1) == 2", T, 256, level, worker=worker)
        assert after.status == "passed" and worker.zygote is not zygote


def test_zygotes_end_when_run_many_raises(monkeypatch, host_clean, zygotes):
    if not PRE_FORKED:
        pytest.skip("no pre-forked sandbox here")
    judged, judge = [], sandbox.judge

    def failing_judge(*args):
        judged.append(1)
        if len(judged) == 3:
            raise RuntimeError("boom")
        return judge(*args)

    monkeypatch.setattr(sandbox, "judge", failing_judge)
    with pytest.raises(RuntimeError, match="boom"):
        run_many([(ADD, "assert add(1, 1) == 2")] * 8, workers=2, isolation=PRE_FORKED[0])
    assert zygotes and all(z.dead for z in zygotes)  # host_clean: no process, no work dir left


def test_per_program_mode_and_the_rlimits_level_do_not_pre_fork(host_clean):
    for level in NAMESPACED:
        res = run_many([(ADD, "assert add(1, 1) == 2")], isolation=level, prefork=False)[0]
        assert (res.status, res.prefork) == ("passed", False)
    if "rlimits" in AVAILABLE:  # no pid namespace there: kill(-1) would reach the host's processes
        res = run_program(ADD, "assert add(1, 1) == 2", isolation="rlimits")
        assert (res.status, res.prefork) == ("passed", False)
        assert sandbox._probe_prefork("rlimits")
