"""von Mises-Fisher stochastic quantization (docs/PROTOCOL.md, "Vision experiments").

Latents and codes live on the unit sphere; P(z_q = b_k | z) = softmax_k(kappa <z, b_k>).
Training draws z_q as a Gumbel-softmax mixture of the normalized codes (so a training
z_q is generally shorter than 1); evaluation takes the most probable code (norm 1).
Latent loss summed over valid positions: kappa (1 - <z, z_q>) + sum_k P log P.

The learned scalar. ``log_kappa_scalar`` = s with kappa = min_kappa + exp(s), min_kappa = 1,
s initialized to log(0.05): this is what the authors' vision code does (vMF quantizer
kappa = exp(log_param_q) + 1, log_param_q_init = -2.9957 = log 0.05; their config comment
says "log(0.01)", the value is log 0.05). docs/PROTOCOL.md's "init log 0.01 for vMF" matches
that comment and also the vMF *decoder's* log(1/kappa_x) = log 0.01 of the label-map
likelihood, which belongs to the model, not to this quantizer. The floor keeps kappa >= 1
so quantization never becomes uniform; ``min_kappa=0`` gives a plain kappa = exp(s).
``log_var_mean`` reports -log kappa, the variance-like quantity that shrinks as the model
self-anneals.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .common import (
    QuantizerOutput,
    check_inputs,
    compute_dtype,
    count_valid,
    full_precision,
    gumbel_softmax_sample,
    lookup_codes,
    rows_perplexity,
    scatter_rows,
    valid_rows,
)


class VMFSQ(nn.Module):
    """vMF SQ-VAE quantizer with a learned codebook ``codebook`` [K, D] (init N(0, 1),
    used normalized) and concentration kappa = min_kappa + exp(``log_kappa_scalar``).

    Source: the SQ-VAE authors' vision code, sony/sqvae (``vision/quantizer.py``), Takida et al. ICML 2022.

    Args:
        num_embeddings: K, codebook size (>= 2).
        embedding_dim: D, latent dimension (>= 2).
        init_log_kappa: initial value of the learned scalar s.
        min_kappa: floor of kappa (>= 0).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        init_log_kappa: float = math.log(0.05),
        min_kappa: float = 1.0,
    ) -> None:
        super().__init__()
        if num_embeddings < 2 or embedding_dim < 2:
            raise ConfigError(f"vMF SQ needs K >= 2 and D >= 2, got K={num_embeddings}, D={embedding_dim}")
        if min_kappa < 0:
            raise ConfigError(f"vMF SQ min_kappa must be >= 0, got {min_kappa}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.min_kappa = float(min_kappa)
        self.codebook = nn.Parameter(torch.randn(num_embeddings, embedding_dim))
        self.log_kappa_scalar = nn.Parameter(torch.tensor(float(init_log_kappa)))

    @classmethod
    def encoder_channels(cls, embedding_dim: int, **kwargs: Any) -> int:
        """Channels the encoder emits for this quantizer: D (no variance channels)."""
        return embedding_dim

    def extra_repr(self) -> str:
        return f"K={self.num_embeddings}, D={self.embedding_dim}, min_kappa={self.min_kappa}"

    def lookup(self, indices: Tensor) -> Tensor:
        """Unit-norm codes for ``indices`` [...] int64 -> [..., D] (-1 gives zeros), as the
        decoder gets them in evaluation."""
        return lookup_codes(self.normalized_codebook(), indices, "VMFSQ")

    def kappa(self) -> Tensor:
        """Scalar concentration kappa = min_kappa + exp(log_kappa_scalar)."""
        return self.log_kappa_scalar.exp() + self.min_kappa

    def normalized_codebook(self) -> Tensor:
        """[K, D] unit-norm codes."""
        return F.normalize(self.codebook, dim=-1)

    def logits(self, z: Tensor, log_var: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """kappa * cos(z, b_k): [B, L, K] (padding 0). ``log_var`` is ignored."""
        mask = check_inputs(z, mask, self.embedding_dim, "VMFSQ")
        batch, length, _ = z.shape
        with full_precision(z.device):
            dtype = compute_dtype(z, self.codebook)
            zv = F.normalize(valid_rows(z.to(dtype), mask), dim=-1)
            codes = F.normalize(self.codebook.to(dtype), dim=-1)
            kappa = self.kappa().to(dtype)
            return scatter_rows(kappa * (zv @ codes.t()), mask, batch, length)

    def forward(
        self, z: Tensor, log_var: Tensor | None = None, mask: Tensor | None = None, temperature: float = 1.0
    ) -> QuantizerOutput:
        """Quantize ``z`` [B, L, D] (normalized here); ``log_var`` is ignored;
        mask: [B, L] bool or None; temperature: Gumbel-softmax tau."""
        mask = check_inputs(z, mask, self.embedding_dim, "VMFSQ")
        batch, length, _ = z.shape
        with full_precision(z.device):
            dtype = compute_dtype(z, self.codebook)
            codes = F.normalize(self.codebook.to(dtype), dim=-1)
            zv = F.normalize(valid_rows(z.to(dtype), mask), dim=-1)
            kappa = self.kappa().to(dtype)

            logits = kappa * (zv @ codes.t())
            log_probs = torch.log_softmax(logits, dim=-1)
            kl_discrete = (log_probs.exp() * log_probs).sum()
            idx = logits.detach().argmax(dim=-1)
            if self.training:
                zq = gumbel_softmax_sample(logits, temperature) @ codes
            else:
                zq = codes[idx]
            kl_continuous = (kappa * (1.0 - (zv * zq).sum(-1))).sum()

            return QuantizerOutput(
                quantized=scatter_rows(zq, mask, batch, length).to(z.dtype),
                indices=scatter_rows(idx, mask, batch, length, fill=-1),
                loss=kl_continuous + kl_discrete,
                kl_continuous=kl_continuous,
                kl_discrete=kl_discrete,
                perplexity=rows_perplexity(idx, self.num_embeddings),
                log_var_mean=-kappa.detach().log(),
                num_valid=count_valid(z, mask),
            )
