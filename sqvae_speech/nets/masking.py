"""Padding masks and a batch norm that only sees valid frames.

A zero-padded batch of variable-length sequences ([B, C, T] with lengths [B]) must give
each item the same result as running it alone. Convolutions are handled by zeroing the
padding before each one; batch norm additionally needs its training statistics taken
over the valid frames only, which :class:`MaskedBatchNorm1d` does.

This is the stock computation, the one a GPU runs; on CPU, training on padded batches
dispatches to the fused-kernel paths of :mod:`sqvae_speech.nets.cpu.batchnorm` while the
CPU-kernel switch is on (:mod:`sqvae_speech.nets.cpu`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from . import cpu
from .cpu.batchnorm import train_batch_norm


def lengths_to_mask(lengths: Tensor, max_len: int) -> Tensor:
    """lengths [B] -> bool mask [B, max_len], True at t < lengths[b]."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def conv1d_out_lengths(lengths: Tensor, kernel_size: int, stride: int = 1, padding: int = 0) -> Tensor:
    """Valid output length of a Conv1d for inputs of valid length ``lengths`` [B] -> [B].

    The same arithmetic PyTorch uses for the output size, floor((L + 2p - k) / s) + 1,
    applied to each item's own length (clamped at 0 for inputs shorter than the kernel).
    """
    out = torch.div(lengths + 2 * padding - kernel_size, stride, rounding_mode="floor") + 1
    return out.clamp(min=0)


def _distributed_world() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over all ranks whose backward sums the gradients over all ranks too, so every
    rank's loss reaches the inputs of the shared statistics (as in nn.SyncBatchNorm).
    torch.distributed.nn.functional.all_reduce does the same but is deprecated."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, t: Tensor) -> Tensor:  # type: ignore[override]
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def _all_reduce_sum(t: Tensor) -> Tensor:
    return _AllReduceSum.apply(t)


class MaskedBatchNorm1d(nn.Module):
    """BatchNorm1d whose training statistics cover only the valid frames of a padded batch.

    Parameters, buffers and state-dict keys are those of ``nn.BatchNorm1d`` (weight, bias,
    running_mean, running_var, num_batches_tracked), with the same meaning: in training the
    batch is normalized with the biased variance of its valid frames and the running
    estimates move towards the mean and the unbiased variance by ``momentum`` (``None``: a
    cumulative average); in eval the running estimates are used.

    When torch.distributed is initialized with more than one process and ``sync`` is true,
    the sums behind the statistics are all-reduced, so the statistics are those of the
    global batch (like ``nn.SyncBatchNorm``, with gradients flowing across ranks). Every
    rank must then call the layer the same number of times in training mode.

    Positions at or beyond ``lengths`` are zero in the output (in training mode; in eval
    mode they hold the normalized padding, which the speech encoder zeroes before every
    convolution anyway).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        sync: bool = True,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.sync = sync
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, sync={self.sync}"

    def forward(self, x: Tensor, lengths: Tensor | None, relu: bool = False, overwrite_padding: bool = False) -> Tensor:
        """x [B, C, T] (padded), lengths [B] valid frames -> [B, C, T].

        ``lengths=None`` says every frame is valid (equal-length crops): the statistics are
        then those of plain batch norm, computed by the fused ``F.batch_norm`` kernel
        (unless they must be all-reduced across processes, which only the masked path does).
        ``relu`` applies a ReLU to the output (in place where that is safe). With
        ``overwrite_padding`` the caller lets training overwrite the padded positions of
        ``x`` (the speech encoder's own conv outputs), which one CPU kernel uses.

        The one dispatch point: training on a padded batch in one process on CPU with the
        CPU-kernel switch on runs :func:`~sqvae_speech.nets.cpu.batchnorm.train_batch_norm`
        (fused kernels over the valid frames); everything else, and CPU with the switch
        off, the stock path below.
        """
        if x.dim() != 3 or x.shape[1] != self.num_features:
            raise ValueError(f"MaskedBatchNorm1d({self.num_features}) expects [B, {self.num_features}, T], got {list(x.shape)}")
        if (self.training and lengths is not None and cpu.applies_to(x)
                and not (self.sync and _distributed_world())):
            return train_batch_norm(self, x, lengths, relu, overwrite_padding)
        y = self._batch_norm(x, lengths)
        return torch.relu_(y) if relu else y

    def _batch_norm(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """The stock computation of :meth:`forward`, without the ReLU: running statistics in
        eval, the fused ``F.batch_norm`` on batches without padding, else masked sums."""
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        distributed = self.sync and _distributed_world()
        # A single frame has no batch variance for F.batch_norm; the masked path copes.
        if lengths is None and not distributed and x.shape[0] * x.shape[-1] > 1:
            return self._full_batch_norm(x)
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[-1], dtype=torch.long, device=x.device)
        return self._masked_batch_norm(x, lengths)

    def _masked_batch_norm(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Training-mode batch norm of the valid frames by masked sums: x [B, C, T],
        lengths [B] -> [B, C, T], zero past each length (all-reduced when distributed)."""
        mean, var, count = self._batch_stats(x, lengths)
        self._update_running_stats(mean, var, count)
        # Statistics in float32 even under autocast: the variance of fp16 activations
        # summed over thousands of frames would lose most of its digits.
        mask = lengths_to_mask(lengths.to(x.device), x.shape[-1]).unsqueeze(1)
        return self._normalize(x, mean, var) * mask.to(x.dtype)

    def _full_batch_norm(self, x: Tensor) -> Tensor:
        """Training-mode batch norm over every frame, x [B, C, T] -> [B, C, T]: one fused
        kernel forward and backward, the same statistics and running-estimate update as the
        masked path with full lengths."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked.item())
        else:
            factor = self.momentum
        # float32 statistics under autocast, as in the masked path.
        y = F.batch_norm(x.float(), self.running_mean, self.running_var,
                         None if self.weight is None else self.weight.float(),
                         None if self.bias is None else self.bias.float(), True, factor, self.eps)
        return y.to(x.dtype)

    def _normalize(self, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """x [B, C, T], mean and biased variance [C] -> [B, C, T] normalized (and scaled and
        shifted when affine), computed in float32, returned in the dtype of ``x``."""
        y = (x.float() - mean[:, None]) * torch.rsqrt(var + self.eps)[:, None]
        if self.affine:
            y = y * self.weight.float()[:, None] + self.bias.float()[:, None]
        return y.to(x.dtype)

    def _batch_stats(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> mean [C], biased variance [C] and the frame count (0-dim), float32."""
        mask = lengths_to_mask(lengths.to(x.device), x.shape[-1]).unsqueeze(1).float()  # [B, 1, T]
        xf = x.float()
        distributed = self.sync and _distributed_world()
        # Two passes (mean, then centred squares) rather than sum and sum of squares:
        # E[x^2] - E[x]^2 cancels catastrophically in float32 when |mean| >> std.
        sums = torch.cat([(xf * mask).sum(dim=(0, 2)), mask.sum().reshape(1)])
        if distributed:
            sums = _all_reduce_sum(sums)
        count = sums[-1].detach()
        mean = sums[:-1] / count.clamp(min=1.0)
        sq = (((xf - mean[:, None]) * mask) ** 2).sum(dim=(0, 2))
        if distributed:
            sq = _all_reduce_sum(sq)
        var = sq / count.clamp(min=1.0)
        return mean, var, count

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked.item())
        else:
            factor = self.momentum
        # With a single valid frame the unbiased variance is undefined; keep the biased one
        # (0) instead of writing inf into the running estimate.
        unbiased = var * (count / (count - 1.0).clamp(min=1.0))
        self.running_mean.mul_(1.0 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1.0 - factor).add_(unbiased.detach().to(self.running_var.dtype), alpha=factor)
