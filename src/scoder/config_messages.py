"""What a config error says: the key, what was wrong, the keys allowed there, and where a key
that once was config went."""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ValidationError

# Inputs a step hands to the next are arguments of the stage, not settings: keys that were once
# config keys say where they went.
MOVED_KEYS = {
    "synthesis.checkpoints": "pass them to `scoder synthesize --checkpoints a,b`",
    "select.dp": "pass the D_p file to `scoder select --dp FILE`",
    "train.data": "pass the rows to `scoder train --data FILE`",
    "train.task": "pass it to `scoder train --task synthesizer|code`",
    "train.eval_data": "pass the file to `scoder train --eval-data FILE`",
    "train.init_adapter": "pass the adapter to `scoder train --init-adapter DIR`",
    "train.merge": "pass `scoder train --merge`",
    "final.code_model": "set code_model.enabled",
    "final.code_model_name": "set code_model.model.name",
    "final.eval_benchmarks": "set code_model.eval_benchmarks",
}


def format_validation_error(exc: ValidationError, root: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        # a key with control characters in it is shown quoted: raw, it would break the line
        dotted = ".".join(p if p.isprintable() else repr(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden" and dotted in MOVED_KEYS:
            msg = f"no longer a config key: {MOVED_KEYS[dotted]}"
        elif err["type"] == "extra_forbidden":
            allowed = _allowed_keys(root, loc[:-1])
            hint = difflib.get_close_matches(loc[-1], allowed, n=1)
            msg = f"unknown key; allowed here: {', '.join(allowed)}"
            if hint:
                msg += f" (did you mean {hint[0]!r}?)"
        else:
            # pydantic names types as reprs ("for <class 'pathlib.Path'>"): name them plainly
            msg = re.sub(r"<class '(?:[\w]+\.)*(\w+)'>", r"\1", err["msg"])
            if (
                "input" in err
                and err["type"] not in ("missing",)
                and not isinstance(err["input"], dict)
            ):
                msg += f" (got {err['input']!r})"
        lines.append(f"  {dotted}: {msg}")
    return "\n".join(lines)


def _allowed_keys(root: type[BaseModel], loc: list[str]) -> list[str]:
    model: Any = root
    for part in loc:
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return sorted(model.model_fields)


def yaml_problem(exc: Exception) -> str:
    """What is wrong with a YAML file, on one line, with where (PyYAML's own message spans several
    lines, quoting the text around the problem)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())
