"""OSS-Instruct-style synthesis: seed snippet -> problem, solution and tests; plus the parser.

The model's answer is hostile text: every way it can be malformed (missing section, no code fence,
chatter, truncation, code that does not parse) ends as a rejected candidate with a reason, never an
exception. Generation is done in chunks of seeds, each saved as it finishes, so a killed run
resumes after the last saved chunk.
"""

from __future__ import annotations

import ast
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from scoder.config import Config, SynthesisConfig
from scoder.errors import ScoderError
from scoder.filters import DropReasons, Partition
from scoder.models import GenerationBackend, load_backend
from scoder.models.base import Completion, SamplingParams
from scoder.records import Candidate, Drop, Seed
from scoder.store import RunDir, StoreError, file_digest, fingerprint, read_jsonl, resumable_chunks
from scoder.templates import SYNTHESIS_TEMPLATES, SynthesisTemplate

STAGE = "synthesize"
VERSION = "synthesize/1"  # bump when the same config and model would give other candidates
SynthesisDrop = Literal[
    "empty_output",
    "missing_problem",
    "empty_problem",
    "missing_solution",
    "unclosed_solution_fence",
    "empty_solution",
    "solution_syntax_error",
    "missing_tests",
    "unclosed_tests_fence",
    "empty_tests",
    "tests_syntax_error",
    "tests_without_assert",
    "truncated",
]
REASONS = DropReasons(STAGE, SynthesisDrop)

_HEADER = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*|__|\[)?[ \t]*"
    r"(?P<name>problem(?:[ \t]+statement)?|solution|(?:unit[ \t]+)?tests?|[a-z][a-z ]{0,30}?)"
    r"[ \t]*(?:\*\*|__|\])?[ \t]*:?[ \t]*(?:\*\*|__)?[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_MARKDOWN_HEADER = re.compile(r"^[ \t]*#{1,6}[ \t]+\S", re.MULTILINE)
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[ \t]*$", re.MULTILINE)


@dataclass
class Parsed:
    problem: str
    solution: str
    tests: str


class ParseFailure(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_synthesis(text: str, finish_reason: str = "stop") -> Parsed | Drop:
    """Split an answer into problem / solution / tests, or say why it cannot be used."""
    try:
        return _parse(text)
    except ParseFailure as failure:
        if finish_reason == "length":
            detail = f"hit max_new_tokens; {failure.reason}: {failure.detail}"
            return REASONS.make("truncated", detail)
        return REASONS.make(failure.reason, failure.detail)


def _parse(text: str) -> Parsed:
    if not text.strip():
        raise ParseFailure("empty_output")
    sections = _sections(text)
    problem = sections.get("problem")
    if problem is None:
        raise ParseFailure("missing_problem", "no 'Problem' section")
    problem = problem.strip()
    if not problem:
        raise ParseFailure("empty_problem", "the 'Problem' section is empty")
    if "solution" not in sections:
        raise ParseFailure("missing_solution", "no 'Solution' section")
    solution = _code_of(sections["solution"], "solution")
    if "tests" not in sections:
        raise ParseFailure("missing_tests", "no 'Tests' section")
    tests = _code_of(sections["tests"], "tests")
    if not any(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(tests))):
        raise ParseFailure("tests_without_assert", "the tests contain no assert statement")
    return Parsed(problem=problem, solution=solution, tests=tests)


def _sections(text: str) -> dict[str, str]:
    """First occurrence of each known section -> its body (up to the next header line)."""
    headers = []
    in_fence = False
    offset = 0
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (m := _HEADER.match(line.rstrip("\r\n"))):
            is_known = _canonical(m.group("name")) is not None
            # Unknown words count as headers only in markdown-header form ("### Explanation").
            if is_known or _MARKDOWN_HEADER.match(line):
                headers.append((offset, offset + len(line), _canonical(m.group("name"))))
        offset += len(line)
    out: dict[str, str] = {}
    for k, (_, body_start, name) in enumerate(headers):
        end = headers[k + 1][0] if k + 1 < len(headers) else len(text)
        if name and name not in out:
            out[name] = text[body_start:end]
    return out


def _canonical(name: str) -> str | None:
    name = " ".join(name.lower().split())
    if name in ("problem", "problem statement"):
        return "problem"
    if name == "solution":
        return "solution"
    if name in ("test", "tests", "unit test", "unit tests"):
        return "tests"
    return None


def _code_of(body: str, what: str) -> str:
    """The first code block of a section (or the whole body when it has no fence), parsed."""
    fences = list(_FENCE.finditer(body))
    if fences:
        opening = fences[0]
        if len(fences) < 2:
            raise ParseFailure(f"unclosed_{what}_fence", "code block opened but never closed")
        code = body[opening.end() : fences[1].start()].strip("\n")
    else:
        code = body.strip("\n")
    if not code.strip():
        raise ParseFailure(f"empty_{what}", f"the {what} has no code")
    try:
        ast.parse(code)
    except (SyntaxError, ValueError) as exc:
        raise ParseFailure(f"{what}_syntax_error", f"{type(exc).__name__}: {exc}") from None
    return code


@dataclass
class SynthesisResult:
    accepted: list[Candidate] = field(default_factory=list)
    rejected: list[Candidate] = field(default_factory=list)
    generated_tokens: int = 0  # in chunks generated by this call (not resumed ones)
    generation_seconds: float = 0.0
    resumed_chunks: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds else 0.0


def synthesize(
    seeds: list[Seed],
    backend: GenerationBackend,
    cfg: SynthesisConfig,
    *,
    parts_dir: Path,
    random_seed: int = 0,
    round: int = 0,
    checkpoint: str = "base",
) -> SynthesisResult:
    """N samples per seed from one model (checkpoint); each chunk saved under `parts_dir`."""
    template = SYNTHESIS_TEMPLATES[cfg.template]
    model = backend.describe()
    result = SynthesisResult()

    def produce(number: int, chunk: Sequence[Seed]) -> list[Candidate]:
        params = SamplingParams.for_chunk(cfg, random_seed, number)
        started = time.perf_counter()
        outputs = backend.generate([template.chat(s.text) for s in chunk], cfg.n, params)
        result.generation_seconds += time.perf_counter() - started
        candidates = [
            make_candidate(seed, completion, j, template, model, params, round, checkpoint)
            for seed, completions in zip(chunk, outputs)
            for j, completion in enumerate(completions)
        ]
        result.generated_tokens += sum(c.completion_tokens for c in candidates)
        return candidates

    for chunk, candidates, resumed in resumable_chunks(
        seeds, cfg.chunk_size, parts_dir, Candidate, produce
    ):
        if resumed:
            if {c.seed_id for c in candidates} != {s.id for s in chunk}:
                raise StoreError(
                    f"{parts_dir} holds chunks made from other seeds; rerun with --force"
                )
            result.resumed_chunks += 1
        for c in candidates:
            (result.accepted if c.drop is None else result.rejected).append(c)
    return result


def make_candidate(
    seed: Seed,
    completion: Completion,
    sample_index: int,
    template: SynthesisTemplate,
    model: dict,
    params: SamplingParams,
    round: int,
    checkpoint: str,
) -> Candidate:
    raw = template.response_prefix + completion.text
    parsed = parse_synthesis(raw, completion.finish_reason)
    fields = (
        {"problem": parsed.problem, "solution": parsed.solution, "tests": parsed.tests}
        if isinstance(parsed, Parsed)
        else {"drop": parsed}
    )
    return Candidate(
        id=f"{seed.id}-r{round}-{checkpoint}-s{sample_index}",
        seed_id=seed.id,
        seed_text=seed.text,
        seed_source=seed.source,
        round=round,
        checkpoint=checkpoint,
        sample_index=sample_index,
        model=model["id"],
        model_digest=model["digest"],
        template=template.id,
        template_digest=template.digest,
        sampling=params.to_dict(),
        raw_output=raw,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        finish_reason=completion.finish_reason,
        **fields,
    )


def checkpoint_names(paths: Sequence[Path]) -> dict[str, Path]:
    """A short, unique name per checkpoint (its directory name; numbered when two share one)."""
    names: dict[str, Path] = {}
    for i, path in enumerate(paths):
        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise ScoderError(f"synthesize: checkpoint {path} is not a LoRA adapter directory")
        name = path.name if path.name not in names else f"{path.name}-{i}"
        names[name] = path
    return names


def run_synthesize(
    config: Config,
    seeds_path: Path | None = None,
    *,
    run: RunDir | None = None,
    checkpoints: Sequence[Path] = (),
    round_number: int = 0,
    backend: GenerationBackend | None = None,
    force: bool = False,
) -> tuple[RunDir, SynthesisResult]:
    """`scoder synthesize`: seeds -> RUN/synthesize/kept.jsonl (parsed candidates) and
    dropped.jsonl (unusable answers, with reasons). With `checkpoints` (LoRA adapters of the
    model), n samples per seed from each, switched on one loaded base model."""
    run = run or RunDir(config.run_dir)
    seeds_path = seeds_path or run.stage_dir("seeds") / "kept.jsonl"
    if not seeds_path.is_file():
        raise ScoderError(
            f"no seeds at {seeds_path}: run `scoder seeds` first or pass --seeds FILE"
        )
    seeds = read_jsonl(seeds_path, Seed)
    if not seeds:
        raise ScoderError(f"{seeds_path} holds no seeds")
    named = checkpoint_names(checkpoints)
    backend = backend or load_backend(config.model)
    model = backend.describe()
    template = SYNTHESIS_TEMPLATES[config.synthesis.template]
    synth_cfg = config.synthesis.model_dump(mode="json")
    synth_cfg.pop("chunk_size")  # decides where work is saved, not what is generated
    stage_fp = fingerprint(
        {
            "synthesis": synth_cfg,
            "checkpoints": {
                name: file_digest(Path(p) / "adapter_model.safetensors")
                for name, p in named.items()
            },
            "chunk_size": config.synthesis.chunk_size,
            "model_digest": model["digest"],
            "template": template.digest,
            "seeds": file_digest(seeds_path),
            "random_seed": config.random_seed,
            "round": round_number,
        }
    )
    with run.stage(STAGE, config=config, fingerprint=stage_fp, force=force) as record:
        record.info.update(
            {
                "model": model,
                "template": {"id": template.id, "digest": template.digest},
                "seeds_file": str(seeds_path),
            }
        )
        out = run.stage_dir(STAGE)
        backend.use_request_log(out / "requests.jsonl")
        if named:
            backend.load_adapters(named)
        result = SynthesisResult()
        # Without checkpoints, the loaded model is the one "base" checkpoint.
        for name in named or ["base"]:
            with backend.adapter(name if named else None):
                part = synthesize(
                    seeds,
                    backend,
                    config.synthesis,
                    parts_dir=out / "parts" / name if named else out / "parts",
                    random_seed=config.random_seed,
                    round=round_number,
                    checkpoint=name,
                )
            result.accepted += part.accepted
            result.rejected += part.rejected
            result.generated_tokens += part.generated_tokens
            result.generation_seconds += part.generation_seconds
            result.resumed_chunks += part.resumed_chunks
        if named:
            record.info["checkpoints"] = {name: str(p) for name, p in named.items()}
        counts = Partition(result.accepted, result.rejected).write(out)
        generated = result.accepted + result.rejected
        record.counts = {
            "seeds": len(seeds),
            "generated": len(generated),
            "per_checkpoint": dict(Counter(c.checkpoint for c in generated)),
            "accepted": counts["kept"],
            "rejected": counts["dropped"],
            "rejected_by_reason": counts["dropped_by_reason"],
            "completion_tokens": sum(c.completion_tokens for c in generated),
            "prompt_tokens": sum(c.prompt_tokens for c in generated),
            "resumed_chunks": result.resumed_chunks,
        }
        record.info["model"] = backend.describe()  # with the token usage (and cost) of API backends
        record.info["throughput"] = {
            "generated_tokens": result.generated_tokens,
            "generation_seconds": round(result.generation_seconds, 3),
            "tokens_per_second": round(result.tokens_per_second, 2),
        }
    return run, result
