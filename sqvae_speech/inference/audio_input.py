"""Log-mel features of one recording given as a file or an array, as ``extract`` computes them.

A file up to :data:`~sqvae_speech.data.longaudio.STREAM_MIN_SECONDS` long is read whole
(:func:`~sqvae_speech.data.audio.load_audio`: any format libsndfile reads, any sample
rate and channel count, downmixed and resampled) and its features computed by
:func:`~sqvae_speech.data.features.logmel`, exactly as ``extract`` does; a longer one is
read and computed block by block (:mod:`sqvae_speech.data.longaudio`) into a scratch file,
so memory stays bounded whatever its length. An array ``[N]``, ``[N, C]`` or ``[C, N]``
comes with its sample rate.

Bad input raises :class:`~sqvae_speech.errors.AudioError` naming the file: missing,
unreadable, empty, truncated, NaN samples, silence, or too short for one latent frame.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import FeatureConfig
from ..data.audio import SILENCE_THRESHOLD, downmix, is_silent, load_audio, resample
from ..data.batching import MIN_FRAMES
from ..errors import AudioError

AudioInput = Any  # str | os.PathLike | np.ndarray | torch.Tensor


@dataclass
class MelInput:
    """The features of one recording: whole (``mel``) or waiting in a scratch file (``long``)."""

    name: str  # the file's path, or "<array>"
    frames: int  # mel frames T
    samples: int  # signal length at the feature rate
    mel: np.ndarray | None = None  # [n_mels, T] float32, when computed whole
    wav: np.ndarray | None = None  # [N] float32 at the feature rate, when read whole
    long: Any = None  # LongLogmel, when streamed
    sample_rate: int = 16000  # of the signal the features were computed from

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    def blocks(self) -> Iterator[np.ndarray]:
        """The features as consecutive ``[n_mels, t]`` float32 blocks."""
        if self.mel is not None:
            yield self.mel
        else:
            yield from self.long.blocks()


def _as_array(audio: Any) -> np.ndarray:
    if hasattr(audio, "detach"):  # a torch tensor
        audio = audio.detach().cpu().numpy()
    return np.asarray(audio)


def is_path(audio: Any) -> bool:
    return isinstance(audio, (str, os.PathLike))


def describe(audio: Any) -> str:
    return str(audio) if is_path(audio) else "<array>"


@contextlib.contextmanager
def mel_input(audio: AudioInput, config: FeatureConfig, sample_rate: int | None = None,
              stream_seconds: float | None = None) -> Iterator[MelInput]:
    """Context manager giving the :class:`MelInput` of ``audio`` (a path or an array with
    ``sample_rate``); a streamed recording's scratch file is removed on exit.

    Raises :class:`AudioError` for bad input (module docstring).
    """
    from ..data import longaudio
    from ..data.features import logmel

    limit = longaudio.STREAM_MIN_SECONDS if stream_seconds is None else stream_seconds
    if is_path(audio):
        if sample_rate is not None:
            raise AudioError(f"{audio}: sample_rate is for arrays; a file's rate is read from its header")
        path = Path(audio)
        wav = load_audio(path, config.sample_rate, max_samples=int(limit * config.sample_rate))
        if wav is None:
            peak = longaudio.signal_peak(path, config)
            if peak[0] < SILENCE_THRESHOLD:
                raise AudioError(f"{path}: silent audio (peak {peak[0]:.1e}): nothing to encode")
            fd, scratch = tempfile.mkstemp(prefix="sqvae-long-", suffix=".f32")
            os.close(fd)
            try:
                long = longaudio.logmel_long(path, scratch, config, peak=peak)
                if not np.isfinite(long.db_max):
                    raise AudioError(f"{path}: its features hold NaN or inf")
                yield MelInput(str(path), long.frames, long.samples, long=long, sample_rate=config.sample_rate)
            finally:
                Path(scratch).unlink(missing_ok=True)
            return
        name = str(path)
    else:
        if sample_rate is None:
            raise AudioError("an audio array needs its sample_rate (encode(array, sample_rate=16000))")
        x = _as_array(audio)
        if x.ndim not in (1, 2) or x.size == 0:
            raise AudioError(f"an audio array must be [N], [N, C] or [C, N] with samples, got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.number):
            raise AudioError(f"an audio array must hold numbers, got {x.dtype}")
        x = downmix(x.astype(np.float32, copy=False) if x.dtype.kind in "iub" else x)
        if not np.isfinite(x).all():
            raise AudioError(f"the audio array holds {int(np.count_nonzero(~np.isfinite(x)))} NaN or infinite samples")
        wav = resample(x, int(sample_rate), config.sample_rate)
        name = "<array>"
    if is_silent(wav):
        raise AudioError(f"{name}: silent audio (peak {float(np.abs(wav).max(initial=0.0)):.1e}): nothing to encode")
    mel = logmel(wav, config.sample_rate, config)
    if not np.isfinite(mel).all():
        raise AudioError(f"{name}: its features hold NaN or inf")
    yield MelInput(name, mel.shape[1], wav.shape[0], mel=mel, wav=wav, sample_rate=config.sample_rate)


def short_mel_input(audio: str | os.PathLike, config: FeatureConfig) -> MelInput | None:
    """The :class:`MelInput` of a file read whole, checked (:func:`check_length`); None for
    a recording longer than :data:`~sqvae_speech.data.longaudio.STREAM_MIN_SECONDS`, which
    :func:`mel_input` streams. Raises :class:`AudioError` for bad input."""
    from ..data import longaudio

    if load_audio_header_seconds(audio, config) > longaudio.STREAM_MIN_SECONDS:
        return None
    with mel_input(audio, config) as inp:
        if inp.mel is None:
            return None
        check_length(inp, config)
        return inp


def load_audio_header_seconds(audio: str | os.PathLike, config: FeatureConfig) -> float:
    """Duration in seconds at the feature rate, from the file's header (AudioError if unreadable)."""
    from ..data.audio import audio_info

    sr, frames, _ = audio_info(audio)
    return -(-frames * config.sample_rate // sr) / config.sample_rate


def check_length(inp: MelInput, config: FeatureConfig) -> None:
    """At least one latent frame: :data:`MIN_FRAMES` mel frames (about 30 ms)."""
    if inp.frames - inp.frames % 2 < MIN_FRAMES:
        ms = inp.samples / config.sample_rate * 1000
        raise AudioError(f"{inp.name}: {ms:.0f} ms of audio gives {inp.frames} feature frames; the encoder needs "
                         f"at least {MIN_FRAMES} (about {MIN_FRAMES * config.hop_length / config.sample_rate * 1000:.0f} ms)")
