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
    format far better after seeing it once); `response_prefix` starts the model's answer so the
    first section header is never missing.
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

    def chat(self, snippet: str) -> Chat:
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.user.format(snippet=self.example_snippet)},
            {"role": "assistant", "content": self.example_answer},
            {"role": "user", "content": self.user.format(snippet=snippet.strip("\n"))},
            {"role": "assistant", "content": self.response_prefix},
        ]


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
    a response; one ending in an assistant turn is continued from its text.
    """
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
    """Judge prompt: a candidate in, one integer 0-9 per aspect out, as a JSON object.

    The example shows a weak candidate with varied scores so a small judge does not learn to copy
    one number; `chat` starts the answer with `{"<first aspect>": ` so the JSON is never missing.
    """

    id: str
    system: str
    user: str
    example_problem: str
    example_solution: str
    example_tests: str
    example_seed: str
    example_scores: tuple[int, ...]

    @property
    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()

    def chat(
        self, aspects: list[tuple[str, str]], problem: str, solution: str, tests: str, seed: str
    ) -> Chat:
        listing = "\n".join(f"- {name}: {description}" for name, description in aspects)
        example_scores = {
            name: self.example_scores[i % len(self.example_scores)]
            for i, (name, _) in enumerate(aspects)
        }
        example_answer = json.dumps(example_scores)
        first = aspects[0][0]
        return [
            {"role": "system", "content": self.system},
            {
                "role": "user",
                "content": self.user.format(
                    aspects=listing,
                    problem=self.example_problem,
                    solution=self.example_solution,
                    tests=self.example_tests,
                    seed=self.example_seed,
                ),
            },
            {"role": "assistant", "content": example_answer},
            {
                "role": "user",
                "content": self.user.format(
                    aspects=listing, problem=problem, solution=solution, tests=tests, seed=seed
                ),
            },
            {"role": "assistant", "content": "{" + json.dumps(first) + ": "},
        ]


JUDGE_V1 = JudgeTemplate(
    id="judge-v1",
    system="You are a strict reviewer of Python programming exercises. You answer with JSON only.",
    user="""Rate this programming exercise. Give each aspect an integer from 0 (very bad) to 9 (excellent):
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

Answer with one JSON object mapping each aspect name to its integer score.""",
    example_problem="Write a function `count_vowels(s)` that returns the number of vowels in `s`.",
    example_solution="def count_vowels(s):\n    return len(s)",
    example_tests='assert count_vowels("abc") == 3',
    example_seed="def is_vowel(ch):\n    return ch.lower() in 'aeiou'",
    example_scores=(2, 3, 8, 7, 4),
)

JUDGE_TEMPLATES: dict[str, JudgeTemplate] = {t.id: t for t in (JUDGE_V1,)}


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
