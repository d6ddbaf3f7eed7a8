"""Re-implementations of the reference formulation (the authors' speech SQ-VAE code, as
docs/PROTOCOL.md describes it), written plainly so the benchmarks can run it next to ours.

What "the reference formulation" means here, part by part:

- Encoder: ``nn.Sequential`` of five ``nn.Conv1d`` (k3 p0, k3 p1, k4 s2 p1, k3 p1, k3 p1,
  no bias), each followed by ``nn.BatchNorm1d`` and ``nn.ReLU``, then a 1x1 conv (with
  bias) to D (I), D+1 (III) or 2D (IV) channels. No masking: every input is one
  unpadded utterance or a batch of equal-length crops.
- Quantizer: the precision-weighted distance built by broadcasting, for every variant:
  ``0.5 * sum_d p_d (z_d - b_kd)^2`` over an [N, D, K] tensor; the Gumbel-softmax sample
  drawn from uniforms (``-log(-log u)``), softmax and log-softmax over the [B, L, K]
  logits for the entropy term, the latent loss averaged over the batch, and a batch
  perplexity from a one-hot [N, K] matrix.
- Jitter: a categorical draw of the shift {-1, 0, +1} per frame (probabilities p/2,
  1 - p, p/2), clamped at the ends, applied after quantization.
- Decoder: ``F.interpolate`` x2 (nearest), a speaker embedding concatenated to every
  frame, a 2-layer bidirectional ``nn.GRU`` on the unpacked batch, ``nn.Linear`` to 80.
- Reconstruction: ``0.5 * (numel / B) * log(mean((out - mel[:, :, 1:-1])^2))``.
- Features: per utterance, read with librosa's loader (soundfile + soxr_hq resampling),
  peak-normalize, ``scipy.signal.lfilter`` pre-emphasis, ``librosa.feature.melspectrogram``
  with ``pad_mode='reflect'`` (the paper-era default), ``librosa.amplitude_to_db``,
  ``/ top_db + 1``; one process.
- dB^2 MSE: one utterance at a time, unpadded, summed as the paper's formula.

:func:`reference_from_ours` builds a reference model holding the weights of a
:class:`~sqvae_speech.models.SpeechSQVAE`, so that both can be run on the same inputs and
their results compared.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

_OUT_CHANNELS = {"gaussian_1": lambda d: d, "gaussian_3": lambda d: d + 1, "gaussian_4": lambda d: 2 * d}


class RefOutput(NamedTuple):
    loss: Tensor
    recon: Tensor
    kl: Tensor
    perplexity: Tensor


def reference_distances(z: Tensor, log_var: Tensor, codebook: Tensor, variant: str) -> Tensor:
    """0.5 * sum_d p_d (z_d - b_kd)^2 by broadcasting an [N, D, K] tensor.

    z [B, L, D]; log_var: [1] (I), [B, L, 1] (III) or [B, L, D] (IV); codebook [K, D]
    -> [N, K], N = B * L.
    """
    dim = codebook.shape[1]
    z_flat = z.reshape(-1, dim).unsqueeze(2)  # [N, D, 1]
    if variant == "gaussian_1":
        lv = log_var.reshape(1, 1)
    elif variant == "gaussian_3":
        lv = log_var.reshape(-1, 1)
    else:
        lv = log_var.reshape(-1, dim)
    precision = torch.exp(-lv.unsqueeze(2))  # [1 or N, 1 or D, 1]
    return 0.5 * torch.sum(precision * (codebook.t().unsqueeze(0) - z_flat) ** 2, dim=1)


class RefSQEmbedding(nn.Module):
    """The codebook and the stochastic quantization step of the reference formulation."""

    def __init__(self, variant: str, num_embeddings: int = 512, embedding_dim: int = 64) -> None:
        super().__init__()
        self.variant = variant
        self.embedding = nn.Parameter(torch.randn(num_embeddings, embedding_dim))

    def encode(self, z: Tensor, log_var: Tensor) -> tuple[Tensor, Tensor]:
        """Deterministic: z [B, L, D] -> (quantized [B, L, D], indices [N])."""
        distances = reference_distances(z.detach(), log_var, self.embedding, self.variant)
        indices = torch.argmin(distances.float(), dim=-1)
        return F.embedding(indices, self.embedding).view_as(z), indices

    def forward(self, z: Tensor, log_var: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
        """z [B, L, D] -> (soft quantized [B, L, D], latent loss (batch mean), perplexity)."""
        k = self.embedding.shape[0]
        batch, length, _ = z.shape
        distances = reference_distances(z, log_var, self.embedding, self.variant)
        indices = torch.argmin(distances.float(), dim=-1)
        logits = -distances
        eps = torch.finfo(logits.dtype).eps
        gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp(min=eps, max=1 - eps)))
        encodings = torch.softmax((logits + gumbel) / temperature, dim=-1)
        quantized = torch.matmul(encodings, self.embedding).view_as(z)
        logits = logits.view(batch, length, k)
        probs = torch.softmax(logits, dim=-1)
        log_probs = torch.log_softmax(logits, dim=-1)
        precision = torch.exp(-log_var)
        loss = torch.mean(0.5 * torch.sum(precision * (z - quantized) ** 2, dim=(1, 2))
                          + torch.sum(probs * log_probs, dim=(1, 2)))
        avg = F.one_hot(indices, k).float().mean(dim=0)
        perplexity = torch.exp(-torch.sum(avg * torch.log(avg + 1e-10)))
        return quantized, loss, perplexity


def ref_jitter(z: Tensor, p: float) -> Tensor:
    """z [B, L, D]: each frame replaced by a neighbour drawn categorically (p/2, 1-p, p/2)."""
    if p == 0.0:
        return z
    batch, length, channels = z.shape
    probs = torch.tensor([p / 2, 1 - p, p / 2], device=z.device)
    index = torch.distributions.Categorical(probs).sample(torch.Size([batch, length])) - 1
    index[:, 0].clamp_(0, 1)
    index[:, -1].clamp_(-1, 0)
    index += torch.arange(length, device=z.device)
    return torch.gather(z, 1, index.unsqueeze(-1).expand(-1, -1, channels))


class RefEncoder(nn.Module):
    def __init__(self, variant: str, in_channels: int = 80, channels: int = 768, num_embeddings: int = 512,
                 embedding_dim: int = 64, jitter: float = 0.5) -> None:
        super().__init__()
        if variant not in _OUT_CHANNELS:
            raise ValueError(f"the reference speech code has variants {sorted(_OUT_CHANNELS)}, not {variant}")
        self.variant = variant
        self.embedding_dim = embedding_dim
        self.jitter = jitter
        layers: list[nn.Module] = []
        for i, (k, s, p) in enumerate(((3, 1, 0), (3, 1, 1), (4, 2, 1), (3, 1, 1), (3, 1, 1))):
            layers += [nn.Conv1d(in_channels if i == 0 else channels, channels, k, s, p, bias=False),
                       nn.BatchNorm1d(channels), nn.ReLU(True)]
        layers.append(nn.Conv1d(channels, _OUT_CHANNELS[variant](embedding_dim), 1))
        self.encoder = nn.Sequential(*layers)
        self.log_var_q_scalar = nn.Parameter(torch.full((1,), math.log(10.0)))
        self.codebook = RefSQEmbedding(variant, num_embeddings, embedding_dim)

    def _split(self, mels: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder(mels).transpose(1, 2)
        if self.variant == "gaussian_1":
            log_var = self.log_var_q_scalar
        else:
            log_var = z[:, :, self.embedding_dim :] + self.log_var_q_scalar
        return z[:, :, : self.embedding_dim], log_var

    def forward(self, mels: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
        z, log_var = self._split(mels)
        z, loss, perplexity = self.codebook(z, log_var, temperature)
        if self.training:
            z = ref_jitter(z, self.jitter)
        return z, loss, perplexity

    def encode(self, mels: Tensor) -> tuple[Tensor, Tensor]:
        z, log_var = self._split(mels)
        return self.codebook.encode(z, log_var)


class RefDecoder(nn.Module):
    def __init__(self, in_channels: int = 64, out_channels: int = 80, n_speakers: int = 102,
                 speaker_embedding_dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.speaker_embedding = nn.Embedding(n_speakers, speaker_embedding_dim)
        self.rnn = nn.GRU(in_channels + speaker_embedding_dim, hidden, num_layers=2, batch_first=True,
                          bidirectional=True)
        self.fc = nn.Linear(2 * hidden, out_channels)

    def forward(self, z: Tensor, speakers: Tensor) -> Tensor:
        """z [B, L, D], speakers [B] -> [B, 2L, out_channels]."""
        z = F.interpolate(z.transpose(1, 2), scale_factor=2).transpose(1, 2)
        spk = self.speaker_embedding(speakers).unsqueeze(1).expand(-1, z.shape[1], -1)
        h, _ = self.rnn(torch.cat((z, spk), dim=-1))
        return self.fc(h)


def arelbo(out: Tensor, target: Tensor) -> Tensor:
    """0.5 * (numel / B) * log(mean((out - target)^2))."""
    return 0.5 * (target.numel() // target.shape[0]) * torch.log(torch.mean((out - target) ** 2))


class RefSQVAE(nn.Module):
    """Encoder + decoder of the reference formulation; ``forward`` returns the training losses."""

    def __init__(self, variant: str, n_speakers: int, channels: int = 768, num_embeddings: int = 512,
                 embedding_dim: int = 64, jitter: float = 0.5, speaker_embedding_dim: int = 64,
                 hidden: int = 128) -> None:
        super().__init__()
        self.encoder = RefEncoder(variant, 80, channels, num_embeddings, embedding_dim, jitter)
        self.decoder = RefDecoder(embedding_dim, 80, n_speakers, speaker_embedding_dim, hidden)

    def forward(self, mels: Tensor, speakers: Tensor, temperature: float = 1.0) -> RefOutput:
        z, kl, perplexity = self.encoder(mels, temperature)
        out = self.decoder(z, speakers)
        recon = arelbo(out.transpose(1, 2), mels[:, :, 1:-1])
        return RefOutput(recon + kl, recon, kl, perplexity)

    @torch.no_grad()
    def utterance_sse(self, mel: Tensor, speaker: Tensor) -> tuple[float, int]:
        """One unpadded utterance mel [1, 80, T] (T even) -> (sum of squared errors, T - 2)."""
        z, _ = self.encoder.encode(mel)
        out = self.decoder(z, speaker)
        return float(torch.sum((out[0].transpose(0, 1) - mel[0, :, 1:-1]) ** 2)), mel.shape[2] - 2


def reference_from_ours(model: nn.Module) -> RefSQVAE:
    """A :class:`RefSQVAE` holding the weights (and batch-norm statistics) of a
    :class:`~sqvae_speech.models.SpeechSQVAE` of variant I, III or IV."""
    cfg = model.config
    q, d = cfg.quantizer, cfg.decoder
    if cfg.n_mels != 80 or d.num_layers != 2 or cfg.recon_kind != "arelbo":
        raise ValueError("the reference formulation has 80 mel bands, a 2-layer GRU decoder and the arelbo "
                         f"reconstruction; this model has {cfg.n_mels}, {d.num_layers} and {cfg.recon_kind}")
    ref = RefSQVAE(cfg.variant, len(cfg.speakers), cfg.encoder.channels, q["num_embeddings"], q["embedding_dim"],
                   cfg.jitter, d.speaker_embedding_dim, d.hidden_size)
    ours = model.state_dict()
    mapped: dict[str, Tensor] = {}
    for i in range(5):
        mapped[f"encoder.encoder.{3 * i}.weight"] = ours[f"encoder.convs.{i}.weight"]
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            mapped[f"encoder.encoder.{3 * i + 1}.{name}"] = ours[f"encoder.norms.{i}.{name}"]
    mapped["encoder.encoder.15.weight"] = ours["encoder.out.weight"]
    mapped["encoder.encoder.15.bias"] = ours["encoder.out.bias"]
    mapped["encoder.log_var_q_scalar"] = ours["quantizer.log_var_scalar"].reshape(1)
    mapped["encoder.codebook.embedding"] = ours["quantizer.codebook"]
    mapped["decoder.speaker_embedding.weight"] = ours["decoder.speaker_embedding.weight"]
    for key, value in ours.items():
        if key.startswith("decoder.rnn."):
            mapped[key] = value
    mapped["decoder.fc.weight"] = ours["decoder.proj.weight"]
    mapped["decoder.fc.bias"] = ours["decoder.proj.bias"]
    ref.load_state_dict(mapped, strict=True)
    return ref


def reference_logmel_file(path: str, sr: int = 16000) -> np.ndarray:
    """Reference features of one audio file: [80, T] float32 (dB / 80 + 1)."""
    import librosa
    import scipy.signal

    wav, _ = librosa.load(path, sr=sr)
    wav = wav / np.abs(wav).max() * 0.999
    mel = librosa.feature.melspectrogram(
        y=scipy.signal.lfilter([1, -0.97], [1], wav), sr=sr, n_fft=2048, n_mels=80, hop_length=160,
        win_length=400, fmin=50, power=1, pad_mode="reflect",
    )
    logmel = librosa.amplitude_to_db(mel, top_db=80)
    return (logmel / 80 + 1).astype(np.float32)
