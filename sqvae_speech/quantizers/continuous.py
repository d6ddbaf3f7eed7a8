"""The continuous Gaussian VAE: no quantization at all, the reference point below every
discrete bottleneck (Kingma & Welling 2014).

The encoder emits 2D channels: the means ``z`` [B, L, D] and the log-variances
``log_var`` [B, L, D] of q(z | x) = N(mu, diag(sigma^2)). Training passes the
reparameterized sample mu + sigma * eps (eps ~ N(0, I)) to the decoder; evaluation passes
the mean. The latent loss, in both modes, is the closed-form KL to the N(0, I) prior,
summed over valid positions and channels:

    KL = 0.5 sum (mu^2 + sigma^2 - 1 - log sigma^2)

Codebook usage does not apply: there are no codes, so ``indices`` are all -1 (as padding
is elsewhere), ``perplexity`` is NaN, ``num_embeddings`` is 0, ``codebook`` is None and
:meth:`GaussianVAE.lookup` raises.
"""

from __future__ import annotations

import math
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
    scatter_rows,
    valid_rows,
)


class GaussianVAE(nn.Module):
    """Continuous Gaussian latent with a standard normal prior (the textbook VAE; no
    reference repository: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014).

    Args:
        embedding_dim: D, latent dimension; the encoder emits 2D channels (means, log-variances).
        num_embeddings: ignored (accepted so that a config section shared by every
            quantizer can set K); there is no codebook and ``num_embeddings`` is 0.

    No parameters and no buffers.
    """

    codebook: Tensor | None = None

    def __init__(self, embedding_dim: int, num_embeddings: int | None = None) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ConfigError(f"Gaussian VAE needs D >= 1, got D={embedding_dim}")
        self.embedding_dim = embedding_dim
        self.num_embeddings = 0

    @classmethod
    def encoder_channels(cls, embedding_dim: int, **kwargs: Any) -> int:
        """Channels the encoder emits: 2D (D means, D log-variances)."""
        return 2 * embedding_dim

    def extra_repr(self) -> str:
        return f"D={self.embedding_dim}"

    def lookup(self, indices: Tensor) -> Tensor:
        """Not available: a continuous VAE has no codebook and its ``indices`` are all -1.
        Decode from the latents (``quantized``, the mean in evaluation) instead."""
        raise NotImplementedError(
            "GaussianVAE has no codebook: its latents are continuous, it emits no code indices, "
            "so there is nothing to look up; decode the latents themselves"
        )

    def forward(
        self, z: Tensor, log_var: Tensor | None = None, mask: Tensor | None = None, temperature: float = 1.0
    ) -> QuantizerOutput:
        """Sample (training) or take the mean (evaluation) of N(z, exp(log_var)).

        z: [B, L, D] means; log_var: [B, L, D] log-variances (required); mask: [B, L] bool,
        True = valid (None: all valid); ``temperature`` is ignored. ``quantized`` is the
        latent the decoder gets (0 on padding); ``loss`` = ``kl_continuous`` = the KL.
        """
        mask = check_inputs(z, mask, self.embedding_dim, "GaussianVAE")
        batch, length, _ = z.shape
        if log_var is None:
            raise ValueError(f"GaussianVAE needs log_var [B, L, {self.embedding_dim}]; got None")
        if tuple(log_var.shape) != tuple(z.shape):
            raise ValueError(f"GaussianVAE: log_var must be {tuple(z.shape)} like z, got {tuple(log_var.shape)}")
        with full_precision(z.device):
            dtype = compute_dtype(z, log_var)
            mu = valid_rows(z.to(dtype), mask)
            lv = valid_rows(log_var.to(dtype), mask)
            kl = 0.5 * (mu.square() + lv.exp() - 1.0 - lv).sum()
            if self.training:
                sample = mu + torch.exp(0.5 * lv) * torch.randn_like(mu)
            else:
                sample = mu
            indices = torch.full((batch, length), -1, dtype=torch.long, device=z.device)
            return QuantizerOutput(
                quantized=scatter_rows(sample, mask, batch, length).to(z.dtype),
                indices=indices,
                loss=kl,
                kl_continuous=kl,
                kl_discrete=kl.new_zeros(()),
                perplexity=kl.new_full((), math.nan).float(),
                log_var_mean=lv.detach().mean(),
                num_valid=count_valid(z, mask),
            )
