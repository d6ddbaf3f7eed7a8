"""Helpers shared by the EMA-codebook quantizers (:class:`VQEMA`, :class:`KMeansVQ`):
batch statistics all-reduced across processes, random rows of the batch agreed on by
every process, nearest-code search and k-means.

Under torch.distributed (initialized, world size > 1) every process must end a step with
the same codebook: statistics are summed over processes (``all_reduce``) and random draws
are made on rank 0 and broadcast.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError


def is_distributed() -> bool:
    """True when torch.distributed is initialized with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def code_statistics(rows: Tensor, idx: Tensor, num_embeddings: int) -> tuple[Tensor, Tensor]:
    """Per-code counts [K] and sums [K, D] of ``rows`` [N, D] assigned to codes ``idx`` [N],
    summed over processes. Counts and sums travel packed in one [K, 1 + D] tensor (one
    all-reduce instead of two)."""
    stats = rows.new_zeros(num_embeddings, 1 + rows.shape[1])
    stats.index_add_(0, idx, torch.cat([rows.new_ones(rows.shape[0], 1), rows], dim=1))
    if is_distributed():
        dist.all_reduce(stats)
    return stats[:, 0], stats[:, 1:]


def sample_rows(rows: Tensor, num: int) -> Tensor | None:
    """``num`` random rows of ``rows`` [N, D] -> [num, D], the same on every process.

    Drawn without replacement when N >= num (``randperm``), with replacement otherwise
    (``randint``), as vector-quantize-pytorch's ``sample_vectors``. Under
    torch.distributed the draw of rank 0 is broadcast. None when rank 0 has no rows.
    """
    n_rows = rows.shape[0]
    have = rows.new_tensor([1.0 if n_rows > 0 else 0.0])
    out = rows.new_zeros(num, rows.shape[1])
    if n_rows > 0:
        if n_rows >= num:
            pick = torch.randperm(n_rows, device=rows.device)[:num]
        else:
            pick = torch.randint(0, n_rows, (num,), device=rows.device)
        out = rows[pick]
    if is_distributed():
        dist.broadcast(have, src=0)
        dist.broadcast(out, src=0)
    return out if have.item() > 0 else None


def nearest_code(rows: Tensor, codebook: Tensor, cosine: bool = False) -> Tensor:
    """Index of the closest code for each row: [N, D], [K, D] -> [N] int64.

    Euclidean: argmin of |z|^2 + |b|^2 - 2 z.b (the form bshall/ZeroSpeech computes; the
    |z|^2 term cannot change the argmin but keeps the rounding identical). Cosine: argmax
    of z.b (both sides are expected to be unit vectors already).
    """
    with torch.no_grad():
        if cosine:
            return (rows @ codebook.t()).argmax(dim=-1)
        bias = (codebook * codebook).sum(-1).unsqueeze(0) + (rows * rows).sum(-1, keepdim=True)
        return torch.addmm(bias, rows, codebook.t(), alpha=-2.0).argmin(dim=-1)


@torch.no_grad()
def kmeans(rows: Tensor, num_clusters: int, num_iters: int, cosine: bool = False) -> tuple[Tensor, Tensor] | None:
    """Lloyd's k-means on ``rows`` [N, D] -> (means [K, D], counts [K]) or None (no data).

    As vector-quantize-pytorch's ``kmeans``: the means start as random rows
    (:func:`sample_rows`); each iteration assigns rows to the nearest mean (cosine: the
    largest dot product), replaces every mean that got rows by the mean of its rows
    (cosine: normalized to unit length) and keeps the others. The counts are those of the
    last assignment. Under torch.distributed the counts and sums are all-reduced, so every
    process ends with the same means.
    """
    means = sample_rows(rows, num_clusters)
    if means is None:
        return None
    counts = rows.new_zeros(num_clusters)
    for _ in range(num_iters):
        idx = nearest_code(rows, means, cosine)
        counts, sums = code_statistics(rows, idx, num_clusters)
        empty = counts == 0
        new = sums / counts.masked_fill(empty, 1.0).unsqueeze(1)
        if cosine:
            new = F.normalize(new, dim=-1)
        means = torch.where(empty.unsqueeze(1), means, new)
    return means, counts


def check_ema_arguments(name: str, num_embeddings: int, embedding_dim: int, decay: float, epsilon: float,
                        commitment: tuple[str, float]) -> None:
    """The argument checks every EMA-codebook quantizer shares; ``commitment`` is (its
    argument's name, value). A bad value is a ConfigError that names ``name``."""
    if num_embeddings < 2 or embedding_dim < 1:
        raise ConfigError(f"{name} needs K >= 2 and D >= 1, got K={num_embeddings}, D={embedding_dim}")
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"{name} decay must be in (0, 1), got {decay}")
    if not epsilon > 0.0:
        raise ConfigError(f"{name} epsilon must be > 0, got {epsilon}")
    if not commitment[1] >= 0.0:
        raise ConfigError(f"{name} {commitment[0]} must be >= 0, got {commitment[1]}")
