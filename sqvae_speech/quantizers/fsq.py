"""Finite scalar quantization (Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made
Simple", ICLR 2024), as lucidrains/vector-quantize-pytorch implements it
(``vector_quantize_pytorch/finite_scalar_quantization.py``, class ``FSQ``).

With ``levels`` = (L_1, ..., L_d) the latent z [.., D] is projected to d channels
(a Linear layer, only when D != d, as theirs), each channel is bounded and rounded to one
of L_i values, and the result is projected back to D:

    half_l = (L - 1) (1 + eps) / 2,   offset = 0.5 if L is even else 0,
    shift  = atanh(offset / half_l),
    bound(h) = tanh(h + shift) half_l - offset
    code     = round_ste(bound(h)) / (L // 2)          (values in [-1, 1])

round_ste rounds forward and passes the gradient straight through. The half-level offset
makes an even L give L integer values after rounding (for L = 8: -4..3). The index of a
code is the mixed-radix number sum_i (code_i (L_i // 2) + L_i // 2) prod_{j < i} L_j, so
K = prod(levels) (default (8, 8, 8): 512, the codebook size of the speech models).

There is no codebook to learn and no codebook or commitment loss: ``loss`` is 0. The
implicit codebook [K, D] (all codes, after ``project_out``) is the ``codebook`` property.
Training and evaluation are the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .common import (
    QuantizerOutput,
    check_inputs,
    compute_dtype,
    count_valid,
    full_precision,
    lookup_codes,
    rows_perplexity,
    scatter_rows,
    valid_rows,
)


def round_ste(x: Tensor) -> Tensor:
    """round(x) forward, identity gradient."""
    return x + (x.round() - x).detach()


class FSQ(nn.Module):
    """Finite scalar quantizer (source: lucidrains/vector-quantize-pytorch,
    ``vector_quantize_pytorch/finite_scalar_quantization.py``; see the module docstring).

    Args:
        embedding_dim: D, latent dimension (encoder output and decoder input).
        levels: number of values of each FSQ channel (each >= 2); K = prod(levels).
        num_embeddings: optional; when given it must equal prod(levels) (lets a config
            section shared by every quantizer set K).
        eps: the bound's margin (theirs 1e-3), so that rounding never reaches L_i values
            past the ends.

    Modules: ``project_in`` (D -> d) and ``project_out`` (d -> D), Linear when D != d,
    identity otherwise (d = len(levels)).
    """

    def __init__(
        self,
        embedding_dim: int,
        levels: Sequence[int] = (8, 8, 8),
        num_embeddings: int | None = None,
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        levels = tuple(int(v) for v in levels)
        if not levels or any(v < 2 for v in levels):
            raise ConfigError(f"FSQ levels must be a non-empty list of integers >= 2, got {list(levels)}")
        if embedding_dim < 1:
            raise ConfigError(f"FSQ needs D >= 1, got D={embedding_dim}")
        size = math.prod(levels)
        if num_embeddings is not None and num_embeddings != size:
            raise ConfigError(
                f"FSQ codebook size is prod(levels) = {size} for levels {list(levels)}, but num_embeddings={num_embeddings}; "
                "set levels whose product is K (e.g. [8, 8, 8] for 512, [8, 5, 5, 5] for 1000)"
            )
        if not 0.0 <= eps < 1.0:
            raise ConfigError(f"FSQ eps must be in [0, 1), got {eps}")
        self.levels = levels
        self.num_embeddings = size
        self.embedding_dim = embedding_dim
        self.eps = float(eps)
        lv = torch.tensor(levels, dtype=torch.int64)
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_basis", torch.cumprod(torch.tensor((1,) + levels[:-1]), dim=0), persistent=False)
        d = len(levels)
        self.project_in: nn.Module = nn.Linear(embedding_dim, d) if embedding_dim != d else nn.Identity()
        self.project_out: nn.Module = nn.Linear(d, embedding_dim) if embedding_dim != d else nn.Identity()

    @classmethod
    def encoder_channels(cls, embedding_dim: int, **kwargs: Any) -> int:
        """Channels the encoder emits for this quantizer: D."""
        return embedding_dim

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, K={self.num_embeddings}, D={self.embedding_dim}"

    # -- the FSQ math, on [..., d] tensors --------------------------------------------------
    def bound(self, h: Tensor) -> Tensor:
        """[..., d] -> [..., d] in (-half_l - offset, half_l - offset) per channel."""
        levels = self._levels.to(h.dtype)
        half_l = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0).to(h.dtype)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(h + shift) * half_l - offset

    def quantize(self, h: Tensor) -> Tensor:
        """[..., d] -> codes [..., d] with values in [-1, 1] (straight-through rounding)."""
        half_width = (self._levels // 2).to(h.dtype)
        return round_ste(self.bound(h)) / half_width

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Codes [..., d] -> mixed-radix indices [...] int64."""
        half_width = (self._levels // 2).to(codes.dtype)
        digits = (codes * half_width + half_width).round().long()
        return (digits * self._basis).sum(dim=-1)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Indices [...] (in [0, K)) -> codes [..., d] in [-1, 1] (before ``project_out``)."""
        digits = (indices.long().unsqueeze(-1) // self._basis) % self._levels
        half_width = self._levels // 2
        dtype = torch.get_default_dtype()
        return (digits - half_width).to(dtype) / half_width.to(dtype)

    # -- the common interface -----------------------------------------------------------------
    def _compute_dtype(self, z: Tensor) -> torch.dtype:
        return compute_dtype(z, *self.parameters())

    @property
    def codebook(self) -> Tensor:
        """The implicit codebook [K, D]: every code after ``project_out``."""
        codes = self.indices_to_codes(torch.arange(self.num_embeddings, device=self._levels.device))
        dtype = compute_dtype(codes, *self.parameters())
        with full_precision(codes.device):
            return self.project_out(codes.to(dtype))

    def lookup(self, indices: Tensor) -> Tensor:
        """Vectors for ``indices`` [...] int64 -> [..., D] (-1 gives zeros), as the decoder gets them."""
        return lookup_codes(self.codebook, indices, "FSQ")

    def forward(
        self, z: Tensor, log_var: Tensor | None = None, mask: Tensor | None = None, temperature: float = 1.0
    ) -> QuantizerOutput:
        """Quantize ``z`` [B, L, D]; ``log_var`` and ``temperature`` are ignored; mask:
        [B, L] bool, True = valid (None: all valid). ``loss`` is 0 (no codebook loss)."""
        mask = check_inputs(z, mask, self.embedding_dim, "FSQ")
        batch, length, _ = z.shape
        with full_precision(z.device):
            dtype = self._compute_dtype(z)
            zv = valid_rows(z.to(dtype), mask)
            codes = self.quantize(self.project_in(zv))
            idx = self.codes_to_indices(codes.detach())
            out = self.project_out(codes)
            zero = out.new_zeros(())
            return QuantizerOutput(
                quantized=scatter_rows(out, mask, batch, length).to(z.dtype),
                indices=scatter_rows(idx, mask, batch, length, fill=-1),
                loss=zero,
                kl_continuous=zero,
                kl_discrete=zero,
                perplexity=rows_perplexity(idx, self.num_embeddings),
                log_var_mean=out.new_full((), math.nan),
                num_valid=count_valid(z, mask),
            )
