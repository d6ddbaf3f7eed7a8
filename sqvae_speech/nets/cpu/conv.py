"""CPU kernels of the speech encoder's 1-D convolutions, equal to ``F.conv1d`` and its
gradients to float rounding (tests/test_speed_paths.py).

- :func:`conv1d_k3_winograd`: k3 / stride 1 / padding 1 convolutions by Winograd F(4, 3);
- :func:`conv1d_weight_grad`: the weight gradient of the others by matrix products
  (oneDNN computes their forward and input gradient);
- :func:`encoder_conv` picks between them and the stock convolution; the encoder calls it
  where :func:`sqvae_speech.nets.cpu.applies_to` says so.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

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
    """x [B, C_in, T] -> ``conv(x)`` [B, C_out, T_out] for a bias-free encoder conv, by the
    CPU kernels where they apply.

    In float32 on CPU the k3 / stride 1 / padding 1 convs run by Winograd
    (:func:`conv1d_k3_winograd`, training and inference) and, in training, the others
    with a GEMM weight gradient (:class:`_Conv1dGemmWeightGrad`). Other devices, dtypes,
    autocast and inference of the other convs take the stock ``conv(x)``.
    """
    cpu32 = (conv.bias is None and x.device.type == "cpu" and x.dtype == torch.float32
             and conv.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
             and conv.dilation == (1,) and conv.groups == 1 and isinstance(conv.padding, tuple))
    if cpu32 and conv.kernel_size == (3,) and conv.stride == (1,) and conv.padding == (1,):
        return conv1d_k3_winograd(x, conv.weight)
    if cpu32 and torch.is_grad_enabled() and conv.weight.requires_grad:
        return _Conv1dGemmWeightGrad.apply(x, conv.weight, conv.stride[0], conv.padding[0])
    return conv(x)
