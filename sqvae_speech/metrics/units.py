"""How well discrete units (codes) follow phones, as HuBERT reports it.

Hsu et al. (2021), "HuBERT", section "Cluster quality": with phone labels ``y`` and
codes ``z`` of the frames that have a phone label, the joint distribution is
``p(y=i, z=j) = counts[i, j] / N`` (``N`` labelled frames), and

- phone purity ``= E_p(z)[max_i p(y=i | z)] = sum_j max_i p(i, j)``: how pure each code
  is (1: every code stands for one phone);
- code (cluster) purity ``= E_p(y)[max_j p(z=j | y)] = sum_i max_j p(i, j)``: how much
  each phone sticks to one code (1: every phone has one code);
- PNMI ``= I(y; z) / H(y)``: the share of the phone's uncertainty a code removes
  (1: codes determine the phone, 0: independent); NaN (``None`` in :meth:`UnitQuality.to_dict`)
  when only one phone occurs, so ``H(y) = 0``;
- code entropy per phone ``= sum_i p(y=i) H(z | y=i) = H(z | y)`` in bits (0: one code per phone).

Besides, the mean segment length: the mean length of runs of identical consecutive codes
within each utterance, over all its frames (labelled or not), in frames and ms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import SQVAEError


@dataclass
class UnitQuality:
    """Unit-quality numbers of a set of utterances (module docstring for definitions)."""

    phone_purity: float
    code_purity: float
    pnmi: float
    code_entropy_bits: float
    mean_segment_frames: float
    mean_segment_ms: float
    frames: int  # labelled frames, the N of the joint distribution
    unlabelled_frames: int  # frames with label -1 (not in the joint distribution)
    num_phones: int  # len(phones), the rows of counts
    used_codes: int  # distinct codes over all frames, labelled or not
    counts: np.ndarray = field(repr=False)  # [num_phones, num_codes] int64, labelled frames per (phone, code)
    phones: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, float | int | None]:
        """The scalar fields as plain Python numbers (JSON-ready; NaN becomes ``None``)."""
        out: dict[str, float | int | None] = {}
        for k, v in asdict(self).items():
            if k in ("counts", "phones"):
                continue
            if isinstance(v, int | np.integer):
                out[k] = int(v)
            else:
                out[k] = float(v) if math.isfinite(v) else None
        return out


def _concat(arrays: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    out = []
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise SQVAEError(f"utterance {i}: {what} must be a 1-D integer array [T], got {a.dtype} {a.shape}")
        out.append(a.astype(np.int64, copy=False))
    return out


def contingency(codes: np.ndarray, labels: np.ndarray, num_phones: int, num_codes: int) -> np.ndarray:
    """``counts[i, j]``: frames with phone ``i`` and code ``j``; int64 ``[num_phones, num_codes]``.

    ``codes`` and ``labels`` are int ``[N]`` (all utterances concatenated); frames with
    ``label < 0`` are left out. Raises :class:`SQVAEError` for a code outside
    ``[0, num_codes)`` or a label ``>= num_phones``.
    """
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if codes.shape != labels.shape:
        raise SQVAEError(f"{codes.size} codes but {labels.size} labels: need one label per frame")
    if codes.size and (codes.min() < 0 or codes.max() >= num_codes):
        raise SQVAEError(f"codes range {codes.min()}..{codes.max()}, outside the codebook [0, {num_codes}): "
                         "pass the codebook size of the model that made them")
    if labels.size and labels.max() >= num_phones:
        raise SQVAEError(f"phone label {labels.max()} but only {num_phones} phones: pass the phone list the labels index")
    keep = labels >= 0
    flat = np.bincount(labels[keep] * num_codes + codes[keep], minlength=num_phones * num_codes)
    return flat.reshape(num_phones, num_codes).astype(np.int64, copy=False)


def unit_quality(codes: Sequence[np.ndarray], labels: Sequence[np.ndarray], num_codes: int, phones: list[str],
                 frame_seconds: float) -> UnitQuality:
    """Unit quality of ``codes`` against phone ``labels`` (module docstring).

    ``codes[i]`` and ``labels[i]`` are int ``[T_i]`` for utterance ``i``: its code and
    phone index (into ``phones``; ``-1`` for no label) per frame. ``frame_seconds`` is the
    frame period (for the segment length in ms). Raises :class:`SQVAEError` if an
    utterance's codes and labels differ in length, or if no frame has a label.
    """
    if len(codes) != len(labels):
        raise SQVAEError(f"codes of {len(codes)} utterances but labels of {len(labels)}: need one label array per utterance")
    cs, ls = _concat(codes, "codes"), _concat(labels, "labels")
    for i, (c, lab) in enumerate(zip(cs, ls)):
        if c.size != lab.size:
            raise SQVAEError(f"utterance {i}: {c.size} codes but {lab.size} phone labels; the labels must be made "
                             "at the frame times of the codes (same frame period and count)")
    code = np.concatenate(cs) if cs else np.zeros(0, np.int64)
    label = np.concatenate(ls) if ls else np.zeros(0, np.int64)
    counts = contingency(code, label, len(phones), num_codes)
    n = int(counts.sum())
    if n == 0:
        raise SQVAEError(f"none of the {code.size} frames has a phone label: does the alignment cover these "
                         "utterances, with times in seconds of the same audio?")

    p = counts / n  # p(y=i, z=j)
    py, pz = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    pi = np.broadcast_to(py[:, None], p.shape)[nz]
    pj = np.broadcast_to(pz[None, :], p.shape)[nz]
    mutual = float(np.sum(p[nz] * np.log(p[nz] / (pi * pj))))
    h_y = float(-np.sum(py[py > 0] * np.log(py[py > 0])))
    h_z_given_y = float(-np.sum(p[nz] * np.log2(p[nz] / pi)))

    # runs of identical codes: a run starts at each utterance's first frame and at each change
    starts = np.ones(code.size, dtype=bool)
    starts[1:] = code[1:] != code[:-1]
    offsets = np.cumsum([c.size for c in cs])[:-1]
    starts[offsets[offsets < code.size]] = True
    runs = int(starts.sum())
    seg = code.size / runs if runs else 0.0

    return UnitQuality(
        phone_purity=float(p.max(axis=0).sum()),
        code_purity=float(p.max(axis=1).sum()),
        pnmi=mutual / h_y if h_y > 0 else math.nan,
        code_entropy_bits=max(h_z_given_y, 0.0),
        mean_segment_frames=float(seg),
        mean_segment_ms=float(seg * frame_seconds * 1000.0),
        frames=n,
        unlabelled_frames=int(code.size - n),
        num_phones=len(phones),
        used_codes=int(np.unique(code).size),
        counts=counts,
        phones=list(phones),
    )
