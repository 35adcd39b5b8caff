"""Gradient-based influence against D_p, as LESS defines it (batched).

A sample's loss is the mean of its per-token losses over its response tokens (LESS's definition,
and the scale of the gradients whose Adam moments TRL's trainer saves). One forward + backward over
a padded micro-batch yields every sample's own LoRA gradient of that loss: the backward runs on the
sum over the batch of each sample's mean, and samples never interact (attention stays inside a
sample and nothing normalises across the batch), so the gradient that reaches a sample's positions
is exactly the gradient of its own mean loss. Hooks capture each LoRA linear's input activations x
and output gradients g, and a sample's gradient of that weight is sum_t g_t x_t^T over its own
positions (einsum), computed as soon as g arrives so that no output gradient outlives its layer.
Logits exist only at response positions, a chunk of them at a time: the output layer runs on the
final hidden states of those positions, and its gradient is handed back to the network in one
backward. LoRA gradients are small, so they are materialised per sample, Adam-preconditioned
elementwise (candidates) or kept plain (D_p), then projected with a subsampled randomized
Hadamard transform generated from a seed. No P x d matrix ever exists, and the same (seed, dim,
LoRA layout) gives the same features on any machine.

Influence(z) = sum_k lr_k * mean_{z' in D_p} cos(Gamma(z, theta_k), grad l(z', theta_k)).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from scoder.errors import ScoderError

if TYPE_CHECKING:  # torch is imported where it is used: `scoder --help` should not wait for it
    import torch
    from torch import nn


class InfluenceError(ScoderError):
    pass


@dataclass(frozen=True)
class Example:
    """One training sample as token ids: the prompt (masked) and the response (the loss)."""

    prompt_ids: list[int]
    response_ids: list[int]


@dataclass
class Features:
    """L2-normalised projected gradients, one row per sample; excluded rows are NaN."""

    vectors: np.ndarray  # (n, dim) float32
    truncated: list[bool]
    excluded: dict[int, str] = field(default_factory=dict)  # row -> reason


@dataclass(frozen=True)
class AdamState:
    """Adam moments of one parameter, as saved by the synthesizer's training (looked up by name)."""

    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


def adam_precondition(grad: torch.Tensor, state: AdamState) -> torch.Tensor:
    """The update direction Adam would take from this gradient: m_hat / (sqrt(v_hat) + eps).

    This is LESS's Gamma as its paper writes it and as torch's AdamW (the optimizer whose moments
    the checkpoint holds) steps. LESS's released code skips the bias correction, one scalar per
    checkpoint that cancels in the cosine, and puts eps under the square root, which floors the
    denominator at 1e-4 instead of 1e-8; we follow the paper and the optimizer. grad may carry a
    leading batch dimension (one gradient per sample).
    """
    beta1, beta2 = state.betas
    t = state.step + 1
    m = beta1 * state.exp_avg + (1 - beta1) * grad
    v = beta2 * state.exp_avg_sq + (1 - beta2) * grad.square()
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    return m_hat / (v_hat.sqrt() + state.eps)


def lora_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """The trainable linears (peft's lora_A / lora_B), by the name of their weight parameter."""
    from torch import nn

    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.weight.requires_grad:
            out[f"{name}.weight"] = module
    if not out:
        raise InfluenceError(
            "the model has no trainable linear layers: wrap it with a LoRA adapter first"
        )
    return out


def _fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal fast Walsh-Hadamard transform along the last dimension (a power of 2)."""
    import torch

    batch, n = x.shape
    h = 1
    while h < n:
        x = x.view(batch, n // (2 * h), 2, h)
        x = torch.stack((x[:, :, 0] + x[:, :, 1], x[:, :, 0] - x[:, :, 1]), dim=2)
        h *= 2
    return x.reshape(batch, n) / math.sqrt(n)


class Projector:
    """Subsampled randomized Hadamard transform (SRHT) of the flattened LoRA gradient to `dim`.

    x -> sqrt(n / dim) * S H D x: D random signs, H the Hadamard transform, S `dim` coordinates
    sampled without replacement, all from `seed`. It preserves inner products like a dense
    Gaussian projection (Johnson-Lindenstrauss) at O(n log n) per sample, and the P x dim matrix
    of LESS/TRAK never exists: only n signs and dim indices.
    """

    def __init__(self, shapes: dict[str, tuple[int, int]], dim: int, seed: int):
        import torch

        self.seed = seed
        self.names = list(shapes)
        self.total = sum(r * c for r, c in shapes.values())
        self.identity = dim >= self.total
        self.dim = self.total if self.identity else dim
        self.n = 1 << max(self.total - 1, 1).bit_length()
        gen = torch.Generator().manual_seed(seed)
        self.signs = torch.randint(0, 2, (self.n,), generator=gen).float() * 2 - 1
        self.rows = torch.randperm(self.n, generator=gen)[: self.dim].sort().values

    def describe(self) -> dict[str, Any]:
        kind = "identity" if self.identity else "srht"
        return {"kind": kind, "seed": self.seed, "dim": self.dim, "parameters": self.total}

    def project(self, flat: torch.Tensor) -> torch.Tensor:
        """(batch, parameters) -> (batch, dim)."""
        import torch

        if self.identity:
            return flat
        padded = torch.zeros(flat.shape[0], self.n, dtype=flat.dtype, device=flat.device)
        padded[:, : self.total] = flat * self.signs[: self.total].to(flat.device)
        padded[:, self.total :] = 0
        mixed = _fwht(padded)
        return mixed[:, self.rows.to(flat.device)] * math.sqrt(self.n / self.dim)


class GradientFeaturizer:
    """Per-sample LoRA gradients of a model, projected and L2-normalised, a micro-batch at a time.

    `loss_chunk_tokens`: response positions whose logits exist at once (fp32, full vocabulary);
    `gradient_checkpointing`: recompute each layer's activations in the backward instead of
    keeping them (less memory, about a third more time).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        dim: int = 8192,
        seed: int = 0,
        max_length: int = 2048,
        pad_token_id: int = 0,
        optimizer_state: dict[str, AdamState] | None = None,
        missing_state: str = "error",
        padding_side: str = "right",
        loss_chunk_tokens: int = 1024,
        gradient_checkpointing: bool = False,
    ):
        self.model = model
        self.padding_side = padding_side
        self.modules = lora_modules(model)
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.loss_chunk_tokens = loss_chunk_tokens
        self.gradient_checkpointing = gradient_checkpointing
        self.network, self.decoder, self.output_layer = _split_output_layer(model)
        on_output = [n for n, m in self.modules.items() if _inside(m, self.output_layer)]
        if on_output:
            raise InfluenceError(
                f"LoRA on the output layer ({on_output[0]!r}) is not supported for influence: "
                "train the synthesizer's adapter on the attention/MLP projections"
            )
        self.warnings: list[str] = []
        if optimizer_state is not None:
            missing = sorted(set(self.modules) - set(optimizer_state))
            if missing:
                message = (
                    f"the optimizer state has no moments for {len(missing)} of {len(self.modules)} "
                    f"LoRA parameters (e.g. {missing[0]!r}); it must be keyed by parameter name"
                )
                if missing_state != "plain":
                    raise InfluenceError(message)
                self.warnings.append(message + "; using plain gradients instead")
                optimizer_state = None
        self.optimizer_state = optimizer_state
        shapes = {name: tuple(m.weight.shape) for name, m in self.modules.items()}
        self.projector = Projector(shapes, dim, seed)  # type: ignore[arg-type]

    def describe(self) -> dict[str, Any]:
        return {
            **self.projector.describe(),
            "modules": len(self.modules),
            "lora_parameters": sum(m.weight.numel() for m in self.modules.values()),
            "adam_preconditioned": self.optimizer_state is not None,
            "max_length": self.max_length,
            "loss": "mean over the sample's response tokens",
            "gradient_checkpointing": self.gradient_checkpointing,
            "warnings": self.warnings,
        }

    def batch_inputs(self, batch: Sequence[Example]) -> dict[str, Any]:
        """The padded micro-batch: input_ids, attention_mask, position_ids, loss_mask (1 on
        response tokens, the tokens the trainer's labels keep) and truncated flags."""
        import torch

        rows, truncated, masks = [], [], []
        for ex in batch:
            ids = list(ex.prompt_ids) + list(ex.response_ids)
            labels = [0] * len(ex.prompt_ids) + [1] * len(ex.response_ids)
            truncated.append(len(ids) > self.max_length)
            rows.append(ids[: self.max_length])
            masks.append(labels[: self.max_length])
        width = max(len(r) for r in rows)
        device = next(self.model.parameters()).device

        # Pads are masked out of attention and of the loss; positions are counted over real
        # tokens only, so either padding side gives every sample its unpadded result.
        def pad(seq: list[int], value: int) -> list[int]:
            fill = [value] * (width - len(seq))
            return fill + seq if self.padding_side == "left" else seq + fill

        attention = torch.tensor([pad([1] * len(r), 0) for r in rows], device=device)
        return {
            "input_ids": torch.tensor([pad(r, self.pad_token_id) for r in rows], device=device),
            "attention_mask": attention,
            "position_ids": (attention.cumsum(dim=1) - 1).clamp_min(0),
            "loss_mask": torch.tensor([pad(m, 0) for m in masks], device=device),
            "truncated": truncated,
        }

    def per_sample_gradients(
        self, batch: Sequence[Example]
    ) -> tuple[dict[str, torch.Tensor], list[bool], torch.Tensor]:
        """{parameter name: (batch, rows, cols)}, truncated flags, response-token counts.

        Each row is the gradient of that sample's mean loss over its response tokens.
        """
        import torch

        inputs = self.batch_inputs(batch)
        input_ids = inputs["input_ids"]
        # token t predicts token t+1: the loss of a response token sits one position earlier
        targets_at = inputs["loss_mask"][:, 1:].bool()
        counts = targets_at.sum(dim=1)
        sample, position = targets_at.nonzero(as_tuple=True)
        targets = input_ids[sample, position + 1]
        weights = 1.0 / counts.clamp_min(1).float()[sample]  # each sample's mean, not the batch's

        captured: dict[str, torch.Tensor] = {}
        per_sample: dict[str, torch.Tensor] = {}
        handles = []
        for name, module in self.modules.items():

            def on_gradient(g, name=name):
                x = captured.pop(name)
                per_sample[name] = torch.einsum("bto,bti->boi", g.float(), x.float())

            def forward_hook(mod, args, output, name=name):
                # under gradient checkpointing a layer runs again in the backward: keep the first
                # input, and register the gradient hook on the output the backward goes through
                if name in per_sample or name in captured:
                    return
                captured[name] = args[0].detach()
                output.register_hook(lambda g, name=name: on_gradient(g, name))

            handles.append(module.register_forward_hook(forward_hook))
        try:
            self.model.zero_grad(set_to_none=True)
            with _checkpointing(self.network, self.gradient_checkpointing):
                hidden = self.decoder(
                    input_ids=input_ids,
                    attention_mask=inputs["attention_mask"],
                    position_ids=inputs["position_ids"],
                    use_cache=False,
                ).last_hidden_state
                at_targets = hidden[sample, position]  # (response tokens, hidden)
                grad = torch.zeros_like(at_targets)
                for start in range(0, len(targets), self.loss_chunk_tokens):
                    part = slice(start, start + self.loss_chunk_tokens)
                    h = at_targets[part].detach().requires_grad_(True)
                    logits = self._logits(h).float()
                    losses = torch.nn.functional.cross_entropy(
                        logits, targets[part], reduction="none"
                    )
                    (grad[part],) = torch.autograd.grad((losses * weights[part]).sum(), h)
                    del logits, losses
                if len(targets):
                    at_targets.backward(grad)
        finally:
            for h in handles:
                h.remove()
            self.model.zero_grad(set_to_none=True)
        missing = [n for n in self.modules if n not in per_sample]
        for name in missing:  # no response token anywhere in the batch: no gradient reached it
            w = self.modules[name].weight
            per_sample[name] = torch.zeros(len(batch), *w.shape, device=w.device)
        return {n: per_sample[n] for n in self.modules}, inputs["truncated"], counts

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.output_layer(hidden)
        config = getattr(self.network, "config", None)
        scale = getattr(config, "logit_scale", None)
        if scale:
            logits = logits * scale
        cap = getattr(config, "final_logit_softcapping", None)
        if cap:
            logits = (logits / cap).tanh() * cap
        return logits

    def features(
        self, batch: Sequence[Example], *, precondition: bool = False, normalize: bool = True
    ) -> Features:
        """Projected, L2-normalised gradients; Adam-preconditioned when `precondition`."""
        import torch

        if precondition and self.optimizer_state is None:
            raise InfluenceError("Adam preconditioning needs the optimizer state of the checkpoint")
        per_sample, truncated, tokens = self.per_sample_gradients(batch)
        parts = []
        for name, g in per_sample.items():
            if precondition:
                state = self.optimizer_state[name]  # type: ignore[index]
                g = adam_precondition(
                    g,
                    AdamState(
                        state.exp_avg.to(g),
                        state.exp_avg_sq.to(g),
                        state.step,
                        state.betas,
                        state.eps,
                    ),
                )
            parts.append(g.flatten(1))
        vectors = self.projector.project(torch.cat(parts, dim=1))
        excluded: dict[int, str] = {}
        for i in range(len(batch)):
            if tokens[i] == 0:
                excluded[i] = "no response tokens (nothing to learn from): influence undefined"
            elif not torch.isfinite(vectors[i]).all():
                excluded[i] = "gradient is not finite (NaN or inf)"
            elif vectors[i].norm() == 0:
                excluded[i] = "gradient is zero"
        if normalize:
            vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-30)
        out = vectors.detach().cpu().numpy().astype(np.float32)
        for i in excluded:
            out[i] = np.nan
        return Features(out, truncated, excluded)


def _split_output_layer(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(the transformers model, its decoder stack, its output layer) of a causal LM, peft-wrapped
    or not: influence runs the output layer itself, on response positions only."""
    network = model.get_base_model() if hasattr(model, "get_base_model") else model
    output = network.get_output_embeddings() if hasattr(network, "get_output_embeddings") else None
    decoder = network.get_decoder() if hasattr(network, "get_decoder") else None
    if output is None or decoder is None or decoder is network:
        raise InfluenceError(
            f"{type(network).__name__} does not expose its decoder and output layer "
            "(get_decoder / get_output_embeddings): influence needs a causal LM"
        )
    return network, decoder, output


def _inside(module: nn.Module, container: nn.Module) -> bool:
    return any(m is module for m in container.modules())


@contextlib.contextmanager
def _checkpointing(network: nn.Module, enabled: bool) -> Iterator[None]:
    """Gradient checkpointing for one backward, dropout kept off (transformers checkpoints only in
    training mode; influence must be deterministic)."""
    if not enabled:
        yield
        return
    from torch import nn

    # transformers 5 renamed gradient to activation checkpointing; older releases have the first
    enable = getattr(network, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        network.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    was_training = network.training
    network.train()
    for m in network.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    try:
        yield
    finally:
        disable = getattr(network, "activation_checkpointing_disable", None)
        (disable or network.gradient_checkpointing_disable)()
        network.train(was_training)


def influence_scores(
    candidates: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    learning_rates: Sequence[float],
) -> np.ndarray:
    """sum_k lr_k * mean over references of cos(candidate_k, reference_k); NaN rows stay NaN.

    candidates[k]: (n, d) and references[k]: (r, d) L2-normalised features at checkpoint k.
    """
    if not len(candidates) == len(references) == len(learning_rates) or not candidates:
        raise InfluenceError(
            "need the same checkpoints (at least one) for candidates, references and learning rates"
        )
    total = np.zeros(candidates[0].shape[0], dtype=np.float64)
    for cand, ref, lr in zip(candidates, references, learning_rates):
        ref = ref[~np.isnan(ref).any(axis=1)]
        if len(ref) == 0:
            raise InfluenceError(
                "the reference set (D_p) has no usable gradient at some checkpoint"
            )
        total += lr * (cand.astype(np.float64) @ ref.astype(np.float64).mean(axis=0))
    return total


def micro_batches(
    examples: Sequence[Example], batch_tokens: int, max_length: int
) -> list[list[int]]:
    """Indices of `examples` grouped in order into micro-batches of at most `batch_tokens` padded
    tokens (a longer sample alone). Deterministic: the same examples always batch the same way."""
    out: list[list[int]] = []
    batch: list[int] = []
    width = 0
    for i, ex in enumerate(examples):
        length = min(len(ex.prompt_ids) + len(ex.response_ids), max_length)
        if batch and max(width, length) * (len(batch) + 1) > batch_tokens:
            out.append(batch)
            batch, width = [], 0
        batch.append(i)
        width = max(width, length)
    if batch:
        out.append(batch)
    return out


def cuda_batch_tokens(featurizer: GradientFeaturizer, probe: Sequence[Example]) -> int:
    """Padded tokens per micro-batch that fit this GPU, from measurement: one probe micro-batch's
    peak memory above the resident model gives the cost per token, and the micro-batch fills 80%
    of the memory still free (at least one max_length sample, at most 65,536 tokens)."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    featurizer.per_sample_gradients(probe)
    torch.cuda.synchronize()
    tokens = len(probe) * max(
        min(len(e.prompt_ids) + len(e.response_ids), featurizer.max_length) for e in probe
    )
    per_token = max(torch.cuda.max_memory_allocated() - resident, 1) / tokens
    free, _ = torch.cuda.mem_get_info()
    free += torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    fit = int(0.8 * free / per_token)
    return max(featurizer.max_length, min(fit, 65536))


def gradient_features(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    pad_token_id: int = 0,
    projection_dim: int | None = 8192,
    seed: int = 0,
    optimizer_state: dict[str, AdamState] | None = None,
    batch_tokens: int | None = None,
    max_length: int = 2048,
    loss_chunk_tokens: int = 1024,
    gradient_checkpointing: bool = False,
) -> torch.Tensor:
    """Per-sample LoRA gradient features, one row per example (the trainer's tokens, e.g. from
    `scoder.train.tokenize_example`).

    projection_dim=None returns the unprojected gradients, flattened in the order of
    `model.named_parameters()` restricted to trainable parameters; otherwise rows are projected
    to projection_dim (SRHT from `seed`) and L2-normalised. With `optimizer_state` the gradients
    are Adam-preconditioned (candidates); without, plain (the reference set D_p). Micro-batches
    hold at most `batch_tokens` padded tokens (default on CUDA: sized from a measured probe, see
    `cuda_batch_tokens`; on a CPU one long sample at a time, since padded attention falls off the
    fast causal path there and costs more than batching saves: see BENCHMARKS.md). Rows of
    samples with no response token are NaN.
    """
    import torch

    featurizer = GradientFeaturizer(
        model,
        dim=projection_dim if projection_dim is not None else 1 << 62,
        seed=seed,
        max_length=max_length,
        pad_token_id=pad_token_id,
        optimizer_state=optimizer_state,
        loss_chunk_tokens=loss_chunk_tokens,
        gradient_checkpointing=gradient_checkpointing,
    )
    if not examples:
        return torch.empty(0, featurizer.projector.dim)
    if batch_tokens is None:
        on_cuda = next(model.parameters()).device.type == "cuda"
        batch_tokens = (
            cuda_batch_tokens(featurizer, micro_batches(examples, 4 * max_length, max_length)[0])
            if on_cuda
            else max_length
        )
    rows = [
        featurizer.features(
            [examples[i] for i in group],
            precondition=optimizer_state is not None,
            normalize=projection_dim is not None,
        ).vectors
        for group in micro_batches(examples, batch_tokens, max_length)
    ]
    return torch.from_numpy(np.vstack(rows))
