"""Pre-forked sandboxes, seen from the host: a worker's zygote (`scoder.sandbox.zygote`) started
with the same launch as a one-process run, fed one job at a time, and replaced when it ends.

A zygote costs one sandbox start (namespaces, the run's own uid as root, a warm interpreter); each
job then costs a fork inside it. Per job the host makes three pipes (the job, the reports, stderr)
and passes their child ends to the zygote over the control socket: it reads the reports and stderr
itself, exactly as for a one-process run (`scoder.sandbox.process`), and writes the job, nonce
included, straight to the child. The host keeps its own clock (the time limit plus a margin): a
zygote that neither answers nor dies by then is killed with its sandbox, and the program's verdict
is a timeout, as a one-process run's would be. A zygote that dies under a program (it cannot be
killed from inside, being pid 1 there; the host, the OOM killer or a bug can) makes that
program's verdict the one of a sandbox that died: "killed", whatever the program had reported.
A zygote that ends between jobs, or says it could not reset, is replaced before the next program,
which is not charged for it.
"""

from __future__ import annotations

import array
import contextlib
import marshal
import os
import selectors
import signal
import socket
import subprocess
import threading
import time

from scoder.sandbox.isolation import Launch, build_launch, get_host, work_dir
from scoder.sandbox.process import (
    EXIT_GRACE_S,
    STDERR_CAP,
    Capture,
    Outcome,
    Reports,
    read_into,
)
from scoder.sandbox.result import IsolationLevel, SandboxError, one_line

REPORT_FD = 3  # the report pipe's fd in the child (scoder.sandbox.zygote puts it there)
START_TIMEOUT_S = 30.0  # a zygote's start (a loaded machine can be slow)
ANSWER_MARGIN_S = 1.0  # after the time limit, how long the zygote has to answer
RESET_TIMEOUT_S = 10.0  # how long its reset between two jobs may take (a program can leave much)


class ZygoteGone(Exception):
    """The zygote ended before the job started: the job can go to a new one."""


class Zygote:
    """One long-lived sandbox running the zygote, with its own work dir and (as root) uid, both
    given back by `close`, once every process of the uid is gone."""

    def __init__(self, level: IsolationLevel) -> None:
        self.dead = False  # it ended, or was killed: it takes no more jobs
        self._dirty = False  # a job ran since its last reset
        self._stack = contextlib.ExitStack()
        try:
            host = get_host()
            work, uid = self._stack.enter_context(work_dir(host))
            self.launch: Launch = build_launch(level, host, work, uid, prefork=True)
            self._start()
        except BaseException:
            self._stack.close()
            raise

    def _start(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                self.launch.argv,
                stdin=theirs.fileno(),  # the control socket (the zygote moves it off fd 0)
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,  # the zygote's own: why it could not go on, if it says
                env=self.launch.env,
                cwd="/",
                start_new_session=True,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self.sock = mine
        self._stack.callback(self._end)
        self.errors = Capture(STDERR_CAP)
        os.set_blocking(self.proc.stderr.fileno(), False)
        self.pidfd = os.pidfd_open(self.proc.pid)
        if self._receive(START_TIMEOUT_S) != b"R":
            self._kill()
            raise SandboxError(f"zygote did not start: {one_line(self._why())}")

    def run(
        self, nonce: str, job: tuple, timeout_s: float, cancel: threading.Event | None
    ) -> Outcome:
        """Run one job (what the harness reads, after the nonce and report fd) in a fresh child.
        Raises ZygoteGone if the zygote ended before the job could start."""
        if self._dirty:
            if self._receive(RESET_TIMEOUT_S) != b"C":
                self.dead = True
                raise ZygoteGone(self._why())
            self._dirty = False
        payload = marshal.dumps((nonce, REPORT_FD, *job))
        fds: list[int] = []
        try:
            for _ in range(3):
                fds += os.pipe()
        except BaseException:  # out of fds: not the zygote's doing, nor the program's
            for fd in fds:
                os.close(fd)
            raise
        job_r, job_w, report_r, report_w, err_r, err_w = fds
        try:
            fds = array.array("i", [job_r, report_w, err_w])
            record = b"J" + marshal.dumps(float(timeout_s))
            self.sock.sendmsg([record], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except OSError as e:
            for fd in (job_w, report_r, err_r):
                os.close(fd)
            self.dead = True
            raise ZygoteGone(one_line(e)) from e
        finally:
            for fd in (job_r, report_w, err_w):  # the child's ends: only the zygote's copies stay
                os.close(fd)
        return self._follow(payload, job_w, report_r, err_r, Reports(nonce), timeout_s, cancel)

    def _follow(
        self,
        payload: bytes,
        job_w: int,
        report_r: int,
        err_r: int,
        reports: Reports,
        timeout_s: float,
        cancel: threading.Event | None,
    ) -> Outcome:
        stderr = Capture(STDERR_CAP)
        for fd in (job_w, report_r, err_r):
            os.set_blocking(fd, False)
        sel = selectors.DefaultSelector()
        sel.register(job_w, selectors.EVENT_WRITE, "job")
        sel.register(err_r, selectors.EVENT_READ, stderr)
        sel.register(report_r, selectors.EVENT_READ, reports)
        sel.register(self.sock, selectors.EVENT_READ, "answer")
        sel.register(self.pidfd, selectors.EVENT_READ, "ended")
        deadline = time.monotonic() + timeout_s + ANSWER_MARGIN_S
        answer: tuple[int, bool] | None = None
        killed = False  # by our clock (or a cancel): the zygote did not answer in time
        ended_at: float | None = None
        readers, sent = 2, 0
        try:
            while True:
                now = time.monotonic()
                if ended_at is None and (now >= deadline or (cancel and cancel.is_set())):
                    killed = True
                    self._kill()  # the pipes' last writers die with the sandbox
                    sel.unregister(self.sock)
                    sel.unregister(self.pidfd)
                    ended_at = now
                if ended_at is not None and (not readers or now >= ended_at + EXIT_GRACE_S):
                    break  # something still holds a pipe: stop listening
                until = deadline if ended_at is None else ended_at + EXIT_GRACE_S
                for key, _ in sel.select(max(0.0, min(until - now, 0.25))):
                    if key.data == "job":
                        sent = self._send(job_w, payload, sent)
                        if sent >= len(payload):
                            sel.unregister(job_w)
                            os.close(job_w)
                            job_w = -1
                    elif key.data in ("answer", "ended"):
                        if ended_at is not None:
                            continue  # both came in one batch: the first one was handled
                        record = self._receive(0.0)
                        if record is not None and record[:1] == b"X":
                            answer = marshal.loads(record[1:])
                        else:  # it ended (or said nonsense) while the program ran
                            self._kill()
                        sel.unregister(self.sock)
                        sel.unregister(self.pidfd)
                        ended_at = time.monotonic()
                    elif not read_into(key):
                        sel.unregister(key.fd)
                        readers -= 1
        finally:
            sel.close()
            for fd in (job_w, report_r, err_r):
                if fd >= 0:
                    os.close(fd)
        if answer is not None:
            self._dirty = True
            status, timed_out = answer
            return Outcome(status, timed_out, stderr.text(), reports)
        self.dead = True
        if killed:
            return Outcome(-signal.SIGKILL, True, stderr.text(), reports)
        # the sandbox died under the program: whatever it reported, it did not finish in one
        reports.final = None
        why = self._why()
        text = stderr.text() + (f"\n{why}" if why else "")
        return Outcome(128 + signal.SIGKILL, False, text, reports)

    @staticmethod
    def _send(fd: int, payload: bytes, sent: int) -> int:
        try:
            return sent + os.write(fd, memoryview(payload)[sent : sent + 65536])
        except BlockingIOError:
            return sent
        except BrokenPipeError:
            return len(payload)  # the child died before reading its job: the verdict says so

    def _receive(self, timeout_s: float) -> bytes | None:
        """The zygote's next record; None if it ends first, or says nothing for `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ, "record")
            sel.register(self.pidfd, selectors.EVENT_READ, "ended")
            sel.register(self.proc.stderr, selectors.EVENT_READ, "errors")
            while True:
                ready = sel.select(max(0.0, deadline - time.monotonic()))
                for key, _ in ready:
                    if key.data == "errors":
                        try:
                            data = os.read(self.proc.stderr.fileno(), 65536)
                        except BlockingIOError:
                            continue
                        if data:
                            self.errors.feed(data)
                        else:
                            sel.unregister(self.proc.stderr)
                # a record sent just before the zygote ended still counts
                try:
                    return self.sock.recv(65536, socket.MSG_DONTWAIT) or None  # b"": it ended
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    return None
                if any(key.data == "ended" for key, _ in ready):
                    return None
                if time.monotonic() >= deadline:
                    return None

    def _why(self) -> str:
        """What the zygote wrote on its stderr (it writes only when it cannot go on)."""
        with contextlib.suppress(OSError):
            while data := os.read(self.proc.stderr.fileno(), 65536):
                self.errors.feed(data)
        return self.errors.text().strip()

    def _kill(self) -> None:
        # the zygote is pid 1 of its namespace, and dies with bwrap or unshare (--die-with-parent,
        # --kill-child): with it every process of the sandbox
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.dead = True

    def _end(self) -> None:
        self.sock.close()
        self._kill()
        self.proc.wait()
        os.close(self.pidfd)
        self.proc.stderr.close()

    def close(self) -> None:
        """Kill the sandbox; return once its processes are gone and its work dir removed."""
        self._stack.close()


class Worker:
    """A worker's zygote: started when first needed, replaced when it ends, closed with it."""

    def __init__(self, level: IsolationLevel) -> None:
        self.level = level
        self.zygote: Zygote | None = None

    def run(
        self, nonce: str, job: tuple, timeout_s: float, cancel: threading.Event | None
    ) -> tuple[Outcome, Launch]:
        """One job's outcome, and the launch it ran under. Raises SandboxError or OSError when no
        zygote can be started."""
        for _ in range(2):  # a zygote found ended before the job: the job goes to a new one
            if self.zygote is None:
                self.zygote = Zygote(self.level)
            zygote = self.zygote
            try:
                outcome = zygote.run(nonce, job, timeout_s, cancel)
            except ZygoteGone:
                self.close()
                continue
            if zygote.dead:
                self.close()
            return outcome, zygote.launch
        raise SandboxError("the sandbox ended twice before the program could start")

    def kill(self) -> None:
        """Kill the zygote's sandbox now, without waiting: `close` then waits (several workers'
        sandboxes die at once instead of one after another)."""
        if self.zygote is not None:
            self.zygote._kill()

    def close(self) -> None:
        zygote, self.zygote = self.zygote, None
        if zygote is not None:
            zygote.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
