"""Data shipped inside the package, named `builtin:NAME` wherever a source is asked for."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from scoder.errors import ScoderError

# 374 tasks of MBPP's train split (ids 601-974) as D_p samples: seed window, problem, reference
# solution, asserts (CC-BY-4.0; see scoder/data/README.md). Its `solution` column also serves as
# seed code: MBPP's test split (11-510), the one evaluation uses, is not in it.
BUILTIN_DP = "builtin:mbpp-train"


def builtin_path(source: str) -> Path | None:
    """The file behind a `builtin:` source, or None for any other source."""
    if source != BUILTIN_DP:
        if source.startswith("builtin:"):
            raise ScoderError(f"unknown built-in source {source!r}; there is {BUILTIN_DP!r}")
        return None
    return Path(str(resources.files("scoder") / "data" / "dp_mbpp_train.jsonl"))
