"""GRU layers with a hand-written backward: the decoder's CPU fast path.

``torch.gru`` on CPU steps through time with a cell built from ~10 tensor operations and
differentiates it with autograd, which adds ~20 more operations and graph nodes per step
in the backward. Each costs a few microseconds whatever the batch size, so for the
decoder's small hidden size (128) the GRU's cost per frame grows as the batch shrinks:
whole-utterance batches of 11-22 long items paid 1.5-2x per frame what 52-item crop
batches paid (bench/README.md).

:class:`GRULayer` computes exactly the same function (PyTorch's gate layout and
equations, ``h' = (1 - z) * n + z * h``):

- forward: torch's own C++ time loop (``torch.gru``, no graph recorded);
- backward: every step's gates are recomputed at once from the saved outputs (two GEMMs
  over all steps), every coefficient that does not depend on the incoming gradient is
  formed for all steps before the time loop, which then takes three operations per step;
  the weight gradients are one GEMM each over all steps, and the input gradient one GEMM.

:class:`BiGRULayer` runs the two directions of a bidirectional layer the same way, on two
threads at once when torch has more than one: a step of a small GRU (a [B, 128] x
[128, 384] product and a few elementwise operations) is too small for intra-op threads to
help, so one direction per core is faster. Measured on 2 cores, both layers of the
decoder's GRU, forward + backward: 1.8x faster at 22 items x 704 steps, 2.6x at 11 x 1316,
the same on crops (52 x 32); whole training steps ~10 % faster, crops and utterances
(an interleaved A/B in one process).

Values equal ``torch.gru`` to float rounding (tests/test_gru.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool_after_fork() -> None:
    # A forked child has no helper thread; a pool inherited from the parent would take
    # the work and never run it.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _run_both(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """first() and second(), the second on a helper thread when torch uses > 1 thread."""
    global _pool
    if torch.get_num_threads() < 2:
        return first(), second()
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqvae-gru")
        pool = _pool

    def no_grad_second() -> Any:
        with torch.no_grad():  # grad mode is per thread; nothing here is differentiated
            return second()

    fut: Future[Any] = pool.submit(no_grad_second)
    try:
        a = first()
    finally:
        b = fut.result()  # waits (and re-raises) before anything is freed
    return a, b


def _forward(x: Tensor, h0: Tensor | None, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """x [T, B, I] -> outputs [T, B, H] by torch's C++ loop."""
    hx = x.new_zeros(1, x.shape[1], w_hh.shape[1]) if h0 is None else h0.unsqueeze(0)
    return torch.gru(x, hx, (w_ih, w_hh, b_ih, b_hh), True, 1, 0.0, False, False, False)[0]


def _backward(x: Tensor, h0: Tensor | None, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
              out: Tensor, grad_out: Tensor, needs: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
    """Gradients (x, h0, w_ih, w_hh, b_ih, b_hh) of one layer, those flagged in ``needs``."""
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


class GRULayer(torch.autograd.Function):
    """x [T, B, I] (time-major), h0 [B, H] or None (zeros), PyTorch GRU weights
    (w_ih [3H, I], w_hh [3H, H], b_ih [3H], b_hh [3H]) -> outputs [T, B, H]."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, h0: Tensor | None, w_ih: Tensor, w_hh: Tensor,  # type: ignore[override]
                b_ih: Tensor, b_hh: Tensor) -> Tensor:
        out = _forward(x, h0, w_ih, w_hh, b_ih, b_hh)
        ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        return _backward(*ctx.saved_tensors, grad_out, ctx.needs_input_grad)  # type: ignore[attr-defined]


class BiGRULayer(torch.autograd.Function):
    """Both directions of a bidirectional layer, side by side on two threads.

    x_fwd [T, B, I] and x_bwd [T, B, I] (the input as the backward direction reads it,
    i.e. already reversed in time), then the forward direction's four weights and the
    backward direction's four -> (out_fwd [T, B, H], out_bwd [T, B, H], the latter in
    x_bwd's time order). Zero initial states.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x_f: Tensor, x_b: Tensor, *params: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        pf, pb = params[:4], params[4:]
        out_f, out_b = _run_both(lambda: _forward(x_f, None, *pf), lambda: _forward(x_b, None, *pb))
        ctx.save_for_backward(x_f, x_b, *params, out_f, out_b)
        return out_f, out_b

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_f: Tensor, grad_b: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x_f, x_b, *params, out_f, out_b = ctx.saved_tensors  # type: ignore[attr-defined]
        pf, pb = params[:4], params[4:]
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        need_f = (needs[0], False, *needs[2:6])
        need_b = (needs[1], False, *needs[6:10])
        gf, gb = _run_both(lambda: _backward(x_f, None, *pf, out_f, grad_f, need_f),
                           lambda: _backward(x_b, None, *pb, out_b, grad_b, need_b))
        return (gf[0], gb[0], *gf[2:], *gb[2:])


def gru_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, h0: Tensor | None = None) -> Tensor:
    """x [T, B, I] -> [T, B, H]: one unidirectional GRU layer from a zero (or ``h0`` [B, H])
    state, equal to ``torch.gru`` with the same weights (PyTorch's r, z, n gate order)."""
    return GRULayer.apply(x, h0, w_ih, w_hh, b_ih, b_hh)


def bigru_layer(x_fwd: Tensor, x_bwd: Tensor, params_fwd: list[Tensor], params_bwd: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Both directions of one bidirectional layer: x_fwd, x_bwd [T, B, I] (x_bwd already in
    the backward direction's reading order) -> (out_fwd, out_bwd) [T, B, H] each, out_bwd in
    x_bwd's order. Each equals :func:`gru_layer` on its input."""
    return BiGRULayer.apply(x_fwd, x_bwd, *params_fwd, *params_bwd)
