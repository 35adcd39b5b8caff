"""Teacher-forced multiple choice with an in-process model: the probability of each allowed token
at chosen points of an answer whose every other token is fixed.

The judge's answer has a fixed shape — `{"consistency": 8, "correctness": 7, ...}` — in which only
the digits are the model's to choose. So instead of sampling free text and parsing it (which a
small judge fails at, and which gives integers), the prompt is continued with the fixed text up to
each value, and the next-token distribution over the ten digit tokens is read off: an exact
distribution per aspect (G-Eval's expected score), in one prefill and one short step per aspect
with the KV cache. The most likely choice is fed back before the next step's text, as if the model
had written it.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any


class NotSingleTokens(ValueError):
    """A choice is more than one token for this tokenizer: teacher-forcing cannot score it."""


def _choice_ids(tokenizer: Any, choices: Sequence[str]) -> list[int]:
    ids = []
    for choice in choices:
        tokens = tokenizer(choice, add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise NotSingleTokens(f"{choice!r} is {len(tokens)} tokens")
        ids.append(tokens[0])
    return ids


def choice_probabilities(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    steps: Sequence[tuple[str, Sequence[str]]],
    *,
    batch_size: int = 16,
    share: tuple[int, int] = (0, 1),
) -> list[list[dict[str, float]]]:
    """For each prompt (token ids, ending where the answer goes on), the probabilities of each
    step's choices, renormalised over them, after the prompt and every step's text so far (with
    the most likely earlier choices in place). Raises NotSingleTokens when a choice is not a
    single token."""
    import torch

    step_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text, _ in steps]
    choice_ids = [_choice_ids(tokenizer, choices) for _, choices in steps]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    forward = inspect.signature(getattr(model, "get_base_model", lambda: model)().forward)
    cache_arg = "cache" if "cache" in forward.parameters else "past_key_values"
    # Only the last position's logits are read: without this the first pass holds batch x prompt
    # x vocabulary floats (16 x 900 x 152k = 8.7 GB for Qwen2.5).
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in forward.parameters else {}
    out: list[list[dict[str, float]]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths together
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            if (start // batch_size) % share[1] != share[0]:
                continue  # another process's batch (`share`: the k-th of every m; [] here)
            rows = order[start : start + batch_size]
            first = [list(prompts[i]) + step_ids[0] for i in rows]
            width = max(len(r) for r in first)
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in first], device=device)
            mask = torch.tensor(
                [[0] * (width - len(r)) + [1] * len(r) for r in first], device=device
            )
            positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
            cache, chosen = None, None
            for k in range(len(steps)):
                if chosen is not None:
                    new = torch.tensor(
                        [[int(c)] + step_ids[k] for c in chosen.tolist()], device=device
                    )
                    mask = torch.cat([mask, torch.ones_like(new)], dim=1)
                    last = positions[:, -1:]
                    positions = last + torch.arange(1, new.shape[1] + 1, device=device)
                    ids = new
                kwargs = {cache_arg: cache} if cache is not None else {}
                result = model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    **last_only,
                    **kwargs,
                )
                cache = getattr(result, "cache", None) or getattr(result, "past_key_values", None)
                logits = result.logits[:, -1, :].float()
                allowed = torch.tensor(choice_ids[k], device=device)
                probs = torch.softmax(logits[:, allowed], dim=-1)
                chosen = allowed[probs.argmax(dim=-1)]
                for row, p in zip(rows, probs.tolist()):
                    out[row].append(dict(zip(steps[k][1], p)))
    return out
