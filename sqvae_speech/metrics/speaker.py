"""Speaker similarity from Resemblyzer d-vectors (GE2E speaker encoder, Wan et al. 2018).

:class:`SpeakerEncoder` turns a clip ``[N]`` into a unit-norm float32 embedding ``[256]``:
Resemblyzer resamples it to 16 kHz, normalizes its volume, trims long pauses with WebRTC
VAD, and averages the embeddings of 1.6 s partial windows. :func:`cosine` compares two
embeddings; :func:`centroid` is a speaker's mean embedding, renormalized. The pretrained
weights ship inside the ``resemblyzer`` wheel (no download).

Speed on this machine (65 s of speech, after the first call's warm-up): ~0.007 s per second
of audio for :meth:`SpeakerEncoder.embed` (resampling and VAD included) with one torch thread
(``OMP_NUM_THREADS=1``; on this busy 2-core machine two threads were ~15x slower). The first
call (import, loading the model, warm-up) takes ~2.5 s.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import SQVAEError

EMBEDDING_DIM = 256
MIN_SPEECH_SECONDS = 0.3  # of speech left after Resemblyzer's VAD trimming


def _resemblyzer() -> Any:
    with warnings.catch_warnings():
        # pkg_resources (webrtcvad) and scipy.ndimage.morphology deprecation noise on import
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        import resemblyzer
    return resemblyzer


class SpeakerEncoder:
    """Resemblyzer's ``VoiceEncoder`` on ``device``, loaded on the first :meth:`embed`."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._encoder: Any = None

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            self._encoder = _resemblyzer().VoiceEncoder(self.device, verbose=False)
        return self._encoder

    def embed(self, wav: np.ndarray, sample_rate: int, name: str = "") -> np.ndarray:
        """Unit-norm float32 embedding ``[256]`` of the clip ``wav [N]`` at ``sample_rate``.

        Raises :class:`~sqvae_speech.errors.SQVAEError` (naming ``name`` when given) when the
        clip is not a finite mono signal or holds less than :data:`MIN_SPEECH_SECONDS` of
        speech after VAD trimming (silence, noise).
        """
        what = f"'{name}'" if name else "the clip"
        x = np.asarray(wav, dtype=np.float32)
        if x.ndim != 1:
            raise SQVAEError(f"speaker embedding: {what} must be a mono [N] signal, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise SQVAEError(f"speaker embedding: {what} holds NaN or infinite samples")
        if sample_rate <= 0:
            raise SQVAEError(f"speaker embedding: sample rate must be > 0, got {sample_rate}")
        resemblyzer = _resemblyzer()
        speech = np.zeros(0, np.float32)
        if np.any(x != 0):  # all zeros: the volume normalization divides by 0
            with np.errstate(divide="ignore", invalid="ignore"):
                speech = resemblyzer.preprocess_wav(x, source_sr=sample_rate)
        seconds = speech.size / resemblyzer.sampling_rate
        if seconds < MIN_SPEECH_SECONDS:
            raise SQVAEError(f"speaker embedding: {what} has no speech ({x.size / sample_rate:.2f} s of audio, "
                             f"{seconds:.2f} s left after voice activity detection; at least "
                             f"{MIN_SPEECH_SECONDS} s needed)")
        emb = np.asarray(self.encoder.embed_utterance(speech), dtype=np.float32)
        return emb / np.linalg.norm(emb)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings ``[D]`` (1 for the same direction)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise SQVAEError(f"cosine: expected two [D] embeddings of one size, got {a.shape} and {b.shape}")
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    if norm == 0:
        raise SQVAEError("cosine: an embedding is all zeros")
    return float(np.dot(a, b) / norm)


def centroid(embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of embeddings ``[D]`` each, renormalized to unit norm: float32 ``[D]``."""
    if len(embeddings) == 0:
        raise SQVAEError("centroid: no embeddings (a speaker without a single embedded clip)")
    stack = np.stack([np.asarray(e, dtype=np.float64) for e in embeddings])
    if stack.ndim != 2:
        raise SQVAEError(f"centroid: expected [D] embeddings, got a stack of shape {stack.shape}")
    mean = stack.mean(axis=0)
    norm = np.linalg.norm(mean)
    if norm == 0:
        raise SQVAEError("centroid: the embeddings cancel out (mean is zero)")
    return (mean / norm).astype(np.float32)
