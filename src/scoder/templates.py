"""Prompt templates, versioned. A template's digest goes into every record and the manifest.

Change a template's text only together with its id (e.g. `oss-instruct-v2`): records made with
different prompts must not look alike.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

Chat = list[dict[str, str]]


@dataclass(frozen=True)
class SynthesisTemplate:
    """Synthesis prompt p: a seed snippet c in, a problem q, solution s and tests t out.

    `example_*` is one worked exchange shown before the real request (small models follow a
    format far better after seeing it once); `response_prefix` starts the model's answer, where
    the backend can continue one, so the first section header is never missing.
    """

    id: str
    system: str
    user: str
    example_snippet: str
    example_answer: str
    response_prefix: str

    @property
    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()

    def answer(self, problem: str, solution: str, tests: str | None) -> str:
        """The answer this template asks for: the training target of the synthesizer."""
        text = f"### Problem\n{problem.strip()}\n\n### Solution\n```python\n{solution.strip()}\n```"
        if tests:
            text += f"\n\n### Tests\n```python\n{tests.strip()}\n```"
        return text

    def chat(self, snippet: str, *, prefill: bool = False) -> Chat:
        """The request for `snippet`; with `prefill`, the answer's first line too (for a backend
        that continues an assistant message)."""
        chat = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.format(snippet=self.example_snippet)},
            {"role": "assistant", "content": self.example_answer},
            {"role": "user", "content": self.user.format(snippet=snippet.strip("\n"))},
        ]
        if prefill:
            chat.append({"role": "assistant", "content": self.response_prefix})
        return chat


OSS_INSTRUCT_V1 = SynthesisTemplate(
    id="oss-instruct-v1",
    system="You are an expert Python teacher who writes clear, self-contained programming "
    "exercises with correct solutions and tests.",
    user="""Here is a code snippet for inspiration:

```python
{snippet}
```

Write a new, self-contained Python programming problem inspired by the snippet, then solve it and test the solution.
Reply in exactly this format:

### Problem
<the problem statement, naming the function to write>

### Solution
```python
<a complete Python solution>
```

### Tests
```python
<3 to 5 assert statements that check the solution>
```""",
    example_snippet="""def clamp(value, low, high):
    if value < low:
        return low
    return min(value, high)""",
    example_answer="""### Problem
Write a function `clamp_list(values, low, high)` that returns a new list where every number in `values` is limited to the range from `low` to `high`.

### Solution
```python
def clamp_list(values, low, high):
    return [max(low, min(v, high)) for v in values]
```

### Tests
```python
assert clamp_list([1, 5, 10], 2, 8) == [2, 5, 8]
assert clamp_list([], 0, 1) == []
assert clamp_list([-3, 3], -1, 1) == [-1, 1]
```""",
    response_prefix="### Problem\n",
)

SYNTHESIS_TEMPLATES: dict[str, SynthesisTemplate] = {t.id: t for t in (OSS_INSTRUCT_V1,)}

PLAIN_TEMPLATE_ID = "plain-v1"


def render_plain(chat: Chat) -> str:
    """A chat as a plain instruction transcript, for base models without a chat template.

    Training (`scoder train`) and generation (the transformers backend) both use this, so a base
    model fine-tuned on it is prompted the way it was trained. A chat ending in a user turn opens
    a response; one ending in an assistant turn is continued from its text. A chat of one
    assistant message alone is plain text to continue (a benchmark prompt completed the way a base
    model is evaluated), with no transcript around it.
    """
    if len(chat) == 1 and chat[0]["role"] == "assistant":
        return chat[0]["content"]
    parts = []
    for message in chat:
        role, content = message["role"], message["content"]
        if role == "system":
            parts.append(content.strip())
        elif role == "user":
            parts.append(f"### Instruction\n{content.strip()}")
        else:
            parts.append(f"### Response\n{content}")
    text = "\n\n".join(parts)
    if not chat or chat[-1]["role"] != "assistant":
        text += "\n\n### Response\n"
    return text


@dataclass(frozen=True)
class JudgeTemplate:
    """Judge prompt: a candidate in, one integer 0-9 per aspect out, as one JSON object.

    No worked example: a small judge shown one copies its numbers (the 0.5B coder gave every
    candidate the example's five scores). The request ends the chat, so any server answers it; the
    answer's fixed shape (`answer_steps`) lets a backend that scores choices read the probability
    of every digit for every aspect instead (scoder.score).
    """

    id: str
    system: str
    user: str

    @property
    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()

    def chat(
        self, aspects: list[tuple[str, str]], problem: str, solution: str, tests: str, seed: str
    ) -> Chat:
        listing = "\n".join(f"- {name}: {description}" for name, description in aspects)
        shape = "{" + ", ".join(f"{json.dumps(name)}: <0-9>" for name, _ in aspects) + "}"
        request = self.user.format(
            aspects=listing, problem=problem, solution=solution, tests=tests, seed=seed, shape=shape
        )
        return [{"role": "system", "content": self.system}, {"role": "user", "content": request}]

    @staticmethod
    def answer_steps(names: list[str]) -> tuple[str, list[str]]:
        """The answer's opening, and the fixed text before each aspect's value: `{` then
        `"consistency":`, `, "correctness":` ... (each value a digit token after it)."""
        return "{", [(", " if i else "") + json.dumps(name) + ":" for i, name in enumerate(names)]

    @staticmethod
    def json_schema(names: list[str]) -> dict:
        """The answer as a JSON schema, for servers that enforce one."""
        score = {"type": "integer", "minimum": 0, "maximum": 9}
        return {
            "type": "object",
            "properties": dict.fromkeys(names, score),
            "required": list(names),
            "additionalProperties": False,
        }


JUDGE_V2 = JudgeTemplate(
    id="judge-v2",
    system="You are a strict reviewer of Python programming exercises. You answer with JSON only.",
    user="""Rate this programming exercise on each aspect below with an integer from 0 (very bad) to 9 (excellent). Use the whole scale, and judge each aspect on its own:
{aspects}

Seed snippet that inspired it:
```python
{seed}
```

Problem:
{problem}

Solution:
```python
{solution}
```

Tests:
```python
{tests}
```

Answer with this one JSON object and nothing else:
{shape}""",
)

JUDGE_TEMPLATES: dict[str, JudgeTemplate] = {t.id: t for t in (JUDGE_V2,)}


class EvalTask(Protocol):
    """What an evaluation prompt needs of a benchmark task (scoder.eval's BenchmarkTask)."""

    prompt: str
    entry_point: str

    @property
    def example(self) -> str: ...


@dataclass(frozen=True)
class EvalTemplate:
    """How a task becomes a prompt. `humaneval` gets {prompt}; `mbpp` gets {problem},
    {entry_point} and {example} (the task's first assert)."""

    id: str
    kind: Literal["chat", "completion"]
    humaneval: str
    mbpp: str
    system: str = ""

    @property
    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()

    def text(self, task: EvalTask, benchmark: str) -> str:
        if benchmark == "humaneval":
            return self.humaneval.format(prompt=task.prompt)
        return self.mbpp.format(
            problem=task.prompt.strip(), entry_point=task.entry_point, example=task.example
        )

    def chat(self, task: EvalTask, benchmark: str) -> Chat:
        text = self.text(task, benchmark)
        if self.kind == "completion":  # continued as the start of the answer
            return [{"role": "assistant", "content": text}]
        chat = [{"role": "system", "content": self.system}] if self.system else []
        return [*chat, {"role": "user", "content": text}]


EVAL_TEMPLATES: dict[str, EvalTemplate] = {
    t.id: t
    for t in (
        EvalTemplate(
            id="eval-chat-v1",
            kind="chat",
            humaneval="Complete the following Python function. Reply with the complete, "
            "self-contained function (with the imports it needs) in one ```python code block."
            "\n\n```python\n{prompt}```",
            mbpp="{problem}\n\nWrite a self-contained Python function `{entry_point}` that solves "
            "this problem. Your code should pass this test:\n\n```python\n{example}\n```\n\n"
            "Reply with the complete function (with the imports it needs) in one ```python code "
            "block.",
        ),
        EvalTemplate(
            id="eval-completion-v1",
            kind="completion",
            humaneval="{prompt}",
            mbpp='"""\n{problem}\n{example}\n"""\n',
        ),
    )
}
