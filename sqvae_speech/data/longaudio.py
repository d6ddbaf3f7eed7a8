"""Log-mel features of long recordings in bounded memory.

:func:`~sqvae_speech.data.features.logmel` holds the whole signal and its whole spectrogram:
about 1.9 MB per second of audio at the protocol's settings (227 MB measured for two
minutes), 7 GB for an hour. Recordings longer than :data:`STREAM_MIN_SECONDS` are computed here instead,
block by block, with the same arithmetic (equal to ``logmel`` to float rounding of the
mel product, ~1e-6), in two passes over the file because the features depend on two
whole-utterance quantities:

1. the peak: read, downmix and resample (:func:`~sqvae_speech.data.audio.stream_audio`) to
   find ``max|x|`` and the length;
2. the features: read again, normalize by that peak, pre-emphasize (carrying one sample
   across blocks), reflect-pad both ends as ``logmel`` does, cut :data:`BLOCK_FRAMES`
   frames at a time with their overlap and write each block's dB values to a scratch
   file, keeping the maximum;

and :meth:`LongLogmel.blocks` reads the scratch file back, clips each block at
``max(dB) - top_db`` and scales it. Memory stays at one block of audio and one block of
frames whatever the length; the scratch file holds ``4 * n_mels`` bytes per frame.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.fft

from ..config import FeatureConfig
from .audio import STREAM_BLOCK_FRAMES, ClipCount, stream_audio
from .features import _hann, _mel_project_np, _window_offset, num_frames

# Recordings longer than this go through the streamed path when extracting.
STREAM_MIN_SECONDS = 60.0
# STFT frames per block (10 s at hop 160): ~15 MB of spectrum at the protocol's n_fft.
BLOCK_FRAMES = 1024


@dataclasses.dataclass
class LongLogmel:
    """Features of one long recording, waiting in a scratch file of float32 dB rows."""

    scratch: Path  # float32 [frames, n_mels], unclipped dB
    frames: int
    samples: int  # signal length at config.sample_rate
    peak: float  # max |x| of the signal before normalization
    db_max: np.float32
    config: FeatureConfig

    def blocks(self, rows: int = 8 * BLOCK_FRAMES) -> Iterator[np.ndarray]:
        """The scaled features as consecutive ``[n_mels, t]`` float32 blocks (``[n_mels, T]``
        of :func:`~sqvae_speech.data.features.logmel`, cut along time)."""
        cfg = self.config
        dt = np.float32
        floor = self.db_max - dt(cfg.top_db)
        with open(self.scratch, "rb") as f:
            done = 0
            while done < self.frames:
                k = min(rows, self.frames - done)
                db = np.fromfile(f, dtype=np.float32, count=k * cfg.n_mels)
                if db.shape[0] != k * cfg.n_mels:
                    raise OSError(f"scratch file {self.scratch} ended after {done} of {self.frames} frames")
                db = np.maximum(db.reshape(k, cfg.n_mels), floor)
                yield (db / dt(cfg.top_db) + dt(1.0)).T
                done += k


def signal_peak(
    path: str | os.PathLike, config: FeatureConfig, start: float | None = None, end: float | None = None,
    block_frames: int = STREAM_BLOCK_FRAMES, clip: ClipCount | None = None,
) -> tuple[float, int]:
    """``(max|x|, length)`` of the signal ``load_audio`` would return, read block by block;
    ``clip`` counts the samples at full scale on the way."""
    peak, n = 0.0, 0
    for block in stream_audio(path, config.sample_rate, start, end, block_frames, clip=clip):
        peak = max(peak, float(np.max(np.abs(block))))
        n += block.shape[0]
    return peak, n


def logmel_long(
    path: str | os.PathLike,
    scratch: str | os.PathLike,
    config: FeatureConfig | None = None,
    start: float | None = None,
    end: float | None = None,
    peak: tuple[float, int] | None = None,
    block_frames: int = STREAM_BLOCK_FRAMES,
) -> LongLogmel:
    """Log-mel of a recording (or a ``[start, end)`` segment) equal to
    ``logmel(load_audio(path, sr, start, end), sr, config)``, computed in bounded memory.

    The dB values go to ``scratch`` (created or overwritten; the caller removes it after
    reading :meth:`LongLogmel.blocks`). ``peak`` is :func:`signal_peak`'s result when the
    caller already has it (e.g. to reject silence first). Raises
    :class:`~sqvae_speech.errors.AudioError` for a bad file; an all-zero signal gives the
    constant floor, as ``logmel`` does.
    """
    cfg = config or FeatureConfig()
    m, n = peak if peak is not None else signal_peak(path, cfg, start, end, block_frames)
    pad = cfg.n_fft // 2
    if n <= pad + 1:
        raise ValueError(f"{path}: {n} samples is too short for the streamed log-mel; use features.logmel")
    t_total = num_frames(n, cfg)
    dt = np.float32
    scale = dt(cfg.peak) / dt(m) if m > 0 else None
    coef = dt(cfg.preemph)
    window = _hann(cfg.win_length).astype(np.float32)
    off, win, hop = _window_offset(cfg), cfg.win_length, cfg.hop_length
    db_max = dt(-np.inf)

    def emphasized() -> Iterator[np.ndarray]:
        prev: np.float32 | None = None
        for block in stream_audio(path, cfg.sample_rate, start, end, block_frames):
            x = (block / dt(m) * dt(cfg.peak)).astype(np.float32, copy=False) if scale is not None else np.zeros_like(block)
            y = x.copy()
            y[1:] -= coef * x[:-1]
            if prev is not None:
                y[0] -= coef * prev
            prev = x[-1]
            yield y

    buf = np.zeros(0, dtype=np.float32)
    buf_start = 0  # padded-signal index of buf[0]
    t = 0
    with open(scratch, "wb") as out:
        for chunk in _padded(emphasized(), pad, cfg.pad_mode == "reflect"):
            buf = np.concatenate([buf, chunk])
            while True:
                # frames t.. whose window [t*hop + off, t*hop + off + win) lies in the buffer
                ready = min(t_total, (buf_start + buf.shape[0] - off - win) // hop + 1)
                if ready <= t:
                    break
                t1 = min(ready, t + BLOCK_FRAMES)
                s0 = t * hop + off - buf_start
                seg = buf[s0 : s0 + (t1 - t - 1) * hop + win]
                frames = np.lib.stride_tricks.sliding_window_view(seg, win)[::hop]
                mag = np.abs(scipy.fft.rfft(frames * window, n=cfg.n_fft, axis=-1, workers=1))
                db = dt(20.0) * np.log10(np.maximum(dt(cfg.amin), _mel_project_np(mag, cfg)))
                db_max = max(db_max, db.max())
                out.write(np.ascontiguousarray(db, dtype=np.float32).data)
                t = t1
            keep = t * hop + off - buf_start
            if keep > 0:
                buf = buf[keep:].copy()
                buf_start += keep
    if t != t_total:
        raise RuntimeError(f"streamed log-mel of {path} made {t} frames, expected {t_total}")
    return LongLogmel(Path(scratch), t_total, n, m, dt(db_max), cfg)


def _padded(blocks: Iterator[np.ndarray], pad: int, reflect: bool) -> Iterator[np.ndarray]:
    """The blocks of a signal with ``logmel``'s padding of ``pad`` samples at each end:
    ``np.pad(mode='reflect')`` (the signal must be longer than ``pad``) or zeros."""
    head = np.zeros(0, dtype=np.float32)
    tail = np.zeros(0, dtype=np.float32)
    started = False
    for block in blocks:
        if not started:
            head = np.concatenate([head, block])
            if head.shape[0] <= pad:
                continue
            yield head[1 : pad + 1][::-1].copy() if reflect else np.zeros(pad, dtype=np.float32)
            block, started = head, True
        yield block
        tail = np.concatenate([tail[-(pad + 1) :], block[-(pad + 1) :]])[-(pad + 1) :]
    if not started:
        raise ValueError(f"signal of {head.shape[0]} samples is not longer than the padding ({pad})")
    yield tail[:-1][::-1].copy() if reflect else np.zeros(pad, dtype=np.float32)
