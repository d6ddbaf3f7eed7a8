"""Log-mel features of the reference protocol (docs/PROTOCOL.md, "Speech features").

Per utterance, at ``config.sample_rate`` (16 kHz):

1. peak-normalize: ``wav / max|wav| * 0.999``;
2. pre-emphasis: ``y[n] = x[n] - 0.97 x[n-1]``, ``y[0] = x[0]``;
3. ``|STFT|``: n_fft 2048, periodic Hann window of 400 samples centred in the 2048-sample
   frame, hop 160, centred frames with REFLECT padding of ``n_fft // 2`` on each side
   (librosa 0.7's default; librosa >= 0.10 defaults to zeros, which changes the first
   two and last two frames by tens of dB), so ``T = 1 + N // hop``;
4. 80 Slaney mel bands (``librosa.filters.mel``, htk=False, norm='slaney'), fmin 50 Hz,
   fmax sr/2, applied to the magnitude (power 1);
5. ``dB = 20 log10(max(1e-5, S))``, clipped below at ``max(dB) - 80`` per utterance;
6. stored as ``dB / 80 + 1``, shape ``[n_mels, T]``, float32.

Values are not confined to [0, 1]: an utterance lies within ``[m - 1, m]``, with
``m = max(dB) / 80 + 1`` (about 0.8 to 1.2 for peak-normalized speech at these settings),
and reaches the floor ``m - 1`` when its dynamic range exceeds 80 dB. A silent (all-zero)
input gives a constant ``-100 / 80 + 1 = -0.25``, never NaN.

Short input: like librosa, any signal of at least one sample works; when the signal is
shorter than the reflect padding (``N <= n_fft // 2``) the reflection repeats back and forth
over the signal (numpy's ``np.pad(mode='reflect')`` semantics), in both paths below. An
empty signal raises :class:`~sqvae_speech.errors.AudioError`.

Two implementations that agree to ~1e-3 dB: :func:`logmel` (numpy, one utterance, the
reference) and :func:`logmel_batch` (torch, a padded batch, CPU or CUDA). :func:`logmel`
computes in float32 (pocketfft through ``scipy.fft``, a block-sparse mel projection) and
stays within ~1e-3 dB of librosa's float64 result; ``tests/test_features.py`` holds it to
0.01 dB.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.fft

from ..config import FeatureConfig
from ..errors import AudioError
from .audio import downmix, peak_normalize, preemphasis, resample

if TYPE_CHECKING:
    # torch is imported inside the batched functions: extraction workers on the numpy
    # path then start ~1.5 s sooner (bench/README.md, feature extraction).
    import torch

_DEFAULT = FeatureConfig()


# Slaney's mel scale (librosa's htk=False): linear below 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_LOG_HZ = 1000.0
_SLANEY_LOG_MEL = _SLANEY_LOG_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = float(np.log(6.4) / 27.0)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _SLANEY_LOG_MEL + np.log(np.maximum(hz, _SLANEY_LOG_HZ) / _SLANEY_LOG_HZ) / _SLANEY_LOG_STEP
    return np.where(hz >= _SLANEY_LOG_HZ, log_part, hz / _SLANEY_HZ_PER_MEL)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_part = _SLANEY_LOG_HZ * np.exp(_SLANEY_LOG_STEP * (np.maximum(mel, _SLANEY_LOG_MEL) - _SLANEY_LOG_MEL))
    return np.where(mel >= _SLANEY_LOG_MEL, log_part, mel * _SLANEY_HZ_PER_MEL)


@functools.lru_cache(maxsize=16)
def mel_filterbank(config: FeatureConfig) -> np.ndarray:
    """``[n_mels, 1 + n_fft // 2]`` float64 Slaney mel filterbank: triangles between
    ``n_mels + 2`` points equally spaced on Slaney's mel scale from fmin to fmax, each
    scaled to unit area (norm='slaney').

    This is ``librosa.filters.mel(htk=False, norm='slaney', dtype=float64)``, which
    tests/test_features.py holds it equal to (1e-12). It is computed here because
    importing ``librosa.filters`` pulls in ``scipy.signal``, ~0.85 s in every process
    that extracts features: ~7 % of extracting the embedded corpus with ``--nj 2``.
    """
    sr, n_fft = config.sample_rate, config.n_fft
    fmax = config.fmax if config.fmax is not None else sr / 2.0
    edges = _mel_to_hz(np.linspace(_hz_to_mel(config.fmin), _hz_to_mel(fmax), config.n_mels + 2))  # [M + 2] Hz
    bins = np.fft.rfftfreq(n_fft, d=1.0 / sr)  # [F] Hz
    width = np.diff(edges)  # [M + 1]
    ramps = edges[:, None] - bins[None, :]  # [M + 2, F]
    rising = -ramps[:-2] / width[:-1, None]
    falling = ramps[2:] / width[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # [M, F]
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    weights.setflags(write=False)  # cached: shared by every caller
    return weights


@functools.lru_cache(maxsize=16)
def _mel_blocks(config: FeatureConfig, block: int = 64) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """The mel filterbank cut into column blocks of ``block`` FFT bins, each with the band
    range it touches: ``(bin0, bin1, band0, band1, W [bin1 - bin0, band1 - band0])`` float32.

    Each triangular filter covers few bins, so ~97 % of the dense [n_mels, F] basis is zero;
    the blocks hold only the band ranges a bin range reaches (~7k of 82k weights at the
    protocol's settings) and the projection costs a fraction of the dense matrix product.
    """
    basis = mel_filterbank(config).astype(np.float32)
    blocks = []
    for b0 in range(0, basis.shape[1], block):
        b1 = min(basis.shape[1], b0 + block)
        bands = np.flatnonzero(basis[:, b0:b1].any(axis=1))
        if bands.size:
            m0, m1 = int(bands[0]), int(bands[-1]) + 1
            blocks.append((b0, b1, m0, m1, np.ascontiguousarray(basis[m0:m1, b0:b1].T)))
    return tuple(blocks)


def _mel_project_np(mag: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """``[T, F]`` magnitudes -> ``[T, n_mels]`` float32 mel energies (block-sparse product)."""
    out = np.zeros((mag.shape[0], config.n_mels), dtype=np.float32)
    for b0, b1, m0, m1, w in _mel_blocks(config):
        out[:, m0:m1] += mag[:, b0:b1] @ w
    return out


@functools.lru_cache(maxsize=16)
def _hann(win_length: int) -> np.ndarray:
    """``[win_length]`` periodic Hann window (scipy ``get_window('hann', N, fftbins=True)``)."""
    n = np.arange(win_length, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)


def _window_offset(config: FeatureConfig) -> int:
    # librosa centres the short window in the n_fft frame (util.pad_center).
    return (config.n_fft - config.win_length) // 2


def num_frames(num_samples: int, config: FeatureConfig | None = None) -> int:
    """Frames of a signal of ``num_samples`` (centred frames): ``1 + N // hop``."""
    return 1 + int(num_samples) // (config or _DEFAULT).hop_length


def _check_signal(wav: np.ndarray, what: str) -> None:
    if wav.size == 0:
        raise AudioError(f"{what}: empty signal (0 samples), cannot compute features")
    if not np.isfinite(wav).all():
        raise AudioError(f"{what}: NaN or infinite samples, cannot compute features")


def logmel(wav: np.ndarray, sr: int, config: FeatureConfig | None = None) -> np.ndarray:
    """Reference log-mel of one utterance.

    Args:
        wav: ``[N]``, or ``[N, C]`` / ``[C, N]`` (channels are averaged), any float dtype.
        sr: sample rate of ``wav``; resampled to ``config.sample_rate`` (soxr HQ) if different.
        config: feature settings (default: the protocol's).

    Returns:
        ``[n_mels, 1 + N' // hop]`` float32, ``N'`` the length at ``config.sample_rate``.
    """
    cfg = config or _DEFAULT
    x = downmix(np.asarray(wav))
    _check_signal(x, "logmel input")
    if sr != cfg.sample_rate:
        x = resample(x, sr, cfg.sample_rate)
    x = preemphasis(peak_normalize(x, cfg.peak), cfg.preemph)  # float32

    pad = cfg.n_fft // 2
    x = np.pad(x, (pad, pad), mode="reflect" if cfg.pad_mode == "reflect" else "constant")
    # The window is zero outside its win_length samples, and a shift inside the FFT frame
    # only changes the phase: |rfft| of the short windowed slice zero-padded to n_fft is
    # the same magnitude for a fifth of the work.
    off = _window_offset(cfg)
    n_frames = 1 + (x.shape[0] - cfg.n_fft) // cfg.hop_length
    frames = np.lib.stride_tricks.sliding_window_view(x[off:], cfg.win_length)[:: cfg.hop_length][:n_frames]
    windowed = frames * _hann(cfg.win_length).astype(np.float32)
    mag = np.abs(scipy.fft.rfft(windowed, n=cfg.n_fft, axis=-1, workers=1))  # [T, F] float32
    mel = _mel_project_np(mag, cfg)  # [T, n_mels]
    return np.ascontiguousarray(_to_db_scaled(mel, cfg).T)


def _to_db_scaled(mel: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Magnitudes -> dB / top_db + 1, clipped top_db below the maximum, in ``mel``'s dtype."""
    dt = mel.dtype.type
    db = dt(20.0) * np.log10(np.maximum(dt(cfg.amin), mel))
    db = np.maximum(db, db.max() - dt(cfg.top_db))
    return db / dt(cfg.top_db) + dt(1.0)


# ----------------------------------------------------------------------------- batched


@functools.lru_cache(maxsize=16)
def _torch_constants(config: FeatureConfig, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(``[n_fft]`` window zero-padded as librosa does, ``[n_mels, F]`` mel basis), float32."""
    import torch

    off = _window_offset(config)
    win = np.zeros(config.n_fft)
    win[off : off + config.win_length] = _hann(config.win_length)
    return (
        torch.tensor(win, dtype=torch.float32, device=device),
        torch.tensor(mel_filterbank(config), dtype=torch.float32, device=device),
    )


def _stack(
    wavs: Sequence[np.ndarray | torch.Tensor] | torch.Tensor,
    lengths: Sequence[int] | torch.Tensor | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ``[B, N]`` float32 and ``[B]`` int64 lengths on ``device``."""
    import torch

    if isinstance(wavs, torch.Tensor):
        if wavs.dim() != 2:
            raise AudioError(f"logmel_batch: a tensor input must be [B, N], got shape {tuple(wavs.shape)}")
        x = wavs.to(device=device, dtype=torch.float32)
        if lengths is None:
            lens = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64, device=device)
        else:
            lens = torch.as_tensor(lengths, dtype=torch.int64).to(device)
            if lens.shape != (x.shape[0],) or bool((lens > x.shape[1]).any()):
                raise AudioError(f"logmel_batch: lengths must be [B] with values <= N={x.shape[1]}")
        return x, lens
    if lengths is not None:
        raise AudioError("logmel_batch: pass lengths only with a padded [B, N] tensor")
    items = [torch.as_tensor(np.asarray(w) if not isinstance(w, torch.Tensor) else w) for w in wavs]
    for i, w in enumerate(items):
        if w.dim() != 1:
            raise AudioError(f"logmel_batch: item {i} must be 1-D [N], got shape {tuple(w.shape)}")
    lens = torch.tensor([w.shape[0] for w in items], dtype=torch.int64)
    x = torch.zeros(len(items), int(lens.max()) if items else 0, dtype=torch.float32)
    for i, w in enumerate(items):
        x[i, : w.shape[0]] = w.to(torch.float32)
    return x.to(device), lens.to(device)


def _reflect_index(lens: torch.Tensor, n_out: int, pad: int) -> torch.Tensor:
    """``[B, n_out]`` source index of padded position p (signal index p - pad) per item,
    reflecting at the item's own ends with np.pad('reflect') semantics (period 2(n-1))."""
    import torch

    j = torch.arange(n_out, device=lens.device) - pad  # [P]
    n = lens[:, None]
    period = (2 * (n - 1)).clamp(min=1)
    m = torch.remainder(j[None, :], period)
    idx = torch.where(m >= n, period - m, m)
    return torch.where(n == 1, torch.zeros_like(idx), idx)


def logmel_batch(
    wavs: Sequence[np.ndarray | torch.Tensor] | torch.Tensor,
    config: FeatureConfig | None = None,
    device: str | torch.device = "cpu",
    lengths: Sequence[int] | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel of a batch, equal to :func:`logmel` per item (~1e-3 dB).

    Args:
        wavs: a list of ``[N_i]`` float arrays/tensors already at ``config.sample_rate``,
            or a padded ``[B, N]`` tensor with ``lengths``.
        config: feature settings (default: the protocol's).
        device: where to compute ('cpu', 'cuda', ...); nothing leaves it on the way.
        lengths: ``[B]`` valid samples per row of a tensor input (default: all ``N``).

    Returns:
        ``(feats, frame_lengths)``: ``[B, n_mels, T_max]`` float32 and ``[B]`` int64 with
        ``T_i = 1 + N_i // hop``. Frames ``t >= T_i`` are 0 (after scaling), so padding is
        recognisable only through ``frame_lengths``. Each item is normalized, pre-emphasized,
        reflect-padded and clipped on its own samples only: its features do not depend on
        what else is in the batch.
    """
    import torch

    cfg = config or _DEFAULT
    device = torch.device(device)
    x, lens = _stack(wavs, lengths, device)
    if x.shape[0] == 0:
        raise AudioError("logmel_batch: empty batch")
    if bool((lens <= 0).any()):
        bad = torch.nonzero(lens <= 0).flatten().tolist()
        raise AudioError(f"logmel_batch: item(s) {bad} are empty (0 samples), cannot compute features")
    valid = torch.arange(x.shape[1], device=device)[None, :] < lens[:, None]  # [B, N]
    x = torch.where(valid, x, torch.zeros((), device=device))
    if not bool(torch.isfinite(x).all()):
        bad = torch.nonzero(~torch.isfinite(x).all(dim=1)).flatten().tolist()
        raise AudioError(f"logmel_batch: item(s) {bad} hold NaN or infinite samples")

    peak = x.abs().amax(dim=1, keepdim=True)
    x = torch.where(peak > 0, x / peak.clamp(min=torch.finfo(torch.float32).tiny) * cfg.peak, torch.zeros((), device=device))
    y = x.clone()
    y[:, 1:] -= cfg.preemph * x[:, :-1]
    y = torch.where(valid, y, torch.zeros((), device=device))  # the tail got -coef * x[len-1]

    pad = cfg.n_fft // 2
    n_out = x.shape[1] + 2 * pad
    if cfg.pad_mode == "reflect":
        idx = _reflect_index(lens, n_out, pad)
        # Positions past an item's own padded end would reflect into nothing; they only feed
        # frames t >= T_i, which are zeroed below.
        inside = torch.arange(n_out, device=device)[None, :] < (lens[:, None] + 2 * pad)
        padded = torch.where(inside, torch.gather(y, 1, idx.clamp(max=x.shape[1] - 1)), torch.zeros((), device=device))
    else:
        padded = torch.nn.functional.pad(y, (pad, pad))  # y is already 0 past each length

    window, mel_basis = _torch_constants(cfg, str(device))
    spec = torch.stft(
        padded, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.n_fft,
        window=window, center=False, return_complex=True,
    ).abs()  # [B, F, T_max]
    mel = _mel_project(mel_basis, spec)  # [B, n_mels, T_max]
    db = 20.0 * torch.log10(mel.clamp(min=cfg.amin))

    frame_lens = 1 + lens // cfg.hop_length
    fvalid = (torch.arange(db.shape[-1], device=device)[None, :] < frame_lens[:, None])[:, None, :]  # [B, 1, T]
    top = db.masked_fill(~fvalid, float("-inf")).amax(dim=(1, 2), keepdim=True)
    db = torch.maximum(db, top - cfg.top_db)
    out = torch.where(fvalid, db / cfg.top_db + 1.0, torch.zeros((), device=device))
    return out.contiguous(), frame_lens


def _mel_project(mel_basis: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
    """``[n_mels, F] @ [B, F, T]`` -> ``[B, n_mels, T]`` float32, never in reduced precision.

    On CUDA a float32 matmul may run in TF32 (a global switch a training script may turn
    on; ~1e-3 relative error, ~0.01 dB), so it runs in float64 there: a small product next
    to the STFT. Autocast is off so a caller's mixed-precision region cannot reach it.
    """
    import torch

    with torch.autocast(device_type=spec.device.type, enabled=False):
        if spec.device.type == "cuda":
            return torch.matmul(mel_basis.double(), spec.double()).float()
        return torch.matmul(mel_basis, spec)


def logmel_many(
    wavs: Sequence[np.ndarray],
    config: FeatureConfig | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
) -> list[np.ndarray]:
    """:func:`logmel_batch` over a list of ``[N_i]`` arrays (at ``config.sample_rate``),
    ``batch_size`` at a time, grouping similar lengths to waste little padding.

    Returns ``[n_mels, T_i]`` float32 arrays in the input order.
    """
    import torch

    if batch_size < 1:
        raise AudioError(f"logmel_many: batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
    out: list[np.ndarray | None] = [None] * len(wavs)
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            ids = order[b : b + batch_size]
            feats, flens = logmel_batch([wavs[i] for i in ids], config, device)
            feats, flens = feats.cpu().numpy(), flens.cpu().tolist()
            for k, i in enumerate(ids):
                out[i] = np.ascontiguousarray(feats[k, :, : flens[k]])
    return out  # type: ignore[return-value]
