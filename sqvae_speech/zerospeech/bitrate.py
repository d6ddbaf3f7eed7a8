"""Bitrate of a discrete (or any) representation, as ZeroSpeech 2019 defines it.

    bitrate = N / D * H

N: the number of frames (symbols) in the whole set; D: the total duration of the
utterances in seconds; H: the entropy in bits of the empirical distribution of symbols,
a symbol being a distinct frame vector (exact equality of all its values; -0.0 counts as
0.0, as in the challenge's reader, which keys a dict by tuples of floats). A quantized
export has at most K symbols; continuous features have about one symbol per frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import SQVAEError


def symbol_counts(features: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """Counts of each distinct row over all arrays ([T, D], or [T] for scalar symbols)."""
    rows = [np.asarray(f, dtype=np.float64).reshape(len(f), -1) for f in features]
    dims = {r.shape[1] for r in rows if len(r)}
    if len(dims) > 1:
        raise SQVAEError(f"bitrate: the feature files have different dimensions {sorted(dims)}; they must all match")
    if not rows or sum(len(r) for r in rows) == 0:
        return np.zeros(0, dtype=np.int64), 0
    allrows = np.concatenate(rows) + 0.0  # -0.0 + 0.0 == +0.0: one symbol for both zeros
    if np.isnan(allrows).any():
        raise SQVAEError("bitrate: the features hold NaN values")
    _, counts = np.unique(allrows, axis=0, return_counts=True)
    return counts, len(allrows)


def entropy_bits(counts: np.ndarray) -> float:
    """Entropy (bits) of the distribution given by ``counts``."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: one symbol gives 0.0, not -0.0


def bitrate(features: list[np.ndarray], durations: list[float]) -> float:
    """ZeroSpeech 2019 bitrate (bits/s) of per-utterance features and their durations (s)."""
    if len(features) != len(durations):
        raise ValueError(f"{len(features)} feature arrays but {len(durations)} durations")
    total = float(sum(durations))
    if total <= 0:
        raise SQVAEError("bitrate: the total duration must be > 0 seconds")
    counts, n = symbol_counts(features)
    return n / total * entropy_bits(counts) if n else 0.0


def read_durations(path: str | os.PathLike) -> dict[str, float]:
    """Durations by name from a ZeroSpeech-style list of ``name duration-seconds`` lines.

    Names may carry an extension (``s01_0001.txt``); it is dropped."""
    path = Path(path)
    if not path.is_file():
        raise SQVAEError(f"duration list {path} does not exist")
    out: dict[str, float] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 2:
                raise ValueError
            dur = float(parts[1])
        except ValueError:
            raise SQVAEError(f"{path} line {n}: expected 'name duration-seconds', got '{line.strip()}'") from None
        name = parts[0]
        for ext in (".txt", ".npy", ".npz", ".wav"):
            name = name.removesuffix(ext)
        out[name] = dur
    return out
