"""One GRU layer, one direction, with a hand-written backward: the decoder's CPU kernel
(:mod:`.bigru` runs it for each layer and direction).

``torch.gru`` on CPU steps through time with a cell built from ~10 tensor operations and
differentiates it with autograd, which adds ~20 more operations and graph nodes per step
in the backward. Each costs a few microseconds whatever the batch size, so for the
decoder's small hidden size (128) the GRU's cost per frame grows as the batch shrinks:
whole-utterance batches of 11-22 long items paid 1.5-2x per frame what 52-item crop
batches paid (bench/README.md).

:class:`GRULayer` computes exactly the same function (PyTorch's gate layout and
equations, ``h' = (1 - z) * n + z * h``):

- forward: torch's own C++ time loop (``torch.gru``; no graph is recorded inside an
  autograd Function);
- backward: every step's gates are recomputed at once from the saved outputs (two GEMMs
  over all steps), every coefficient that does not depend on the incoming gradient is
  formed for all steps before the time loop, which then takes three operations per step
  (one of them the recurrence's ``addmm``); the weight gradients are one GEMM each over
  all steps, and the input gradient one GEMM.

Values equal ``torch.gru`` to float rounding (tests/test_gru.py).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable


class GRULayer(torch.autograd.Function):
    """x [T, B, I] (time-major), h0 [B, H] or None (zeros), PyTorch GRU weights
    (w_ih [3H, I], w_hh [3H, H], b_ih [3H], b_hh [3H]) -> outputs [T, B, H]."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, h0: Tensor | None, w_ih: Tensor, w_hh: Tensor,  # type: ignore[override]
                b_ih: Tensor, b_hh: Tensor) -> Tensor:
        hx = x.new_zeros(1, x.shape[1], w_hh.shape[1]) if h0 is None else h0.unsqueeze(0)
        # The forward is torch's own C++ time loop (no graph is recorded inside a Function).
        out = torch.gru(x, hx, (w_ih, w_hh, b_ih, b_hh), True, 1, 0.0, False, False, False)[0]
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, h0, w_ih, w_hh, b_ih, b_hh, out = ctx.saved_tensors  # type: ignore[attr-defined]
        steps, batch, _ = x.shape
        hidden = w_hh.shape[1]
        x2 = x.reshape(steps * batch, -1)
        h_prev = torch.cat([(x.new_zeros(batch, hidden) if h0 is None else h0).unsqueeze(0), out[:-1]])
        h_prev2 = h_prev.view(steps * batch, hidden)
        # The gates of every step at once: both projections are single GEMMs once all the
        # states are known.
        gi = torch.addmm(b_ih, x2, w_ih.t()).view(steps, batch, 3 * hidden)
        hg = torch.addmm(b_hh, h_prev2, w_hh.t()).view(steps, batch, 3 * hidden)
        rz = (gi[..., : 2 * hidden] + hg[..., : 2 * hidden]).sigmoid_()
        r, z = rz[..., :hidden], rz[..., hidden:]
        hg_n = hg[..., 2 * hidden :]
        n = torch.addcmul(gi[..., 2 * hidden :], r, hg_n).tanh_()
        # With d = dL/dh' at a step, the pre-activation gradients are d times these:
        #   n gate: (1 - z)(1 - n^2) = a;  z gate: (h - n) z (1 - z);
        #   r gate: a * hg_n * r (1 - r);  hidden projection of n: a * r.
        a = (1 - z) * (1 - n * n)
        coef = torch.cat([a * hg_n * r * (1 - r), (h_prev - n) * z * (1 - z), a * r], dim=-1)
        coef = coef.view(steps, batch, 3, hidden)
        dh = grad_out.contiguous().clone()  # becomes dL/dh' of each step
        dhg = grad_out.new_empty(steps, batch, 3, hidden)  # dL/d(W_hh h + b_hh) of each step
        dh_t, dhg_t, coef_t, z_t = dh.unbind(0), dhg.unbind(0), coef.unbind(0), z.unbind(0)
        for t in range(steps - 1, -1, -1):
            d = dh_t[t]
            torch.mul(coef_t[t], d.unsqueeze(1), out=dhg_t[t])
            if t > 0:  # dL/dh of step t - 1: its own output's gradient + what flows back
                dh_t[t - 1].addcmul_(d, z_t[t]).addmm_(dhg_t[t].view(batch, 3 * hidden), w_hh)
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        grad_h0 = torch.addmm(dh[0] * z[0], dhg[0].view(batch, 3 * hidden), w_hh) if needs[1] else None
        dhg2 = dhg.view(steps * batch, 3 * hidden)
        dgi = dhg.clone()
        torch.mul(dh, a, out=dgi[:, :, 2])
        dgi2 = dgi.view(steps * batch, 3 * hidden)
        grad_x = (dgi2 @ w_ih).view_as(x) if needs[0] else None
        grad_w_ih = dgi2.t() @ x2 if needs[2] else None
        grad_w_hh = dhg2.t() @ h_prev2 if needs[3] else None
        grad_b_ih = dgi2.sum(0) if needs[4] else None
        grad_b_hh = dhg2.sum(0) if needs[5] else None
        return grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


def gru_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, h0: Tensor | None = None) -> Tensor:
    """x [T, B, I] -> [T, B, H]: one unidirectional GRU layer from a zero (or ``h0`` [B, H])
    state, equal to ``torch.gru`` with the same weights (PyTorch's r, z, n gate order)."""
    return GRULayer.apply(x, h0, w_ih, w_hh, b_ih, b_hh)
