"""DTW distances of many token pairs, each computed once.

Two strategies, chosen by the backend (:mod:`.dtw`):

- ``numba`` (CPU): pairs are grouped by context (every ABX pair lies within one). For a
  context, the frames of all its first tokens form the rows of one distance matrix and a
  chunk of its second tokens the columns, so frame distances come from a few large
  matmuls with no padding and no per-pair copies; the compiled DTW then reads each pair's
  sub-block. Blocks hold at most ``max_cells`` cells (a chunk has at least one token).
- ``torch`` (GPU): pairs sorted by their lengths are cut into padded batches [P, N, M]
  of at most ``max_cells`` cells, distances by batched matmul, DTW by anti-diagonals.
"""

from __future__ import annotations

import numpy as np
import torch

from .dtw import dtw, dtw_blocks, numba_available
from .frames import Frames, frame_distances

BACKENDS = ("auto", "numba", "torch")


def pair_distances(frames: Frames, pairs: np.ndarray, groups: np.ndarray | None = None, normalize: bool = True,
                   max_cells: int = 4_000_000, backend: str = "auto", progress: bool = False) -> np.ndarray:
    """DTW distance of each pair. pairs [Q, 2] (first, second) -> [Q] float64.

    The first token gives the rows of the DTW table, as ABXpy's dtw(A or B, X). ``groups``
    [n_tokens] (contexts) lets the numba path share distance blocks; pairs may not cross
    groups. ``backend``: numba, torch, or auto (numba on CPU when available, else torch).
    """
    from tqdm import tqdm

    if backend not in BACKENDS:
        raise ValueError(f"unknown DTW backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "numba" if frames.device.type == "cpu" and numba_available() else "torch"
    out = np.empty(len(pairs), dtype=np.float64)
    if len(pairs) == 0:
        return out
    with torch.no_grad(), tqdm(total=len(pairs), desc="abx dtw", unit="pair", disable=not progress) as bar:
        if backend == "numba":
            _by_blocks(frames, pairs, groups, normalize, max_cells, out, bar)
        else:
            _padded(frames, pairs, normalize, max_cells, out, bar)
    return out


def _by_blocks(frames: Frames, pairs: np.ndarray, groups: np.ndarray | None, normalize: bool, max_cells: int,
               out: np.ndarray, bar) -> None:
    lengths = frames.lengths
    g = np.zeros(len(lengths), dtype=np.int64) if groups is None else np.asarray(groups)
    ga = g[pairs[:, 0]]
    if not np.array_equal(ga, g[pairs[:, 1]]):
        raise ValueError("a pair crosses groups")
    order = np.lexsort((pairs[:, 1], ga))
    starts = np.flatnonzero(np.r_[True, ga[order][1:] != ga[order][:-1]])
    for s, e in zip(starts.tolist(), np.r_[starts[1:], len(order)].tolist()):
        idx = order[s:e]
        first, second = pairs[idx, 0], pairs[idx, 1]  # sorted by second
        firsts = np.unique(first)
        rows_a, local_a = frames.rows(firsts)
        row0 = local_a[np.searchsorted(firsts, first)]
        rows_a_t = torch.from_numpy(rows_a).to(frames.device)
        secs, sec_pos = np.unique(second, return_index=True)
        sec_pos = np.r_[sec_pos, len(second)]
        cum = np.cumsum(lengths[secs])
        c0 = 0
        while c0 < len(secs):
            # as many second tokens as fit in max_cells columns x len(rows_a) rows (at least one)
            budget = max_cells // max(1, len(rows_a)) + (cum[c0 - 1] if c0 else 0)
            c1 = max(c0 + 1, int(np.searchsorted(cum, budget, "right")))
            chunk = secs[c0:c1]
            rows_b, local_b = frames.rows(chunk)
            block = frame_distances(frames, rows_a_t, torch.from_numpy(rows_b).to(frames.device)).cpu().numpy()
            lo, hi = sec_pos[c0], sec_pos[c1]
            col0 = local_b[np.searchsorted(chunk, second[lo:hi])]
            out[idx[lo:hi]] = dtw_blocks(block, row0[lo:hi], lengths[first[lo:hi]], col0, lengths[second[lo:hi]],
                                         normalize)
            bar.update(hi - lo)
            c0 = c1


def _padded(frames: Frames, pairs: np.ndarray, normalize: bool, max_cells: int, out: np.ndarray, bar) -> None:
    la, lb = frames.lengths[pairs[:, 0]], frames.lengths[pairs[:, 1]]
    order = np.lexsort((lb, la))
    for lo, hi in _cut(la[order], lb[order], max_cells):
        idx = order[lo:hi]
        rows_a, n = frames.padded(pairs[idx, 0], int(la[idx].max()))
        rows_b, m = frames.padded(pairs[idx, 1], int(lb[idx].max()))
        out[idx] = dtw(frame_distances(frames, rows_a, rows_b), n, m, normalize).cpu().numpy()
        bar.update(len(idx))


def _cut(la: np.ndarray, lb: np.ndarray, max_cells: int) -> list[tuple[int, int]]:
    """Cut pairs sorted by (la, lb) into [lo, hi) batches of at most ``max_cells`` padded
    cells (a pair larger than that alone). Loops over distinct shapes, not pairs."""
    keys = la * (int(lb.max()) + 1) + lb
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    batches: list[tuple[int, int]] = []
    lo, n_max, m_max = 0, 0, 0
    for s, e in zip(starts.tolist(), ends.tolist()):
        na, nb = int(la[s]), int(lb[s])
        pos = s
        while pos < e:
            nn, mm = max(n_max, na), max(m_max, nb)
            room = max_cells // (nn * mm) - (pos - lo)
            if room <= 0 and pos > lo:
                batches.append((lo, pos))
                lo, n_max, m_max = pos, 0, 0
                continue
            pos = min(e, pos + max(room, 1))
            n_max, m_max = nn, mm
    batches.append((lo, len(keys)))
    return batches
