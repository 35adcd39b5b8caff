"""The transformers backend on a tiny random model: batching, padding, sampling, token counts."""

from __future__ import annotations

import pytest
import torch

from scoder.models import SamplingParams, resolve_model
from scoder.models.hf import TransformersBackend

CHATS = [
    [{"role": "user", "content": "Write a function that adds two numbers."}],
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "You are an expert Python teacher."},
        {
            "role": "user",
            "content": "Here is a code snippet for inspiration: def add(a, b): return a + b",
        },
    ],
]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return TransformersBackend(resolve_model(str(tiny_model_dir)), device="cpu", batch_size=4)


def test_n_completions_per_chat_with_token_counts(backend):
    out = backend.generate(
        CHATS, n=3, params=SamplingParams(temperature=1.0, max_new_tokens=12, seed=1)
    )
    assert [len(c) for c in out] == [3, 3, 3]
    lengths = [len(ids) for ids in backend.encode(CHATS)]
    for completions, prompt_len in zip(out, lengths):
        for c in completions:
            assert c.prompt_tokens == prompt_len
            assert 1 <= c.completion_tokens <= 12
            assert c.finish_reason == ("length" if c.completion_tokens == 12 else "stop")


def test_batched_greedy_equals_one_at_a_time(tiny_model_dir, backend):
    """Left padding must not change what a prompt generates."""
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    batched = backend.generate(CHATS, n=1, params=params)
    single = TransformersBackend(resolve_model(str(tiny_model_dir)), device="cpu", batch_size=1)
    one_by_one = single.generate(CHATS, n=1, params=params)
    assert [c[0].text for c in batched] == [c[0].text for c in one_by_one]
    assert [c[0].completion_tokens for c in batched] == [c[0].completion_tokens for c in one_by_one]


def test_seed_makes_sampling_reproducible(backend):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=16, seed=7)
    first = backend.generate(CHATS, n=2, params=params)
    again = backend.generate(CHATS, n=2, params=params)
    other = backend.generate(
        CHATS, n=2, params=SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=16, seed=8)
    )
    texts = lambda out: [c.text for cs in out for c in cs]  # noqa: E731
    assert texts(first) == texts(again)
    assert texts(first) != texts(other)


def test_stops_at_end_of_sequence(tiny_model_dir):
    """A model whose every logit ties picks token 0, the end-of-turn token: it stops at once."""
    b = TransformersBackend(resolve_model(str(tiny_model_dir)), device="cpu", batch_size=4)
    assert b.tokenizer.eos_token_id == 0
    with torch.no_grad():
        b.model.model.norm.weight.zero_()
    out = b.generate(CHATS[:2], n=1, params=SamplingParams(temperature=0.0, max_new_tokens=10))
    for (c,) in out:
        assert c.finish_reason == "stop"
        assert c.completion_tokens == 1
        assert c.text == ""


def test_assistant_prefix_is_continued(backend):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "### Problem\n"}]
    text, has_special = backend.render(chat)
    assert has_special
    assert text.endswith("<|im_start|>assistant\n### Problem\n")
    fresh, _ = backend.render(chat[:1])
    assert fresh.endswith("<|im_start|>assistant\n")


def test_describe_names_model_and_digest(backend, tiny_model_dir):
    info = backend.describe()
    assert info["source"] == "local"
    assert info["digest"].startswith("sha256:") and len(info["digest"]) == 7 + 64
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["batch_size"] == 4


def _plain_generate(backend, chat, max_new_tokens):
    """transformers' own generate on one unpadded prompt: the reference."""
    ids = backend.encode([chat])[0]
    out = backend.model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=backend.tokenizer.pad_token_id,
        eos_token_id=backend.eos_ids,
    )
    return out[0, len(ids) :].tolist()


def test_shared_template_prefix_gives_the_same_tokens_as_plain_generate(backend):
    """Prompts built from one template share a long prefix, computed once: results must not move."""
    from scoder.templates import OSS_INSTRUCT_V1

    snippets = [
        "def f(x):\n    return x + 1",
        "class A:\n    pass",
        "def g():\n    y = [1, 2, 3]\n    return sum(y) * 2",
    ]
    chats = [OSS_INSTRUCT_V1.chat(s) for s in snippets]
    assert backend._shared_prefix(backend.encode(chats))[0] > 100
    out = backend.generate(chats, n=2, params=SamplingParams(temperature=0.0, max_new_tokens=12))
    for chat, completions in zip(chats, out):
        expected = backend.tokenizer.decode(
            _plain_generate(backend, chat, 12), skip_special_tokens=True
        )
        assert [c.text for c in completions] == [expected, expected]
