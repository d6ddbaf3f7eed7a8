"""A neural harmonic-plus-noise vocoder: log-mel + F0 -> 16 kHz speech.

Why this design (the DDSP / neural source-filter family, Engel et al. 2020; Wang et al.
2019; the frame-rate network of Liu et al.'s neural homomorphic vocoder): the toolkit's
conversion sets the pitch itself (the target speaker's F0, :mod:`.f0`), so the vocoder
must take F0 as an input rather than infer it from the mel, and it has to train in
minutes on two CPU cores. Here the network runs at the 100 Hz frame rate only; every
sample-rate operation is a fixed signal-processing step with no weights:

1. **Excitation** (:func:`excitation`, no gradient): a band-limited pulse train that
   follows F0 (the sum of every harmonic below :attr:`NeuralVocoderConfig.max_harmonic_hz`,
   each of amplitude 1, in closed form), faded out over unvoiced frames, and white noise.
2. **Filters** (the network): from the scaled log-mel ``[n_mels, T]``, log F0 and the
   voicing flag, a stack of dilated residual 1-D convolutions predicts two log-magnitude
   responses per frame on a grid of ``n_bands`` mel-spaced points: one for the pulses,
   one for the noise. Each is added to a fixed *prior*, the frame's own mel envelope
   interpolated onto the linear-frequency bins, so the network learns a correction that
   starts at zero (the last convolution is zero-initialised).
3. **Synthesis**: both excitations are taken to the STFT domain (the feature window: 400-
   sample Hann, hop 160, ``n_fft`` 512), multiplied by their responses, summed and
   brought back with the inverse STFT. The output is the pre-emphasized waveform, as
   for the other vocoders, and :func:`sqvae_speech.synthesis.vocoders.neural`
   de-emphasizes it.

Training (:mod:`.neural_train`) compares the output with the recording with a
multi-resolution STFT loss (spectral convergence + log-magnitude L1; Yamamoto et al.'s
Parallel WaveGAN recipe), no GAN. Shapes: ``B`` batch, ``T`` frames, ``N = (T - 1) * hop``
samples, ``F = n_fft // 2 + 1`` bins.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigBase, FeatureConfig, _check
from ..data.features import _hz_to_mel, _mel_to_hz

# Log-F0 input scaling: (ln f0 - LOG_F0_CENTER) / LOG_F0_SCALE puts 50-600 Hz at about +-1.
LOG_F0_CENTER = math.log(170.0)
LOG_F0_SCALE = 1.25


@dataclasses.dataclass(frozen=True)
class NeuralVocoderConfig(ConfigBase):
    """The network and the synthesis settings (YAML section ``vocoder``)."""

    channels: int = 192  # width of the residual convolutions
    layers: int = 6  # residual blocks; dilations cycle through `dilations`
    kernel_size: int = 3
    dilations: tuple[int, ...] = (1, 2, 4)
    n_bands: int = 80  # mel-spaced points of each predicted response
    n_fft: int = 512  # synthesis STFT size (window and hop are the features')
    max_harmonic_hz: float = 7600.0  # harmonics up to this frequency (below Nyquist)
    # > 0: both responses keep only their cepstrum below this quefrency (ms), i.e. a spectral
    # envelope without the harmonic ripple the mel holds at low frequencies, which acts as a
    # comb at the *source's* pitch once conversion sets another F0 (WORLD smooths its
    # envelope for the same reason). Measured on the demo (docs/VOCODER.md): 2.5 puts every
    # conversion's median F0 within a semitone of the target's (1.00 against 0.83 without),
    # but lowers PESQ on recorded mels (1.90 against 2.32) and speaker similarity; 0: off.
    lifter_ms: float = 0.0

    def validate(self) -> None:
        _check(self.channels > 0 and self.layers > 0, "vocoder.channels and vocoder.layers must be positive")
        _check(self.kernel_size % 2 == 1, "vocoder.kernel_size must be odd")
        _check(len(self.dilations) > 0 and all(d > 0 for d in self.dilations), "vocoder.dilations must be positive")
        _check(self.n_bands >= 8, "vocoder.n_bands must be at least 8")
        _check(self.n_fft >= 64 and self.n_fft & (self.n_fft - 1) == 0, "vocoder.n_fft must be a power of two >= 64")
        _check(self.max_harmonic_hz > 0, "vocoder.max_harmonic_hz must be positive")
        _check(self.lifter_ms >= 0, "vocoder.lifter_ms must be >= 0 (0: no liftering)")


# ----------------------------------------------------------------------------- excitation


def excitation(f0: np.ndarray, config: FeatureConfig, max_harmonic_hz: float = 7600.0,
               phase0: float = 0.0) -> np.ndarray:
    """Band-limited pulse train for F0 ``[T]`` (Hz per frame, 0 = unvoiced): ``[(T - 1) * hop]`` float32.

    ``sum_{k=1..K(n)} cos(k phi[n])`` with ``K(n) = floor(max_harmonic_hz / f0(n))``, in the
    closed form ``sin((K + 1/2) phi) / (2 sin(phi / 2)) - 1/2``. F0 is interpolated
    linearly between frame centres (frame ``t`` sits at sample ``t * hop``), unvoiced
    frames take the nearest voiced F0 so the phase runs on, and the train is multiplied
    by the voicing interpolated the same way (a 10 ms fade). The phase is accumulated in
    float64 turns, so hours of audio keep their pitch.
    """
    f0 = np.asarray(f0, dtype=np.float64)
    hop, sr = config.hop_length, config.sample_rate
    n = (f0.size - 1) * hop
    if n <= 0:
        return np.zeros(max(n, 0), dtype=np.float32)
    voiced = f0 > 0
    if not voiced.any():
        return np.zeros(n, dtype=np.float32)
    idx = np.flatnonzero(voiced)
    filled = np.interp(np.arange(f0.size), idx, f0[idx])  # nearest-ish: linear between voiced frames, edges held
    pos = np.arange(n) / hop
    f0_up = np.interp(pos, np.arange(f0.size), filled)
    vuv_up = np.interp(pos, np.arange(f0.size), voiced.astype(np.float64))
    turns = phase0 + np.cumsum(f0_up / sr)
    phi = 2.0 * np.pi * (turns - np.floor(turns))
    k = np.floor(max_harmonic_hz / f0_up)
    half = np.sin(phi / 2.0)
    near = np.abs(half) < 1e-6
    train = np.where(near, k, np.sin((k + 0.5) * phi) / (2.0 * np.where(near, 1.0, half)) - 0.5)
    return (train * vuv_up).astype(np.float32)


# ----------------------------------------------------------------------------- network


@functools.lru_cache(maxsize=8)
def _band_matrices(config: FeatureConfig, n_fft: int, n_bands: int) -> tuple[np.ndarray, np.ndarray]:
    """(``[F, n_mels]`` mel envelope -> linear bins, ``[F, n_bands]`` band points -> linear bins).

    Both interpolate linearly on the mel scale between points at the mel filters' centres
    (flat beyond the first and last), as row-stochastic matrices.
    """
    fmax = config.fmax or config.sample_rate / 2.0
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(config.fmin)), _hz_to_mel(np.array(fmax)), config.n_mels + 2))
    centres = edges[1:-1]
    bins = np.arange(n_fft // 2 + 1) * config.sample_rate / n_fft

    def interp_matrix(points_hz: np.ndarray) -> np.ndarray:
        m_pts, m_bins = _hz_to_mel(points_hz), _hz_to_mel(bins)
        out = np.zeros((bins.size, points_hz.size))
        for i, m in enumerate(m_bins):
            j = int(np.searchsorted(m_pts, m))
            if j <= 0:
                out[i, 0] = 1.0
            elif j >= m_pts.size:
                out[i, -1] = 1.0
            else:
                w = (m - m_pts[j - 1]) / (m_pts[j] - m_pts[j - 1])
                out[i, j - 1], out[i, j] = 1.0 - w, w
        return out

    band_pts = _mel_to_hz(np.linspace(_hz_to_mel(centres[0]), _hz_to_mel(centres[-1]), n_bands))
    return interp_matrix(centres), interp_matrix(band_pts)


@functools.lru_cache(maxsize=8)
def _lifter_matrix(n_fft: int, sample_rate: int, lifter_ms: float) -> np.ndarray | None:
    """``[F, F]`` low-quefrency lifter of a log spectrum on ``F = n_fft // 2 + 1`` bins: the
    real cepstrum (the log spectrum as an even sequence of ``n_fft`` points) keeps its
    coefficients below ``lifter_ms``; None for 0 (nothing to do)."""
    if lifter_ms <= 0:
        return None
    keep = round(lifter_ms * 1e-3 * sample_rate)
    ceps = np.fft.irfft(np.eye(n_fft // 2 + 1), n=n_fft, axis=1)  # [F, n_fft]: each bin's cepstrum
    q = np.arange(n_fft)
    ceps[:, (q > keep) & (q < n_fft - keep)] = 0.0
    return np.fft.rfft(ceps, n=n_fft, axis=1).real.T  # out = L @ log_spectrum


class _ResBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=pad, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(x, 0.1)), 0.1))


class NeuralVocoder(nn.Module):
    """Harmonic-plus-noise vocoder (module docstring). ``forward`` is differentiable in the
    network's weights; the excitations come in from outside (:func:`excitation`, noise)."""

    def __init__(self, config: NeuralVocoderConfig, features: FeatureConfig) -> None:
        super().__init__()
        config.validate()
        self.config, self.features = config, features
        c = config.channels
        self.inp = nn.Conv1d(features.n_mels + 2, c, config.kernel_size, padding=config.kernel_size // 2)
        self.blocks = nn.ModuleList(
            _ResBlock(c, config.kernel_size, config.dilations[i % len(config.dilations)]) for i in range(config.layers))
        self.out = nn.Conv1d(c, 2 * config.n_bands, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        env, bands = _band_matrices(features, config.n_fft, config.n_bands)
        self.register_buffer("env_to_bins", torch.tensor(env, dtype=torch.float32), persistent=False)
        self.register_buffer("bands_to_bins", torch.tensor(bands, dtype=torch.float32), persistent=False)
        lifter = _lifter_matrix(config.n_fft, features.sample_rate, config.lifter_ms)
        self.register_buffer("lifter", None if lifter is None else torch.tensor(lifter, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("window", torch.hann_window(features.win_length, periodic=True), persistent=False)
        # log of the mel values' scale (Slaney filters of unit area: a flat spectrum of
        # magnitude A gives A / bin width) and of the excitations' STFT magnitudes (a unit
        # cosine: sum(window) / 2; unit white noise: sqrt(sum(window ** 2)))
        win = torch.hann_window(features.win_length, periodic=True, dtype=torch.float64)
        bin_hz = features.sample_rate / features.n_fft
        self.log_bin_hz = math.log(bin_hz)
        self.log_pulse = math.log(float(win.sum()) / 2.0)
        self.log_noise = math.log(float(win.pow(2).sum().sqrt()))

    def responses(self, mel: torch.Tensor, f0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-magnitude responses for the pulses and the noise, each ``[B, F, T]``.

        Args:
            mel: ``[B, n_mels, T]`` scaled log-mel (``dB / top_db + 1``).
            f0: ``[B, T]`` Hz, 0 in unvoiced frames.
        """
        voiced = (f0 > 0).to(mel.dtype)
        log_f0 = torch.where(f0 > 0, (torch.log(f0.clamp_min(1.0)) - LOG_F0_CENTER) / LOG_F0_SCALE,
                             torch.zeros_like(f0))
        x = self.inp(torch.cat([mel, log_f0.unsqueeze(1), voiced.unsqueeze(1)], dim=1))
        for block in self.blocks:
            x = block(x)
        g = self.out(F.leaky_relu(x, 0.1))  # [B, 2 * n_bands, T]
        g_pulse, g_noise = g.chunk(2, dim=1)
        # natural-log mel magnitude + bin width: the spectrum level the features saw
        log_env = (mel - 1.0) * (self.features.top_db / 20.0 * math.log(10.0)) + self.log_bin_hz
        prior = torch.einsum("fm,bmt->bft", self.env_to_bins, log_env)
        pulse = prior - self.log_pulse + torch.einsum("fk,bkt->bft", self.bands_to_bins, g_pulse)
        noise = prior - self.log_noise + torch.einsum("fk,bkt->bft", self.bands_to_bins, g_noise)
        if self.lifter is not None:
            pulse = torch.einsum("gf,bft->bgt", self.lifter, pulse)
            noise = torch.einsum("gf,bft->bgt", self.lifter, noise)
        return pulse, noise

    def forward(self, mel: torch.Tensor, f0: torch.Tensor, pulses: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Pre-emphasized waveform ``[B, N]``, ``N = (T - 1) * hop``.

        Args:
            mel: ``[B, n_mels, T]``; f0: ``[B, T]``.
            pulses: ``[B, N]`` :func:`excitation` of ``f0``; noise: ``[B, N]`` unit white noise.
        """
        cfg, fc = self.config, self.features
        n = (mel.shape[-1] - 1) * fc.hop_length
        if pulses.shape[-1] != n or noise.shape[-1] != n:
            raise ValueError(f"excitations must have (T - 1) * hop = {n} samples, got {pulses.shape[-1]}, {noise.shape[-1]}")
        log_p, log_n = self.responses(mel, f0)
        stft = functools.partial(torch.stft, n_fft=cfg.n_fft, hop_length=fc.hop_length, win_length=fc.win_length,
                                 window=self.window, center=True, return_complex=True)
        spec = stft(pulses) * torch.exp(log_p).to(torch.complex64) + stft(noise) * torch.exp(log_n).to(torch.complex64)
        return torch.istft(spec, n_fft=cfg.n_fft, hop_length=fc.hop_length, win_length=fc.win_length,
                           window=self.window, center=True, length=n)


# ----------------------------------------------------------------------------- loss


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + mean |log magnitude difference|, averaged over resolutions
    ``(n_fft, hop, win)`` (Parallel WaveGAN's three by default). Inputs ``[B, N]``."""

    def __init__(self, resolutions: tuple[tuple[int, int, int], ...] = ((512, 50, 240), (1024, 120, 600), (2048, 240, 1200))) -> None:
        super().__init__()
        self.resolutions = resolutions
        for i, (_, _, win) in enumerate(resolutions):
            self.register_buffer(f"win{i}", torch.hann_window(win), persistent=False)

    def forward(self, y: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sc_total, mag_total = y.new_zeros(()), y.new_zeros(())
        for i, (n_fft, hop, win) in enumerate(self.resolutions):
            w = getattr(self, f"win{i}")
            a = torch.stft(y, n_fft, hop, win, w, return_complex=True).abs().clamp_min(1e-7)
            b = torch.stft(target, n_fft, hop, win, w, return_complex=True).abs().clamp_min(1e-7)
            sc_total = sc_total + torch.linalg.norm(b - a) / torch.linalg.norm(b).clamp_min(1e-7)
            mag_total = mag_total + (a.log() - b.log()).abs().mean()
        k = len(self.resolutions)
        return sc_total / k, mag_total / k


# ----------------------------------------------------------------------------- files and inference

FILE_FORMAT = "sqvae-speech-vocoder"
FILE_VERSION = 1


def vocoder_payload(model: NeuralVocoder, step: int, train: dict | None = None) -> dict:
    """What a vocoder file holds: weights, both configs, the step and the training settings."""
    return {"format": FILE_FORMAT, "version": FILE_VERSION, "step": int(step),
            "config": {"vocoder": model.config.to_dict(), "features": model.features.to_dict(), "train": train or {}},
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def save_vocoder(path: str | Path, model: NeuralVocoder, step: int, train: dict | None = None) -> Path:
    """Write the vocoder file atomically (``torch.load(..., weights_only=True)`` reads it)."""
    from ..fileio import atomic_torch_save

    path = Path(path)
    atomic_torch_save(path, vocoder_payload(model, step, train))
    return path


def load_vocoder(path: str | Path, device: str | torch.device = "cpu") -> NeuralVocoder:
    """A vocoder file (``train-vocoder``'s ``vocoder.pt``) or one of its checkpoints -> model in eval mode.

    Anything else (a missing file, an SQ-VAE model, a newer format) is a
    :class:`~sqvae_speech.errors.CheckpointError` that says what the file is and what to pass.
    """
    from ..errors import CheckpointError

    path = Path(path)
    if path.is_dir():
        cand = path / "vocoder.pt"
        if not cand.is_file():
            raise CheckpointError(f"{path} holds no vocoder.pt: train it first (`sqvae-speech train-vocoder --exp {path}`) "
                                  "or pass the vocoder file itself")
        path = cand
    if not path.is_file():
        raise CheckpointError(f"vocoder file {path} does not exist (train one with `sqvae-speech train-vocoder`)")
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"vocoder file {path} cannot be read ({first[:200]}); it is truncated, corrupt or "
                              "not a PyTorch file: use vocoder.pt or a checkpoint of `train-vocoder`") from None
    if isinstance(data, dict) and data.get("kind") == "vocoder" and data.get("format") == "sqvae-speech-checkpoint":
        data = {**data, "format": FILE_FORMAT, "version": FILE_VERSION}  # a checkpoint of train-vocoder
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        what = ("an SQ-VAE model or checkpoint" if isinstance(data, dict) and str(data.get("format", "")).startswith("sqvae-speech")
                else "not a vocoder file")
        raise CheckpointError(f"{path} is {what}; --vocoder-model takes the vocoder.pt that `sqvae-speech train-vocoder` writes")
    if int(data.get("version", 0)) > FILE_VERSION:
        raise CheckpointError(f"{path} has vocoder format version {data['version']}; this toolkit reads up to "
                              f"{FILE_VERSION}: upgrade sqvae-speech")
    try:
        cfg = data["config"]
        model = NeuralVocoder(NeuralVocoderConfig.from_dict(cfg["vocoder"], where=str(path)),
                              FeatureConfig.from_dict(cfg["features"], where=str(path)))
        model.load_state_dict(data["model"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"vocoder file {path} is incomplete or does not fit its config ({str(e).splitlines()[0]})") from None
    model.step = int(data.get("step", 0))  # type: ignore[assignment]
    return model.eval().to(device)


@torch.no_grad()
def synthesize(model: NeuralVocoder, mel: np.ndarray, f0: np.ndarray, seed: int = 0) -> np.ndarray:
    """One utterance: scaled log-mel ``[n_mels, T]`` and F0 ``[T]`` -> pre-emphasized float32 ``[(T - 1) * hop]``.

    The noise comes from ``torch.Generator().manual_seed(seed)``: the same call gives the same audio.
    """
    device = next(model.parameters()).device
    pulses = torch.from_numpy(excitation(f0, model.features, model.config.max_harmonic_hz))[None]
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(pulses.shape, generator=gen)
    m = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[None]
    f = torch.from_numpy(np.asarray(f0, dtype=np.float32))[None]
    y = model(m.to(device), f.to(device), pulses.to(device), noise.to(device))
    return y[0].float().cpu().numpy()
