"""The zygote: one warm interpreter per worker, inside the sandbox, that forks a fresh child for
each program and wipes the sandbox between programs. `scoder.sandbox.pool` is its host side.

Like the harness, this file's source is the program: the host starts `python -I -S -c <this
source> <harness source> <roots>` with the same launch as a one-process run (bwrap or unshare, as
the run's own uid), except that the zygote is pid 1 of the sandbox's pid namespace (bwrap
--as-pid-1; `exec` at the end of the unshare script). So no other process outlives a program, and
the kernel never delivers a signal sent from inside the namespace to pid 1 unless it has a
handler: a program cannot kill its zygote (SIGINT, the one handler Python installs, is ignored).

Per job the host sends, on the control socket, the job's time limit and three fresh pipes: the
job (the child reads it, nonce included, straight from the host: the zygote never holds a nonce),
the report pipe and stderr. The zygote forks; the child closes every fd of the zygote, takes the
pipes as fds 0, 3 and 2, starts a session, drops any capability (as root of the unshare level's
user namespace it has them all: with them it could ptrace anything or mount over what the next
program sees), joins a keyring of its own, and runs the harness's `_harness`, which is today's
one-process run from there on (rlimits, cwd /tmp, reports). The zygote waits for the child (its
own clock: the child and everything else are SIGKILLed at the time limit), then SIGKILLs every
process of the namespace but itself until /proc shows none (a fork bomb can race one kill(-1)),
answers, and resets what a program could have left for the next one: the writable trees ("roots")
back to the snapshot taken at start (empty, or /dev's links and mount points), SysV IPC objects
removed, the user keyrings cleared. If any of that fails it says so and exits: the host starts a
new sandbox.

The zygote is not dumpable (prctl(PR_SET_DUMPABLE, 0)): a child of the same uid can neither
ptrace it nor open its /proc files (mem, fd, environ). The zygote reads nothing a program wrote
except directory listings during the reset (and what the kernel says in /proc), and never imports
after start.

Protocol on the control socket (fd 0 at start; SOCK_SEQPACKET, one record per message):

    host -> zygote   J <marshal: timeout_s>, with fds: job (read end), report, stderr (write ends)
    zygote -> host   R                   started: ready for a job
                     X <marshal: (status, timed_out)>   the child and all else are gone; status is
                                         its exit code, or 128 + N when signal N killed it
                     C                   reset: ready for the next job
                     F <why>             the reset failed; the zygote exits

End of file on the socket: the zygote exits, and with it (pid 1) the whole sandbox.
"""


def _zygote():
    import _signal
    import _socket
    import ctypes
    import gc
    import marshal
    import posix
    import resource  # noqa: F401  (the harness's one import: the children find it loaded)
    import select
    import sys
    import time

    PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 4, 24, 47, 4
    KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_CLEAR = 1, 7
    KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING = -4, -5
    NR_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(posix.uname().machine)
    S_IFMT, S_IFDIR, S_IFLNK = 0o170000, 0o040000, 0o120000
    REPORT_FD = 3  # where the child finds its report pipe (the host's job says so too)
    KILL_WAIT_S = 5.0

    def die(why):
        posix.write(2, ("scoder zygote: " + why + "\n").encode("utf-8", "replace"))
        posix._exit(1)

    if posix.getpid() != 1:
        # kill(-1) below must only ever reach this sandbox: never run outside a pid namespace
        die("not pid 1 of its own pid namespace")
    harness_source, roots = sys.argv[1], [r.encode() for r in sys.argv[2].split(":") if r]
    del sys.argv[1:]  # what a one-process run's program sees: ['-c']
    namespace = {"__name__": "scoder_harness", "__builtins__": __builtins__}
    exec(compile(harness_source, "<string>", "exec"), namespace)
    harness = namespace["_harness"]
    del namespace, harness_source

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        die("prctl(PR_SET_DUMPABLE, 0) failed")
    # pid 1 gets only the signals it handles: Python handles SIGINT, so a child could kill us
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    # the control socket moves out of the way of the fds a child gets; stdin becomes /dev/null
    ctl_fd = posix.dup2(0, 100)
    null = posix.open("/dev/null", posix.O_RDONLY)
    posix.dup2(null, 0)
    posix.close(null)
    ctl = _socket.socket(fileno=ctl_fd)
    posix.chdir("/")
    with open("/proc/self/status") as fh:
        caps = {
            k: int(v, 16) for k, _, v in (line.partition(":\t") for line in fh) if k[:3] == "Cap"
        }
    # what a child could use: its permitted set, or, as root (unshare's user namespace), all of
    # the bounding set again at its next execve
    has_caps = bool(caps.get("CapPrm") or caps.get("CapAmb"))
    has_caps = has_caps or (posix.geteuid() == 0 and bool(caps.get("CapBnd")))
    with open("/proc/sys/kernel/cap_last_cap") as fh:
        last_cap = int(fh.read())

    def send(record):
        ctl.sendall(record)

    # --- the snapshot of the writable trees, and putting them back -------------------------------

    def lstat_kind(path):
        st = posix.lstat(path)
        kind = st.st_mode & S_IFMT
        target = posix.readlink(path) if kind == S_IFLNK else None
        return st, kind, target

    def snapshot(root):
        """Every entry under root (not crossing mounts): kind, mode and link target."""
        top = posix.lstat(root)
        found, stack = {}, [b""]
        while stack:
            rel = stack.pop()
            for name in posix.listdir(root + rel):
                child = rel + b"/" + name
                st, kind, target = lstat_kind(root + child)
                if st.st_dev != top.st_dev:
                    continue  # a mount point (/dev/null, /dev/pts): a child cannot change it
                if kind not in (S_IFDIR, S_IFLNK):
                    die(f"{root!r} holds a file at start: its contents could not be checked")
                found[child] = (kind, st.st_mode & 0o7777, target)
                if kind == S_IFDIR:
                    stack.append(child)
        return top.st_dev, top.st_mode & 0o7777, found

    def remove(path):
        """Remove a file or a whole tree, whatever modes the program left on it (iterative: a
        program can nest directories deeper than any recursion limit)."""
        if posix.lstat(path).st_mode & S_IFMT != S_IFDIR:
            posix.unlink(path)
            return
        stack = [path]
        while stack:
            here = stack[-1]
            posix.chmod(here, 0o700)
            deeper = False
            for name in posix.listdir(here):
                entry = here + b"/" + name
                if posix.lstat(entry).st_mode & S_IFMT == S_IFDIR:
                    stack.append(entry)
                    deeper = True
                else:
                    posix.unlink(entry)
            if not deeper:
                posix.rmdir(here)
                stack.pop()

    def restore(root, dev, mode, found):
        """Put `root` back as `found` said it was: what was not there goes, what went comes back
        (links and directories: the only kinds a snapshot holds), modes are reset."""
        posix.chmod(root, 0o700)
        stack = [b""]
        while stack:
            rel = stack.pop()
            for name in posix.listdir(root + rel):
                child = rel + b"/" + name
                st, kind, target = lstat_kind(root + child)
                if st.st_dev != dev:
                    continue
                was = found.get(child)
                if was is not None and was[0] == kind and was[2] == target:
                    if kind == S_IFDIR:
                        posix.chmod(root + child, 0o700)
                        stack.append(child)
                    continue
                remove(root + child)
        for child in sorted(found):  # parents before their entries
            kind, child_mode, target = found[child]
            path = root + child
            try:
                posix.lstat(path)
            except FileNotFoundError:
                if kind == S_IFLNK:
                    posix.symlink(target, path)
                else:
                    posix.mkdir(path)
            if kind == S_IFDIR:
                posix.chmod(path, child_mode)
        posix.chmod(root, mode)

    snapshots = []
    for root in roots:
        try:
            posix.lstat(root)
        except FileNotFoundError:
            continue
        snapshots.append((root, *snapshot(root)))

    # --- processes -----------------------------------------------------------------------------

    def reap(child, status):
        """Reap every exited child (orphans come to pid 1); `status` of `child` if it was one."""
        while True:
            try:
                pid, st = posix.waitpid(-1, posix.WNOHANG)
            except ChildProcessError:
                return status
            if pid == 0:
                return status
            if pid == child:
                status = st

    def kill_all():
        """SIGKILL every process but this one until /proc shows none."""
        until = time.monotonic() + KILL_WAIT_S
        while True:
            try:  # noqa: SIM105  (no contextlib: a zygote imports only what it needs)
                posix.kill(-1, 9)  # as pid 1: everyone in the namespace but us
            except OSError:
                pass
            reap(0, None)
            if not [p for p in posix.listdir("/proc") if p.isdigit() and p != "1"]:
                return True
            if time.monotonic() > until:
                return False
            select.select([], [], [], 0.001)

    def wait_child(pid, timeout_s):
        deadline = time.monotonic() + timeout_s
        pidfd = posix.pidfd_open(pid)
        status, timed_out = None, False
        try:
            while status is None:
                left = deadline - time.monotonic()
                if left <= 0 and not timed_out:
                    try:  # noqa: SIM105
                        posix.kill(-1, 9)  # the child and all it started
                    except OSError:
                        pass
                    timed_out = True
                # woken at once when the child exits; every 50 ms to reap exited orphans, as an
                # init would
                select.select([pidfd], [], [], 0.05 if timed_out else min(max(left, 0), 0.05))
                status = reap(pid, status)
        finally:
            posix.close(pidfd)
        code = posix.waitstatus_to_exitcode(status)
        return (128 - code if code < 0 else code), timed_out

    # --- the child -----------------------------------------------------------------------------

    exit_ = posix._exit

    def drop_capabilities():
        for cap in range(last_cap + 1):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "PR_CAPBSET_DROP")
        libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        if libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:
            raise OSError(ctypes.get_errno(), "capset")

    def child(job_r, report_w, stderr_w):
        try:
            posix.dup2(job_r, 0)
            posix.dup2(stderr_w, 2)
            if report_w != REPORT_FD:
                posix.dup2(report_w, REPORT_FD)
            posix.closerange(REPORT_FD + 1, 1 << 20)  # the control socket and all else of ours
            posix.setsid()
            _signal.signal(_signal.SIGINT, _signal.default_int_handler)
            if has_caps:
                drop_capabilities()
            libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # as a one-process run's program is
            if NR_KEYCTL:
                libc.syscall(NR_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, None)
        except BaseException:
            exit_(125)
        try:
            harness()  # never returns: the harness exits with its final report
        finally:
            exit_(1)

    # --- what a program could leave for the next one --------------------------------------------

    info = (ctypes.c_int * 32)()  # room for struct shm_info, msginfo or seminfo

    def sysv_in_use():
        # one syscall each (SHM_INFO, MSG_INFO, SEM_INFO), where reading /proc/sysvipc costs
        # three opens per job: used_ids, msgpool and semusz count what exists (a call that fails
        # leaves zeros, and /proc/sysvipc, read below when any is not zero, has the last word)
        for call, field in (
            (lambda: libc.shmctl(0, 14, info), 0),
            (lambda: libc.msgctl(0, 12, info), 0),
            (lambda: libc.semctl(0, 0, 19, info), 7),
        ):
            ctypes.memset(info, 0, ctypes.sizeof(info))
            call()
            if info[field]:
                return True
        return False

    def sysv_ipc():
        if not sysv_in_use():
            return True
        removers = {
            "shm": lambda i: libc.shmctl(i, 0, None),  # IPC_RMID
            "msg": lambda i: libc.msgctl(i, 0, None),
            "sem": lambda i: libc.semctl(i, 0, 0),
        }
        for kind, rm in removers.items():
            for attempt in range(2):
                try:
                    with open("/proc/sysvipc/" + kind) as fh:
                        ids = [int(line.split()[1]) for line in fh.readlines()[1:] if line.strip()]
                except OSError:
                    break  # no SysV IPC here
                if not ids:
                    break
                if attempt:
                    return False
                for i in ids:
                    rm(i)
        return True

    def keyrings():
        if not NR_KEYCTL:
            return True
        for spec in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING):
            failed = libc.syscall(NR_KEYCTL, KEYCTL_CLEAR, ctypes.c_long(spec)) != 0
            if failed and ctypes.get_errno() == 13:  # EACCES: a program locked it
                return False
        return True

    def reset():
        for root, dev, mode, found in snapshots:
            try:
                restore(root, dev, mode, found)
            except OSError as e:
                return f"could not reset {root.decode(errors='replace')}: {e}"
        if not sysv_ipc():
            return "could not remove SysV IPC objects"
        if not keyrings():
            return "could not clear the keyrings"
        return ""

    # --- the loop ------------------------------------------------------------------------------

    # what the zygote holds now, a child's garbage collections never walk (nor copy on write)
    gc.freeze()
    anc_size = _socket.CMSG_SPACE(3 * 4)
    send(b"R")
    while True:
        data, anc, flags, _ = ctl.recvmsg(65536, anc_size)
        if not data:
            posix._exit(0)
        fds = []
        for level, kind, payload in anc:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds += [
                    int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, usable, 4)
                ]
        if data[:1] != b"J" or len(fds) != 3 or flags & _socket.MSG_CTRUNC:
            die("bad job record")
        timeout_s = marshal.loads(data[1:])
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = posix.fork()
        except OSError as e:
            die(f"fork failed: {e}")
        if pid == 0:
            child(*fds)
        for fd in fds:
            posix.close(fd)
        status, timed_out = wait_child(pid, timeout_s)
        if not kill_all():
            die("processes survived SIGKILL")
        send(b"X" + marshal.dumps((status, timed_out)))
        why = reset()
        if why:
            send(b"F" + why.encode("utf-8", "replace"))
            posix._exit(1)
        send(b"C")


if __name__ == "__main__":
    _zygote()
