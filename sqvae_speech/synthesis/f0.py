"""F0 analysis and per-speaker log-F0 statistics for voice conversion.

F0 is estimated with WORLD (pyworld) at the feature hop (10 ms), so F0 frame ``t``
belongs to feature frame ``t``: ``1 + N // hop`` frames for ``N`` samples. The search
range 50-600 Hz covers the four Fish Fillets voices (medians ~126 Hz for the two male
voices, ~202 and ~261 Hz for the female ones) including shouted, expressive lines.

Voice conversion maps F0 with the classic log-Gaussian transform: a voiced frame's
``log f0`` is standardized with the source speaker's log-F0 location and standard
deviation and de-standardized with the target's (:func:`convert_f0`; the location is the
median, robust to the skew and octave errors of this expressive speech); unvoiced frames
(``f0 == 0``) stay unvoiced.
:func:`compute_f0_stats` gathers those statistics (mean, std and median over the voiced
frames of every training utterance of a speaker) from a data dir; ``sqvae-speech
f0-stats`` writes them as JSON::

    {"format": "sqvae-f0-stats", "version": 1, "method": "harvest", "f0_floor": 50.0,
     "f0_ceil": 600.0, "sample_rate": 16000, "hop_length": 160, "data": "...",
     "failed": {utt: reason},
     "speakers": {spk: {"mean_log_f0": 5.56, "std_log_f0": 0.21, "median_f0_hz": 261.3,
                        "voiced_frames": 12345, "frames": 23456, "utterances": 640}}}

Frames more than an octave from the speaker's median are left out of the mean and std
(:func:`stats_of`). A speaker without a single voiced frame is kept in the file with null statistics, and
using it for conversion is an error naming the speaker and the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..config import FeatureConfig
from ..errors import AudioError, SQVAEError
from ..fileio import atomic_write_json

F0_FLOOR = 50.0
F0_CEIL = 600.0
F0_METHODS = ("harvest", "dio")
FORMAT = "sqvae-f0-stats"
VERSION = 1
# A log-F0 standard deviation below this (0.17 semitone) is treated as this: a monotone
# or nearly unvoiced utterance must not blow the mapping up.
MIN_STD = 0.01
# Voiced frames this far (in octaves) from a speaker's median F0 are left out of its mean
# and std (octave errors); the median uses every voiced frame.
OUTLIER_OCTAVES = 1.0
# Per-utterance statistics from fewer voiced frames than this only shift the mean.
MIN_VOICED_FOR_STD = 20

_DEFAULT = FeatureConfig()


@dataclasses.dataclass(frozen=True)
class SpeakerF0:
    """Log-F0 statistics over voiced frames (natural log of Hz)."""

    mean_log_f0: float | None
    std_log_f0: float | None
    median_f0_hz: float | None
    voiced_frames: int
    frames: int
    utterances: int = 1

    @property
    def has_voice(self) -> bool:
        return self.voiced_frames > 0 and self.mean_log_f0 is not None


def extract_f0(
    wav: np.ndarray, config: FeatureConfig | None = None, method: str = "harvest",
    f0_floor: float = F0_FLOOR, f0_ceil: float = F0_CEIL,
) -> np.ndarray:
    """F0 of ``wav [N]`` (at ``config.sample_rate``) per feature hop: ``[1 + N // hop]`` Hz, 0 = unvoiced.

    ``method``: ``"harvest"`` (default; ~5x real time per CPU core) or ``"dio"`` (DIO +
    StoneMask refinement, ~25x faster). On the Fish Fillets voices DIO finds 30-40 % fewer
    voiced frames and now and then locks onto a sub-octave for a whole clip (a cs-m line
    at 58 Hz where Harvest finds 320 Hz), so conversion uses Harvest. Silence gives zeros.
    """
    import pyworld

    cfg = config or _DEFAULT
    x = np.ascontiguousarray(wav, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise AudioError(f"extract_f0: expected a non-empty [N] signal, got shape {x.shape}")
    period = 1000.0 * cfg.hop_length / cfg.sample_rate
    if method == "harvest":
        f0, t = pyworld.harvest(x, cfg.sample_rate, f0_floor=f0_floor, f0_ceil=f0_ceil, frame_period=period)
    elif method == "dio":
        f0, t = pyworld.dio(x, cfg.sample_rate, f0_floor=f0_floor, f0_ceil=f0_ceil, frame_period=period)
        f0 = pyworld.stonemask(x, f0, t, cfg.sample_rate)
    else:
        raise SQVAEError(f"F0 method must be one of {', '.join(F0_METHODS)}, got '{method}'")
    f0 = np.where(np.isfinite(f0) & (f0 > 0), f0, 0.0)
    n = 1 + x.size // cfg.hop_length
    return np.pad(f0[:n], (0, max(0, n - f0.size)))


def stats_of(log_f0: np.ndarray, frames: int, utterances: int = 1) -> SpeakerF0:
    """Statistics of the voiced frames' natural-log F0 values ``[V]``.

    The mean and std leave out frames more than :data:`OUTLIER_OCTAVES` from the median:
    on this expressive speech they are mostly the estimator's octave errors, and a few
    percent of them double the std (cs-m: 0.52 with them, ~0.3 without).
    """
    log_f0 = np.asarray(log_f0, dtype=np.float64)
    if log_f0.size == 0:
        return SpeakerF0(None, None, None, 0, int(frames), utterances)
    median = float(np.median(log_f0))
    core = log_f0[np.abs(log_f0 - median) <= OUTLIER_OCTAVES * math.log(2.0)]
    return SpeakerF0(
        mean_log_f0=float(core.mean()),
        std_log_f0=float(core.std()),
        median_f0_hz=float(np.exp(median)),
        voiced_frames=int(log_f0.size),
        frames=int(frames),
        utterances=utterances,
    )


def utterance_stats(f0: np.ndarray) -> SpeakerF0:
    """Statistics of one F0 track ``[T]`` (Hz, 0 = unvoiced)."""
    f0 = np.asarray(f0, dtype=np.float64)
    return stats_of(np.log(f0[f0 > 0]), f0.size)


def convert_f0(f0: np.ndarray, source: SpeakerF0, target: SpeakerF0,
               f0_floor: float = F0_FLOOR, f0_ceil: float = F0_CEIL) -> np.ndarray:
    """Map voiced frames of ``f0 [T]`` from ``source``'s log-F0 distribution to ``target``'s.

    ``log f0' = (log f0 - log med_s) / sd_s * sd_t + log med_t``, clipped to
    ``[f0_floor, f0_ceil]``; unvoiced frames (0) stay 0. The location is the median, not
    the mean: these log-F0 distributions are right-skewed (the mean lies ~1 semitone
    above the median) and hold octave errors, and with the median an utterance at its
    speaker's median lands exactly on the target's median. A source measured on fewer
    than :data:`MIN_VOICED_FOR_STD` frames only has its median moved (its std is too noisy).
    """
    f0 = np.asarray(f0, dtype=np.float64)
    if not target.has_voice:
        raise SQVAEError("convert_f0: the target speaker has no voiced frames in its statistics")
    out = np.zeros_like(f0)
    voiced = np.isfinite(f0) & (f0 > 0)
    if not voiced.any():
        return out
    if not source.has_voice:
        source = utterance_stats(f0)
    assert source.median_f0_hz is not None and target.median_f0_hz is not None
    scale = 1.0
    if source.voiced_frames >= MIN_VOICED_FOR_STD:
        scale = max(target.std_log_f0 or 0.0, MIN_STD) / max(source.std_log_f0 or 0.0, MIN_STD)
    log_f0 = (np.log(f0[voiced]) - math.log(source.median_f0_hz)) * scale + math.log(target.median_f0_hz)
    out[voiced] = np.clip(np.exp(log_f0), f0_floor, f0_ceil)
    return out


def semitones(f_a: float, f_b: float) -> float:
    """Interval from ``f_b`` to ``f_a`` in semitones (both > 0)."""
    return 12.0 * math.log2(f_a / f_b)


# ----------------------------------------------------------------------------- statistics


@dataclasses.dataclass
class F0Stats:
    """Per-speaker statistics and how they were measured."""

    speakers: dict[str, SpeakerF0]
    method: str = "harvest"
    f0_floor: float = F0_FLOOR
    f0_ceil: float = F0_CEIL
    sample_rate: int = _DEFAULT.sample_rate
    hop_length: int = _DEFAULT.hop_length
    data: str = ""
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    path: str = ""  # where it was read from (not stored)

    def speaker(self, spk: str) -> SpeakerF0:
        """The statistics of ``spk``; a missing or unvoiced speaker is an SQVAEError."""
        where = self.path or "the F0 statistics"
        if spk not in self.speakers:
            raise SQVAEError(
                f"speaker '{spk}' is not in {where} (speakers: {', '.join(sorted(self.speakers))}); "
                f"compute them with `sqvae-speech f0-stats DATA_DIR OUT.json` on data holding '{spk}'"
            )
        stats = self.speakers[spk]
        if not stats.has_voice:
            raise SQVAEError(f"speaker '{spk}' has no voiced frame in {where}; its F0 cannot be a conversion target")
        return stats

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "method": self.method, "f0_floor": self.f0_floor,
            "f0_ceil": self.f0_ceil, "sample_rate": self.sample_rate, "hop_length": self.hop_length,
            "data": self.data, "failed": dict(sorted(self.failed.items())),
            "speakers": {s: dataclasses.asdict(v) for s, v in sorted(self.speakers.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "") -> F0Stats:
        """The inverse of :meth:`to_dict`; a mapping of another kind or a newer version
        raises ValueError (or KeyError / TypeError for a malformed one)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"no '{FORMAT}' marker")
        if data.get("version", 0) > VERSION:
            raise ValueError(f"version {data['version']} is newer than this sqvae-speech reads ({VERSION})")
        speakers = {s: SpeakerF0(**v) for s, v in data["speakers"].items()}
        return cls(speakers, data["method"], float(data["f0_floor"]), float(data["f0_ceil"]),
                   int(data["sample_rate"]), int(data["hop_length"]), data.get("data", ""),
                   dict(data.get("failed", {})), path=path)


def write_f0_stats(path: str | os.PathLike, stats: F0Stats) -> None:
    """Write ``stats`` as JSON, atomically."""
    atomic_write_json(path, stats.to_dict())


def read_f0_stats(path: str | os.PathLike) -> F0Stats:
    """Read a file written by :func:`write_f0_stats`; anything else is an SQVAEError."""
    import json

    path = Path(path)
    hint = f"write it with `sqvae-speech f0-stats DATA_DIR {path}`"
    if not path.is_file():
        raise SQVAEError(f"F0 statistics {path} do not exist; {hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return F0Stats.from_dict(data, str(path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SQVAEError(f"F0 statistics {path} cannot be read ({e}); {hint}") from None


def _evenly(items: list[str], n: int) -> list[str]:
    """``n`` evenly spaced items (all when ``n`` is 0 or covers them)."""
    if n == 0 or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def _utterance_log_f0(job: tuple[str, str, float | None, float | None, dict[str, Any], str, float, float]
                      ) -> tuple[str, np.ndarray, int, str | None]:
    """(utt, voiced log-F0 [V] float32, frames, error) of one data-dir entry (worker)."""
    from ..data.audio import load_audio

    utt, path, start, end, config, method, floor, ceil = job
    cfg = FeatureConfig.from_dict(config)
    try:
        wav = load_audio(path, cfg.sample_rate, start, end)
    except AudioError as e:
        return utt, np.zeros(0, np.float32), 0, str(e)
    f0 = extract_f0(wav, cfg, method, floor, ceil)
    return utt, np.log(f0[f0 > 0]).astype(np.float32), int(f0.size), None


def compute_f0_stats(
    data_dir: str | os.PathLike, nj: int = 1, method: str = "harvest", config: FeatureConfig | None = None,
    f0_floor: float = F0_FLOOR, f0_ceil: float = F0_CEIL, progress: bool = True,
    max_utts_per_speaker: int = 0,
) -> F0Stats:
    """Per-speaker log-F0 statistics over the utterances of a data dir.

    ``max_utts_per_speaker`` > 0 takes that many evenly spaced utterances (sorted ids) per
    speaker instead of all. Measured on the Fish Fillets training set (DIO, 50 clips vs
    all ~700): medians within 0.05-0.75 semitone, std within 0.01; Harvest on 50 clips
    per speaker (~12 min of audio in all) takes ~150 CPU-seconds. Unreadable audio is
    left out and listed in ``F0Stats.failed`` (utt -> reason).
    """
    from tqdm import tqdm

    from ..data.datadir import read_datadir, utterance_audio

    if method not in F0_METHODS:
        raise SQVAEError(f"--f0-method must be one of {', '.join(F0_METHODS)}, got '{method}'")
    if nj < 1:
        raise SQVAEError(f"--nj must be >= 1, got {nj}")
    cfg = config or _DEFAULT
    dd = read_datadir(data_dir)
    if max_utts_per_speaker < 0:
        raise SQVAEError(f"--max-utts-per-speaker must be >= 0, got {max_utts_per_speaker}")
    utts = [u for s in dd.speakers for u in _evenly(dd.spk2utt[s], max_utts_per_speaker)]
    jobs = [(u, *utterance_audio(dd, u), cfg.to_dict(), method, f0_floor, f0_ceil) for u in sorted(utts)]
    values: dict[str, list[np.ndarray]] = {s: [] for s in dd.speakers}
    frames = {s: 0 for s in dd.speakers}
    failed: dict[str, str] = {}
    bar = tqdm(total=len(jobs), unit="utt", desc="f0-stats", disable=None if progress else True)
    if nj == 1:
        results = map(_utterance_log_f0, jobs)
        pool = None
    else:
        from ..data.workers import exit_with, worker_context

        # exit_with: a SIGKILLed run takes its workers along instead of leaving them orphaned
        pool = ProcessPoolExecutor(max_workers=nj, mp_context=worker_context(), initializer=exit_with,
                                   initargs=(os.getpid(),))
        results = pool.map(_utterance_log_f0, jobs, chunksize=8)
    try:
        for utt, log_f0, n, error in results:
            spk = dd.utt2spk[utt]
            if error is not None:
                failed[utt] = error
            else:
                values[spk].append(log_f0)
                frames[spk] += n
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    speakers = {
        s: stats_of(np.concatenate(v) if v else np.zeros(0), frames[s], len(v)) for s, v in values.items()
    }
    return F0Stats(speakers, method, f0_floor, f0_ceil, cfg.sample_rate, cfg.hop_length,
                   str(Path(data_dir).resolve()), failed)
