"""How a failed command ends: one clear message and an exit code, never a traceback (unless
--debug asks for it; RUN/log.txt keeps it always)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape

from scoder import progress
from scoder.display import err_console
from scoder.errors import ScoderError, describe_os_error

F = TypeVar("F", bound=Callable[..., Any])
DEBUG = {"on": False}  # set by the command line's --debug


def _fail(message: str, code: int) -> typer.Exit:
    err_console.print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, markup=True
    )
    return typer.Exit(code)


def friendly_errors(fn: F) -> F:
    """Every failure ends in one clear message and a non-zero exit code (2: bad input; 1: the
    environment or a bug), not a traceback; --debug shows the traceback, and RUN/log.txt keeps
    it always."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ScoderError as exc:
            if DEBUG["on"]:
                raise
            raise _fail(str(exc), 2) from None
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            err_console.print(
                "[yellow]interrupted.[/] Finished chunks are saved; run the same command again "
                "to resume.",
                markup=True,
            )
            raise typer.Exit(130) from None
        except Exception as exc:
            progress.LOG.exception("%s failed", fn.__name__)
            if DEBUG["on"]:
                raise
            if isinstance(exc, OSError):
                raise _fail(describe_os_error(exc), 1) from None
            if isinstance(exc, ImportError):
                raise _fail(
                    f"a package scoder needs is missing: {exc.name or exc} (pip install it, or "
                    "reinstall scoder with its extras)",
                    1,
                ) from None
            raise _fail(
                f"{type(exc).__name__}: {exc} (a bug or an environment problem; --debug shows "
                "the traceback, RUN/log.txt has it)",
                1,
            ) from None

    return wrapper  # type: ignore[return-value]
