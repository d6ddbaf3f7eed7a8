"""Audio input: read (whole file or a segment, at once or block by block for long
recordings), downmix, resample, peak-normalize, pre-emphasis.

Everything returns float32 1-D numpy arrays ``[N]``. Anything wrong with a file (missing,
not audio, empty, truncated, NaN samples, a segment past its end) raises
:class:`~sqvae_speech.errors.AudioError` naming the file and the reason.

:class:`ClipCount` counts the samples at full scale while reading (every channel, in the
file's own sample format and rate, before resampling or normalization): see
:data:`CLIP_LEVEL` and :data:`CLIPPED_FRACTION`.

Reading goes through soundfile (libsndfile: wav, flac, ogg/vorbis, ...); resampling
through soxr at its 'HQ' quality, trimmed or zero-padded to ``ceil(N * target / orig)``
samples so that the result equals ``librosa.load(path, sr=target)`` (librosa >= 0.10,
whose default resampler is ``soxr_hq``) sample for sample.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import overload

import numpy as np
import soundfile as sf
import soxr

from ..errors import AudioError

# max|wav| below this counts as silence (about 3 LSB of 16-bit audio): peak normalization
# would only amplify dither or codec noise, so such files are rejected by callers.
SILENCE_THRESHOLD = 1e-4

# A segment may end this far past the end of its file (rounded times in Kaldi `segments`
# files); it is then cut at the file's end, as Kaldi's extract-segments does by default.
MAX_OVERSHOOT_S = 0.5

# Frames per read of :func:`stream_audio` (16 s at 16 kHz: 1 MB of float32 per channel).
STREAM_BLOCK_FRAMES = 2**18

# A sample is at full scale when |x| >= CLIP_LEVEL x the largest magnitude its file's
# sample format holds (as libsndfile decodes it to float: 1.0 for 16-bit and wider PCM,
# float and lossy codecs; 127/128 for 8-bit PCM, whose 0.992 would never reach 0.999;
# 0.980 / 0.984 for mu-law / A-law). An utterance is *clipped* when at least
# CLIPPED_FRACTION of its samples (all channels) are at full scale: real clipping flattens
# whole runs of samples against the rail, while a recording peak-normalized to full scale
# has a handful there. Lossy codecs ring around a clipped top (Vorbis decodes up to 1.3),
# so their count is approximate: of the 3309 Ogg clips of the embedded corpus, 732 have
# 0.01 % of their samples at or past full scale, 28 reach 0.1 % (the worst, ~1 %, hold
# runs of 12-15 samples at the rail).
CLIP_LEVEL = 0.999
CLIPPED_FRACTION = 1e-3
_FULL_SCALE = {"PCM_S8": 127 / 128, "PCM_U8": 127 / 128, "ULAW": 32124 / 32768, "ALAW": 32256 / 32768}

# libsndfile logs "data : 32000 (should be 15978)" when a WAV/AIFF header promises more
# sample bytes than the file holds; it then silently reads only what is there.
_SHORT_CHUNK = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers leave the data size unknown (0 or 0xFFFFFFFF); that is not truncation.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


@dataclasses.dataclass
class ClipCount:
    """Samples at full scale (:data:`CLIP_LEVEL`) among the samples read, every channel
    counted, filled in by :func:`load_audio` and :func:`stream_audio` (block by block)."""

    clipped: int = 0
    samples: int = 0

    @property
    def fraction(self) -> float:
        return self.clipped / self.samples if self.samples else 0.0

    def add(self, data: np.ndarray, subtype: str) -> None:
        """Count ``data`` (raw frames of a file whose libsndfile subtype is ``subtype``)."""
        level = np.float32(CLIP_LEVEL * _FULL_SCALE.get(subtype, 1.0))
        self.clipped += int(np.count_nonzero(np.abs(data) >= level))
        self.samples += int(data.size)


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(sample_rate, frames, channels)`` of an audio file, from its header only."""
    path = Path(path)
    _check_exists(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path}: not a readable audio file ({_reason(e)})") from None
    return int(info.samplerate), int(info.frames), int(info.channels)


@overload
def load_audio(path: str | os.PathLike, sample_rate: int, start: float | None = None, end: float | None = None,
               *, max_samples: None = None, clip: ClipCount | None = None) -> np.ndarray: ...
@overload
def load_audio(path: str | os.PathLike, sample_rate: int, start: float | None = None, end: float | None = None,
               *, max_samples: int, clip: ClipCount | None = None) -> np.ndarray | None: ...
def load_audio(
    path: str | os.PathLike,
    sample_rate: int,
    start: float | None = None,
    end: float | None = None,
    *,
    max_samples: int | None = None,
    clip: ClipCount | None = None,
) -> np.ndarray | None:
    """Read ``path`` as mono float32 at ``sample_rate``.

    Args:
        path: wav, flac, ogg (vorbis) or anything else libsndfile reads.
        sample_rate: output rate in Hz; the file is resampled (soxr HQ) if it differs.
        start, end: optional segment ``[start, end)`` in seconds; only that slice is read.
            ``end`` up to :data:`MAX_OVERSHOOT_S` past the file's end is cut at the end.
        max_samples: if given and the result would hold more samples, return None
            without decoding anything (the caller streams such a recording instead;
            one open of the file serves both the length check and the read).
        clip: if given, the samples read (and those at full scale) are added to it.

    Returns:
        ``[N]`` float32, channels averaged; None when longer than ``max_samples``.

    Raises:
        AudioError: missing / unreadable / empty / truncated file, non-finite samples, or a
            segment outside the file.
    """
    path = Path(path)
    _check_exists(path)
    try:
        with sf.SoundFile(str(path)) as f:
            sr, frames, subtype = int(f.samplerate), int(f.frames), f.subtype
            _check_not_truncated(path, f.extra_info, frames)
            if frames <= 0:
                raise AudioError(f"{path}: zero-length audio (no samples); remove it from the data dir")
            first, last = _segment_frames(path, sr, frames, start, end)
            if max_samples is not None and _resampled_length(last - first, sr, sample_rate) > max_samples:
                return None
            if first:
                f.seek(first)
            data = f.read(last - first, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path}: not a readable audio file ({_reason(e)})") from None
    if data.shape[0] < last - first:
        raise AudioError(
            f"{path}: truncated: header says {frames} frames but reading stopped at "
            f"{first + data.shape[0]}; re-create or re-download the file"
        )
    if not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise AudioError(f"{path}: {bad} NaN or infinite samples; the file is corrupt")
    if clip is not None:
        clip.add(data, subtype)
    wav = _mono(data)
    if sr != sample_rate:
        wav = resample(wav, sr, sample_rate)
    return wav


def stream_audio(
    path: str | os.PathLike,
    sample_rate: int,
    start: float | None = None,
    end: float | None = None,
    block_frames: int = STREAM_BLOCK_FRAMES,
    clip: ClipCount | None = None,
) -> Iterator[np.ndarray]:
    """:func:`load_audio` in blocks, for recordings too long to hold at once.

    Yields ``[n_i]`` float32 mono blocks at ``sample_rate`` whose concatenation equals
    ``load_audio(path, sample_rate, start, end)`` sample for sample (soxr's streaming
    resampler gives the one-shot call's samples); memory stays at one block of
    ``block_frames`` file frames plus the resampler's state. Raises the same
    :class:`AudioError` as ``load_audio`` for a bad file, a bad segment, truncation or
    non-finite samples, the latter two when the reading reaches them. ``clip`` counts
    each block as it is read.
    """
    path = Path(path)
    _check_exists(path)
    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{path}: not a readable audio file ({_reason(e)})") from None
    with f:
        sr, frames, subtype = int(f.samplerate), int(f.frames), f.subtype
        _check_not_truncated(path, f.extra_info, frames)
        if frames <= 0:
            raise AudioError(f"{path}: zero-length audio (no samples); remove it from the data dir")
        first, last = _segment_frames(path, sr, frames, start, end)
        n_out = _resampled_length(last - first, sr, sample_rate)
        stream = None if sr == sample_rate else soxr.ResampleStream(sr, sample_rate, 1, dtype="float32", quality="HQ")
        pos, emitted = first, 0
        try:
            if first:
                f.seek(first)
            while pos < last:
                want = min(block_frames, last - pos)
                data = f.read(want, dtype="float32", always_2d=True)
                if data.shape[0] < want:
                    raise AudioError(
                        f"{path}: truncated: header says {frames} frames but reading stopped at "
                        f"{pos + data.shape[0]}; re-create or re-download the file"
                    )
                if not np.isfinite(data).all():
                    bad = pos + int(np.flatnonzero(~np.isfinite(data).all(axis=1))[0])
                    raise AudioError(f"{path}: NaN or infinite samples (the first at frame {bad}); the file is corrupt")
                pos += want
                if clip is not None:
                    clip.add(data, subtype)
                block = _mono(data)
                if stream is not None:
                    block = stream.resample_chunk(block, last=pos >= last)
                block = block[: n_out - emitted]
                emitted += block.shape[0]
                if block.shape[0]:
                    yield np.ascontiguousarray(block, dtype=np.float32)
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise AudioError(f"{path}: not a readable audio file ({_reason(e)})") from None
        if emitted < n_out:  # soxr delivered fewer samples than librosa's length: zero-pad
            yield np.zeros(n_out - emitted, dtype=np.float32)


def _mono(data: np.ndarray) -> np.ndarray:
    """``[N, C]`` soundfile frames -> ``[N]`` float32 channel mean (also when N < C)."""
    return _channel_mean(data, axis=1)


def _channel_mean(data: np.ndarray, axis: int) -> np.ndarray:
    """Mean over the channel ``axis`` of a 2-D array, as float32.

    Equal to ``data.mean(axis=axis)`` (numpy sums fewer than 8 terms in order, as here),
    but a channel at a time: numpy's reduction over the short, strided axis of ``[N, 2]``
    takes ~15 ns per frame, ~11 % of the time to extract the embedded corpus (half of
    it stereo); this takes under 1.
    """
    n_ch = data.shape[axis]
    if n_ch >= 8 or data.dtype not in (np.float32, np.float64):
        # numpy's pairwise summation (8+ terms) or its own accumulator dtype: keep its result
        return data.mean(axis=axis).astype(np.float32, copy=False)
    channels = data if axis == 0 else data.T  # channels[c]: a view of channel c
    if n_ch == 1:
        return channels[0].astype(np.float32)
    acc = channels[0] + channels[1]
    for c in range(2, n_ch):
        acc += channels[c]
    acc /= acc.dtype.type(n_ch)
    return acc.astype(np.float32, copy=False)


def _resampled_length(n: int, orig_sr: int, target_sr: int) -> int:
    return n if orig_sr == target_sr else math.ceil(n * target_sr / orig_sr)


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: audio file does not exist")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")


def _reason(e: BaseException) -> str:
    # soundfile prefixes messages with "Error opening '<path>': "; the path is ours to give.
    msg = str(e)
    return msg.split("': ", 1)[1] if msg.startswith("Error opening '") and "': " in msg else msg


def _check_not_truncated(path: Path, extra_info: str, frames: int) -> None:
    for claimed, actual in _SHORT_CHUNK.findall(extra_info):
        claimed_i, actual_i = int(claimed), int(actual)
        if claimed_i not in _UNKNOWN_SIZES and actual_i < claimed_i:
            raise AudioError(
                f"{path}: truncated: header promises {claimed_i} bytes of samples but the file "
                f"holds {actual_i}; re-create or re-download the file"
            )
    if frames == 0 and "ended unexpectedly" in extra_info:
        raise AudioError(f"{path}: truncated: the stream ends unexpectedly; re-create or re-download the file")


def _segment_frames(path: Path, sr: int, frames: int, start: float | None, end: float | None) -> tuple[int, int]:
    """``[first, last)`` frame indices of a ``[start, end)`` segment in seconds."""
    duration = frames / sr
    if start is None and end is None:
        return 0, frames
    s = 0.0 if start is None else float(start)
    e = duration if end is None else float(end)
    where = f"{path}: segment [{s:.3f}, {e:.3f}) s"
    if not (math.isfinite(s) and math.isfinite(e)) or s < 0:
        raise AudioError(f"{where}: start must be >= 0 and times finite")
    if s >= duration or e > duration + MAX_OVERSHOOT_S:
        raise AudioError(f"{where} lies past the end of the file (duration {duration:.3f} s)")
    if e <= s:
        raise AudioError(f"{where}: end must be after start")
    first = round(s * sr)
    last = min(frames, round(e * sr))
    if last <= first:
        raise AudioError(f"{where} holds no samples at {sr} Hz")
    return first, last


def downmix(wav: np.ndarray) -> np.ndarray:
    """Average channels: ``[N]`` stays, ``[N, C]`` (soundfile layout) or ``[C, N]`` -> ``[N]``.

    A 2-D array is averaged over its shorter axis (a channel count is always far below a
    sample count); a square array is taken as ``[N, C]``.
    """
    wav = np.asarray(wav)
    if wav.ndim == 1:
        return wav.astype(np.float32, copy=False)
    if wav.ndim != 2:
        raise AudioError(f"audio array must be 1-D [N] or 2-D [N, C], got shape {wav.shape}")
    axis = 0 if wav.shape[0] < wav.shape[1] else 1
    return _channel_mean(wav, axis)


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """``[N]`` at ``orig_sr`` -> ``[ceil(N * target_sr / orig_sr)]`` float32 at ``target_sr``.

    soxr 'HQ', then trimmed / zero-padded to librosa's length so the result equals
    ``librosa.resample(wav, orig_sr=..., target_sr=..., res_type='soxr_hq')``.
    """
    wav = np.asarray(wav, dtype=np.float32)
    if orig_sr == target_sr:
        return wav
    n_out = math.ceil(wav.shape[-1] * target_sr / orig_sr)
    out = soxr.resample(wav, orig_sr, target_sr, quality="HQ")
    if out.shape[-1] >= n_out:
        return np.ascontiguousarray(out[:n_out], dtype=np.float32)
    return np.pad(out, (0, n_out - out.shape[-1])).astype(np.float32, copy=False)


def peak_normalize(wav: np.ndarray, peak: float = 0.999) -> np.ndarray:
    """``wav / max|wav| * peak``; an empty or all-zero signal gives zeros (never NaN)."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.size == 0:
        return wav.copy()
    m = float(np.max(np.abs(wav)))
    if m == 0.0 or not math.isfinite(m):
        return np.zeros_like(wav)
    return (wav / np.float32(m) * np.float32(peak)).astype(np.float32, copy=False)


def preemphasis(wav: np.ndarray, coef: float = 0.97) -> np.ndarray:
    """``y[n] = x[n] - coef * x[n-1]``, ``y[0] = x[0]`` (zero initial state).

    This is ``scipy.signal.lfilter([1, -coef], [1], x)`` and librosa 0.7's preemphasis;
    librosa >= 0.8 starts the filter from ``2 x[0] - x[1]`` instead, which the reference
    protocol does not.
    """
    wav = np.asarray(wav, dtype=np.float32)
    out = wav.copy()
    out[1:] -= np.float32(coef) * wav[:-1]
    return out


def is_silent(wav: np.ndarray, threshold: float = SILENCE_THRESHOLD) -> bool:
    """True when ``max|wav| < threshold`` (or ``wav`` is empty): nothing but dither."""
    wav = np.asarray(wav)
    return wav.size == 0 or float(np.max(np.abs(wav))) < threshold
