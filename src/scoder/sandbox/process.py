"""The sandboxed process, seen from the host: its job sent on stdin, its stderr kept (capped), its
nonce-tagged reports parsed, the wall clock enforced, and everything it started killed when it ends.

stdout goes to /dev/null: ExecResult has no field for it, so nothing can fill or block. Records on
the report pipe count only with the run's nonce in them (`scoder.sandbox.harness` writes them);
anything else written there is noise.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

from scoder.sandbox.isolation import Launch, get_host

STDERR_CAP = 4096  # bytes kept: the first half and the last half
EXIT_GRACE_S = 0.5  # after the program exits, how long to wait for its pipes to close


class Capture:
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
class Final:
    kind: str  # ok, compile, exit, memory, solution, setup
    index: int | None  # the test statement it happened in; None: the solution
    text: str


class Reports:
    """Parses nonce-tagged records from the report pipe; anything else written there is noise."""

    def __init__(self, nonce: str) -> None:
        self.tag = nonce.encode() + b" "
        self.pending = b""
        self.ready = False
        self.solution_done = False
        self.done: dict[int, tuple[str, str]] = {}  # statement index -> ("1"|"0"|"m", description)
        self.final: Final | None = None

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
            self.final = Final(what, int(index) if index.isdigit() else None, text)


@dataclass
class Outcome:
    returncode: int
    timed_out: bool
    stderr: str
    reports: Reports


class Process:
    """One sandboxed process: feeds it the job, collects stderr and reports, enforces the clock."""

    def __init__(
        self, launch: Launch, nonce: str, job: tuple, cancel: threading.Event | None
    ) -> None:
        self.launch = launch
        self.cancel = cancel
        self.reports = Reports(nonce)
        self.stderr = Capture(STDERR_CAP)
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

    def run(self, timeout_s: float) -> Outcome:
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
                    elif not read_into(key):
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
        return Outcome(proc.returncode, timed_out, self.stderr.text(), self.reports)

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
            killer = get_host().tools["kill"] or "kill"
            subprocess.run(
                [killer, "-KILL", "-1"],
                user=uid,
                group=uid,
                extra_groups=[],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )


def read_into(key: selectors.SelectorKey) -> bool:
    """Feed what a ready pipe holds to its reader (key.data); False at end of file."""
    try:
        data = os.read(key.fd, 65536)
    except BlockingIOError:
        return True
    if data:
        key.data.feed(data)
    return bool(data)
