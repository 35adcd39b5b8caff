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
    """The oracle: one sample at a time, HF's own loss (the mean over the sample's response
    tokens, LESS's definition), loss.backward(), read .grad."""
    out = []
    names = list(lora_modules(model))
    params = dict(model.named_parameters())
    for ex in batch:
        ids = torch.tensor([ex.prompt_ids + ex.response_ids])
        labels = torch.tensor([[-100] * len(ex.prompt_ids) + ex.response_ids])
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=labels).loss.backward()
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


def test_gradient_features_public_api():
    model = tiny_lora_model()
    batch = [*examples(2, seed=5), Example(prompt_ids=[3, 4], response_ids=[])]
    raw = gradient_features(model, batch, projection_dim=None, batch_tokens=16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert raw.shape == (3, sum(p.numel() for p in trainable))
    # unprojected rows equal the backward loop, in named_parameters order
    for got, exp in zip(raw[:2], loop_gradients(model, batch[:2])):
        assert (got - exp).norm() / exp.norm() <= 1e-5
    assert torch.isnan(raw[2]).all()  # no response token: undefined, not zero
    projected = gradient_features(model, batch[:2], projection_dim=256, seed=3)
    assert projected.shape == (2, 256)
    assert torch.allclose(projected.norm(dim=1), torch.ones(2), atol=1e-5)


def test_the_loss_is_a_mean_per_sample_not_a_sum():
    """A sample repeated twice over as its own response has twice the tokens: with the mean its
    gradient keeps the scale of one copy (a sum would double it, and Adam preconditioning would
    then favour long responses)."""
    model = tiny_lora_model(seed=4)
    once = Example(prompt_ids=[1, 2], response_ids=[5, 6, 7, 5, 6, 7])
    featurizer = GradientFeaturizer(model, dim=10**9)
    grads, _, tokens = featurizer.per_sample_gradients([once])
    assert tokens.tolist() == [6]
    flat = torch.cat([g[0].flatten() for g in grads.values()])
    (expected,) = loop_gradients(model, [once])
    assert (flat - expected).norm() / expected.norm() <= 1e-5
    summed = expected * 6
    assert (flat - summed).norm() / summed.norm() > 0.5


@pytest.mark.parametrize("checkpointing", [False, True])
def test_chunked_logits_and_gradient_checkpointing_change_nothing(checkpointing):
    model = tiny_lora_model(seed=2)
    batch = examples(4, seed=11)
    reference = GradientFeaturizer(model, dim=10**9).features(batch, normalize=False).vectors
    lean = GradientFeaturizer(
        model, dim=10**9, loss_chunk_tokens=3, gradient_checkpointing=checkpointing
    )
    got = lean.features(batch, normalize=False).vectors
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-7)
    assert not model.training  # checkpointing leaves the model as it found it


def test_lora_on_the_output_layer_is_refused():
    torch.manual_seed(0)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(InfluenceError, match="output layer"):
        GradientFeaturizer(model)


def test_missing_optimizer_state_can_fall_back_to_plain_with_a_warning():
    model = tiny_lora_model()
    f = GradientFeaturizer(model, dim=256, optimizer_state={}, missing_state="plain")
    assert f.optimizer_state is None and "keyed by parameter name" in f.describe()["warnings"][0]
