"""Speech encoder, latent jitter and speaker-conditioned decoder (ZeroSpeech 2019
configuration, docs/PROTOCOL.md "Speech model and training"), exact on zero-padded batches.

Every network here takes a padded batch together with its lengths and gives each item
what it would get alone: the encoder zeroes the padding before every convolution and
takes batch-norm statistics over valid frames only; the decoder's bidirectional GRU never
reads padding (it runs over a packed sequence). Outputs past each item's length are zero.
Batches without padding (crops) skip all of that.

What is written here is the stock computation, the one a GPU runs. Each layer with a CPU
kernel has one dispatch point that asks :func:`sqvae_speech.nets.cpu.applies_to` (switch
``SQVAE_CPU_KERNELS`` on and tensors on CPU): the encoder's convolutions
(:func:`~sqvae_speech.nets.cpu.conv.encoder_conv`), its batch norms (in
:class:`~sqvae_speech.nets.masking.MaskedBatchNorm1d`) and the decoder's GRU
(:func:`~sqvae_speech.nets.cpu.bigru.decode_time_major`). Every kernel equals the stock
computation to float rounding (tests/test_speed_paths.py, tests/nets/test_cpu_switch.py).

Lengths. The encoder maps T mel frames to T' = (T - 2) // 2 latent frames (the first conv
has no padding and eats 2 frames, the stride-2 conv halves what is left, rounding down);
the decoder maps T' latent frames to 2 T' mel frames, compared with mel[:, 1:-1]. For even
T that is exactly T - 2 frames. For odd T the encoder still works: T' is the same as for
T - 1, but the stride-2 conv reads the extra mel frame where, for T - 1 frames, it would
read zero padding, and the two k3 convs after it spread that into the last three latent
frames; 2 T' = T - 3 is also one frame short of mel[:, 1:-1]. The protocol therefore trims
odd T by one frame before encoding. Passing T - 1 as the length is enough for that (the
extra frame is then padding and masked); slicing the tensor is not needed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import cpu
from .cpu.bigru import decode_time_major
from .cpu.conv import encoder_conv
from .masking import MaskedBatchNorm1d, conv1d_out_lengths, lengths_to_mask

# (kernel_size, stride, padding) of the five encoder convolutions: the single source of
# both the layers and conv_out_lengths.
ENCODER_CONVS: tuple[tuple[int, int, int], ...] = ((3, 1, 0), (3, 1, 1), (4, 2, 1), (3, 1, 1), (3, 1, 1))

MIN_MEL_FRAMES = 4  # the shortest input that leaves one latent frame


def conv_out_lengths(lengths: Tensor) -> Tensor:
    """Mel frames [B] -> latent frames [B] of :class:`SpeechEncoder`, = (T - 2) // 2 for T >= 2.

    Odd T gives the same count as T - 1 (see the module docstring).
    """
    for kernel_size, stride, padding in ENCODER_CONVS:
        lengths = conv1d_out_lengths(lengths, kernel_size, stride, padding)
    return lengths


def _check_lengths(lengths: Tensor, batch: int, max_len: int, min_len: int, what: str) -> bool:
    """Validate ``lengths`` [B]; True when every item fills the padded batch (no padding)."""
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"{what}: lengths must have shape [{batch}], got {list(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"{what}: lengths must be an integer tensor, got {lengths.dtype}")
    if batch == 0:
        raise ValueError(f"{what}: empty batch")
    lo, hi = torch.stack([lengths.min(), lengths.max()]).tolist()  # one host sync
    if lo < min_len:
        raise ValueError(f"{what}: an item has {lo} frames, fewer than the {min_len} needed; drop or pad such inputs upstream")
    if hi > max_len:
        raise ValueError(f"{what}: an item claims {hi} frames but the padded batch holds only {max_len}")
    return lo == max_len


class SpeechEncoder(nn.Module):
    """Mel spectrogram -> continuous latents at half the frame rate (50 Hz for 10 ms hops).

    Five convolutions (k3 p0, k3 p1, k4 s2 p1, k3 p1, k3 p1), each followed by a masked
    batch norm and ReLU, then a 1x1 convolution (with bias) to ``out_channels``.
    """

    def __init__(self, in_channels: int = 80, channels: int = 768, out_channels: int = 64) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        # No conv bias: the batch norm's shift that follows makes it redundant.
        self.convs = nn.ModuleList(
            nn.Conv1d(in_channels if i == 0 else channels, channels, k, stride=s, padding=p, bias=False)
            for i, (k, s, p) in enumerate(ENCODER_CONVS)
        )
        self.norms = nn.ModuleList(MaskedBatchNorm1d(channels) for _ in ENCODER_CONVS)
        self.out = nn.Conv1d(channels, out_channels, 1)

    def forward(self, mel: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """mel [B, in_channels, T] (padded), lengths [B] mel frames
        -> (out [B, out_channels, T'], out_lengths [B]), T' = (T - 2) // 2, zero past out_lengths.
        """
        if mel.dim() != 3 or mel.shape[1] != self.in_channels:
            raise ValueError(f"SpeechEncoder expects mel [B, {self.in_channels}, T], got {list(mel.shape)}")
        full = _check_lengths(lengths, mel.shape[0], mel.shape[-1], MIN_MEL_FRAMES, "SpeechEncoder")
        lengths = lengths.to(device=mel.device, dtype=torch.long)
        x = mel
        zero_padding = False  # is x known to be zero past its lengths?
        for conv, norm, (k, s, p) in zip(self.convs, self.norms, ENCODER_CONVS):
            # Zero padding in, so every valid output sees the zeros it would see alone.
            # Without padding (crops) every output frame is valid and masks are identities.
            # A masked batch norm in training already outputs zeros there (ReLU keeps
            # them), so only the mel and eval-mode activations need the mask.
            if not full and not zero_padding:
                x = x * lengths_to_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)
            x = encoder_conv(conv, x) if cpu.applies_to(x) else conv(x)
            lengths = conv1d_out_lengths(lengths, k, s, p)
            # The conv output is ours: batch norm may overwrite its padding.
            x = norm(x, None if full else lengths, relu=True, overwrite_padding=True)
            zero_padding = norm.training
        out = self.out(x)
        if not full:
            # The 1x1 conv reads one frame at a time, so masking its output (bias) is enough.
            out = out * lengths_to_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)
        return out, lengths


def jitter(z: Tensor, lengths: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Time jitter (Chorowski et al. 2019): z [B, C, T'] -> same shape.

    Each valid frame is replaced by its left neighbour with probability p/2 and by its right
    neighbour with probability p/2, neighbours clamped to the item's valid range [0, len-1]
    (so an edge frame may stay itself). All channels of a frame move together. Positions at
    or beyond ``lengths`` are left as they are (zero for a masked batch). Identity for p == 0.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"jitter probability must be in [0, 1], got {p}")
    if p == 0.0:
        return z
    batch, _, steps = z.shape
    lengths = lengths.to(device=z.device, dtype=torch.long)
    r = torch.rand(batch, steps, device=z.device, generator=generator)
    shift = (r < p / 2).long() * -1 + ((r >= p / 2) & (r < p)).long()
    t = torch.arange(steps, device=z.device).unsqueeze(0)  # [1, T']
    last = (lengths - 1).clamp(min=0).unsqueeze(1)  # [B, 1]
    src = torch.minimum((t + shift).clamp(min=0), last)
    src = torch.where(t < lengths.unsqueeze(1), src, t)  # padding maps to itself
    return torch.gather(z, 2, src.unsqueeze(1).expand_as(z))


class SpeechDecoder(nn.Module):
    """Quantized latents + speaker -> mel spectrogram at twice the latent rate.

    Nearest upsampling x2, a speaker embedding concatenated to every frame, a bidirectional
    GRU that never reads padding, and a linear projection to ``n_mels``.
    """

    def __init__(
        self,
        in_channels: int = 64,
        n_speakers: int = 102,
        speaker_embedding_dim: int = 64,
        hidden_size: int = 128,
        num_layers: int = 2,
        n_mels: int = 80,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.n_mels = n_mels
        self.speaker_embedding = nn.Embedding(n_speakers, speaker_embedding_dim)
        self.rnn = nn.GRU(
            in_channels + speaker_embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
        )
        self.proj = nn.Linear(2 * hidden_size, n_mels)

    def forward(self, z_q: Tensor, lengths: Tensor, speakers: Tensor) -> tuple[Tensor, Tensor]:
        """z_q [B, in_channels, T'] (padded), lengths [B] latent frames, speakers [B] int64
        -> (mel [B, n_mels, 2 T'], out_lengths [B] = 2 lengths), zero past out_lengths.
        """
        if z_q.dim() != 3 or z_q.shape[1] != self.in_channels:
            raise ValueError(f"SpeechDecoder expects z_q [B, {self.in_channels}, T'], got {list(z_q.shape)}")
        batch, _, steps = z_q.shape
        full = _check_lengths(lengths, batch, steps, 1, "SpeechDecoder")
        if speakers.shape != (batch,):
            raise ValueError(f"SpeechDecoder: speakers must have shape [{batch}], got {list(speakers.shape)}")
        out_lengths = 2 * lengths.to(device=z_q.device, dtype=torch.long)
        spk = self.speaker_embedding(speakers.to(z_q.device))  # [B, E]
        if cpu.applies_to(z_q):  # the one dispatch point: time-major, without packing
            mel = decode_time_major(self.rnn, self.proj, z_q, spk, None if full else out_lengths)
        else:
            mel = self._decode(z_q, spk, None if full else out_lengths)
        if full:
            return mel, out_lengths
        mask = lengths_to_mask(out_lengths, 2 * steps).unsqueeze(1)
        return mel * mask.to(mel.dtype), out_lengths

    def _decode(self, z_q: Tensor, spk: Tensor, out_lengths: Tensor | None) -> Tensor:
        """The stock computation (every GPU; CPU with the switch off): z_q [B, C, T'],
        spk [B, E], out_lengths [B] = 2 x latent lengths or None (no padding)
        -> mel [B, n_mels, 2T'], unspecified past each length."""
        steps = z_q.shape[-1]
        x = torch.repeat_interleave(z_q, 2, dim=2).transpose(1, 2)  # [B, 2T', C]
        x = torch.cat([x, spk.unsqueeze(1).expand(-1, 2 * steps, -1).to(x.dtype)], dim=-1)
        if out_lengths is None:
            # No padding: the plain GRU computes what the packed one would, without the
            # packing, the per-step batch bookkeeping and the unpacking.
            h, _ = self.rnn(x)
        else:
            # Packing keeps the backward direction from starting in the padding (cuDNN
            # runs packed sequences natively).
            packed = pack_padded_sequence(x, out_lengths.cpu(), batch_first=True, enforce_sorted=False)
            h, _ = self.rnn(packed)
            h, _ = pad_packed_sequence(h, batch_first=True, total_length=2 * steps)
        return self.proj(h).transpose(1, 2)  # [B, n_mels, 2T']
