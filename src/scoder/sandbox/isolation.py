"""Where and as whom a program runs: the isolation levels' launch commands, the rlimits, the run's
own uid and work dir, and what every run needs to know about this machine.

The kernel ignores RLIMIT_NPROC for uid 0 (even mapped to another uid in a user namespace), so when
we are root every run gets its own random unprivileged host uid, and also cannot touch root's files
or processes. If the interpreter lives under a directory such a uid cannot enter (/root/.pyenv), a
holder process keeps a private mount namespace in which a tmpfs hides that directory and only the
interpreter's prefix is bound back; runs enter it with nsenter(1) before dropping privileges.
When we are not root there is no uid of its own: bwrap and unshare still count RLIMIT_NPROC per
user namespace, but at the rlimits level the program runs as us (it can signal our processes, and
a daemon that leaves the session survives the run).

A pre-forked sandbox (`scoder.sandbox.zygote`) is launched the same way, with two changes that
make the zygote pid 1 of its pid namespace (bwrap --as-pid-1; `exec` at the end of the unshare
script): then no process but the zygote outlives a program, not even a reaper that a program could
ptrace, and none inside can signal the zygote. Its uid and work dir are the sandbox's, for all the
programs it runs.
"""

from __future__ import annotations

import atexit
import contextlib
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scoder.sandbox import harness, zygote
from scoder.sandbox.result import IsolationLevel, SandboxError, one_line

NPROC_LIMIT = 64
FSIZE_LIMIT = 16 << 20
NOFILE_LIMIT = 256
SANDBOX_UID = 65534  # uid inside bwrap
# The program every run starts (`python -I -S -c`): the harness module's own source.
HARNESS = Path(harness.__file__).read_text(encoding="utf-8")
# The program a pre-forked sandbox starts instead: the zygote, which forks a harness per job.
ZYGOTE = Path(zygote.__file__).read_text(encoding="utf-8")
# What a pre-forked sandbox's programs can write, put back by the zygote after each one: the work
# dir, and the fresh filesystems the level mounts (bwrap's /dev is a tmpfs the sandbox uid owns).
RESET_ROOTS = {"bwrap": ("/tmp", "/dev"), "unshare": ("/tmp", "/var/tmp", "/dev/shm")}


def cpu_count() -> int:
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
class Host:
    """What every run needs to know about this machine; built once."""

    python: str  # real path of the interpreter
    python_dirs: list[str]  # directories bwrap must bind for it (beyond /usr)
    tools: dict[str, str | None]
    as_root: bool  # we are root: each run gets its own unprivileged uid
    hidden: str | None  # ancestor of the interpreter that such a uid cannot enter
    stage: _MountStage | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def detect(cls) -> Host:
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
            raise SandboxError(f"could not expose the interpreter to other uids: {one_line(out)}")
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


_host: Host | None = None
_host_lock = threading.Lock()
_uids_in_use: set[int] = set()
_uid_lock = threading.Lock()


def get_host() -> Host:
    global _host
    with _host_lock:
        if _host is None:
            _host = Host.detect()
        return _host


def claim_uid() -> int:
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
# A zygote must be pid 1 itself (`scoder.sandbox.zygote`): its children get ordinary semantics.
_UNSHARE_ZYGOTE_SCRIPT = _UNSHARE_SCRIPT.replace('\n"$@"\n', '\nexec "$@"\n')


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: str  # the program's cwd, as seen inside
    uid: int | None  # the run's own host uid (we are root), else None
    signal_base: int  # exit status 128+N means "killed by N" (bwrap, sh), 0 when not applicable
    sweep: bool  # no pid namespace: what the run leaves behind is killed by its uid


def build_launch(
    level: IsolationLevel, host: Host, work: str, uid: int | None, *, prefork: bool = False
) -> Launch:
    """The command line of one sandbox; with `prefork`, of a zygote (same isolation, but the
    program is the zygote, as pid 1 of the pid namespace)."""
    # -I: no PYTHON* variables, no user site; -S: no site import (it costs more than the rest of
    # the start-up here, and the program only gets the standard library). Never -O: asserts stay.
    python = [host.python, "-I", "-S", "-c", HARNESS]
    if prefork:
        if level not in RESET_ROOTS:
            raise ValueError(f"no pre-forked sandbox at the {level!r} level (no pid namespace)")
        python = [host.python, "-I", "-S", "-c", ZYGOTE, HARNESS, ":".join(RESET_ROOTS[level])]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    if level == "bwrap":
        argv = [host.tools["bwrap"] or "bwrap", "--unshare-all", "--unshare-user"]
        if prefork:
            argv.append("--as-pid-1")  # no bwrap reaper: it would be a ptraceable survivor
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
        launch = Launch(argv + ["--", *python], env, "/tmp", uid, 128, False)
    elif level == "unshare":
        argv = [host.tools["unshare"] or "unshare", "--user", "--map-root-user", "--net", "--pid"]
        argv += ["--mount", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc", "--"]
        script = _UNSHARE_ZYGOTE_SCRIPT if prefork else _UNSHARE_SCRIPT
        argv += ["/bin/sh", "-c", script, "sh", work, *python]
        launch = Launch(argv, {**env, "HOME": "/tmp", "TMPDIR": "/tmp"}, "/tmp", uid, 128, False)
    else:
        env = {**env, "HOME": work, "TMPDIR": work}
        launch = Launch(python, env, work, uid, 0, uid is not None)
    if uid is not None:
        launch.argv = _drop_privileges(level, host, uid) + launch.argv
    return launch


def _drop_privileges(level: IsolationLevel, host: Host, uid: int) -> list[str]:
    """The command prefix that runs the rest as `uid` (entering the mount stage first if needed)."""
    ns = host.stage_ns()
    nsenter = [host.tools["nsenter"] or "nsenter", f"--mount={ns}"]
    if ns and level == "bwrap":  # bwrap sets no_new_privs itself: spare an exec of setpriv
        return [*nsenter, f"--setuid={uid}", f"--setgid={uid}", "--"]
    drop = [host.tools["setpriv"] or "setpriv", "--reuid", str(uid), "--regid", str(uid)]
    drop += ["--clear-groups", "--no-new-privs", "--"]
    return [*nsenter, "--", *drop] if ns else drop


def rlimits(timeout_s: float, memory_mb: int) -> list[tuple[int, int, int]]:
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

    try:
        shutil.rmtree(path, onerror=force)
    except RecursionError:
        # a program can nest directories deeper than rmtree recurses: rm(1) walks any depth
        for argv in (["chmod", "-R", "u+rwx", path], ["rm", "-rf", "--one-file-system", path]):
            subprocess.run(argv, env={"PATH": "/usr/bin:/bin"}, capture_output=True, check=False)


@contextlib.contextmanager
def work_dir(host: Host) -> Iterator[tuple[str, int | None]]:
    """A fresh work dir for one run and, when we are root, the run's own uid, which owns it. Both
    are given back on exit, once every process of that uid is gone."""
    uid = claim_uid() if host.as_root else None
    work = tempfile.mkdtemp(prefix="scoder-sbx-")
    try:
        if uid is not None:
            os.chown(work, uid, uid)
        yield work, uid
    finally:
        if uid is not None:
            _wait_until_gone(uid)
        _remove_tree(work)
        if uid is not None:
            _release_uid(uid)
