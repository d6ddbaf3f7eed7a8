"""Vocoders: log-mel features (docs/PROTOCOL.md, "Speech features") back to 16 kHz audio.

The features are ``dB / 80 + 1`` of the 80-band Slaney mel magnitude of the
peak-normalized, pre-emphasized signal. Every vocoder here first undoes that chain:

1. ``dB = (x - 1) * 80`` and magnitude ``10 ** (dB / 20)`` (the mel magnitude, power 1);
2. mel -> linear magnitude ``[1 + n_fft // 2, T]`` with the pseudo-inverse of the same
   Slaney basis, clamped at 0 (:func:`mel_to_linear`). librosa's NNLS (``method="nnls"``)
   starts from exactly that clamped solution and, on these features, stops there (the
   mel-domain residual is ~0.25 dB^2 either way), at several times the cost;

then rebuilds a waveform of the *pre-emphasized* signal and de-emphasizes it with
``1 / (1 - 0.97 z^-1)`` (:func:`deemphasis`, the exact inverse of
:func:`sqvae_speech.data.audio.preemphasis`):

- :func:`griffinlim`: fast Griffin-Lim (librosa, momentum 0.99) with the features' own
  STFT (n_fft 2048, 400-sample Hann window, hop 160, centred, reflect padding); the output
  has exactly ``(T - 1) * hop`` samples, so its features have T frames again.
- :func:`world`: WORLD (pyworld). F0 and aperiodicity come from the *source audio*
  (:func:`world_analyze`, 10 ms frames = the feature hop); the spectral envelope comes
  from the (converted) mel spectrogram: the linear magnitude squared, scaled to
  CheapTrick's unit-energy-window convention, averaged in frequency over one F0 period
  per frame (the harmonic ripple a 25 ms window leaves at low frequencies would otherwise
  become a comb filter when F0 is changed; CheapTrick smooths the same way), then
  sampled on WORLD's FFT grid (1024 points at 16 kHz). Smoothing over exactly one F0
  period is the measured optimum (round trip below: 0.5 F0 gives 30, 2 F0 34 dB^2).

Round trip on 8 held-out Fish Fillets utterances (audio -> features -> vocoder ->
features, the dB^2 MSE of ``sqvae-speech evaluate``; ``sqvae-speech vocoder-check``):
Griffin-Lim 2.6 / 2.0 / 1.6 dB^2 after 32 / 64 / 100 iterations (100 is the default);
WORLD 27-28 dB^2, against 32-36 dB^2 for WORLD's own CheapTrick envelope of the audio.

Frame alignment: a ``T``-frame feature matrix covers samples ``0 .. (T - 1) * hop``;
WORLD analysis of ``N`` samples gives ``1 + N // hop`` frames, the same count as the
features of that audio. The SQ-VAE decoder outputs ``T' - 2`` frames for ``mel[:, 1:-1]``
(``T'`` = T trimmed to even): :func:`align_frames` puts them back at offset 1 and repeats
the first / last output frame over the missing edge frames.

All outputs are float32 ``[N]`` at 16 kHz, finite, and peak-limited to 0.99
(:func:`peak_limit`; quieter signals are left as they are). Both vocoders take a list of
mel spectrograms and return a list of waveforms; both are deterministic (Griffin-Lim
starts from a phase drawn from ``numpy.random.default_rng(seed)``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.signal

from ..config import FeatureConfig
from ..errors import SQVAEError
from .f0 import F0_CEIL, F0_FLOOR, extract_f0

VOCODERS = ("griffinlim", "world", "neural")
PEAK = 0.99
# Frequency smoothing width of the envelope in unvoiced frames (no F0 to follow).
UNVOICED_SMOOTH_HZ = 100.0

_DEFAULT = FeatureConfig()


class WorldAnalysis(NamedTuple):
    """WORLD parameters of a source signal, one row per 10 ms frame."""

    f0: np.ndarray  # [T] float64 Hz, 0 in unvoiced frames
    ap: np.ndarray  # [T, fft_size // 2 + 1] float64 aperiodicity in [0, 1]


@functools.lru_cache(maxsize=4)
def mel_basis(config: FeatureConfig) -> np.ndarray:
    """``[n_mels, 1 + n_fft // 2]`` float64 Slaney mel filterbank, the one the features apply
    (:func:`sqvae_speech.data.features.mel_filterbank`, equal to ``librosa.filters.mel``)."""
    from ..data.features import mel_filterbank

    return mel_filterbank(config)


def mel_to_linear(mel: np.ndarray, config: FeatureConfig | None = None, method: str = "pinv") -> np.ndarray:
    """Scaled log-mel ``[n_mels, T]`` -> linear STFT magnitude ``[1 + n_fft // 2, T]`` (>= 0).

    ``method``: ``"pinv"`` (pseudo-inverse clamped at 0) or ``"nnls"`` (librosa's
    non-negative least squares, started from the clamped pseudo-inverse).
    """
    cfg = config or _DEFAULT
    mel = np.asarray(mel, dtype=np.float64)
    if mel.ndim != 2 or mel.shape[0] != cfg.n_mels:
        raise SQVAEError(f"mel spectrogram must be [{cfg.n_mels}, T], got shape {mel.shape}")
    if mel.shape[1] == 0:
        raise SQVAEError("mel spectrogram has 0 frames; nothing to vocode")
    if not np.isfinite(mel).all():
        raise SQVAEError("mel spectrogram holds NaN or infinite values; cannot vocode it")
    magnitude = 10.0 ** ((mel - 1.0) * cfg.top_db / 20.0)
    basis = mel_basis(cfg)
    if method == "nnls":
        import librosa

        linear = librosa.util.nnls(basis, magnitude)
    elif method == "pinv":
        linear = _pinv(cfg) @ magnitude
    else:
        raise SQVAEError(f"mel inversion method must be 'nnls' or 'pinv', got '{method}'")
    return np.maximum(linear, 0.0)


@functools.lru_cache(maxsize=4)
def _pinv(config: FeatureConfig) -> np.ndarray:
    return np.linalg.pinv(mel_basis(config))


def deemphasis(wav: np.ndarray, coef: float = 0.97) -> np.ndarray:
    """Inverse of pre-emphasis: ``x[n] = y[n] + coef * x[n-1]``, zero initial state. ``[N]``."""
    return scipy.signal.lfilter([1.0], [1.0, -coef], np.asarray(wav, dtype=np.float64))


def peak_limit(wav: np.ndarray, peak: float = PEAK) -> np.ndarray:
    """float32 ``[N]`` with NaN/inf set to 0, scaled down to ``max|wav| == peak`` if louder."""
    wav = np.nan_to_num(np.asarray(wav, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    m = float(np.max(np.abs(wav))) if wav.size else 0.0
    if m > peak:
        wav = wav * (peak / m)
    return wav.astype(np.float32)


def align_frames(mel: np.ndarray, n_frames: int, offset: int = 1) -> np.ndarray:
    """Place ``mel [C, T_out]`` at frame ``offset`` of an ``n_frames`` grid; repeat its edge
    frames over the frames it does not cover and cut what runs past the end. ``[C, n_frames]``.

    The decoder's output for ``mel[:, 1:-1]`` uses ``offset=1``.
    """
    mel = np.asarray(mel)
    if mel.ndim != 2 or mel.shape[1] == 0:
        raise SQVAEError(f"align_frames: expected [C, T > 0], got shape {mel.shape}")
    left = max(0, offset)
    body = mel[:, max(0, -offset): max(0, -offset) + n_frames - left]
    right = max(0, n_frames - left - body.shape[1])
    return np.pad(body, ((0, 0), (left, right)), mode="edge")


# ----------------------------------------------------------------------------- Griffin-Lim


def griffinlim(
    mels: Sequence[np.ndarray],
    config: FeatureConfig | None = None,
    n_iter: int = 100,
    momentum: float = 0.99,
    seed: int = 0,
    method: str = "pinv",
) -> list[np.ndarray]:
    """Griffin-Lim vocoder: scaled log-mels ``[n_mels, T_i]`` -> float32 ``[(T_i - 1) * hop]``.

    Each item starts from the random phase of ``default_rng(seed)``, so the result does not
    depend on the other items of the list.
    """
    import librosa

    cfg = config or _DEFAULT
    out = []
    for mel in mels:
        mag = mel_to_linear(mel, cfg, method)
        n = (mag.shape[1] - 1) * cfg.hop_length
        if n == 0 or not mag.any():
            out.append(np.zeros(n, dtype=np.float32))
            continue
        y = librosa.griffinlim(
            mag, n_iter=n_iter, hop_length=cfg.hop_length, win_length=cfg.win_length, n_fft=cfg.n_fft,
            window="hann", center=True, pad_mode=cfg.pad_mode, length=n, momentum=momentum,
            init="random", random_state=np.random.default_rng(seed),
        )
        out.append(peak_limit(deemphasis(y, cfg.preemph)))
    return out


# ----------------------------------------------------------------------------- WORLD


def world_fft_size(config: FeatureConfig | None = None, f0_floor: float = F0_FLOOR) -> int:
    """WORLD's FFT size for CheapTrick / D4C at the feature rate (1024 at 16 kHz)."""
    import pyworld

    return int(pyworld.get_cheaptrick_fft_size((config or _DEFAULT).sample_rate, f0_floor))


def world_analyze(
    wav: np.ndarray, config: FeatureConfig | None = None, f0_method: str = "harvest",
    f0_floor: float = F0_FLOOR, f0_ceil: float = F0_CEIL, f0: np.ndarray | None = None,
) -> WorldAnalysis:
    """F0 and D4C aperiodicity of a source ``[N]`` at ``config.sample_rate``: ``1 + N // hop`` frames.

    ``f0``: the source's F0 when already estimated (the same ``f0_method``), not estimated again.
    """
    import pyworld

    cfg = config or _DEFAULT
    x = np.ascontiguousarray(wav, dtype=np.float64)
    f0 = extract_f0(x, cfg, f0_method, f0_floor, f0_ceil) if f0 is None else np.asarray(f0, dtype=np.float64)
    t = np.arange(f0.size) * cfg.hop_length / cfg.sample_rate
    fft_size = world_fft_size(cfg, f0_floor)
    ap = pyworld.d4c(x, f0, t, cfg.sample_rate, threshold=0.85, fft_size=fft_size)
    ap = np.clip(np.nan_to_num(ap, nan=1.0), 0.0, 1.0)
    return WorldAnalysis(f0, ap)


def mel_to_envelope(mel: np.ndarray, f0: np.ndarray, config: FeatureConfig | None = None,
                    fft_size: int | None = None) -> np.ndarray:
    """Scaled log-mel ``[n_mels, T]`` and F0 ``[T]`` -> WORLD spectral envelope ``[T, fft_size // 2 + 1]``.

    The power spectrum is divided by the Hann window's energy (CheapTrick uses a
    unit-energy window), smoothed over one F0 period in frequency, and resampled onto
    WORLD's grid. Strictly positive (WORLD takes its log).
    """
    cfg = config or _DEFAULT
    fft_size = fft_size or world_fft_size(cfg)
    power = mel_to_linear(mel, cfg).T ** 2  # [T, F]
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.win_length) / cfg.win_length)
    power /= float(np.sum(win**2))
    freqs = np.arange(power.shape[1]) * cfg.sample_rate / cfg.n_fft
    grid = np.arange(fft_size // 2 + 1) * cfg.sample_rate / fft_size
    width = np.where(f0 > 0, f0, UNVOICED_SMOOTH_HZ)
    env = _smooth_resample(power, freqs, grid, width)
    # A floor far below speech (-160 dB): silent frames stay finite after WORLD's log.
    return np.maximum(env, 1e-16)


def _smooth_resample(power: np.ndarray, freqs: np.ndarray, grid: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Mean of ``power [T, F]`` over ``[g - w/2, g + w/2]`` around each ``grid`` frequency,
    ``w = width[t]``, via the interpolated cumulative integral (reflected at 0 and Nyquist)."""
    df = freqs[1] - freqs[0]
    # reflect around DC and Nyquist so the window never runs off the spectrum
    ext = np.concatenate([power[:, :0:-1], power, power[:, -2::-1]], axis=1)
    ext_f = np.concatenate([-freqs[:0:-1], freqs, 2 * freqs[-1] - freqs[-2::-1]])
    cum = np.concatenate([np.zeros((power.shape[0], 1)), np.cumsum(ext, axis=1) * df], axis=1)
    edges = np.concatenate([ext_f - df / 2, [ext_f[-1] + df / 2]])
    out = np.empty((power.shape[0], grid.size))
    for t in range(power.shape[0]):
        half = width[t] / 2
        out[t] = (np.interp(grid + half, edges, cum[t]) - np.interp(grid - half, edges, cum[t])) / width[t]
    return out


def world(
    mels: Sequence[np.ndarray],
    analyses: Sequence[WorldAnalysis],
    f0s: Sequence[np.ndarray] | None = None,
    config: FeatureConfig | None = None,
    offset: int = 0,
) -> list[np.ndarray]:
    """WORLD vocoder: mels ``[n_mels, T_i]`` + source analyses -> float32 ``[(A_i - 1) * hop]``.

    Args:
        mels: scaled log-mels; each is aligned to its analysis' ``A_i`` frames with
            :func:`align_frames` (``offset=1`` for decoder outputs of ``mel[:, 1:-1]``).
        analyses: :func:`world_analyze` of each source signal (F0 and aperiodicity).
        f0s: F0 ``[A_i]`` to synthesize with (e.g. converted to a target speaker);
            default: the analysed F0.
        config: feature settings.
        offset: frame of the analysis grid where each mel's first frame belongs.
    """
    import pyworld

    cfg = config or _DEFAULT
    if len(analyses) != len(mels) or (f0s is not None and len(f0s) != len(mels)):
        raise SQVAEError(f"world: {len(mels)} mels but {len(analyses)} analyses / F0 tracks")
    period = 1000.0 * cfg.hop_length / cfg.sample_rate
    out = []
    for i, (mel, ana) in enumerate(zip(mels, analyses)):
        f0 = np.ascontiguousarray(ana.f0 if f0s is None else f0s[i], dtype=np.float64)
        n_frames = ana.f0.size
        if f0.size != n_frames or ana.ap.shape[0] != n_frames:
            raise SQVAEError(f"world: item {i}: F0 has {f0.size} frames, the analysis {n_frames}")
        f0 = np.where(np.isfinite(f0) & (f0 > 0), f0, 0.0)
        env = mel_to_envelope(align_frames(mel, n_frames, offset), f0, cfg, (ana.ap.shape[1] - 1) * 2)
        y = pyworld.synthesize(f0, np.ascontiguousarray(env), np.ascontiguousarray(ana.ap), cfg.sample_rate, period)
        n = (n_frames - 1) * cfg.hop_length
        y = np.pad(y[:n], (0, max(0, n - y.size)))
        out.append(peak_limit(deemphasis(y, cfg.preemph)))
    return out


# ----------------------------------------------------------------------------- neural


def neural(
    mels: Sequence[np.ndarray],
    f0s: Sequence[np.ndarray],
    model: Any,
    config: FeatureConfig | None = None,
    offset: int = 0,
    seed: int = 0,
) -> list[np.ndarray]:
    """The trained neural vocoder (:mod:`.neural`): mels ``[n_mels, T_i]`` + F0 ``[A_i]`` -> float32 ``[(A_i - 1) * hop]``.

    Like :func:`world`, each mel is placed on its F0 track's ``A_i`` frames with
    :func:`align_frames` at ``offset`` (1 for decoder outputs), so the pitch can come from
    the source audio (converted to a target speaker) while the spectrum comes from the model.
    ``model``: a :class:`~sqvae_speech.synthesis.neural.NeuralVocoder` whose feature
    settings must equal ``config``.
    """
    from .neural import synthesize

    cfg = config or _DEFAULT
    if model.features != cfg:
        raise SQVAEError("the neural vocoder was trained on other feature settings than these features; "
                         "train one on this recipe's features (`sqvae-speech train-vocoder`)")
    if len(f0s) != len(mels):
        raise SQVAEError(f"neural: {len(mels)} mels but {len(f0s)} F0 tracks")
    out = []
    for mel, f0 in zip(mels, f0s):
        f0 = np.asarray(f0, dtype=np.float64)
        f0 = np.where(np.isfinite(f0) & (f0 > 0), f0, 0.0)
        y = synthesize(model, align_frames(mel, f0.size, offset), f0, seed)
        out.append(peak_limit(deemphasis(y, cfg.preemph)))
    return out
