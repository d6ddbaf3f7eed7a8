"""The decoder's CPU kernel: its bidirectional GRU on a time-major padded batch, without
packing, one unidirectional layer at a time.

The stock decoder (:meth:`sqvae_speech.nets.speech.SpeechDecoder._decode`, what a GPU
runs) feeds ``nn.GRU`` a ``pack_padded_sequence``. On CPU the packed GRU's per-step batch
bookkeeping grows with batch and length (26 items x 350 steps, forward + backward: 7.8 s
packed vs 2.0 s here; bench/README.md). Here the whole decoder body runs time-major
([T, B, C]), so each GRU step reads and writes contiguous rows, and each layer is
:func:`.gru.gru_layer` (hand-written backward) in float32 without autocast, else
``torch.gru`` differentiated by autograd. Equal to the packed GRU at valid steps, values
and gradients, to float rounding (tests/test_speed_paths.py, tests/test_gru.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from .gru import gru_layer


def decode_time_major(rnn: nn.GRU, proj: nn.Linear, z_q: Tensor, spk: Tensor, lengths: Tensor | None) -> Tensor:
    """The decoder body after the speaker embedding, time-major.

    z_q [B, C, T'] latents, spk [B, E] speaker embeddings, lengths [B] output frames
    (2 x latent lengths) or None (no padding) -> mel [B, n_mels, 2T'], values past each
    length unspecified (the decoder masks them). Nearest upsampling x2, the speaker
    concatenated to every frame, ``rnn`` (bidirectional, batch-first weights) by
    :func:`bigru_time_major`, then ``proj``.
    """
    steps = z_q.shape[-1]
    x = torch.repeat_interleave(z_q.permute(2, 0, 1), 2, dim=0)  # [2T', B, C]
    x = torch.cat([x, spk.unsqueeze(0).expand(2 * steps, -1, -1).to(x.dtype)], dim=-1)
    h = bigru_time_major(rnn, x, lengths, hand_written_applies(rnn, z_q))  # [2T', B, 2H]
    return proj(h).permute(1, 2, 0)  # [B, n_mels, 2T']


def hand_written_applies(rnn: nn.GRU, x: Tensor) -> bool:
    """Whether the GRU layers take the hand-written backward (:mod:`.gru`): float32 input
    and weights without CPU autocast; otherwise ``torch.gru`` differentiated by autograd."""
    return (x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and rnn.weight_hh_l0.dtype == torch.float32)


def bigru_time_major(rnn: nn.GRU, x: Tensor, lengths: Tensor | None, hand_written: bool = True) -> Tensor:
    """``rnn`` (bidirectional) on a time-major batch, one unidirectional layer at a time
    (:func:`.gru.gru_layer` if ``hand_written``, else ``torch.gru``); equal to the packed
    GRU at valid steps.

    x [T, B, I], lengths [B] or None (no padding) -> [T, B, 2H]; values past each
    length are unspecified. The forward direction reads the valid steps before any
    padding; the backward one runs on each item reversed within its own length
    (padding stays at the end), then is reversed back. So a valid output never sees
    padding, in values or gradients.
    """
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
        return torch.gru(inp, h0, params, True, 1, 0.0, rnn.training, False, False)[0]

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
