"""Gradient-based influence against D_p (LESS-style, batched).

One forward + backward over a padded micro-batch yields every sample's own LoRA gradient: hooks
capture each LoRA linear's input activations x and output gradients g, and a sample's gradient of
that weight is sum_t g_t x_t^T over its own tokens (einsum), since the loss is a plain sum of
per-sample, per-token losses on response tokens only. LoRA gradients are small, so they are
materialised per sample, Adam-preconditioned elementwise (candidates) or kept plain (D_p), then
projected with a subsampled randomized Hadamard transform generated from a seed. No P x d matrix
ever exists, and the same (seed, dim, LoRA layout) gives the same features on any machine.

Influence(z) = sum_k lr_k * mean_{z' in D_p} cos(Gamma(z, theta_k), grad l(z', theta_k)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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

    grad may carry a leading batch dimension (one gradient per sample).
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
    """Per-sample LoRA gradients of a model, projected and L2-normalised, a micro-batch at a time."""

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
    ):
        self.model = model
        self.padding_side = padding_side
        self.modules = lora_modules(model)
        self.max_length = max_length
        self.pad_token_id = pad_token_id
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
            "warnings": self.warnings,
        }

    def per_sample_gradients(
        self, batch: Sequence[Example]
    ) -> tuple[dict[str, torch.Tensor], list[bool], torch.Tensor]:
        """{parameter name: (batch, rows, cols)}, truncated flags, response-token counts."""
        import torch
        from torch import nn

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

        input_ids = torch.tensor([pad(r, self.pad_token_id) for r in rows], device=device)
        attention = torch.tensor([pad([1] * len(r), 0) for r in rows], device=device)
        loss_mask = torch.tensor([pad(m, 0) for m in masks], device=device, dtype=torch.float32)
        positions = (attention.cumsum(dim=1) - 1).clamp_min(0)

        inputs: dict[str, torch.Tensor] = {}
        grads: dict[str, torch.Tensor] = {}
        handles = []
        for name, module in self.modules.items():

            def forward_hook(mod, args, output, name=name):
                inputs[name] = args[0].detach()
                output.register_hook(lambda g, name=name: grads.__setitem__(name, g.detach()))

            handles.append(module.register_forward_hook(forward_hook))
        try:
            self.model.zero_grad(set_to_none=True)
            logits = self.model(
                input_ids=input_ids, attention_mask=attention, position_ids=positions
            ).logits.float()
            # token t predicts token t+1: the loss of a response token sits one position earlier
            target_mask = loss_mask[:, 1:]
            losses = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                input_ids[:, 1:].reshape(-1),
                reduction="none",
            ).view(len(rows), -1)
            (losses * target_mask).sum().backward()
        finally:
            for h in handles:
                h.remove()
            self.model.zero_grad(set_to_none=True)
        per_sample = {
            name: torch.einsum("bto,bti->boi", grads[name].float(), inputs[name].float())
            for name in self.modules
        }
        return per_sample, truncated, target_mask.sum(dim=1)

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


def tokenize_records(tokenizer: Any, records: Sequence[dict[str, str]]) -> list[Example]:
    """Records {"prompt": str, "response": str} -> token ids.

    `prompt` is the model input exactly as trained on (already chat-formatted when the model has a
    chat template); `response` is the target. Both are tokenized without added special tokens;
    the end-of-sequence token is appended to the response, as in training.
    """
    out = []
    for i, record in enumerate(records):
        missing = [key for key in ("prompt", "response") if not isinstance(record.get(key), str)]
        if missing:
            raise InfluenceError(
                f"record {i} has no text field {missing[0]!r} (needs 'prompt' and 'response')"
            )
        response = tokenizer(record["response"], add_special_tokens=False)["input_ids"]
        if response and tokenizer.eos_token_id is not None:
            response = response + [tokenizer.eos_token_id]
        out.append(
            Example(tokenizer(record["prompt"], add_special_tokens=False)["input_ids"], response)
        )
    return out


def gradient_features(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, str]],
    *,
    projection_dim: int | None = 8192,
    seed: int = 0,
    optimizer_state: dict[str, AdamState] | None = None,
    batch_tokens: int | None = None,
    max_length: int = 2048,
) -> torch.Tensor:
    """Per-sample LoRA gradient features, one row per record (see `tokenize_records` for keys).

    projection_dim=None returns the unprojected gradients, flattened in the order of
    `model.named_parameters()` restricted to trainable parameters; otherwise rows are projected
    to projection_dim (SRHT from `seed`) and L2-normalised. With `optimizer_state` the gradients
    are Adam-preconditioned (candidates); without, plain (the reference set D_p). Micro-batches
    hold at most `batch_tokens` padded tokens (default: 16384 on CUDA; on a CPU one long sample
    at a time, since padded attention falls off the fast causal path there and costs more than
    batching saves: see BENCHMARKS.md). Rows of samples with no response token are NaN.
    """
    import torch

    examples = tokenize_records(tokenizer, records)
    if batch_tokens is None:
        on_cuda = next(model.parameters()).device.type == "cuda"
        batch_tokens = 16384 if on_cuda else max_length
    pad = (
        tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else (tokenizer.eos_token_id or 0)
    )
    featurizer = GradientFeaturizer(
        model,
        dim=projection_dim if projection_dim is not None else 1 << 62,
        seed=seed,
        max_length=max_length,
        pad_token_id=pad,
        optimizer_state=optimizer_state,
    )
    rows: list[np.ndarray] = []
    batch: list[Example] = []
    width = 0

    def flush() -> None:
        if not batch:
            return
        feats = featurizer.features(
            batch, precondition=optimizer_state is not None, normalize=projection_dim is not None
        )
        rows.append(feats.vectors)
        batch.clear()

    for ex in examples:
        length = min(len(ex.prompt_ids) + len(ex.response_ids), max_length)
        if batch and max(width, length) * (len(batch) + 1) > batch_tokens:
            flush()
            width = 0
        batch.append(ex)
        width = max(width, length)
    flush()
    return torch.from_numpy(np.vstack(rows)) if rows else torch.empty(0, featurizer.projector.dim)
