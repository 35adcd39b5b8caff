"""Per-sample LoRA gradients, projection, Adam preconditioning and influence on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from scipy.stats import spearmanr
from transformers import LlamaConfig, LlamaForCausalLM

from scoder.influence import (
    AdamState,
    Example,
    GradientFeaturizer,
    InfluenceError,
    adam_precondition,
    gradient_features,
    influence_scores,
    lora_modules,
    tokenize_records,
)

VOCAB = 64


def tiny_lora_model(seed: int = 0, hidden: int = 64, layers: int = 4):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    model = get_peft_model(model, lora)
    # peft starts lora_B at zero, which makes every lora_A gradient zero: give it values
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return model.eval()


def examples(n: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    return [
        Example(
            prompt_ids=rng.integers(1, VOCAB, size=int(rng.integers(1, 9))).tolist(),
            response_ids=rng.integers(1, VOCAB, size=int(rng.integers(1, 12))).tolist(),
        )
        for _ in range(n)
    ]


def loop_gradients(model, batch: list[Example]) -> list[torch.Tensor]:
    """The reference: one sample at a time, loss.backward(), read .grad."""
    out = []
    names = list(lora_modules(model))
    params = dict(model.named_parameters())
    for ex in batch:
        ids = torch.tensor([ex.prompt_ids + ex.response_ids])
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids).logits
        targets = ids[0, 1:]
        losses = torch.nn.functional.cross_entropy(logits[0, :-1], targets, reduction="none")
        mask = torch.tensor([0.0] * (len(ex.prompt_ids) - 1) + [1.0] * len(ex.response_ids))
        (losses * mask).sum().backward()
        out.append(torch.cat([params[n].grad.flatten() for n in names]))
    return out


@pytest.mark.parametrize(("batch_size", "side"), [(1, "right"), (5, "right"), (5, "left")])
def test_per_sample_gradients_equal_a_backward_loop(batch_size, side):
    model = tiny_lora_model()
    featurizer = GradientFeaturizer(model, dim=10**9, padding_side=side)
    batch = examples(5, seed=batch_size)
    expected = loop_gradients(model, batch)
    got = []
    for start in range(0, len(batch), batch_size):
        per_sample, _, _ = featurizer.per_sample_gradients(batch[start : start + batch_size])
        for i in range(len(batch[start : start + batch_size])):
            got.append(torch.cat([per_sample[n][i].flatten() for n in featurizer.modules]))
    for g, e in zip(got, expected):
        assert e.norm() > 0
        assert (g - e).norm() / e.norm() <= 1e-5


def test_adam_preconditioning_by_hand():
    state = AdamState(
        exp_avg=torch.tensor([0.1, -0.2]),
        exp_avg_sq=torch.tensor([0.01, 0.04]),
        step=3,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    g = torch.tensor([1.0, 0.5])
    t = 4
    m = [0.9 * 0.1 + 0.1 * 1.0, 0.9 * -0.2 + 0.1 * 0.5]
    v = [0.999 * 0.01 + 0.001 * 1.0, 0.999 * 0.04 + 0.001 * 0.25]
    expected = [(m[i] / (1 - 0.9**t)) / ((v[i] / (1 - 0.999**t)) ** 0.5 + 1e-8) for i in range(2)]
    assert torch.allclose(adam_precondition(g, state), torch.tensor(expected), rtol=1e-6)


def _briefly_trained(model, steps: int = 30):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    data = examples(16, seed=99)
    model.train()
    for step in range(steps):
        ex = data[step % len(data)]
        ids = torch.tensor([ex.prompt_ids + ex.response_ids])
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), opt


def test_projected_influence_tracks_exact_influence():
    model, _ = _briefly_trained(tiny_lora_model(seed=1))
    exact = GradientFeaturizer(model, dim=10**9)
    projected = GradientFeaturizer(model, seed=0)  # the default dim
    assert exact.projector.dim > projected.projector.dim > 4000  # really compressed
    cands, refs = examples(40, seed=3), examples(8, seed=4)
    scores = {}
    for name, f in (("exact", exact), ("projected", projected)):
        c = np.vstack([f.features(cands[i : i + 8]).vectors for i in range(0, 40, 8)])
        r = f.features(refs).vectors
        scores[name] = influence_scores([c], [r], [1.0])
    rho = spearmanr(scores["exact"], scores["projected"]).statistic
    assert rho >= 0.9, rho


def test_projection_is_reproducible_from_its_seed():
    model = tiny_lora_model()
    batch = examples(3)
    a = GradientFeaturizer(model, dim=512, seed=7).features(batch).vectors
    b = GradientFeaturizer(model, dim=512, seed=7).features(batch).vectors
    c = GradientFeaturizer(model, dim=512, seed=8).features(batch).vectors
    assert np.array_equal(a, b) and not np.allclose(a, c)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_adam_state_must_be_keyed_by_name():
    model, opt = _briefly_trained(tiny_lora_model(), steps=2)
    by_index = {str(i): s for i, s in enumerate(opt.state.values())}
    with pytest.raises(InfluenceError, match="keyed by parameter name"):
        GradientFeaturizer(
            model,
            optimizer_state={
                k: AdamState(v["exp_avg"], v["exp_avg_sq"], int(v["step"]))
                for k, v in by_index.items()
            },
        )
    names = {p: n for n, p in model.named_parameters()}
    by_name = {
        names[p]: AdamState(s["exp_avg"], s["exp_avg_sq"], int(s["step"]))
        for p, s in opt.state.items()
    }
    f = GradientFeaturizer(model, dim=256, optimizer_state=by_name)
    pre = f.features(examples(2), precondition=True).vectors
    plain = f.features(examples(2)).vectors
    assert not np.allclose(pre, plain)


def test_bad_samples_are_flagged_not_scored():
    model = tiny_lora_model()
    f = GradientFeaturizer(model, dim=256, max_length=10)
    batch = [
        Example(prompt_ids=[1, 2, 3], response_ids=[]),  # nothing to learn from
        Example(prompt_ids=[1, 2, 3], response_ids=list(range(4, 30))),  # longer than max_length
        Example(prompt_ids=[5], response_ids=[6, 7]),
    ]
    feats = f.features(batch)
    assert feats.excluded == {0: "no response tokens (nothing to learn from): influence undefined"}
    assert feats.truncated == [False, True, False]
    assert np.isnan(feats.vectors[0]).all() and not np.isnan(feats.vectors[1:]).any()
    scores = influence_scores([feats.vectors], [feats.vectors[1:]], [1.0])
    assert np.isnan(scores[0]) and np.isfinite(scores[1:]).all()
    with pytest.raises(InfluenceError, match="reference set"):
        influence_scores([feats.vectors], [feats.vectors[:1]], [1.0])


class _CharTokenizer:
    """A real (if simple) tokenizer: one id per character, for the record-level API."""

    eos_token_id = 1
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + (ord(ch) % (VOCAB - 2)) for ch in text]}


def test_gradient_features_public_api():
    model = tiny_lora_model()
    tok = _CharTokenizer()
    records = [
        {"prompt": "def f(x):", "response": " return x"},
        {"prompt": "hi", "response": "there!"},
        {"prompt": "p", "response": ""},
    ]
    raw = gradient_features(model, tok, records, projection_dim=None, batch_tokens=16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert raw.shape == (3, sum(p.numel() for p in trainable))
    # unprojected rows equal the backward loop, in named_parameters order
    expected = loop_gradients(model, tokenize_records(tok, records[:2]))
    for got, exp in zip(raw[:2], expected):
        assert (got - exp).norm() / exp.norm() <= 1e-5
    assert torch.isnan(raw[2]).all()  # no response token: undefined, not zero
    projected = gradient_features(model, tok, records[:2], projection_dim=256, seed=3)
    assert projected.shape == (2, 256)
    assert torch.allclose(projected.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(InfluenceError, match="record 0 has no text field 'response'"):
        gradient_features(model, tok, [{"prompt": "x"}])


def test_missing_optimizer_state_can_fall_back_to_plain_with_a_warning():
    model = tiny_lora_model()
    f = GradientFeaturizer(model, dim=256, optimizer_state={}, missing_state="plain")
    assert f.optimizer_state is None and "keyed by parameter name" in f.describe()["warnings"][0]
