"""Prompt templates, versioned. A template's digest goes into every record and the manifest.

Change a template's text only together with its id (e.g. `oss-instruct-v2`): records made with
different prompts must not look alike.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

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
