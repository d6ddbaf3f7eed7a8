"""Speech encoder, latent jitter and speaker-conditioned decoder (ZeroSpeech 2019
configuration, PROTOCOL.md "Speech model"), exact on zero-padded batches.

Every network here takes a padded batch together with its lengths and gives each item
what it would get alone: the encoder zeroes the padding before every convolution and
takes batch-norm statistics over valid frames only; the decoder's bidirectional GRU never
reads padding (packed on CUDA; on CPU each direction unpacked, the backward one on every
item reversed within its length). Outputs past each item's length are zero. Batches
without padding (crops) skip all of that, and on CPU the encoder's convolutions take the
faster paths of :func:`encoder_conv`; every fast path equals the plain computation to
float rounding (tests/test_speed_paths.py).

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

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .gru import gru_layer
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


_IM2COL_MAX_BYTES = 8 << 20


def conv1d_weight_grad(x: Tensor, grad: Tensor, kernel_size: int, stride: int, padding: int) -> Tensor:
    """Weight gradient of a bias-free Conv1d by matrix products.

    x [B, C_in, T], grad [B, C_out, T_out] -> [C_out, C_in, kernel_size]. One GEMM over the
    unfolded input (:func:`_weight_grad_im2col`) while that buffer, ``kernel_size`` copies
    of the input, is small; past 8 MiB one GEMM per tap over phase-split copies of the input
    and gradient (:func:`_weight_grad_phases`), which write one copy of each. On the
    encoder's k4 s2 conv at whole-utterance batches (28 x 768 x 276 in, 47 MB of columns)
    the phases took ~105 ms where the unfolded GEMM took ~130 ms; on 52 crops (10 MB) both
    ~25 ms (2 threads, bench/README.md).
    """
    batch, c_in, _ = x.shape
    if batch * grad.shape[2] * c_in * kernel_size * x.element_size() > _IM2COL_MAX_BYTES:
        return _weight_grad_phases(x, grad, kernel_size, stride, padding)
    return _weight_grad_im2col(x, grad, kernel_size, stride, padding)


def _weight_grad_im2col(x: Tensor, grad: Tensor, kernel_size: int, stride: int, padding: int) -> Tensor:
    """:func:`conv1d_weight_grad` as one GEMM [C_out, B T_out] @ [B T_out, C_in k]."""
    batch, c_in, _ = x.shape
    c_out, t_out = grad.shape[1], grad.shape[2]
    xp = F.pad(x, (padding, padding)) if padding else x
    cols = xp.unfold(2, kernel_size, stride)[:, :, :t_out]  # [B, C_in, T_out, k]
    cols = cols.permute(0, 2, 1, 3).reshape(batch * t_out, c_in * kernel_size)
    g = grad.transpose(1, 2).reshape(batch * t_out, c_out)
    return (g.t() @ cols).view(c_out, c_in, kernel_size)


def _weight_grad_phases(x: Tensor, grad: Tensor, kernel_size: int, stride: int, padding: int) -> Tensor:
    """:func:`conv1d_weight_grad` as one GEMM per tap, without unfolding.

    Tap j reads padded input frame ``stride * t + j`` = frame ``t + j // stride`` of phase
    ``j % stride``. The phases are laid out channel-major with ``W = T_out + (k - 1) // stride``
    frames per item ([C_in, B W] each), the gradient likewise with zeros in its last
    ``W - T_out`` frames per item ([C_out, B W]); tap j is then
    ``grad[:, :BW - q] @ phase[:, q:]^T`` with q = j // stride, where the shifted columns that
    cross into the next item meet those zeros.
    """
    batch, c_in, steps = x.shape
    c_out, t_out = grad.shape[1], grad.shape[2]
    width = t_out + (kernel_size - 1) // stride
    need = stride * width  # covers the last frame any output reads
    xp = F.pad(x, (padding, max(0, need - steps - padding)))[:, :, :need]
    phases = xp.reshape(batch, c_in, width, stride).permute(3, 1, 0, 2).reshape(stride, c_in, batch * width)
    g = grad.new_zeros(c_out, batch, width)
    g[:, :, :t_out] = grad.transpose(0, 1)
    n = batch * width
    g = g.view(c_out, n)
    out = grad.new_empty(kernel_size, c_out, c_in)
    for j in range(kernel_size):
        q = j // stride
        torch.mm(g[:, : n - q], phases[j % stride, :, q:].t(), out=out[j])
    return out.permute(1, 2, 0).contiguous()


class _Conv1dGemmWeightGrad(torch.autograd.Function):
    """Bias-free conv1d: oneDNN forward and input gradient, weight gradient by one GEMM.

    On CPU, oneDNN's backward-weights kernel ran at ~27 GFLOP/s at the encoder's shapes
    (768 channels, 16-32 frames, batch 52; one thread) where the same sum written as one
    GEMM [C_out, B*T'] @ [B*T', C_in*k] runs at ~46 (bench/README.md). Same values up to
    float summation order. Used for the convs Winograd does not cover (k3 p0, k4 s2).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding)  # type: ignore[attr-defined]
        return F.conv1d(x, weight, None, stride, padding)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        stride, padding = ctx.conf  # type: ignore[attr-defined]
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, (stride,), (padding,), (1,), False, (0,), 1, (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            grad_w = conv1d_weight_grad(x, grad, weight.shape[-1], stride, padding)
        return grad_x, grad_w, None, None


@functools.lru_cache(maxsize=8)
def _winograd_f43(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The transforms of Winograd's F(4, 3) at the points 0, 1, -1, 2, -2 and infinity:
    (B^T [6, 6] for input tiles, G [6, 3] for the kernel, A^T [4, 6] for the output)."""
    b_t = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
    g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
    a_t = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    return tuple(torch.tensor(m, dtype=torch.float64).to(device, dtype) for m in (b_t, g, a_t))  # type: ignore[return-value]


class _Conv1dK3Winograd(torch.autograd.Function):
    """Bias-free Conv1d, kernel 3, stride 1, padding 1, by Winograd's minimal filtering F(4, 3).

    Four output frames y = A^T [(G g) * (B^T d)] of a six-frame input tile d take six
    channel products instead of twelve: with the transforms applied along the tile axis,
    each of the six is a [B T/4, C_in] x [C_in, C_out] matrix product, so the encoder's
    three 768-channel k3 convolutions cost half the direct multiply-adds, forward and
    backward (the backward differentiates the same products). The transforms are
    [6, 6] / [4, 6] matrices applied as one small GEMM over all tiles. Results equal the
    direct convolution to float rounding: ~2e-6 relative in float32 (F(2, 3) gave
    ~5e-7 at 2/3 of the multiply-adds; F(4, 3) trains ~20 % faster per conv).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        batch, c_in, steps = x.shape
        c_out = weight.shape[0]
        n = (steps + 3) // 4  # output tiles of four frames
        b_t, g, a_t = _winograd_f43(x.dtype, x.device)
        xp = F.pad(x, (1, 4 * n + 1 - steps))  # [B, C_in, 4n + 2]
        tiles = xp.unfold(2, 6, 4).permute(3, 0, 2, 1).reshape(6, -1)  # [6, B n C_in]
        v = (b_t @ tiles).view(6, batch * n, c_in)
        u = (g @ weight.permute(2, 0, 1).reshape(3, -1)).view(6, c_out, c_in)
        m = torch.bmm(v, u.transpose(1, 2))  # [6, B n, C_out]
        y = (a_t @ m.view(6, -1)).view(4, batch, n, c_out).permute(1, 3, 2, 0)  # [B, C_out, n, 4]
        ctx.save_for_backward(v, u)
        ctx.shape = (batch, steps, n)  # type: ignore[attr-defined]
        # A tensor of its own, not a view (batch norm may write into its padding): full
        # tiles, then the first frames of the last one.
        out = x.new_empty(batch, c_out, steps)
        full = steps // 4
        out[:, :, : 4 * full].view(batch, c_out, full, 4).copy_(y[:, :, :full])
        if steps > 4 * full:
            out[:, :, 4 * full :].copy_(y[:, :, full, : steps - 4 * full])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        v, u = ctx.saved_tensors  # type: ignore[attr-defined]
        batch, steps, n = ctx.shape  # type: ignore[attr-defined]
        c_out, c_in = u.shape[1], u.shape[2]
        b_t, g, a_t = _winograd_f43(grad.dtype, grad.device)
        gy = F.pad(grad, (0, 4 * n - steps)).view(batch, c_out, n, 4).permute(3, 0, 2, 1).reshape(4, -1)
        gm = (a_t.t() @ gy).view(6, batch * n, c_out)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            gt = (b_t.t() @ torch.bmm(gm, u).view(6, -1)).view(6, batch, n, c_in)
            # tiles overlap by two frames: tile i covers padded frames 4i .. 4i + 5
            gxp = grad.new_zeros(batch, n + 1, 4, c_in)
            gxp[:, :n] += gt[:4].permute(1, 2, 0, 3)
            gxp[:, 1:, :2] += gt[4:].permute(1, 2, 0, 3)
            grad_x = gxp.view(batch, 4 * n + 4, c_in)[:, 1 : 1 + steps].transpose(1, 2)
        if ctx.needs_input_grad[1]:
            gu = torch.bmm(gm.transpose(1, 2), v)  # [6, C_out, C_in]
            grad_w = (g.t() @ gu.view(6, -1)).view(3, c_out, c_in).permute(1, 2, 0)
        return grad_x, grad_w


def conv1d_k3_winograd(x: Tensor, weight: Tensor) -> Tensor:
    """x [B, C_in, T], weight [C_out, C_in, 3] -> [B, C_out, T]: ``F.conv1d(x, weight,
    padding=1)`` computed by :class:`_Conv1dK3Winograd` (a view of time-major memory)."""
    return _Conv1dK3Winograd.apply(x, weight)


def encoder_conv(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """``conv(x)`` for a bias-free encoder conv, with the CPU fast paths.

    In float32 on CPU the k3 / stride 1 / padding 1 convs run by Winograd
    (:func:`conv1d_k3_winograd`, training and inference) and, in training, the others
    with a GEMM weight gradient (:class:`_Conv1dGemmWeightGrad`). CUDA and autocast take
    the stock path (cuDNN picks its own algorithms).
    """
    cpu32 = (conv.bias is None and x.device.type == "cpu" and x.dtype == torch.float32
             and conv.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
             and conv.dilation == (1,) and conv.groups == 1 and isinstance(conv.padding, tuple))
    if cpu32 and conv.kernel_size == (3,) and conv.stride == (1,) and conv.padding == (1,):
        return conv1d_k3_winograd(x, conv.weight)
    if cpu32 and torch.is_grad_enabled() and conv.weight.requires_grad:
        return _Conv1dGemmWeightGrad.apply(x, conv.weight, conv.stride[0], conv.padding[0])
    return conv(x)


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
            x = encoder_conv(conv, x)
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
        if z_q.device.type == "cpu":
            # Time-major throughout: each GRU step then reads and writes contiguous rows.
            x = torch.repeat_interleave(z_q.permute(2, 0, 1), 2, dim=0)  # [2T', B, C]
            x = torch.cat([x, spk.unsqueeze(0).expand(2 * steps, -1, -1).to(x.dtype)], dim=-1)
            h = self._bigru_time_major(x, None if full else out_lengths, self._cpu_fast_path(z_q))  # [2T', B, 2H]
            mel = self.proj(h).permute(1, 2, 0)  # [B, n_mels, 2T']
        else:
            x = torch.repeat_interleave(z_q, 2, dim=2).transpose(1, 2)  # [B, 2T', C]
            x = torch.cat([x, spk.unsqueeze(1).expand(-1, 2 * steps, -1).to(x.dtype)], dim=-1)
            if full:
                # No padding: the plain GRU computes what the packed one would, without the
                # packing, the per-step batch bookkeeping and the unpacking.
                h, _ = self.rnn(x)
            else:
                # Packing keeps the backward direction from starting in the padding (cuDNN
                # runs packed sequences natively).
                packed = pack_padded_sequence(x, out_lengths.cpu(), batch_first=True, enforce_sorted=False)
                h, _ = self.rnn(packed)
                h, _ = pad_packed_sequence(h, batch_first=True, total_length=2 * steps)
            mel = self.proj(h).transpose(1, 2)  # [B, n_mels, 2T']
        if full:
            return mel, out_lengths
        mask = lengths_to_mask(out_lengths, 2 * steps).unsqueeze(1)
        return mel * mask.to(mel.dtype), out_lengths

    def _cpu_fast_path(self, z_q: Tensor) -> bool:
        """On CPU, float32 without autocast: the GRU layers with the hand-written backward
        (:mod:`.gru`); otherwise (CPU autocast) ``torch.gru`` differentiated by autograd."""
        return (z_q.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                and self.rnn.weight_hh_l0.dtype == torch.float32)

    def _bigru_time_major(self, x: Tensor, lengths: Tensor | None, hand_written: bool = True) -> Tensor:
        """The bidirectional GRU on a time-major batch, one unidirectional layer at a time
        (:func:`.gru.gru_layer` if ``hand_written``, else ``torch.gru``); equal to the
        packed GRU at valid steps.

        x [T, B, I], lengths [B] or None (no padding) -> [T, B, 2H]; values past each
        length are unspecified. The forward direction reads the valid steps before any
        padding; the backward one runs on each item reversed within its own length
        (padding stays at the end), then is reversed back. So a valid output never sees
        padding, in values or gradients. On CPU this is several times faster than the
        packed GRU, whose per-step batch bookkeeping grows with batch and length
        (bench/README.md: 26 items x 350 steps, forward + backward, 7.8 s packed vs 2.0 s).
        """
        rnn = self.rnn
        steps = x.shape[0]
        if lengths is None:
            rev = None
        else:
            t = torch.arange(steps, device=x.device).unsqueeze(1)  # [T, 1]
            n = lengths.unsqueeze(0)  # [1, B]
            rev = torch.where(t < n, n - 1 - t, t)  # an involution: reverses each valid part
            batch = x.shape[1]
            rev = (rev * batch + torch.arange(batch, device=x.device)).reshape(-1)  # as rows of [T B, C]

        def one_layer(inp: Tensor, params: list[Tensor]) -> Tensor:
            if hand_written:
                return gru_layer(inp, *params)
            h0 = inp.new_zeros(1, inp.shape[1], rnn.hidden_size)
            return torch.gru(inp, h0, params, True, 1, 0.0, self.training, False, False)[0]

        out = x
        for layer in range(rnn.num_layers):
            dirs = []
            for suffix in ("", "_reverse"):
                params = [getattr(rnn, f"{name}_l{layer}{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                if not suffix:
                    dirs.append(one_layer(out, params))
                elif rev is None:
                    dirs.append(one_layer(out.flip(0), params).flip(0))
                else:
                    dirs.append(_PermuteTime.apply(one_layer(_PermuteTime.apply(out, rev), params), rev))
            out = torch.cat(dirs, dim=-1)
        return out


class _PermuteTime(torch.autograd.Function):
    """x [T, B, C] -> its rows permuted: ``rows`` [T B] indexes x.view(T B, C); the
    permutation must be an involution (each item's valid steps reversed, padding fixed).

    The gradient of a permutation is its inverse, here the same row selection. Selecting
    whole rows (``index_select``) ran 3-5x faster than ``torch.gather`` with an index
    expanded over channels, and autograd's backward of a gather would zero a full-size
    tensor and scatter-add into it.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, rows: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(rows)
        return x.reshape(-1, x.shape[-1]).index_select(0, rows).view_as(x)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (rows,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad.reshape(-1, grad.shape[-1]).index_select(0, rows).view_as(grad), None

