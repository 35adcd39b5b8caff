"""The one exception type the CLI turns into a clear message instead of a traceback, and what an
operating-system error says to the user."""

from __future__ import annotations

import errno


class ScoderError(Exception):
    """A problem the user can fix: bad config, bad input path, mismatched run directory."""


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError that stopped a command: what happened, where, and what to do."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"the disk is full{where}: free space and run the same command again to resume"
    if exc.errno == errno.EROFS:
        return (
            f"the file system is read-only{where}: scoder writes its log, lock, ledger and "
            "outputs in the run directory. Copy the run somewhere writable (a copied run resumes "
            "from its own files) or choose another run directory (--out)."
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where}"
    return f"{exc.strerror or exc}{where}"
