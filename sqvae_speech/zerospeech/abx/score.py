"""ABX error rates "by context", within and across speakers, aggregated as ZeroSpeech does.

Triplets (A, B, X) of tokens that share a context (prev-phone, next-phone):

- A and X have the same phone, B another phone, X is a different token than A;
- ``within``: A, B and X have the same speaker (ABXpy task on=phone, by=[context, speaker]);
- ``across``: A and B have the same speaker, X another one (on=phone, by=context,
  across=speaker).

A triplet scores 1 when d(A, X) < d(B, X), 0.5 when equal, 0 otherwise (d: DTW distance,
:mod:`.dtw`, computed as dtw(A, X) and dtw(B, X)). Aggregation, as ABXpy's ``analyze`` and
the ZeroSpeech 2019/2020 evaluation (``_average``):

1. mean score over the triplets of each cell (context, A-phone, B-phone, A/B speaker,
   X speaker), the X speaker being the A/B speaker within;
2. mean over contexts -> (A-phone, B-phone, speaker) within, (A-phone, B-phone,
   A/B speaker, X speaker) across;
3. mean over speakers (within) or ordered speaker pairs (across) -> (A-phone, B-phone);
4. mean over ordered phone pairs (not symmetrised: (p, q) and (q, p) are two entries);

error rate = 100 * (1 - score).

Everything is vectorised with numpy: token pairs and triplets are enumerated from sorted
label arrays (no Python loop over cells), each distinct pair's DTW is computed once
(a pair serves many triplets), and triplets are scored in chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .items import ItemSet

CONDITIONS = ("within", "across")
TRIPLET_CHUNK = 4_000_000


@dataclass
class Labels:
    """Integer codes of the item labels (ids follow sorted names, so row order is irrelevant)."""

    ctx: np.ndarray  # [N] id of (prev, next)
    phone: np.ndarray  # [N]
    spk: np.ndarray  # [N]
    phones: list[str]
    speakers: list[str]
    contexts: list[tuple[str, str]]

    @classmethod
    def of(cls, items: ItemSet) -> Labels:
        phones = sorted(set(items.phone))
        speakers = sorted(set(items.speaker))
        contexts = sorted(set(zip(items.prev, items.next)))
        pid = {p: i for i, p in enumerate(phones)}
        sid = {s: i for i, s in enumerate(speakers)}
        cid = {c: i for i, c in enumerate(contexts)}
        return cls(np.array([cid[c] for c in zip(items.prev, items.next)], dtype=np.int64),
                   np.array([pid[p] for p in items.phone], dtype=np.int64),
                   np.array([sid[s] for s in items.speaker], dtype=np.int64), phones, speakers, contexts)

    def __len__(self) -> int:
        return len(self.ctx)


@dataclass
class ConditionScore:
    error: float | None  # percent; None when the item set makes no triplet
    triplets: int
    cells: int
    phone_pairs: int
    by_phone_pair: dict[str, float] = field(default_factory=dict)  # "A-phone/B-phone" -> error %


def ax_pairs(lab: Labels, condition: str) -> np.ndarray:
    """Ordered (A, X) pairs [Q, 2]: same context and phone, A != X, speaker relation of the condition."""
    order = np.lexsort((lab.phone, lab.ctx))
    key = lab.ctx[order] * len(lab.phones) + lab.phone[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    sq = sizes * sizes
    g = np.repeat(np.arange(len(sizes)), sq)
    within = np.arange(int(sq.sum())) - np.repeat(np.cumsum(sq) - sq, sq)
    a = order[starts[g] + within // sizes[g]]
    x = order[starts[g] + within % sizes[g]]
    same_spk = lab.spk[a] == lab.spk[x]
    keep = (a != x) & (same_spk if condition == "within" else ~same_spk)
    return np.stack([a[keep], x[keep]], 1)


class _BIndex:
    """Tokens sorted by (context, speaker, phone): the B candidates of (context c, speaker s,
    phone p) are the range of (c, s) minus its sub-range of phone p."""

    def __init__(self, lab: Labels) -> None:
        self.lab = lab
        self.order = np.lexsort((lab.phone, lab.spk, lab.ctx))
        self.key = self._key(lab.ctx[self.order], lab.spk[self.order], lab.phone[self.order])

    def _key(self, c: np.ndarray, s: np.ndarray, p: np.ndarray) -> np.ndarray:
        return (c * len(self.lab.speakers) + s) * len(self.lab.phones) + p

    def _ranges(self, x: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        c, p = self.lab.ctx[x], self.lab.phone[x]
        lo = np.searchsorted(self.key, self._key(c, s, 0), "left")
        hi = np.searchsorted(self.key, self._key(c, s, len(self.lab.phones)), "left")
        plo = np.searchsorted(self.key, self._key(c, s, p), "left")
        phi = np.searchsorted(self.key, self._key(c, s, p), "right")
        return lo, plo, phi, hi

    def counts(self, x: np.ndarray, s: np.ndarray) -> np.ndarray:
        """Number of B candidates of each query (X token, A/B speaker)."""
        lo, plo, phi, hi = self._ranges(x, s)
        return (hi - lo) - (phi - plo)

    def expand(self, x: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For queries (X token, A/B speaker) [Q]: (query index [T], B token [T]) of every B."""
        lo, plo, phi, hi = self._ranges(x, s)
        head = plo - lo
        cnt = (hi - lo) - (phi - plo)
        q = np.repeat(np.arange(len(x)), cnt)
        off = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        pos = np.where(off < head[q], lo[q] + off, phi[q] + off - head[q])
        return q, self.order[pos]


def needed_pairs(lab: Labels, conditions: tuple[str, ...] = CONDITIONS) -> np.ndarray:
    """Every ordered (A or B, X) token pair some triplet of ``conditions`` uses, [Q, 2], unique."""
    bidx = _BIndex(lab)
    parts = []
    for cond in conditions:
        ax = ax_pairs(lab, cond)
        parts.append(ax)
        xs = np.unique(np.stack([ax[:, 1], lab.spk[ax[:, 0]]], 1), axis=0) if len(ax) else np.zeros((0, 2), np.int64)
        q, b = bidx.expand(xs[:, 0], xs[:, 1])
        parts.append(np.stack([b, xs[q, 0]], 1))
    pairs = np.concatenate(parts, 0) if parts else np.zeros((0, 2), np.int64)
    return np.unique(pairs, axis=0)


class PairTable:
    """d(first, second) for the pairs computed, looked up by encoded pair."""

    def __init__(self, pairs: np.ndarray, dist: np.ndarray, n_tokens: int) -> None:
        self.n = n_tokens
        codes = pairs[:, 0] * n_tokens + pairs[:, 1]
        order = np.argsort(codes)
        self.codes, self.dist = codes[order], dist[order]

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        codes = first * self.n + second
        pos = np.searchsorted(self.codes, codes)
        if len(codes) and (pos.max() >= len(self.codes) or not np.array_equal(self.codes[pos], codes)):
            raise KeyError("a triplet needs a pair distance that was not computed")
        return self.dist[pos]


def _triplet_chunks(lab: Labels, ax: np.ndarray, bidx: _BIndex) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(A, B, X) token arrays, at most about TRIPLET_CHUNK triplets at a time."""
    cnt = bidx.counts(ax[:, 1], lab.spk[ax[:, 0]])
    ends = np.cumsum(cnt)
    lo = 0
    while lo < len(ax):
        base = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + TRIPLET_CHUNK, "right")))
        part = ax[lo:hi]
        q, b = bidx.expand(part[:, 1], lab.spk[part[:, 0]])
        yield part[q, 0], b, part[q, 1]
        lo = hi


def score_condition(lab: Labels, table: PairTable, condition: str) -> ConditionScore:
    """Error rate of one condition from precomputed pair distances (module docstring)."""
    n_p, n_s = len(lab.phones), len(lab.speakers)
    ax = ax_pairs(lab, condition)
    bidx = _BIndex(lab)
    keys, sums, cnts = [], [], []
    triplets = 0
    for a, b, x in _triplet_chunks(lab, ax, bidx):
        if len(a) == 0:
            continue
        d_ax, d_bx = table(a, x), table(b, x)
        s = (d_ax < d_bx).astype(np.float64) + 0.5 * (d_ax == d_bx)
        key = (((lab.ctx[x] * n_p + lab.phone[a]) * n_p + lab.phone[b]) * n_s + lab.spk[a]) * n_s + lab.spk[x]
        uk, inv = np.unique(key, return_inverse=True)
        keys.append(uk)
        sums.append(np.bincount(inv, weights=s))
        cnts.append(np.bincount(inv))
        triplets += len(a)
    if not triplets:
        return ConditionScore(None, 0, 0, 0)
    uk, inv = np.unique(np.concatenate(keys), return_inverse=True)
    cell = np.bincount(inv, weights=np.concatenate(sums)) / np.bincount(inv, weights=np.concatenate(cnts))
    rest, sx = np.divmod(uk, n_s)
    rest, sa = np.divmod(rest, n_s)
    rest, pb = np.divmod(rest, n_p)
    _ctx, pa = np.divmod(rest, n_p)
    # 2. mean over contexts; 3. over speakers / speaker pairs; 4. over phone pairs
    spk_key = ((pa * n_p + pb) * n_s + sa) * n_s + sx
    k2, per_spk = _group_mean(spk_key, cell)
    k3, per_phone = _group_mean(k2 // (n_s * n_s), per_spk)
    score = float(per_phone.mean())
    by_pair = {f"{lab.phones[k // n_p]}/{lab.phones[k % n_p]}": round(100.0 * (1.0 - v), 4)
               for k, v in zip(k3.tolist(), per_phone.tolist())}
    return ConditionScore(100.0 * (1.0 - score), triplets, len(uk), len(k3), by_pair)


def _group_mean(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uk, inv = np.unique(keys, return_inverse=True)
    return uk, np.bincount(inv, weights=values) / np.bincount(inv)
