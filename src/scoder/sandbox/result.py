"""What a sandboxed run comes back as: its status, its counts, and one line saying why."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from scoder.errors import ScoderError

IsolationLevel = Literal["bwrap", "unshare", "rlimits"]
ExecStatus = Literal["passed", "failed", "error", "timeout", "memory", "killed"]

LEVELS: tuple[IsolationLevel, ...] = ("bwrap", "unshare", "rlimits")  # strongest first
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
    prefork: bool = False  # it ran as a child of a worker's zygote (scoder.sandbox.zygote)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def pass_rate(self) -> float:
        return self.tests_passed / self.tests_total if self.tests_total else 0.0


def one_line(e: BaseException | str) -> str:
    """An exception or a message as a `detail`: one line, of bounded length."""
    text = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
    return " ".join(text.split())[:_DETAIL_MAX]
