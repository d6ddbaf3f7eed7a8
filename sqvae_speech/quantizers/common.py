"""Pieces shared by every quantizer: the output tuple, valid-position gathering, the
float32 compute context and the Gumbel-softmax sample.

Convention: a padded batch of latents is ``z`` [B, L, D] with ``mask`` [B, L] (True =
valid). ``mask=None`` means every position is valid and skips the gather (training
crops). Quantizers do their math on the valid rows only ([N, D], N = number of valid
positions), so padding can neither contribute to a loss nor leak into an output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor


class QuantizerOutput(NamedTuple):
    """What every quantizer's ``forward`` returns.

    quantized:     [B, L, D] z_q in z's dtype; padded positions are 0.
    indices:       [B, L] int64 chosen code (argmax of the logits / nearest code); padding -1.
    loss:          scalar, latent loss summed over valid positions (``kl_continuous + kl_discrete``).
    kl_continuous: scalar, summed over valid positions (Gaussian: 0.5 (z-z_q)^T Sigma^-1 (z-z_q);
                   vMF: kappa (1 - <z, z_q>); VQ: the weighted commitment term).
    kl_discrete:   scalar, sum over valid positions of sum_k P log P (VQ: 0).
    perplexity:    scalar, exp(entropy of the batch histogram of ``indices``).
    log_var_mean:  scalar, mean log sigma^2 over valid positions and dims, detached
                   (vMF: -log kappa; VQ: NaN).
    num_valid:     scalar int64, number of valid positions.
    """

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    kl_continuous: Tensor
    kl_discrete: Tensor
    perplexity: Tensor
    log_var_mean: Tensor
    num_valid: Tensor


def check_inputs(z: Tensor, mask: Tensor | None, embedding_dim: int, name: str) -> Tensor | None:
    """Validate ``z`` [B, L, D] and ``mask`` [B, L]; return the mask as bool (or None)."""
    if z.dim() != 3 or z.shape[-1] != embedding_dim:
        raise ValueError(f"{name}: z must be [B, L, {embedding_dim}], got {tuple(z.shape)}")
    if mask is None:
        return None
    if mask.shape != z.shape[:2]:
        raise ValueError(f"{name}: mask must be [B, L] = {tuple(z.shape[:2])}, got {tuple(mask.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs; float64 stays float64 (tests)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Disable autocast: softmax over K codes and exp(-log sigma^2) lose too much in bf16."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def valid_rows(x: Tensor, mask: Tensor | None) -> Tensor:
    """[B, L, C] -> [N, C]: the rows at valid positions (a view when ``mask`` is None)."""
    if mask is None:
        return x.reshape(-1, x.shape[-1])
    return x[mask]


def scatter_rows(rows: Tensor, mask: Tensor | None, batch: int, length: int, fill: float = 0) -> Tensor:
    """Inverse of :func:`valid_rows`: [N, ...] -> [B, L, ...], padding set to ``fill``."""
    if mask is None:
        return rows.reshape(batch, length, *rows.shape[1:])
    out = rows.new_full((batch, length, *rows.shape[1:]), fill)
    out[mask] = rows
    return out


def count_valid(z: Tensor, mask: Tensor | None) -> Tensor:
    """Scalar int64: number of valid positions."""
    if mask is None:
        return torch.tensor(z.shape[0] * z.shape[1], dtype=torch.long, device=z.device)
    return mask.sum()


def gumbel_softmax_sample(logits: Tensor, temperature: float) -> Tensor:
    """Relaxed one-hot sample softmax((logits + g) / tau), g ~ Gumbel(0, 1). [N, K] -> [N, K].

    g = -log(E) with E = -log(U) ~ Exp(1), U ~ Uniform[0, 1). E is clamped away from 0
    because a single exact zero would give +inf and a NaN softmax (U = 0 gives E = inf,
    g = -inf: that code just gets probability 0). Drawing U and taking two logs is ~10x
    faster on CPU than ``Tensor.exponential_`` (bench/README.md, quantizer benchmark).
    """
    if not temperature > 0:
        raise ValueError(f"Gumbel-softmax temperature must be > 0, got {temperature}")
    log_e = torch.rand_like(logits).log_().neg_().clamp_min_(torch.finfo(logits.dtype).tiny).log_()
    return torch.softmax((logits - log_e) / temperature, dim=-1)


def rows_perplexity(idx: Tensor, num_embeddings: int) -> Tensor:
    """exp(entropy) of the histogram of code indices ``idx`` [N] (all valid). NaN when N = 0."""
    counts = torch.bincount(idx, minlength=num_embeddings).to(torch.float32)
    probs = counts / counts.sum()
    # xlogy gives 0 for empty bins instead of 0 * log 0 = NaN.
    return torch.exp(-torch.special.xlogy(probs, probs).sum())


def lookup_codes(table: Tensor, indices: Tensor, name: str) -> Tensor:
    """Rows of ``table`` [K, D] at ``indices`` [...] (integer) -> [..., D].

    Index -1 (padding, as in :class:`QuantizerOutput`) gives a zero vector, as padded
    positions of ``quantized`` are; any other index outside [0, K) is an error.
    """
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise TypeError(f"{name}.lookup: indices must be an integer tensor, got {indices.dtype}")
    k = table.shape[0]
    idx = indices.long()
    if idx.numel() and (int(idx.min()) < -1 or int(idx.max()) >= k):
        raise ValueError(
            f"{name}.lookup: indices must be in [0, {k}) or -1 (padding), got range "
            f"[{int(idx.min())}, {int(idx.max())}]"
        )
    pad = idx < 0
    return table[idx.clamp_min(0)].masked_fill(pad.unsqueeze(-1), 0)


def nearest_code_output(z: Tensor, mask: Tensor | None, zv: Tensor, zq: Tensor, idx: Tensor,
                        commitment_weight: float, num_embeddings: int) -> QuantizerOutput:
    """The output of a nearest-code quantizer (VQ-EMA, k-means VQ).

    z: [B, L, D] the input; zv: [N, D] its valid rows (as compared with the codes); zq: [N, D]
    their codes; idx: [N] the code indices. z_q is straight-through with the exact value of
    the codes (``zv - zv.detach()`` is exactly 0); the loss is the commitment term,
    ``commitment_weight * sum (zv - zq)^2 / D`` (divide by the valid positions for the mean
    squared error the references use).
    """
    batch, length, dim = z.shape
    commitment = commitment_weight * (zv - zq).square().sum() / dim
    quantized_rows = zq + (zv - zv.detach())
    return QuantizerOutput(
        quantized=scatter_rows(quantized_rows, mask, batch, length).to(z.dtype),
        indices=scatter_rows(idx, mask, batch, length, fill=-1),
        loss=commitment,
        kl_continuous=commitment,
        kl_discrete=commitment.new_zeros(()),
        perplexity=rows_perplexity(idx, num_embeddings),
        log_var_mean=commitment.new_full((), float("nan")),
        num_valid=count_valid(z, mask),
    )
