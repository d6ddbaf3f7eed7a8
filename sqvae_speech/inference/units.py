"""What :meth:`sqvae_speech.Model.encode` returns: the latent sequence of one recording."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Units:
    """The latents of one recording at the encoder's rate (50 per second with 10 ms hops).

    Attributes:
        indices: ``[T']`` int64 code indices (-1 throughout for the continuous VAE).
        quantized: ``[T', D]`` float32 quantized vectors z_q, what the decoder reads
            (``codebook[indices]`` for SQ-VAE and VQ models).
        z: ``[T', D]`` float32 encoder means before quantization ("auxiliary" features).
        times: ``[T']`` float64 centre of each frame in seconds, ``time_offset + i / rate``.
        rate: frames per second.
        source: the file the units came from, or ``"<array>"``.
        seconds: duration of the recording.
    """

    indices: np.ndarray
    quantized: np.ndarray
    z: np.ndarray
    times: np.ndarray
    rate: float
    source: str = "<array>"
    seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def dedup(self) -> np.ndarray:
        """``[U]`` int64: the indices with runs of a repeated code collapsed to one, as unit
        language models take them (``[5, 5, 7, 5] -> [5, 7, 5]``)."""
        return dedup(self.indices)

    def to_text(self, dedup: bool = False) -> str:
        """The indices as one line of space-separated integers (collapsed with ``dedup``)."""
        return units_text(self.dedup() if dedup else self.indices)

    @classmethod
    def concatenate(cls, pieces: Sequence[Units]) -> Units:
        """Consecutive pieces of one recording (streamed encoding) -> one :class:`Units`."""
        first = pieces[0]
        return cls(np.concatenate([p.indices for p in pieces]), np.concatenate([p.quantized for p in pieces]),
                   np.concatenate([p.z for p in pieces]), np.concatenate([p.times for p in pieces]),
                   first.rate, first.source, first.seconds)


def dedup(indices: np.ndarray) -> np.ndarray:
    """``[T]`` -> ``[U]``: runs of equal consecutive values collapsed to one."""
    x = np.asarray(indices)
    if x.size == 0:
        return x.copy()
    keep = np.ones(x.shape[0], dtype=bool)
    keep[1:] = x[1:] != x[:-1]
    return x[keep]


def units_text(indices: np.ndarray) -> str:
    return " ".join(map(str, np.asarray(indices, dtype=np.int64).tolist()))
