"""The baseline: VQ-VAE with an EMA codebook (docs/PROTOCOL.md, "Baseline: VQ-VAE with EMA").

Nearest-code quantization with a straight-through gradient; the codebook is a buffer
updated by exponential moving averages of the per-code counts and sums of the encoder
outputs assigned to it (van den Oord et al. 2017, appendix).

Default behaviour = ``VQEmbeddingEMA`` of bshall/ZeroSpeech (``model.py``), the VQ-VAE
the authors' speech code builds on:

- codebook ~ U(-1/K, 1/K) (the reference computes ``bound = 1 / num_embeddings``, so it
  is 1/K, not a fixed 1/512; with its K = 512 the two coincide), ``ema_count`` = 0,
  ``ema_weight`` (here the buffer ``ema_sum``) = a clone of the codebook;
- each training step, in this order::

      ema_count <- decay ema_count + (1 - decay) n_k          (n_k: batch count of code k)
      n          = sum_k ema_count
      ema_count <- (ema_count + eps) / (n + K eps) n          (Laplace smoothing, STORED)
      ema_sum   <- decay ema_sum + (1 - decay) sum_{z -> k} z
      codebook   = ema_sum / ema_count

- decay 0.999, eps 1e-5, loss = 0.25 * the squared error between z and its (pre-update)
  code; the reference takes the mean over all elements, here it is summed over valid
  positions and averaged over the D channels (divide by the number of valid positions to
  get the reference's value).

Other behaviour through constructor arguments:

- ``store_smoothed_count=False``: the smoothed count is used for the division only and
  ``ema_count`` keeps the raw average (Sonnet's VectorQuantizerEMA, vector-quantize-pytorch);
- ``init_count``: the initial ``ema_count`` of every code (the reference: 0). With a
  pseudo-count of 1 holding the initial code, a code keeps its initial value until data
  reaches it; with 0, an unused code's decaying initial value is divided by ~eps and
  thrown ~1e5 times further out after the first update, so it is never chosen again;
- ``init="normal"``: codebook ~ N(0, 1) instead of U(-1/K, 1/K).

``VQEMA(K, D, init="normal", init_count=1.0, store_smoothed_count=False,
reset_threshold=0.01)`` is this class as it was before it followed the reference.
A demo-scale run measured 35 codes in use with U(-1/K, 1/K) and a pseudo-count of 1 per
code (the package's earlier behaviour, ``init_count=1.0, store_smoothed_count=False``)
against 7 with counts starting at 0 (the reference).

Updates happen only in training mode and only from valid positions. Under
torch.distributed the batch counts and sums are all-reduced first, so every rank applies
the same update and keeps the same codebook.

Dead-code reset (``reset_unused=True``), after every update. The rule is Jukebox's
(openai/jukebox, ``jukebox/vqvae/bottleneck.py``: codes whose EMA count is under a
threshold are replaced by random encoder outputs of the batch); resetting the replaced
code's EMA state is vector-quantize-pytorch's (Jukebox leaves it as it was).
``ema_count`` is about a code's expected number of uses per batch, so a code whose count is
below ``reset_threshold`` is dead. It is replaced by a random valid encoder output of the
current batch (without replacement when the batch has enough rows; under
torch.distributed, rank 0's draw is broadcast) and its EMA state becomes a pseudo-count
``max(1, reset_threshold)`` holding that vector.

The threshold is an absolute count, so it must sit well below the average use of a code
per batch, rows per batch / K. Jukebox's 1.0 is 1/4 to 1/16 of that average in its
setting (thousands of latent frames per batch, K = 2048). The speech demo has 512 latent
frames per batch (32 crops x 16) for K = 512, an average of 1 use per code: a threshold of
1.0 there would re-seed every code that misses a single batch. The default, 0.1, is a
tenth of that average. With counts starting at 0 (the reference) it re-seeds every code
the first batch does not reach with a data vector at step 1; a re-seeded code then needs
~2,300 unused steps (decay 0.999) to fall under 0.1 again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .common import (
    QuantizerOutput,
    check_inputs,
    compute_dtype,
    full_precision,
    lookup_codes,
    nearest_code_output,
    valid_rows,
)
from .ema import check_ema_arguments, code_statistics, nearest_code, sample_rows

INITS = ("uniform", "normal")


class VQEMA(nn.Module):
    """VQ-VAE quantizer with an EMA-updated codebook buffer (source: bshall/ZeroSpeech,
    ``model.py``, class ``VQEmbeddingEMA``; see the module docstring for the exact update).

    Args:
        num_embeddings: K, codebook size (>= 2).
        embedding_dim: D, latent dimension.
        decay: EMA decay in (0, 1); reference 0.999.
        epsilon: Laplace smoothing of the counts (> 0); reference 1e-5.
        commitment_cost: weight of the commitment term; reference 0.25.
        init: "uniform" (U(-1/K, 1/K), reference) or "normal" (N(0, 1)).
        init_count: initial EMA count of every code (>= 0); reference 0.
        store_smoothed_count: True (reference): the Laplace-smoothed count is written back
            into ``ema_count``; False: it is used for the division only.
        reset_unused: re-seed dead codes from the batch (off in the reference).
        reset_threshold: EMA count under which a code is dead (> 0; default 0.1, see the module
            docstring).

    Buffers: ``codebook`` [K, D], ``ema_count`` [K], ``ema_sum`` [K, D] (the reference's
    ``ema_weight``, also readable under that name), ``num_resets`` (codes reset so far).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        decay: float = 0.999,
        epsilon: float = 1e-5,
        commitment_cost: float = 0.25,
        init: str = "uniform",
        init_count: float = 0.0,
        store_smoothed_count: bool = True,
        reset_unused: bool = False,
        reset_threshold: float = 0.1,
    ) -> None:
        super().__init__()
        check_ema_arguments("VQ-EMA", num_embeddings, embedding_dim, decay, epsilon, ("commitment_cost", commitment_cost))
        if init not in INITS:
            raise ConfigError(f"VQ-EMA init '{init}' unknown; choose one of {', '.join(INITS)}")
        if not init_count >= 0.0:
            raise ConfigError(f"VQ-EMA init_count must be >= 0, got {init_count}")
        if not reset_threshold > 0.0:
            raise ConfigError(f"VQ-EMA reset_threshold must be > 0, got {reset_threshold}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.decay = float(decay)
        self.epsilon = float(epsilon)
        self.commitment_cost = float(commitment_cost)
        self.init = init
        self.store_smoothed_count = bool(store_smoothed_count)
        self.reset_unused = bool(reset_unused)
        self.reset_threshold = float(reset_threshold)
        if init == "uniform":
            bound = 1.0 / num_embeddings
            codebook = torch.zeros(num_embeddings, embedding_dim).uniform_(-bound, bound)
        else:
            codebook = torch.randn(num_embeddings, embedding_dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("ema_count", torch.full((num_embeddings,), float(init_count)))
        self.register_buffer("ema_sum", codebook.clone())
        self.register_buffer("num_resets", torch.zeros((), dtype=torch.long))

    @classmethod
    def encoder_channels(cls, embedding_dim: int, **kwargs: Any) -> int:
        """Channels the encoder emits for this quantizer: D (no variance channels)."""
        return embedding_dim

    @property
    def ema_weight(self) -> Tensor:
        """The reference's name for ``ema_sum`` [K, D]."""
        return self.ema_sum

    def extra_repr(self) -> str:
        return (
            f"K={self.num_embeddings}, D={self.embedding_dim}, decay={self.decay}, "
            f"commitment_cost={self.commitment_cost}, init={self.init}, "
            f"store_smoothed_count={self.store_smoothed_count}, reset_unused={self.reset_unused}"
        )

    def nearest(self, rows: Tensor) -> Tensor:
        """Index of the nearest code (Euclidean) for each row of ``rows`` [N, D] -> [N] int64."""
        return nearest_code(rows, self.codebook.to(rows.dtype))

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes for ``indices`` [...] int64 -> [..., D] (-1 gives zeros), as the decoder gets them."""
        return lookup_codes(self.codebook, indices, "VQEMA")

    def forward(
        self, z: Tensor, log_var: Tensor | None = None, mask: Tensor | None = None, temperature: float = 1.0
    ) -> QuantizerOutput:
        """Quantize ``z`` [B, L, D]; ``log_var`` and ``temperature`` are ignored.

        mask: [B, L] bool, True = valid (None: all valid). In training mode the codebook is
        updated after quantizing (the returned codes and the loss use the pre-update ones).
        """
        mask = check_inputs(z, mask, self.embedding_dim, "VQEMA")
        with full_precision(z.device):
            dtype = compute_dtype(z, self.codebook)
            zv = valid_rows(z.to(dtype), mask)
            idx = self.nearest(zv.detach())
            zq = self.codebook.to(dtype)[idx]  # indexing copies: safe from the in-place update below
            if self.training:
                self._ema_update(zv.detach(), idx)
            return nearest_code_output(z, mask, zv, zq, idx, self.commitment_cost, self.num_embeddings)

    @torch.no_grad()
    def _ema_update(self, rows: Tensor, idx: Tensor) -> None:
        """EMA step from the valid rows [N, D] and their codes [N], in the reference's order."""
        k = self.num_embeddings
        rows = rows.to(self.ema_sum.dtype)
        counts, sums = code_statistics(rows, idx, k)
        self.ema_count.copy_(self.decay * self.ema_count + (1 - self.decay) * counts)
        n = torch.sum(self.ema_count)
        smoothed = (self.ema_count + self.epsilon) / (n + k * self.epsilon) * n
        if self.store_smoothed_count:
            self.ema_count.copy_(smoothed)
        self.ema_sum.copy_(self.decay * self.ema_sum + (1 - self.decay) * sums)
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(-1))
        if self.reset_unused:
            self._reset_dead(rows)

    @torch.no_grad()
    def _reset_dead(self, rows: Tensor) -> None:
        """Replace codes with EMA count < reset_threshold by random valid rows of this batch."""
        # Same mask on every rank: ema_count was updated from all-reduced statistics.
        dead = self.ema_count < self.reset_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        new = sample_rows(rows, n_dead)
        if new is None:
            return
        count = max(1.0, self.reset_threshold)
        self.codebook[dead] = new.to(self.codebook.dtype)
        self.ema_sum[dead] = new.to(self.ema_sum.dtype) * count
        self.ema_count[dead] = count
        self.num_resets += n_dead
