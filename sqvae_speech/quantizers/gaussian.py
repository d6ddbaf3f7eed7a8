"""Gaussian stochastic quantization: SQ-VAE variants I-IV (docs/PROTOCOL.md, sections 1
"The model" and 2 "Variance parameterizations I-IV").

P(z_q = b_k | z) = softmax_k(-0.5 ||z - b_k||^2_Sigma). Training draws z_q as a
Gumbel-softmax soft sample (no straight-through, no stop-gradient); evaluation takes the
most probable code. The latent loss summed over valid positions is
0.5 (z - z_q)^T Sigma^-1 (z - z_q) + sum_k P log P.

Sigma comes from the encoder's raw log-variance channels ``log_var`` [B, L, C] and a
learned scalar ``log_var_scalar``:

======== ==================================== =====================
variant  reduction of ``log_var``             shape of log sigma^2
======== ==================================== =====================
I        none: log sigma^2 = s (log space),   [1, 1, 1]
         log(1 + exp(s)) (linear space)
II       mean over valid positions, channels  [B, 1, 1]
III      mean over channels                   [B, L, 1]
IV       none (needs C == D)                  [B, L, D]
======== ==================================== =====================

The scalar is learned by default; ``learn_variance=False`` keeps it fixed at
``init_log_var`` (a buffer, not a parameter): "quantization with fixed sigma_q^2", the
ablation of the paper's Table 2 (variant I with a fixed variance).

``var_space="log"`` (speech): log sigma^2 = reduced + scalar.
``var_space="linear"`` (vision): sigma^2 = exp(reduced) + exp(scalar), computed as
logaddexp(reduced, scalar) so it neither overflows nor loses the small term.
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
    gumbel_softmax_sample,
    lookup_codes,
    rows_perplexity,
    scatter_rows,
    valid_rows,
)

VARIANTS = ("I", "II", "III", "IV")
VAR_SPACES = ("log", "linear")


def gaussian_logits(z: Tensor, codebook: Tensor, precision: Tensor) -> Tensor:
    """logits[n, k] = -0.5 sum_d p[n, d] (z[n, d] - b[k, d])^2, by matrix products only.

    z: [N, D]; codebook: [K, D]; precision: [1, 1] or [N, 1] (isotropic) or [N, D]
    (diagonal). Returns [N, K]. The diagonal case expands the square into
    sum_d p z^2 - 2 (p*z) @ B^T + p @ (B^2)^T, so no [N, D, K] tensor is ever built.
    """
    if precision.shape[-1] == 1:
        # z.b - 0.5 |b|^2 in one addmm, then the per-row constant and the precision.
        zb = torch.addmm((codebook * codebook).sum(-1).mul(-0.5).unsqueeze(0), z, codebook.t())
        return (zb - 0.5 * (z * z).sum(-1, keepdim=True)) * precision
    pz = precision * z
    logits = torch.addmm((pz * z).sum(-1, keepdim=True).mul(-0.5), pz, codebook.t())
    return torch.addmm(logits, precision, (codebook * codebook).t(), alpha=-0.5)


class GaussianSQ(nn.Module):
    """Gaussian SQ-VAE quantizer with a learned codebook ``codebook`` [K, D] (init N(0, 1)).

    Source: the SQ-VAE authors' code, sony/sqvae (``speech/model.py``, ``vision/quantizer.py``),
    Takida et al. ICML 2022.

    Args:
        num_embeddings: K, codebook size.
        embedding_dim: D, latent dimension.
        variant: "I", "II", "III" or "IV" (see the module docstring).
        var_space: "log" (speech: scalar added to the log-variance) or "linear" (vision:
            variances added).
        init_log_var: initial value of the scalar ``log_var_scalar``.
        learn_variance: True: ``log_var_scalar`` is a parameter (learned); False: a buffer
            fixed at ``init_log_var`` (fixed sigma_q^2 ablation).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        variant: str = "I",
        var_space: str = "log",
        init_log_var: float = math.log(10.0),
        learn_variance: bool = True,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"Gaussian SQ variant '{variant}' unknown; choose one of {', '.join(VARIANTS)}")
        if var_space not in VAR_SPACES:
            raise ConfigError(f"Gaussian SQ var_space '{var_space}' unknown; choose 'log' (speech) or 'linear' (vision)")
        if num_embeddings < 2 or embedding_dim < 1:
            raise ConfigError(f"Gaussian SQ needs K >= 2 and D >= 1, got K={num_embeddings}, D={embedding_dim}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.variant = variant
        self.var_space = var_space
        self.codebook = nn.Parameter(torch.randn(num_embeddings, embedding_dim))
        self.learn_variance = bool(learn_variance)
        scalar = torch.tensor(float(init_log_var))
        if self.learn_variance:
            self.log_var_scalar = nn.Parameter(scalar)
        else:
            # Same state_dict key either way, so checkpoints load across the two settings.
            self.register_buffer("log_var_scalar", scalar)

    @classmethod
    def encoder_channels(cls, embedding_dim: int, variant: str = "I", **kwargs: Any) -> int:
        """Channels the encoder emits (speech layout): D means, plus 1 variance channel for
        II and III, D for IV (I: none)."""
        if variant not in VARIANTS:
            raise ConfigError(f"Gaussian SQ variant '{variant}' unknown; choose one of {', '.join(VARIANTS)}")
        return embedding_dim + {"I": 0, "II": 1, "III": 1, "IV": embedding_dim}[variant]

    def extra_repr(self) -> str:
        return (
            f"K={self.num_embeddings}, D={self.embedding_dim}, variant={self.variant}, var_space={self.var_space}, "
            f"learn_variance={self.learn_variance}"
        )

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes for ``indices`` [...] int64 -> [..., D] (-1 gives zeros): the codes the
        decoder gets in evaluation (``codebook[indices]``)."""
        return lookup_codes(self.codebook, indices, "GaussianSQ")

    @property
    def log_var_channels(self) -> int:
        """Raw log-variance channels the encoder must emit for this variant (speech layout):
        0 for I, 1 for III, D for IV; II accepts any count (vision emits D)."""
        return {"I": 0, "II": self.embedding_dim, "III": 1, "IV": self.embedding_dim}[self.variant]

    def log_variance(
        self, log_var: Tensor | None, mask: Tensor | None, batch: int, length: int, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """log sigma^2, broadcastable to [B, L, D]: [1, 1, 1] (I), [B, 1, 1] (II),
        [B, L, 1] (III) or [B, L, D] (IV). Padded positions hold arbitrary values.

        log_var: [B, L, C] raw encoder channels (None for I); mask: [B, L] bool or None.
        """
        scalar = self.log_var_scalar.to(dtype)
        if self.variant == "I":
            # No encoder variance: log space sigma^2 = exp(s); linear space takes the
            # encoder's log-variance as 0, sigma^2 = exp(0) + exp(s) = 1 + exp(s), as
            # sony/sqvae vision/model.py does for its variant I (sigma^2 never below 1).
            if self.var_space == "log":
                return scalar.reshape(1, 1, 1)
            return torch.nn.functional.softplus(scalar).reshape(1, 1, 1)
        if log_var is None:
            raise ValueError(f"GaussianSQ variant {self.variant} needs log_var [B, L, C]; got None")
        if log_var.dim() != 3 or tuple(log_var.shape[:2]) != (batch, length):
            raise ValueError(f"GaussianSQ: log_var must be [{batch}, {length}, C], got {tuple(log_var.shape)}")
        channels = log_var.shape[-1]
        if self.variant == "IV" and channels != self.embedding_dim:
            raise ValueError(f"GaussianSQ variant IV needs log_var with C = D = {self.embedding_dim}, got C={channels}")
        lv = log_var.to(dtype)
        if self.variant == "II":
            if mask is None:
                reduced = lv.mean(dim=(1, 2), keepdim=True)
            else:
                # where, not multiply: padding may hold inf/NaN, and 0 * inf = NaN.
                total = torch.where(mask.unsqueeze(-1), lv, 0.0).sum(dim=(1, 2), keepdim=True)
                reduced = total / (mask.sum(1) * channels).clamp(min=1).reshape(-1, 1, 1)
        elif self.variant == "III":
            reduced = lv.mean(dim=-1, keepdim=True)
        else:
            reduced = lv
        if self.var_space == "log":
            return reduced + scalar
        return torch.logaddexp(reduced, scalar)

    def _valid_log_variance(
        self, log_var: Tensor | None, mask: Tensor | None, batch: int, length: int, dtype: torch.dtype
    ) -> Tensor:
        """log sigma^2 at valid rows: [1, 1] (I), [N, 1] (II, III) or [N, D] (IV)."""
        log_s2 = self.log_variance(log_var, mask, batch, length, dtype)
        if self.variant == "I":
            return log_s2.reshape(1, 1)
        return valid_rows(log_s2.expand(batch, length, log_s2.shape[-1]), mask)

    def logits(self, z: Tensor, log_var: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """-0.5 ||z - b_k||^2_Sigma for every position and code: [B, L, K] (padding 0).

        z: [B, L, D]; log_var: [B, L, C] or None (I); mask: [B, L] bool or None.
        """
        mask = check_inputs(z, mask, self.embedding_dim, "GaussianSQ")
        batch, length, _ = z.shape
        with full_precision(z.device):
            dtype = compute_dtype(z, self.codebook)
            zv = valid_rows(z.to(dtype), mask)
            precision = torch.exp(-self._valid_log_variance(log_var, mask, batch, length, dtype))
            return scatter_rows(gaussian_logits(zv, self.codebook.to(dtype), precision), mask, batch, length)

    def forward(
        self, z: Tensor, log_var: Tensor | None = None, mask: Tensor | None = None, temperature: float = 1.0
    ) -> QuantizerOutput:
        """Quantize ``z`` [B, L, D]; see :class:`QuantizerOutput`.

        log_var: [B, L, C] raw encoder log-variance channels (ignored for variant I);
        mask: [B, L] bool, True = valid (None: all valid); temperature: Gumbel-softmax tau.
        """
        mask = check_inputs(z, mask, self.embedding_dim, "GaussianSQ")
        batch, length, _ = z.shape
        with full_precision(z.device):
            dtype = compute_dtype(z, self.codebook)
            codebook = self.codebook.to(dtype)
            zv = valid_rows(z.to(dtype), mask)
            log_s2 = self._valid_log_variance(log_var, mask, batch, length, dtype)
            precision = torch.exp(-log_s2)

            logits = gaussian_logits(zv, codebook, precision)
            log_probs = torch.log_softmax(logits, dim=-1)
            kl_discrete = (log_probs.exp() * log_probs).sum()
            idx = logits.detach().argmax(dim=-1)
            if self.training:
                zq = gumbel_softmax_sample(logits, temperature) @ codebook
            else:
                zq = codebook[idx]
            kl_continuous = 0.5 * (precision * (zv - zq).square()).sum()

            return QuantizerOutput(
                quantized=scatter_rows(zq, mask, batch, length).to(z.dtype),
                indices=scatter_rows(idx, mask, batch, length, fill=-1),
                loss=kl_continuous + kl_discrete,
                kl_continuous=kl_continuous,
                kl_discrete=kl_discrete,
                perplexity=rows_perplexity(idx, self.num_embeddings),
                log_var_mean=log_s2.detach().mean(),
                num_valid=count_valid(z, mask),
            )
