"""Run model-written Python (a solution plus its assert tests) in a sandbox, one process per program.

The code is hostile until it has run here. Each program gets one fresh interpreter (`python -I -S`)
running a small harness: it reads its job from stdin (then swaps stdin for /dev/null), sets the
rlimits, compiles and runs the solution (optimize=0: asserts stay), then the test statements one at
a time, and reports each step on a dedicated pipe, every record tagged with a random nonce that the
program never sees on any channel it writes to. A run without a valid final record is never
"passed". `split_tests` decides what a test is: a top-level statement that runs an assert (or calls
a top-level function of the tests that asserts, as in HumanEval's `check(candidate)`).

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

The kernel ignores RLIMIT_NPROC for uid 0 (even mapped to another uid in a user namespace), so when
we are root every run gets its own random unprivileged host uid, and also cannot touch root's files
or processes. If the interpreter lives under a directory such a uid cannot enter (/root/.pyenv), a
holder process keeps a private mount namespace in which a tmpfs hides that directory and only the
interpreter's prefix is bound back; runs enter it with nsenter(1) before dropping privileges.
When we are not root there is no uid of its own: bwrap and unshare still count RLIMIT_NPROC per
user namespace, but at the rlimits level the program runs as us (it can signal our processes, and
a daemon that leaves the session survives the run).

What the in-process harness cannot stop: code that deliberately walks the harness's frames (or uses
gc/ctypes) can read the nonce and forge a report; a solution returning an object equal to anything
passes `assert f(x) == y`. It does stop the accidental and the crude: prints, writes to any fd,
sys.exit/os._exit, forks (only the original process reports), patched builtins (restored before
every test statement), trace hooks, tests raising SystemExit/KeyboardInterrupt/BaseException.

Linux only (namespaces, pidfd).
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import marshal
import math
import os
import resource
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from types import CodeType
from typing import Literal

from scoder.errors import ScoderError

IsolationLevel = Literal["bwrap", "unshare", "rlimits"]
ExecStatus = Literal["passed", "failed", "error", "timeout", "memory", "killed"]

LEVELS: tuple[IsolationLevel, ...] = ("bwrap", "unshare", "rlimits")
NPROC_LIMIT = 64
FSIZE_LIMIT = 16 << 20
NOFILE_LIMIT = 256
STDERR_CAP = 4096  # bytes kept: the first half and the last half
EXIT_GRACE_S = 0.5  # after the program exits, how long to wait for its pipes to close
SANDBOX_UID = 65534  # uid inside bwrap
_DETAIL_MAX = 300


class SandboxError(ScoderError):
    pass


@dataclass(frozen=True)
class ExecResult:
    status: ExecStatus
    tests_total: int  # number of test statements found in `tests`
    tests_passed: int
    wall_s: float
    isolation: IsolationLevel
    stderr: str  # truncated (a few KB at most)
    detail: str = ""  # one line a human can read: why it failed / what was killed

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def pass_rate(self) -> float:
        return self.tests_passed / self.tests_total if self.tests_total else 0.0


# --- splitting the tests ---------------------------------------------------------------------------

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class SplitTests:
    """The top-level statements of a tests string, compiled, each flagged test or setup."""

    statements: list[tuple[bool, CodeType]]  # (is_test, code), in order
    linenos: list[int]
    error: str = ""  # the tests do not compile: why

    @property
    def tests_total(self) -> int:
        return sum(is_test for is_test, _ in self.statements)


def _executed_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Nodes that run when `node` runs: a def's body (or a lambda's) runs only when called."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (*_DEFS, ast.Lambda)):
            stack.extend(d for d in (*n.args.defaults, *n.args.kw_defaults) if d is not None)
            stack.extend(getattr(n, "decorator_list", ()))
            continue
        yield n
        stack.extend(ast.iter_child_nodes(n))


def _checkers(body: list[ast.stmt]) -> set[str]:
    """Top-level functions whose call runs an assert (HumanEval's `def check(...)`), transitively."""
    defs = {s.name: s for s in body if isinstance(s, _DEFS)}
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, node in defs.items():
            if name not in found and any(_asserts(n, found) for n in ast.walk(node)):
                found.add(name)
                changed = True
    return found


def _asserts(node: ast.AST, checkers: set[str]) -> bool:
    if isinstance(node, ast.Assert):
        return True
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in checkers
    )


def split_tests(tests: str) -> SplitTests:
    """Top-level statements of `tests`: one that runs an assert is a test, the rest is setup.

    "Runs an assert": contains an `assert` outside any nested function body, or calls a top-level
    function of `tests` that asserts. So `def check(f): assert ...` is setup and `check(f)` the test.
    """
    try:
        tree = ast.parse(tests, "<tests>")
        checkers = _checkers(tree.body)
        statements, linenos = [], []
        for stmt in tree.body:
            is_test = any(_asserts(n, checkers) for n in _executed_nodes(stmt))
            module = ast.Module(body=[stmt], type_ignores=[])
            # dont_inherit: this module's own `from __future__` imports must not leak into theirs
            code = compile(module, "<tests>", "exec", dont_inherit=True, optimize=0)
            statements.append((is_test, code))
            linenos.append(stmt.lineno)
    except Exception as e:  # whatever the parser or compiler makes of hostile text: theirs
        return SplitTests([], [], error=f"tests do not compile: {_one_line(e)}")
    return SplitTests(statements, linenos)


# --- the harness: runs inside the sandbox ------------------------------------------------------------

# Only builtin modules plus `resource`: every import here is paid once per program. Everything it
# needs after user code has run is captured first, as locals of `_harness`.
_HARNESS = r"""
def _harness():
    import builtins, marshal, posix, sys
    read, write, _exit, getpid, kill = posix.read, posix.write, posix._exit, posix.getpid, posix.kill
    chunks = []
    while True:
        chunk = read(0, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    nonce, fd, cwd, limits, sweep, source, plan = marshal.loads(b"".join(chunks))
    del chunks
    null = posix.open("/dev/null", posix.O_RDONLY)
    posix.dup2(null, 0)
    posix.close(null)
    posix.set_inheritable(fd, False)
    posix.chdir(cwd)
    import resource
    for which, soft, hard in limits:
        current = resource.getrlimit(which)[1]
        if current != resource.RLIM_INFINITY:
            hard = min(hard, current)
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))
    del resource

    me = getpid()
    S, exact, encode, replace = str, str.__str__, str.encode, str.replace
    BaseExc, MemErr, SysExit = BaseException, MemoryError, SystemExit
    isinst, typ, run, comp = isinstance, type, exec, compile
    bdict = builtins.__dict__
    pristine = dict(bdict)
    dclear, dupdate = dict.clear, dict.update
    settrace, setprofile = sys.settrace, sys.setprofile
    flushes = (sys.stdout.flush, sys.stderr.flush)
    head = nonce + " "

    def rep(line):
        if getpid() != me:  # a fork of the program reached harness code: only the original reports
            _exit(0)
        data = encode(head + line + "\n", "utf-8", "replace")
        while data:
            data = data[write(fd, data):]

    def desc(e):
        try:
            name = typ(e).__name__
            name = exact(name) if isinst(name, S) else "?"
        except BaseExc:
            name = "?"
        try:
            text = exact(S(e))
        except BaseExc:
            text = ""
        if text:
            name = name + ": " + text
        return replace(replace(name[:300], "\n", " "), "\r", " ")

    def finish(line):
        for flush in flushes:
            try:
                flush()
            except BaseExc:
                pass
        if sweep and getpid() == me:
            try:  # this run has its own uid: kill(-1) reaches every other process of it
                kill(-1, 9)
            except BaseExc:
                pass
        rep(line)
        _exit(0)

    rep("R")
    # the solution runs like an imported module (its `if __name__ == "__main__":` demo, often an
    # input() loop, stays out); the tests run as the main script
    scope = {"__name__": "solution", "__builtins__": builtins}
    try:
        code = comp(source, "<solution>", "exec", 0, True, 0)
    except BaseExc as e:
        finish("E compile - " + desc(e))
    try:
        run(code, scope)
    except SysExit as e:
        finish("E exit - " + desc(e))
    except BaseExc as e:
        finish(("E memory - " if isinst(e, MemErr) else "E solution - ") + desc(e))
    rep("S")
    code = None
    scope["__name__"] = "__main__"
    i = 0
    for is_test, stmt in plan:
        dclear(bdict)
        dupdate(bdict, pristine)
        scope["__builtins__"] = builtins
        settrace(None)
        setprofile(None)
        try:
            run(stmt, scope)
        except BaseExc as e:
            mem = isinst(e, MemErr)
            if not is_test:
                if isinst(e, SysExit):
                    finish("E exit %d " % i + desc(e))
                finish(("E memory %d " if mem else "E setup %d ") % i + desc(e))
            rep(("D %d m " if mem else "D %d 0 ") % i + desc(e))
        else:
            rep("D %d 1" % i)
        i += 1
    finish("E ok -")

_harness()
"""


# --- the host side -------------------------------------------------------------------------------


def _one_line(e: BaseException | str) -> str:
    text = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
    return " ".join(text.split())[:_DETAIL_MAX]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _hidden_ancestor(path: str) -> str | None:
    """The outermost directory on `path` that users other than its owner cannot enter."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return current
    return None


@dataclass
class _Host:
    """What every run needs to know about this machine; built once."""

    python: str  # real path of the interpreter
    python_dirs: list[str]  # directories bwrap must bind for it (beyond /usr)
    tools: dict[str, str | None]
    as_root: bool  # we are root: each run gets its own unprivileged uid
    hidden: str | None  # ancestor of the interpreter that such a uid cannot enter
    stage: _MountStage | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def detect(cls) -> _Host:
        python = os.path.realpath(sys.executable)
        prefix = os.path.realpath(sys.base_prefix)
        dirs = [prefix]
        if not python.startswith(prefix + os.sep):
            dirs.append(os.path.dirname(python))
        dirs = [d for d in dirs if d != "/usr" and not d.startswith("/usr/")]
        names = ("bwrap", "unshare", "nsenter", "setpriv", "kill")
        tools = {name: shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin") for name in names}
        as_root = os.geteuid() == 0
        hidden = None
        if as_root:
            hidden = min((h for h in map(_hidden_ancestor, dirs) if h), default=None, key=len)
        return cls(python, dirs, tools, as_root, hidden)

    def stage_ns(self) -> str | None:
        """Path of the mount namespace to enter before dropping privileges, if one is needed."""
        if not (self.as_root and self.hidden):
            return None
        with self.lock:
            if self.stage is None or not self.stage.alive():
                self.stage = _MountStage(self.python_dirs, self.hidden, self.tools)
            return self.stage.ns_path


class _MountStage:
    """A process holding a private mount namespace where the interpreter is reachable by any uid.

    It runs `cat` on a pipe from us, so it ends when we do, even if we are killed.
    """

    SCRIPT = r"""exec 2>&1
set -e
hidden=$1; stage=$2; shift 2
n=0
for dir; do mount --bind "$dir" "$stage/$n"; n=$((n + 1)); done
mount -t tmpfs -o mode=0755,size=1m scoder "$hidden"
n=0
for dir; do mkdir -p "$dir"; mount --move "$stage/$n" "$dir"; n=$((n + 1)); done
echo ready
exec cat >/dev/null 2>&1
"""

    def __init__(self, dirs: list[str], hidden: str, tools: dict[str, str | None]) -> None:
        if not tools["unshare"]:
            raise SandboxError(
                "the interpreter is not reachable by other uids and unshare is missing"
            )
        stage = tempfile.mkdtemp(prefix="scoder-stage-")
        try:
            for n in range(len(dirs)):
                os.mkdir(os.path.join(stage, str(n)))
            argv = [tools["unshare"], "--mount", "--propagation", "private", "--"]
            argv += ["/bin/sh", "-c", self.SCRIPT, "sh", hidden, stage, *dirs]
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            out = self._read_until_eof(timeout_s=10.0)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        if not out.strip().endswith("ready") or self.proc.poll() is not None:
            self.close()
            raise SandboxError(f"could not expose the interpreter to other uids: {_one_line(out)}")
        self.ns_path = f"/proc/{self.proc.pid}/ns/mnt"
        atexit.register(self.close)

    def _read_until_eof(self, timeout_s: float) -> str:
        """The script's output; the holder is killed if the script hangs."""
        out, deadline = b"", time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(deadline - time.monotonic()):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    out += chunk
            else:
                self.proc.kill()
                out += b" (timed out)"
        self.proc.stdout.close()
        return out.decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_host: _Host | None = None
_host_lock = threading.Lock()
_probed: dict[str, str] = {}  # level -> "" when it works, else why not
_probe_lock = threading.Lock()
_uids_in_use: set[int] = set()
_uid_lock = threading.Lock()


def _get_host() -> _Host:
    global _host
    with _host_lock:
        if _host is None:
            _host = _Host.detect()
        return _host


def _claim_uid() -> int:
    # random and large, so neither an existing user nor a concurrent run (here or in another
    # process) shares it: RLIMIT_NPROC counts per uid and the rlimits cleanup kills by uid
    with _uid_lock:
        while True:
            uid = 1_000_000_000 + secrets.randbelow(1_000_000_000)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def _processes_of(uid: int) -> list[int]:
    """Live processes owned by `uid` (the owner of /proc/PID is the process's uid)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    with open(f"/proc/{entry}/stat", "rb") as fh:
                        state = fh.read().rsplit(b")", 1)[1].split()[0]
                    if state not in (b"Z", b"X"):
                        found.append(int(entry))
    return found


def _wait_until_gone(uid: int, timeout_s: float = 5.0) -> None:
    """A killed pid namespace dies asynchronously: return only when the run's processes are gone
    (killing any straggler), so nothing of a program outlives `run_program`."""
    deadline = time.monotonic() + timeout_s
    while (pids := _processes_of(uid)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


# Inside unshare: private /tmp (the work dir), /var/tmp and /dev/shm; sh stays as pid 1 so that
# python gets ordinary signal semantics (pid 1 ignores SIGXCPU) and its death shows as 128+N.
_UNSHARE_SCRIPT = r"""mount --bind "$1" /tmp || exit 125
for d in /var/tmp /dev/shm; do
    if [ -d "$d" ]; then mount -t tmpfs -o size=16m scoder "$d" || exit 125; fi
done
shift
"$@"
"""


@dataclass
class _Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: str  # the program's cwd, as seen inside
    uid: int | None  # the run's own host uid (we are root), else None
    signal_base: int  # exit status 128+N means "killed by N" (bwrap, sh), 0 when not applicable
    sweep: bool  # no pid namespace: what the run leaves behind is killed by its uid


def _build_launch(level: IsolationLevel, host: _Host, work: str, uid: int | None) -> _Launch:
    # -I: no PYTHON* variables, no user site; -S: no site import (it costs more than the rest of
    # the start-up here, and the program only gets the standard library). Never -O: asserts stay.
    python = [host.python, "-I", "-S", "-c", _HARNESS]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    if level == "bwrap":
        argv = [host.tools["bwrap"] or "bwrap", "--unshare-all", "--unshare-user"]
        argv += ["--disable-userns", "--die-with-parent", "--new-session"]
        argv += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--clearenv"]
        for key, value in {**env, "HOME": "/tmp", "TMPDIR": "/tmp"}.items():
            argv += ["--setenv", key, value]
        argv += ["--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/lib", "/lib64", "/sbin"):
            if os.path.islink(top):
                argv += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                argv += ["--ro-bind", top, top]
        for directory in host.python_dirs:
            argv += ["--ro-bind", directory, directory]
        argv += ["--bind", work, "/tmp", "--chdir", "/tmp", "--proc", "/proc", "--dev", "/dev"]
        argv += ["--remount-ro", "/"]  # the root is a tmpfs: writable, it would eat host memory
        launch = _Launch(argv + ["--", *python], env, "/tmp", uid, 128, False)
    elif level == "unshare":
        argv = [host.tools["unshare"] or "unshare", "--user", "--map-root-user", "--net", "--pid"]
        argv += ["--mount", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc", "--"]
        argv += ["/bin/sh", "-c", _UNSHARE_SCRIPT, "sh", work, *python]
        launch = _Launch(argv, {**env, "HOME": "/tmp", "TMPDIR": "/tmp"}, "/tmp", uid, 128, False)
    else:
        env = {**env, "HOME": work, "TMPDIR": work}
        launch = _Launch(python, env, work, uid, 0, uid is not None)
    if uid is not None:
        launch.argv = _drop_privileges(level, host, uid) + launch.argv
    return launch


def _drop_privileges(level: IsolationLevel, host: _Host, uid: int) -> list[str]:
    """The command prefix that runs the rest as `uid` (entering the mount stage first if needed)."""
    ns = host.stage_ns()
    nsenter = [host.tools["nsenter"] or "nsenter", f"--mount={ns}"]
    if ns and level == "bwrap":  # bwrap sets no_new_privs itself: spare an exec of setpriv
        return [*nsenter, f"--setuid={uid}", f"--setgid={uid}", "--"]
    drop = [host.tools["setpriv"] or "setpriv", "--reuid", str(uid), "--regid", str(uid)]
    drop += ["--clear-groups", "--no-new-privs", "--"]
    return [*nsenter, "--", *drop] if ns else drop


class _Capture:
    """Keeps the first and the last `cap // 2` bytes of a stream; the middle is read and dropped."""

    def __init__(self, cap: int) -> None:
        self.half = cap // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data[-self.half :]
            del self.tail[: -self.half]

    def text(self) -> str:
        dropped = self.total - len(self.head) - len(self.tail)
        middle = f"\n...[{dropped} bytes dropped]...\n".encode() if dropped else b""
        return (bytes(self.head) + middle + bytes(self.tail)).decode("utf-8", "replace")


@dataclass
class _Final:
    kind: str  # ok, compile, exit, memory, solution, setup
    index: int | None  # the test statement it happened in; None: the solution
    text: str


class _Reports:
    """Parses nonce-tagged records from the report pipe; anything else written there is noise."""

    def __init__(self, nonce: str) -> None:
        self.tag = nonce.encode() + b" "
        self.pending = b""
        self.ready = False
        self.solution_done = False
        self.done: dict[int, tuple[str, str]] = {}  # statement index -> ("1"|"0"|"m", description)
        self.final: _Final | None = None

    def feed(self, data: bytes) -> None:
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()[-8192:]  # a real record is far shorter: the rest is noise
        for line in lines:
            at = line.find(self.tag)
            if at >= 0 and self.final is None:
                self._record(line[at + len(self.tag) :].decode("utf-8", "replace"))

    def _record(self, record: str) -> None:
        kind, _, rest = record.partition(" ")
        if kind == "R":
            self.ready = True
        elif kind == "S":
            self.solution_done = True
        elif kind == "D":
            index, _, rest = rest.partition(" ")
            outcome, _, text = rest.partition(" ")
            if index.isdigit() and outcome in ("1", "0", "m"):
                self.done.setdefault(int(index), (outcome, text))
        elif kind == "E":
            what, _, rest = rest.partition(" ")
            index, _, text = rest.partition(" ")
            self.final = _Final(what, int(index) if index.isdigit() else None, text)


@dataclass
class _Outcome:
    returncode: int
    timed_out: bool
    stderr: str
    reports: _Reports


class _Process:
    """One sandboxed process: feeds it the job, collects stderr and reports, enforces the clock."""

    def __init__(
        self, launch: _Launch, nonce: str, job: tuple, cancel: threading.Event | None
    ) -> None:
        self.launch = launch
        self.cancel = cancel
        self.reports = _Reports(nonce)
        self.stderr = _Capture(STDERR_CAP)
        report_r, report_w = os.pipe()
        try:
            self.payload = marshal.dumps((nonce, report_w, *job))
            self.proc = subprocess.Popen(
                launch.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,  # ExecResult has no stdout: nothing to fill, or block
                stderr=subprocess.PIPE,
                pass_fds=(report_w,),
                env=launch.env,
                cwd="/",
                start_new_session=True,
            )
        except BaseException:
            os.close(report_r)
            raise
        finally:
            os.close(report_w)
        self.report_r = report_r
        os.set_blocking(report_r, False)

    def run(self, timeout_s: float) -> _Outcome:
        proc = self.proc
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:
            self._kill(sweep=True)
            proc.wait()
            os.close(self.report_r)
            proc.stdin.close()
            proc.stderr.close()
            raise
        deadline = time.monotonic() + timeout_s
        timed_out = False
        exited_at: float | None = None
        sel = selectors.DefaultSelector()
        stdin_fd = proc.stdin.fileno()
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE, "stdin")
        sel.register(proc.stderr.fileno(), selectors.EVENT_READ, self.stderr)
        sel.register(self.report_r, selectors.EVENT_READ, self.reports)
        sel.register(pidfd, selectors.EVENT_READ, "exit")
        readers, sent = 2, 0
        try:
            while readers or exited_at is None:
                now = time.monotonic()
                if exited_at is None and not timed_out and (now >= deadline or self._cancelled()):
                    timed_out = True
                    self._kill(sweep=True)  # the exit event follows
                if exited_at is not None and now >= exited_at + EXIT_GRACE_S:
                    break  # something that escaped still holds a pipe: stop listening
                until = deadline if exited_at is None else exited_at + EXIT_GRACE_S
                wait = 0.25 if timed_out else max(0.0, min(until - now, 0.25))
                for key, _ in sel.select(wait):
                    if key.data == "stdin":
                        sent = self._send(sent)
                        if sent >= len(self.payload):
                            sel.unregister(stdin_fd)
                            proc.stdin.close()
                    elif key.data == "exit":
                        # still a zombie: its pid (= its group's id) cannot be reused meanwhile
                        sel.unregister(pidfd)
                        self._drain_reports()
                        self._kill(sweep=self.reports.final is None and not timed_out)
                        exited_at = time.monotonic()
                    elif not self._read(key):
                        sel.unregister(key.fd)
                        readers -= 1
        finally:
            sel.close()
            if exited_at is None:
                self._kill(sweep=True)
            proc.wait()
            os.close(pidfd)
            os.close(self.report_r)
            for stream in (proc.stdin, proc.stderr):
                if not stream.closed:
                    stream.close()
        return _Outcome(proc.returncode, timed_out, self.stderr.text(), self.reports)

    def _cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def _send(self, sent: int) -> int:
        try:
            chunk = memoryview(self.payload)[sent : sent + 65536]
            return sent + os.write(self.proc.stdin.fileno(), chunk)
        except BlockingIOError:
            return sent
        except BrokenPipeError:
            return len(self.payload)  # it died before reading its job: the verdict says so

    def _read(self, key: selectors.SelectorKey) -> bool:
        try:
            data = os.read(key.fd, 65536)
        except BlockingIOError:
            return True
        if data:
            key.data.feed(data)
        return bool(data)

    def _drain_reports(self) -> None:
        while True:
            try:
                data = os.read(self.report_r, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            self.reports.feed(data)

    def _kill(self, *, sweep: bool) -> None:
        """SIGKILL the program's session; with `sweep`, also every process of the run's uid."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        # without a pid namespace, a setsid'd daemon escapes the session; kill(-1) as the run's
        # uid reaches it. The harness did that itself when it sent its final report.
        if sweep and self.launch.sweep and self.launch.uid is not None:
            uid = self.launch.uid
            killer = _get_host().tools["kill"] or "kill"
            subprocess.run(
                [killer, "-KILL", "-1"],
                user=uid,
                group=uid,
                extra_groups=[],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )


def _limits(timeout_s: float, memory_mb: int) -> list[tuple[int, int, int]]:
    cpu = max(1, math.ceil(timeout_s))
    memory = memory_mb << 20
    return [
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL at the hard one
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_NPROC, NPROC_LIMIT, NPROC_LIMIT),
        (resource.RLIMIT_FSIZE, FSIZE_LIMIT, FSIZE_LIMIT),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NOFILE, NOFILE_LIMIT, NOFILE_LIMIT),
    ]


def _remove_tree(path: str) -> None:
    def force(func, target, _exc_info) -> None:
        # the program may have left read-only or unsearchable directories behind
        try:
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            func(target)
        except OSError:
            pass

    shutil.rmtree(path, onerror=force)


# --- verdicts ------------------------------------------------------------------------------------


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


def _verdict(
    plan: SplitTests, outcome: _Outcome, launch: _Launch, timeout_s: float
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
            _one_line(f"sandbox failed to start (status {rc}): {outcome.stderr}"),
        )
    if signum:
        return "killed", passed, f"killed by {_signal_name(signum)} {where}"
    return (
        "killed",
        passed,
        _one_line(
            f"exited with status {rc} {where} before the harness could report"
            " (os._exit? report pipe closed?)"
        ),
    )


def _reported(
    plan: SplitTests, final: _Final, results: dict[int, tuple[str, str]], passed: int, total: int
) -> tuple[ExecStatus, int, str]:
    where = _statement(plan, final.index)
    if final.kind == "ok":
        failed = sorted(i for i, (outcome, _) in results.items() if outcome != "1")
        if not failed:
            return "passed", passed, ""
        first = failed[0]
        detail = _one_line(
            f"{len(failed)} of {total} tests failed; first at line {plan.linenos[first]}: "
            f"{results[first][1] or 'failed'}"
        )
        memory = any(outcome == "m" for outcome, _ in results.values())
        return ("memory" if memory else "failed"), passed, detail
    if final.kind == "compile":
        return "error", passed, _one_line(f"solution does not compile: {final.text}")
    if final.kind == "exit":
        code = final.text.partition(": ")[2] or "None"
        when = " before the tests ran" if final.index is None else ""
        return "killed", passed, _one_line(f"{where} called sys.exit({code}){when}")
    if final.kind == "memory":
        return "memory", passed, _one_line(f"{where} ran out of memory: {final.text}")
    return "error", passed, _one_line(f"{where} raised {final.text}")


# --- public API ----------------------------------------------------------------------------------


def _execute(
    code: str,
    tests: str,
    timeout_s: float,
    memory_mb: int,
    level: IsolationLevel,
    cancel: threading.Event | None = None,
) -> ExecResult:
    start = time.perf_counter()
    plan = split_tests(tests)

    def result(status: ExecStatus, passed: int, stderr: str, detail: str) -> ExecResult:
        wall = time.perf_counter() - start
        return ExecResult(status, plan.tests_total, passed, wall, level, stderr, detail)

    if plan.error:
        return result("error", 0, "", plan.error)
    if plan.tests_total == 0:
        return result("error", 0, "", "no tests")

    host = _get_host()
    uid = _claim_uid() if host.as_root else None
    work = tempfile.mkdtemp(prefix="scoder-sbx-")
    try:
        if uid is not None:
            os.chown(work, uid, uid)
        launch = _build_launch(level, host, work, uid)
        nonce = secrets.token_hex(16)
        limits = _limits(timeout_s, memory_mb)
        job = (launch.cwd, limits, launch.sweep, code, plan.statements)
        try:
            outcome = _Process(launch, nonce, job, cancel).run(timeout_s)
        except OSError as e:  # e.g. out of processes or fds: not the program's doing
            return result("error", 0, "", _one_line(f"sandbox failed to start: {_one_line(e)}"))
    finally:
        if uid is not None:
            _wait_until_gone(uid)
        _remove_tree(work)
        if uid is not None:
            _release_uid(uid)
    status, passed, detail = _verdict(plan, outcome, launch, timeout_s)
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
    host = _get_host()
    needed = {"bwrap": ["bwrap"], "unshare": ["unshare"], "rlimits": []}[level]
    if host.as_root:
        needed += ["setpriv", "kill"] + (["nsenter"] if host.hidden else [])
    missing = [name for name in needed if not host.tools[name]]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        res = _execute("x = 1", "assert x == 1", 30.0, 512, level)
    except (OSError, SandboxError, subprocess.SubprocessError) as e:
        return _one_line(e)
    if res.status != "passed":
        return _one_line(f"{res.status}: {res.detail} {res.stderr}")
    return ""


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
) -> ExecResult:
    """Run `code`, then the test statements of `tests`, in one sandboxed process."""
    return _execute(code, tests, timeout_s, memory_mb, _resolve(isolation))


def run_many(
    programs: Sequence[tuple[str, str]],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int | None = None,
    isolation: IsolationLevel | Literal["auto"] = "auto",
    progress: bool = False,
) -> list[ExecResult]:
    """Run (code, tests) pairs on a pool of `workers` threads (default: one per core), each waiting
    on one sandboxed process. Results come back in input order."""
    level = _resolve(isolation)
    programs = list(programs)
    results: list[ExecResult | None] = [None] * len(programs)
    if not programs:
        return []
    cancel = threading.Event()
    futures: dict = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(programs), desc="executing", unit="prog")
    pool = ThreadPoolExecutor(max_workers=workers or _cpu_count(), thread_name_prefix="sandbox")
    try:
        futures = {
            pool.submit(_execute, code, tests, timeout_s, memory_mb, level, cancel): i
            for i, (code, tests) in enumerate(programs)
        }
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if bar is not None:
                bar.update()
    except BaseException:
        cancel.set()  # running programs are killed at once, queued ones never start
        for future in futures:
            future.cancel()
        raise
    finally:
        pool.shutdown(wait=True)
        if bar is not None:
            bar.close()
    return results  # type: ignore[return-value]
