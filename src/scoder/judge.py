"""The judge: a model rates each candidate's aspects 0-9, read the best way its backend allows.

In process the answer's JSON shape is teacher-forced and each aspect's score is the expected
value over the ten digits (G-Eval style), so even a small judge separates candidates; a server
that returns logprobs gives the same expectation from its top alternatives; any other server is
read as text by a tolerant parser. An unusable answer is retried once, then recorded unscored
with its reason, never a silent 0.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from typing import Any

from scoder.config import ScoreConfig
from scoder.models import GenerationBackend
from scoder.models.base import SamplingParams
from scoder.models.choices import NotSingleTokens
from scoder.parsing import parse_judgement
from scoder.records import Candidate, Judgement
from scoder.templates import JUDGE_TEMPLATES

DIGITS = [str(d) for d in range(10)]


def judge(
    candidates: Sequence[Candidate],
    backend: GenerationBackend,
    cfg: ScoreConfig,
    *,
    seed: int = 0,
) -> list[Judgement]:
    """Scores for every candidate, read the best way the backend allows:

    - choices (a backend that scores choices, i.e. in process): the answer's JSON shape is
      teacher-forced and each aspect's value is the distribution over the ten digits;
    - logprobs (a server that returns them): the answer is generated (JSON-schema constrained
      where the server enforces schemas), parsed, and each value's digit alternatives read off;
    - text (any server): the answer is generated and parsed tolerantly; integers only.

    An unusable answer is retried once, sampled; then the candidate is unscored, with the reason.
    `score.scoring: integers` keeps the integers even where probabilities exist.
    """
    template = JUDGE_TEMPLATES[cfg.template]
    aspects = [(a.name, a.description) for a in cfg.aspects]
    names = [a.name for a in cfg.aspects]
    chats = [
        template.chat(aspects, c.problem or "", c.solution or "", c.tests or "", c.seed_text)
        for c in candidates
    ]
    caps = backend.capabilities()
    if caps.choices and caps.continuation:
        judged = _judge_by_choices(chats, backend, template, names, cfg)
        if judged is not None:
            return judged
    return _judge_by_text(chats, backend, template, names, cfg, seed, caps)


def _judge_by_choices(
    chats: list[list[dict]], backend: GenerationBackend, template: Any, names: list[str], cfg: Any
) -> list[Judgement] | None:
    opening, steps = template.answer_steps(names)
    forced = [[*chat, {"role": "assistant", "content": opening}] for chat in chats]
    for choices in ([f" {d}" for d in DIGITS], DIGITS):  # " 8" is one token to most tokenizers
        space = "" if choices[0].startswith(" ") else " "
        try:
            found = backend.choice_probabilities(forced, [(t + space, choices) for t in steps])
        except NotSingleTokens:
            continue
        out = []
        for per_aspect in found:
            dists = [{int(k): p for k, p in dist.items()} for dist in per_aspect]
            expected = {
                n: round(sum(d * p for d, p in dist.items()), 4) for n, dist in zip(names, dists)
            }
            scores = {n: max(dist, key=dist.get) for n, dist in zip(names, dists)}
            text = opening + "".join(f"{t}{space}{s}" for t, s in zip(steps, scores.values())) + "}"
            out.append(
                Judgement(scores=scores, expected=None if cfg.scoring == "integers" else expected,
                          method="choices", raw=[text])
            )  # fmt: skip
        return out
    return None  # digits are not single tokens here: read the answer as text instead


def _judge_by_text(
    chats: list[list[dict]],
    backend: GenerationBackend,
    template: Any,
    names: list[str],
    cfg: Any,
    seed: int,
    caps: Any,
) -> list[Judgement]:
    logprobs = 10 if caps.logprobs and cfg.scoring != "integers" else 0
    schema = template.json_schema(names) if caps.json_schema else None
    judgements = [Judgement(raw=[]) for _ in chats]
    pending = list(range(len(chats)))
    for attempt, temperature in enumerate((0.0, cfg.retry_temperature), start=1):
        if not pending:
            break
        params = SamplingParams(
            temperature=temperature,
            top_p=1.0,
            max_new_tokens=cfg.max_new_tokens,
            seed=seed + attempt,
            logprobs=logprobs,
            json_schema=schema,
        )
        outputs = backend.generate([chats[i] for i in pending], 1, params)
        still = []
        for i, (completion,) in zip(pending, outputs):
            values, reason = parse_judgement(completion.text, names)
            j = judgements[i]
            j.raw.append(completion.text)
            j.attempts, j.reason = attempt, reason
            if values is None:
                j.scores = None
                still.append(i)
                continue
            j.scores = {n: int(round(v)) for n, v in values.items()}
            j.expected = _expected_from_logprobs(completion, names) if logprobs else None
            j.method = "logprobs" if j.expected is not None else "text"
        pending = still
    return judgements


def _expected_from_logprobs(completion: Any, names: list[str]) -> dict[str, float] | None:
    """Each aspect's expected score over the digit alternatives at its value's token, when every
    value is one digit token of its own; else None (the integers stand)."""
    tokens = completion.logprobs or ()
    text, starts = "", []
    for token in tokens:
        starts.append(len(text))
        text += token.token
    expected = {}
    for name in names:
        m = re.search(rf'"{re.escape(name)}"\s*:\s*"?(\d)', text)
        if m is None:
            return None
        at = bisect.bisect_right(starts, m.start(1)) - 1
        token = tokens[at]
        if token.token.strip() != m.group(1):
            return None  # the digit shares its token with other text
        dist = {int(t.strip()): math.exp(lp) for t, lp in token.top if t.strip() in DIGITS}
        if not dist:
            return None
        total = sum(dist.values())
        expected[name] = round(sum(d * p for d, p in dist.items()) / total, 4)
    return expected
