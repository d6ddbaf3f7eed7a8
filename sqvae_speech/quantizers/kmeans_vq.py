"""Practitioners' VQ: the EMA codebook of vector-quantize-pytorch
(lucidrains/vector-quantize-pytorch, ``vector_quantize_pytorch/vector_quantize_pytorch.py``,
classes ``EuclideanCodebook`` / ``CosineSimCodebook`` behind ``VectorQuantize``) with
``kmeans_init=True``, ``threshold_ema_dead_code`` and optionally ``use_cosine_sim``.

What is matched, per training step:

- k-means init: on the first training batch, ``kmeans_iters`` (10) Lloyd iterations from
  K random rows of the batch; then codebook = means, ``ema_count`` (their ``cluster_size``)
  = the counts of the last assignment, ``ema_sum`` (their ``embed_avg``) = means * counts;
- lookup: nearest code (Euclidean), or the largest dot product between the l2-normalized
  input and the (unit) codes with ``use_cosine_sim``; z_q = the pre-update code;
- EMA: ``ema_count.lerp_(n_k, 1 - decay)``, ``ema_sum.lerp_(sum_{z -> k} z, 1 - decay)``,
  codebook = ema_sum / ((ema_count + eps) / (sum ema_count + K eps) * sum ema_count)
  (smoothed for the division only; cosine: the result is l2-normalized);
- dead codes: after the update, codes with ``ema_count < threshold_ema_dead_code`` are
  replaced by random rows of the batch (cosine: normalized), with
  ``ema_count = reset_cluster_size`` (default: the threshold) and
  ``ema_sum = row * reset_cluster_size``;
- loss: ``commitment_weight`` * squared error between the (normalized) input and its
  code, straight-through gradient to the input.

Defaults are theirs: decay 0.8 (``VectorQuantize``), eps 1e-5, kmeans_iters 10,
commitment_weight 1.0. ``threshold_ema_dead_code`` defaults to 2, the value of their
codebook classes and README examples (``VectorQuantize`` itself defaults to 0 = off).

Deliberate differences: (1) only valid (unpadded) rows feed k-means, the EMA and the
replacements (theirs replace from all input rows, padding included); (2) k-means runs on
the first *training* batch (theirs also on an evaluation batch if that comes first): an
evaluation forward never changes state, and before k-means the codebook is all zeros;
(3) under torch.distributed k-means and the replacements start from rank 0's random rows
(broadcast) and all-reduce counts and sums (theirs gather rows across ranks); (4) losses
are summed over valid positions and averaged over D, the package's convention (theirs:
mean over all elements; divide by the number of valid positions to compare).
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
    full_precision,
    lookup_codes,
    nearest_code_output,
    valid_rows,
)
from .ema import check_ema_arguments, code_statistics, kmeans, nearest_code, sample_rows


class KMeansVQ(nn.Module):
    """VQ with an EMA codebook, k-means init and dead-code replacement (source:
    lucidrains/vector-quantize-pytorch, ``vector_quantize_pytorch/vector_quantize_pytorch.py``;
    see the module docstring for what is matched).

    Args:
        num_embeddings: K, codebook size (>= 2).
        embedding_dim: D, latent dimension.
        decay: EMA decay in (0, 1); theirs 0.8.
        epsilon: Laplace smoothing of the counts (> 0); theirs 1e-5.
        commitment_weight: weight of the commitment term (>= 0); theirs 1.0.
        kmeans_init: run k-means on the first training batch (True); False: codebook
            ~ U(-b, b), b = sqrt(6 / (K D)) (their ``kaiming_uniform_`` on a [1, K, D]
            tensor; cosine: normalized).
        kmeans_iters: Lloyd iterations (>= 0); theirs 10.
        threshold_ema_dead_code: EMA count under which a code is replaced (>= 0; 0 = off).
        reset_cluster_size: EMA count given to a replaced code (> 0; None = the threshold).
        use_cosine_sim: l2-normalize the input and the codes; nearest = largest dot product.

    Buffers: ``codebook`` [K, D], ``ema_count`` [K], ``ema_sum`` [K, D], ``initted``
    (bool: k-means done or not needed), ``num_resets`` (codes replaced so far).
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        decay: float = 0.8,
        epsilon: float = 1e-5,
        commitment_weight: float = 1.0,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        threshold_ema_dead_code: float = 2.0,
        reset_cluster_size: float | None = None,
        use_cosine_sim: bool = False,
    ) -> None:
        super().__init__()
        check_ema_arguments("k-means VQ", num_embeddings, embedding_dim, decay, epsilon, ("commitment_weight", commitment_weight))
        if kmeans_iters < 0:
            raise ConfigError(f"k-means VQ kmeans_iters must be >= 0, got {kmeans_iters}")
        if not threshold_ema_dead_code >= 0.0:
            raise ConfigError(f"k-means VQ threshold_ema_dead_code must be >= 0, got {threshold_ema_dead_code}")
        if reset_cluster_size is None:
            reset_cluster_size = threshold_ema_dead_code
        if threshold_ema_dead_code > 0 and not reset_cluster_size > 0.0:
            raise ConfigError(f"k-means VQ reset_cluster_size must be > 0, got {reset_cluster_size}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.decay = float(decay)
        self.epsilon = float(epsilon)
        self.commitment_weight = float(commitment_weight)
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = int(kmeans_iters)
        self.threshold_ema_dead_code = float(threshold_ema_dead_code)
        self.reset_cluster_size = float(reset_cluster_size)
        self.use_cosine_sim = bool(use_cosine_sim)
        if kmeans_init:
            codebook = torch.zeros(num_embeddings, embedding_dim)
        else:
            bound = math.sqrt(6.0 / (num_embeddings * embedding_dim))
            codebook = torch.empty(num_embeddings, embedding_dim).uniform_(-bound, bound)
            if use_cosine_sim:
                codebook = F.normalize(codebook, dim=-1)
        self.register_buffer("codebook", codebook)
        self.register_buffer("ema_count", torch.zeros(num_embeddings))
        self.register_buffer("ema_sum", codebook.clone())
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        self.register_buffer("num_resets", torch.zeros((), dtype=torch.long))

    @classmethod
    def encoder_channels(cls, embedding_dim: int, **kwargs: Any) -> int:
        """Channels the encoder emits for this quantizer: D (no variance channels)."""
        return embedding_dim

    def extra_repr(self) -> str:
        return (
            f"K={self.num_embeddings}, D={self.embedding_dim}, decay={self.decay}, "
            f"commitment_weight={self.commitment_weight}, kmeans_init={self.kmeans_init}, "
            f"threshold_ema_dead_code={self.threshold_ema_dead_code}, use_cosine_sim={self.use_cosine_sim}"
        )

    def nearest(self, rows: Tensor) -> Tensor:
        """Nearest code for ``rows`` [N, D] (normalized already with cosine) -> [N] int64."""
        return nearest_code(rows, self.codebook.to(rows.dtype), cosine=self.use_cosine_sim)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes for ``indices`` [...] int64 -> [..., D] (-1 gives zeros), as the decoder gets
        them (with cosine similarity the codes are unit vectors)."""
        return lookup_codes(self.codebook, indices, "KMeansVQ")

    def forward(
        self, z: Tensor, log_var: Tensor | None = None, mask: Tensor | None = None, temperature: float = 1.0
    ) -> QuantizerOutput:
        """Quantize ``z`` [B, L, D]; ``log_var`` and ``temperature`` are ignored.

        mask: [B, L] bool, True = valid (None: all valid). In training mode k-means runs
        first if it has not yet, and the codebook is updated after quantizing (the
        returned codes and the loss use the pre-update ones).
        """
        mask = check_inputs(z, mask, self.embedding_dim, "KMeansVQ")
        with full_precision(z.device):
            dtype = compute_dtype(z, self.codebook)
            zv = valid_rows(z.to(dtype), mask)
            if self.use_cosine_sim:
                zv = F.normalize(zv, dim=-1)
            if self.training and not bool(self.initted):
                self._init_codebook(zv.detach())
            idx = self.nearest(zv.detach())
            zq = self.codebook.to(dtype)[idx]
            if self.training:
                self._ema_update(zv.detach(), idx)
            return nearest_code_output(z, mask, zv, zq, idx, self.commitment_weight, self.num_embeddings)

    @torch.no_grad()
    def _init_codebook(self, rows: Tensor) -> None:
        """k-means on the valid rows [N, D] of the first training batch."""
        result = kmeans(rows.to(self.codebook.dtype), self.num_embeddings, self.kmeans_iters, self.use_cosine_sim)
        if result is None:  # no valid rows on rank 0: try again next batch
            return
        means, counts = result
        self.codebook.copy_(means)
        self.ema_sum.copy_(means * counts.unsqueeze(-1))
        self.ema_count.copy_(counts)
        self.initted.fill_(True)

    @torch.no_grad()
    def _ema_update(self, rows: Tensor, idx: Tensor) -> None:
        """EMA step from the valid rows [N, D] and their codes [N], then dead-code replacement."""
        k = self.num_embeddings
        rows = rows.to(self.ema_sum.dtype)
        counts, sums = code_statistics(rows, idx, k)
        self.ema_count.lerp_(counts, 1 - self.decay)
        self.ema_sum.lerp_(sums, 1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.epsilon) / (total + k * self.epsilon) * total
        codebook = self.ema_sum / smoothed.unsqueeze(-1)
        if self.use_cosine_sim:
            codebook = F.normalize(codebook, dim=-1)
        self.codebook.copy_(codebook)
        if self.threshold_ema_dead_code > 0:
            self._replace_dead(rows)

    @torch.no_grad()
    def _replace_dead(self, rows: Tensor) -> None:
        """Codes with ema_count < threshold_ema_dead_code -> random rows of this batch."""
        dead = self.ema_count < self.threshold_ema_dead_code
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        new = sample_rows(rows, n_dead)  # rows are already normalized with cosine similarity
        if new is None:
            return
        self.codebook[dead] = new
        self.ema_sum[dead] = new * self.reset_cluster_size
        self.ema_count[dead] = self.reset_cluster_size
        self.num_resets += n_dead
