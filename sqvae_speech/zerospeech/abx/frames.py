"""Token frames and frame-to-frame distances (torch, float64, CPU or GPU).

- ``angular``: arccos(cos(x, y)) / pi in [0, 1] (ZeroSpeech's "cosine"); a zero frame
  is at distance 1 from any non-zero frame and 0 from another zero frame (as ABXpy);
- ``euclidean``: ||x - y||;
- ``kl``: symmetric KL, 0.5 KL(x||y) + 0.5 KL(y||x), for posteriorgram-like features:
  rows are normalised to sum 1, an epsilon (float64 machine epsilon) is added to every
  value and rows are renormalised, as ABXpy's ``kl_divergence``. Negative values are an
  error.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ...errors import SQVAEError

DISTANCES = ("angular", "euclidean", "kl")


class Frames:
    """All tokens' frames concatenated, transformed once for the chosen distance.

    ``values`` [F, D] float64 on ``device``; token i is rows offsets[i] : offsets[i] + lengths[i].
    """

    def __init__(self, tokens: list[np.ndarray], distance: str, device: str | torch.device = "cpu") -> None:
        if distance not in DISTANCES:
            raise SQVAEError(f"--distance must be one of {', '.join(DISTANCES)}, got '{distance}'")
        if not tokens:
            raise ValueError("no tokens")
        self.distance = distance
        self.lengths = np.array([t.shape[0] for t in tokens], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        x = torch.from_numpy(np.concatenate(tokens, axis=0).astype(np.float64)).to(device)
        self.zero: Tensor | None = None  # angular: which frames are all zeros (None if none is)
        self.log: Tensor | None = None
        if distance == "angular":
            norm = x.norm(dim=1, keepdim=True)
            zero = norm[:, 0] == 0
            self.zero = zero if bool(zero.any()) else None
            x = x / torch.where(norm == 0, torch.ones_like(norm), norm)
        elif distance == "kl":
            if bool((x < 0).any()):
                raise SQVAEError("--distance kl needs non-negative features (posteriorgrams); these have negative values: "
                                 "use angular or euclidean")
            s = x.sum(1, keepdim=True)
            if bool((s == 0).any()):
                raise SQVAEError("--distance kl: some frames are all zeros and cannot be normalised to a distribution")
            x = x / s + torch.finfo(torch.float64).eps
            x = x / x.sum(1, keepdim=True)
            self.log = torch.log(x)
        self.values = x
        self.device = x.device

    def rows(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame rows of ``token_ids`` one after the other: (rows [sum n], start of each token in it)."""
        lens = self.lengths[token_ids]
        local = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        rows = np.repeat(self.offsets[token_ids] - local, lens) + np.arange(int(lens.sum()))
        return rows, local

    def padded(self, token_ids: np.ndarray, length: int) -> tuple[Tensor, Tensor]:
        """Rows of tokens padded (by repeating each token's last frame) to ``length``:
        (row indices [P, length] into ``values``, lengths [P])."""
        lens = torch.from_numpy(self.lengths[token_ids]).to(self.device)
        start = torch.from_numpy(self.offsets[token_ids]).to(self.device)
        steps = torch.arange(length, device=self.device)
        rows = start[:, None] + torch.minimum(steps[None, :], lens[:, None] - 1)
        return rows, lens


def frame_distances(frames: Frames, rows_a: Tensor, rows_b: Tensor) -> Tensor:
    """Row indices [..., N] and [..., M] (same leading dims) -> distances [..., N, M]."""
    x, y = frames.values[rows_a], frames.values[rows_b]
    if frames.distance == "angular":
        d = torch.matmul(x, y.transpose(-1, -2)).clamp_(-1.0, 1.0).arccos_().mul_(1.0 / math.pi)
        if frames.zero is not None:
            za, zb = frames.zero[rows_a][..., :, None], frames.zero[rows_b][..., None, :]
            d = torch.where(za & zb, torch.zeros_like(d), torch.where(za | zb, torch.ones_like(d), d))
        return d
    if frames.distance == "euclidean":
        return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    lx, ly = frames.log[rows_a], frames.log[rows_b]
    xx = (x * lx).sum(-1)[..., :, None]
    yy = (y * ly).sum(-1)[..., None, :]
    return 0.5 * (xx - torch.matmul(x, ly.transpose(-1, -2))) + 0.5 * (yy - torch.matmul(lx, y.transpose(-1, -2)))
