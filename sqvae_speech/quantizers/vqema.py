"""The baseline: VQ-VAE with an EMA codebook (PROTOCOL.md, "Baseline: VQ-VAE with EMA").

Nearest-code quantization with a straight-through gradient; the codebook is a buffer
updated by exponential moving averages of the per-code counts and sums of the encoder
outputs assigned to it (van den Oord et al. 2017, appendix; Sonnet's VectorQuantizerEMA):

    count_k <- decay count_k + (1 - decay) n_k          (n_k: batch count of code k)
    sum_k   <- decay sum_k   + (1 - decay) sum_{z -> k} z
    b_k      = sum_k / ((count_k + eps) / (n + K eps) n),   n = sum_k count_k

(the denominator is the Laplace-smoothed count, so a code with count 0 cannot divide by
zero). The EMA state starts as a pseudo-count of 1 per code holding the initial code,
so a code keeps its initial value until data reaches it. Starting the counts at 0 (as
Sonnet 2 and bshall/ZeroSpeech do) divides a not-yet-used code's decaying initial value
by ~eps, throwing it ~1e5 times further out after the first update.

Updates happen only in training mode and only from valid positions. Under
torch.distributed (initialized, world size > 1) the batch counts and sums are
all-reduced first, so every rank applies the same update and keeps the same codebook.

Dead-code reset (``reset_unused=True``), checked after every update: a code whose EMA
count (about its expected uses per batch) is below ``reset_threshold`` is replaced by a
random valid encoder output of the current batch (drawn without replacement when the
batch has enough), and its EMA state is set to a pseudo-count of 1 holding that vector.
With decay 0.999 and the default threshold 0.01 a fresh code survives ~4600 steps
without use before it is reset again. Under torch.distributed the replacements are
broadcast from rank 0.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import ConfigError
from .common import (
    QuantizerOutput,
    check_inputs,
    compute_dtype,
    count_valid,
    full_precision,
    rows_perplexity,
    scatter_rows,
    valid_rows,
)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VQEMA(nn.Module):
    """VQ-VAE quantizer with an EMA-updated codebook buffer ``codebook`` [K, D] (init N(0, 1)).

    Buffers: ``codebook`` [K, D], ``ema_count`` [K], ``ema_sum`` [K, D], ``num_resets``
    (total codes reset so far).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        decay: float = 0.999,
        epsilon: float = 1e-5,
        commitment_cost: float = 0.25,
        reset_unused: bool = False,
        reset_threshold: float = 0.01,
    ) -> None:
        super().__init__()
        if num_embeddings < 2 or embedding_dim < 1:
            raise ConfigError(f"VQ-EMA needs K >= 2 and D >= 1, got K={num_embeddings}, D={embedding_dim}")
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"VQ-EMA decay must be in (0, 1), got {decay}")
        if not epsilon > 0.0:
            raise ConfigError(f"VQ-EMA epsilon must be > 0, got {epsilon}")
        if not commitment_cost >= 0.0:
            raise ConfigError(f"VQ-EMA commitment_cost must be >= 0, got {commitment_cost}")
        # Below 1 so that a freshly reset code (pseudo-count 1) is not dead on arrival.
        if not 0.0 < reset_threshold < 1.0:
            raise ConfigError(f"VQ-EMA reset_threshold must be in (0, 1), got {reset_threshold}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.decay = float(decay)
        self.epsilon = float(epsilon)
        self.commitment_cost = float(commitment_cost)
        self.reset_unused = bool(reset_unused)
        self.reset_threshold = float(reset_threshold)
        codebook = torch.randn(num_embeddings, embedding_dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("ema_count", torch.ones(num_embeddings))
        self.register_buffer("ema_sum", codebook.clone())
        self.register_buffer("num_resets", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"K={self.num_embeddings}, D={self.embedding_dim}, decay={self.decay}, "
            f"commitment_cost={self.commitment_cost}, reset_unused={self.reset_unused}"
        )

    def nearest(self, rows: Tensor) -> Tensor:
        """Index of the nearest code (Euclidean) for each row of ``rows`` [N, D] -> [N] int64."""
        with torch.no_grad():
            codebook = self.codebook.to(rows.dtype)
            # |z|^2 is constant per row and cannot change the argmin.
            dist_ = torch.addmm((codebook * codebook).sum(-1).unsqueeze(0), rows, codebook.t(), alpha=-2.0)
            return dist_.argmin(dim=-1)

    def forward(
        self, z: Tensor, log_var: Tensor | None = None, mask: Tensor | None = None, temperature: float = 1.0
    ) -> QuantizerOutput:
        """Quantize ``z`` [B, L, D]; ``log_var`` and ``temperature`` are ignored.

        mask: [B, L] bool, True = valid (None: all valid). In training mode the codebook is
        updated after quantizing (the returned codes are the pre-update ones).
        """
        mask = check_inputs(z, mask, self.embedding_dim, "VQEMA")
        batch, length, _ = z.shape
        with full_precision(z.device):
            dtype = compute_dtype(z, self.codebook)
            zv = valid_rows(z.to(dtype), mask)
            idx = self.nearest(zv)
            zq = self.codebook.to(dtype)[idx]  # indexing copies: safe from the in-place update below
            if self.training:
                self._ema_update(zv.detach(), idx)
            commitment = self.commitment_cost * (zv - zq).square().sum() / self.embedding_dim
            # Straight-through with the exact value of z_q: zv - zv.detach() is exactly 0.
            quantized_rows = zq + (zv - zv.detach())
            return QuantizerOutput(
                quantized=scatter_rows(quantized_rows, mask, batch, length).to(z.dtype),
                indices=scatter_rows(idx, mask, batch, length, fill=-1),
                loss=commitment,
                kl_continuous=commitment,
                kl_discrete=commitment.new_zeros(()),
                perplexity=rows_perplexity(idx, self.num_embeddings),
                log_var_mean=commitment.new_full((), math.nan),
                num_valid=count_valid(z, mask),
            )

    @torch.no_grad()
    def _ema_update(self, rows: Tensor, idx: Tensor) -> None:
        """EMA step from the valid rows [N, D] and their codes [N]."""
        k, d = self.num_embeddings, self.embedding_dim
        rows = rows.to(self.ema_sum.dtype)
        # Counts and sums packed in one [K, 1 + D] tensor: one all-reduce instead of two.
        stats = rows.new_zeros(k, 1 + d)
        stats.index_add_(0, idx, torch.cat([rows.new_ones(rows.shape[0], 1), rows], dim=1))
        if _distributed():
            dist.all_reduce(stats)
        self.ema_count.mul_(self.decay).add_(stats[:, 0], alpha=1.0 - self.decay)
        self.ema_sum.mul_(self.decay).add_(stats[:, 1:], alpha=1.0 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.epsilon) / (n + k * self.epsilon) * n
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        if self.reset_unused:
            self._reset_dead(rows)

    @torch.no_grad()
    def _reset_dead(self, rows: Tensor) -> None:
        """Replace codes with EMA count < reset_threshold by random rows of this batch."""
        dead = self.ema_count < self.reset_threshold
        # Same value on every rank: ema_count was updated from all-reduced statistics.
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        n_rows = rows.shape[0]
        have = rows.new_tensor([1.0 if n_rows > 0 else 0.0])
        new = rows.new_zeros(n_dead, self.embedding_dim)
        if n_rows > 0:
            if n_rows >= n_dead:
                pick = torch.randperm(n_rows, device=rows.device)[:n_dead]
            else:
                pick = torch.randint(n_rows, (n_dead,), device=rows.device)
            new = rows[pick]
        if _distributed():
            dist.broadcast(have, src=0)
            dist.broadcast(new, src=0)
        if have.item() == 0.0:
            return
        self.codebook[dead] = new.to(self.codebook.dtype)
        self.ema_sum[dead] = new.to(self.ema_sum.dtype)
        self.ema_count[dead] = 1.0
        self.num_resets += n_dead
