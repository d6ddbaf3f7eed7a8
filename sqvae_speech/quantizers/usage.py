"""Codebook usage meters (docs/PROTOCOL.md, "Codebook usage metrics").

Batch perplexity depends on the batch size, so evaluation also reports usage over a
whole set: the perplexity of the set-level histogram and the number of codes used at
least once. Index -1 marks padding everywhere and is ignored.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .common import rows_perplexity


def _valid_indices(indices: Tensor, mask: Tensor | None, num_embeddings: int) -> Tensor:
    """Flattened indices that are >= 0 and not masked out; out-of-range codes are a bug."""
    flat = indices.reshape(-1).long()
    keep = flat >= 0
    if mask is not None:
        if mask.shape != indices.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != indices shape {tuple(indices.shape)}")
        keep = keep & mask.reshape(-1).bool()
    flat = flat[keep]
    if flat.numel() and int(flat.max()) >= num_embeddings:
        raise ValueError(f"code index {int(flat.max())} out of range for a codebook of {num_embeddings}")
    return flat


def batch_perplexity(indices: Tensor, mask: Tensor | None, num_embeddings: int) -> Tensor:
    """exp(entropy of the mean one-hot assignment) over valid positions.

    indices: any shape, int, -1 for padding; mask: same shape, bool (True = valid) or None.
    Returns a float32 scalar in [1, num_embeddings]; NaN when nothing is valid.
    """
    return rows_perplexity(_valid_indices(indices, mask, num_embeddings), num_embeddings)


class CodebookUsage:
    """Set-level code histogram, accumulated batch by batch.

    Example::

        usage = CodebookUsage(512)
        for batch in loader:
            usage.update(model(batch).indices)   # [B, L], -1 = padding
        usage.perplexity(), usage.used()

    Combine meters of several processes with :meth:`merge` (or by summing the
    ``counts`` of their :meth:`state_dict`).
    """

    def __init__(self, num_embeddings: int) -> None:
        # 0 is allowed: a quantizer without codes (GaussianVAE) emits only -1 indices, and
        # its meter then counts nothing (perplexity NaN, 0 codes used).
        if num_embeddings < 0:
            raise ValueError(f"num_embeddings must be >= 0, got {num_embeddings}")
        self.num_embeddings = num_embeddings
        self.counts = torch.zeros(num_embeddings, dtype=torch.int64)

    def update(self, indices: Tensor, mask: Tensor | None = None) -> None:
        """Add the valid codes of ``indices`` (any shape; -1 and masked-out ignored)."""
        flat = _valid_indices(indices.detach(), None if mask is None else mask.detach(), self.num_embeddings)
        self.counts += torch.bincount(flat.cpu(), minlength=self.num_embeddings)

    def total(self) -> int:
        """Number of counted positions."""
        return int(self.counts.sum())

    def perplexity(self) -> float:
        """exp(entropy of the set-level histogram); NaN when nothing was counted."""
        total = self.total()
        if total == 0:
            return math.nan
        probs = self.counts.double() / total
        return float(torch.exp(-torch.special.xlogy(probs, probs).sum()))

    def used(self) -> int:
        """Number of codes chosen at least once."""
        return int((self.counts > 0).sum())

    def merge(self, other: CodebookUsage) -> CodebookUsage:
        """Add another meter's counts into this one (e.g. from another process); returns self."""
        if other.num_embeddings != self.num_embeddings:
            raise ValueError(f"cannot merge usage over {other.num_embeddings} codes into {self.num_embeddings}")
        self.counts += other.counts
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"num_embeddings": self.num_embeddings, "counts": self.counts.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> CodebookUsage:
        meter = cls(int(state["num_embeddings"]))
        meter.counts = torch.tensor(state["counts"], dtype=torch.int64)
        if meter.counts.shape != (meter.num_embeddings,):
            raise ValueError(f"usage state has {meter.counts.numel()} counts for {meter.num_embeddings} codes")
        return meter
