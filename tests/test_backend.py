"""The transformers backend on a tiny random model: batching, padding, sampling, token counts."""

from __future__ import annotations

import math

import pytest
import torch

from scoder.errors import ScoderError
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
    chats = [OSS_INSTRUCT_V1.chat(s, prefill=True) for s in snippets]
    assert backend._shared_prefix(backend.encode(chats))[0] > 100
    out = backend.generate(chats, n=2, params=SamplingParams(temperature=0.0, max_new_tokens=12))
    for chat, completions in zip(chats, out):
        expected = backend.tokenizer.decode(
            _plain_generate(backend, chat, 12), skip_special_tokens=True
        )
        assert [c.text for c in completions] == [expected, expected]


def test_logprobs_are_those_of_the_distribution_sampled_from(backend):
    """At temperature T the reported logprob is log_softmax(logits / T) at the chosen token,
    checked against a plain forward pass over prompt + the tokens transformers samples."""
    params = SamplingParams(temperature=0.5, max_new_tokens=6, seed=2, logprobs=2)
    for chat in CHATS[:2]:
        ((plain,),) = backend.generate(
            [chat], 1, SamplingParams(**{**params.to_dict(), "logprobs": 0})
        )
        ((c,),) = backend.generate([chat], 1, params)
        assert c.text == plain.text  # asking for logprobs changes nothing sampled
        prompt = backend.encode([chat])[0]
        torch.manual_seed(params.seed)  # the backend's seed for its first batch
        ids = backend.model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=params.max_new_tokens,
            do_sample=True,
            temperature=params.temperature,
            top_p=1.0,
            top_k=0,
            pad_token_id=backend.tokenizer.pad_token_id,
            eos_token_id=backend.eos_ids,
        )[0, len(prompt) :].tolist()
        assert len(ids) == len(c.logprobs) == c.completion_tokens
        with torch.no_grad():
            logits = backend.model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits / params.temperature, dim=-1)
        for step, (t, token_id) in enumerate(zip(c.logprobs, ids)):
            assert t.token == backend.tokenizer.decode([token_id])
            assert abs(t.logprob - expected[step, token_id].item()) < 1e-4
            assert [lp for _, lp in t.top] == sorted((lp for _, lp in t.top), reverse=True)
            assert [tok for tok, _ in t.top][0] == backend.tokenizer.decode(
                [expected[step].argmax().item()]
            )


def test_top_p_leaves_out_the_tokens_it_ruled_out(backend):
    params = SamplingParams(temperature=1.0, top_p=0.02, max_new_tokens=4, seed=1, logprobs=50)
    for (c,) in backend.generate(CHATS, 1, params):
        for t in c.logprobs:
            assert 1 <= len(t.top) < 50 and all(lp > float("-inf") for _, lp in t.top)
            assert t.token in [tok for tok, _ in t.top]
            assert abs(sum(math.exp(lp) for _, lp in t.top) - 1.0) < 1e-4  # all that was left


def test_vllm_rendering_flags(backend):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "### Problem\n"}]
    continued, _ = backend.render(chat, continue_final=True, add_generation_prompt=False)
    assert continued == backend.render(chat)[0]
    new_turn, _ = backend.render(chat, continue_final=False, add_generation_prompt=True)
    assert new_turn.startswith(continued) and new_turn.endswith("<|im_start|>assistant\n")
    assert len(new_turn) > len(continued)
    with pytest.raises(ScoderError, match="ends with an assistant message"):
        backend.render(chat[:1], continue_final=True)


def test_adapters_unload_back_to_the_base_model(tiny_model_dir, adapter_dir):
    b = TransformersBackend(resolve_model(str(tiny_model_dir)), device="cpu", batch_size=4)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    base = b.generate(CHATS[:1], 1, params)
    for _ in range(2):  # the second round loads again after the last adapter went
        b.load_adapters({"a": adapter_dir, "b": adapter_dir})
        with b.adapter("b"):
            tuned = b.generate(CHATS[:1], 1, params)
        assert tuned[0][0].text != base[0][0].text
        b.unload_adapter("a")
        with b.adapter("b"):
            assert b.generate(CHATS[:1], 1, params) == tuned
        b.unload_adapter("b")
        assert b.adapters == {} and b.generate(CHATS[:1], 1, params) == base
    with pytest.raises(ScoderError, match="no adapter named 'a'"):
        b.unload_adapter("a")
