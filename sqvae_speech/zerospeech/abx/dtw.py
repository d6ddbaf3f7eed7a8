"""Dynamic time warping between ABX tokens, as ABXpy computes it, in two backends.

DTW: cost[0, 0] = d[0, 0], first row and column cumulative, cost[i, j] = d[i, j] +
min(cost[i-1, j], cost[i-1, j-1], cost[i, j-1]); the distance is cost[N-1, M-1], divided
(``normalize``) by the number of cells on the optimal path, the path being the one ABXpy
backtracks (ties prefer the diagonal, then (i, j-1), then (i-1, j)).

- :func:`dtw_blocks` (numba; the CPU backend): a compiled loop over pairs whose frame
  distances are sub-blocks of one larger matrix (all tokens of a context against a chunk
  of them), with ABXpy's own backtracking for the path length. numba comes with librosa.
- :func:`dtw` (torch; the GPU backend and the fallback without numba): a padded batch
  [P, N, M] filled one anti-diagonal (i + j = k) at a time, every pair and cell of the
  diagonal at once, recording each cell's chosen predecessor (which gives the same path
  length as backtracking). A cell only depends on cells with smaller i and j, so padding
  never reaches the cell (n-1, m-1) that is read out. On a CPU it is ~20x slower than
  numba (one Python step per diagonal).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

_KERNEL = None


def _numba_kernel():
    """The compiled DTW loop, or None without numba. Compiled once per process (cached on
    disk where the package dir is writable)."""
    global _KERNEL
    if _KERNEL is None:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba comes with librosa
            _KERNEL = False
            return None

        @numba.njit(cache=True, nogil=True)
        def kernel(block, row0, n, col0, m, normalize, out):  # pragma: no cover - compiled
            cost = np.empty((n.max(), m.max()))
            for p in range(n.shape[0]):
                r, c, big_n, big_m = row0[p], col0[p], n[p], m[p]
                cost[0, 0] = block[r, c]
                for i in range(1, big_n):
                    cost[i, 0] = block[r + i, c] + cost[i - 1, 0]
                for j in range(1, big_m):
                    cost[0, j] = block[r, c + j] + cost[0, j - 1]
                for i in range(1, big_n):
                    for j in range(1, big_m):
                        cost[i, j] = block[r + i, c + j] + min(cost[i - 1, j], cost[i - 1, j - 1], cost[i, j - 1])
                total = cost[big_n - 1, big_m - 1]
                if normalize:
                    i, j, length = big_n - 1, big_m - 1, 1
                    while i > 0 and j > 0:
                        up, left, diag = cost[i - 1, j], cost[i, j - 1], cost[i - 1, j - 1]
                        if diag <= left and diag <= up:
                            i -= 1
                            j -= 1
                        elif left <= up:
                            j -= 1
                        else:
                            i -= 1
                        length += 1
                    total /= length + i + j
                out[p] = total

        _KERNEL = kernel
    return _KERNEL or None


def numba_available() -> bool:
    return _numba_kernel() is not None


def dtw_blocks(block: np.ndarray, row0: np.ndarray, n: np.ndarray, col0: np.ndarray, m: np.ndarray,
               normalize: bool = True) -> np.ndarray:
    """DTW of P pairs whose distance tables are block[row0:row0+n, col0:col0+m].

    block [R, C] float64; row0, n, col0, m [P] -> [P] float64. Needs numba.
    """
    kernel = _numba_kernel()
    if kernel is None:
        raise RuntimeError("numba is not installed; use the torch backend")
    out = np.empty(len(n), dtype=np.float64)
    if len(n):
        as_int = lambda a: np.ascontiguousarray(a, dtype=np.int64)
        kernel(np.ascontiguousarray(block, dtype=np.float64), as_int(row0), as_int(n), as_int(col0), as_int(m),
               bool(normalize), out)
    return out


def dtw_numba(dist: np.ndarray, n: np.ndarray, m: np.ndarray, normalize: bool = True) -> np.ndarray:
    """:func:`dtw` on the numba backend: dist [P, N, M], n / m [P] -> [P]."""
    p, big_n, big_m = dist.shape
    return dtw_blocks(np.ascontiguousarray(dist).reshape(p * big_n, big_m), np.arange(p) * big_n, n,
                      np.zeros(p, dtype=np.int64), m, normalize)


def dtw(dist: Tensor, n: Tensor, m: Tensor, normalize: bool = True) -> Tensor:
    """Batched DTW (torch). dist [P, N, M] (finite everywhere), n / m [P] true lengths -> [P] costs."""
    p, big_n, big_m = dist.shape
    dev, dt = dist.device, dist.dtype
    n, m = n.to(dev), m.to(dev)
    k_all = big_n + big_m - 1
    i = torch.arange(big_n, device=dev)
    j = torch.arange(k_all, device=dev)[:, None] - i[None, :]  # [K, N]: column of cell (i, k - i)
    valid = (j >= 0) & (j < big_m)
    # skew[:, k, i] = dist[:, i, k - i]; cells outside the table are +inf so they never win a min.
    skew = dist[:, i[None, :].expand(k_all, -1), j.clamp(0, big_m - 1)]
    skew = skew.masked_fill(~valid[None], math.inf)
    inf_col = torch.full((p, 1), math.inf, device=dev, dtype=dt)
    zero_col = torch.zeros((p, 1), device=dev, dtype=dt)
    end_k = (n + m - 2).cpu().numpy()
    rows = n - 1
    out = torch.empty(p, device=dev, dtype=dt)
    order = np.argsort(end_k, kind="stable")
    bounds = np.searchsorted(end_k[order], np.arange(k_all + 1))
    prev1 = skew[:, 0]  # diagonal k - 1 (only (0, 0) is finite at k = 0)
    prev2 = torch.full((p, big_n), math.inf, device=dev, dtype=dt)
    len1 = torch.ones((p, big_n), device=dev, dtype=dt)
    len2 = torch.zeros((p, big_n), device=dev, dtype=dt)
    for k in range(k_all):
        if k > 0:
            up = torch.cat([inf_col, prev1[:, :-1]], 1)  # cell (i-1, j)
            diag = torch.cat([inf_col, prev2[:, :-1]], 1)  # cell (i-1, j-1)
            left = prev1  # cell (i, j-1)
            take_diag = (diag <= left) & (diag <= up)
            take_left = ~take_diag & (left <= up)
            cur = skew[:, k] + torch.where(take_diag, diag, torch.where(take_left, left, up))
            if normalize:
                up_len = torch.cat([zero_col, len1[:, :-1]], 1)
                diag_len = torch.cat([zero_col, len2[:, :-1]], 1)
                cur_len = 1.0 + torch.where(take_diag, diag_len, torch.where(take_left, len1, up_len))
                len2, len1 = len1, cur_len
            prev2, prev1 = prev1, cur
        done = order[bounds[k] : bounds[k + 1]]
        if done.size:
            idx = torch.from_numpy(done).to(dev)
            cost = prev1[idx, rows[idx]]
            out[idx] = cost / len1[idx, rows[idx]] if normalize else cost
    return out
