"""The CPU speed paths compute what the plain formulations compute.

Each fast path (Winograd and GEMM convolutions, batch norm without padding or with packed
valid frames, the padded bidirectional GRU, the Gumbel sampler, the fused optimizer, the
block-sparse mel projection) is checked against the straightforward computation it
replaces, values and gradients. The CPU kernels of sqvae_speech.nets.cpu run with their
switch on here whatever SQVAE_CPU_KERNELS says; tests/nets/test_cpu_switch.py compares
whole networks with the switch on and off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.features import _mel_project_np, mel_filterbank
from sqvae_speech.models import build_optimizer
from sqvae_speech.nets.cpu import use_cpu_kernels
from sqvae_speech.nets.cpu.bigru import bigru_time_major
from sqvae_speech.nets.cpu.conv import (
    _weight_grad_im2col,
    _weight_grad_phases,
    conv1d_k3_winograd,
    conv1d_weight_grad,
    encoder_conv,
)
from sqvae_speech.nets.masking import MaskedBatchNorm1d, lengths_to_mask
from sqvae_speech.nets.speech import ENCODER_CONVS, SpeechDecoder, SpeechEncoder
from sqvae_speech.quantizers import gumbel_softmax_sample


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with use_cpu_kernels(True):
        yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("steps", [1, 2, 5, 16, 17])
def test_winograd_conv_equals_conv1d(steps: int) -> None:
    torch.manual_seed(steps)
    x = torch.randn(3, 7, steps, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 7, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 5, steps, dtype=torch.float64)
    ref = F.conv1d(x, w, padding=1)
    got = conv1d_k3_winograd(x, w)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (x, w), g), torch.autograd.grad(ref, (x, w), g)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("steps", [20, 21])
@pytest.mark.parametrize("k,s,p", [(3, 1, 0), (4, 2, 1), (3, 1, 1), (5, 2, 0), (3, 3, 2)])
@pytest.mark.parametrize("method", [_weight_grad_im2col, _weight_grad_phases, conv1d_weight_grad])
def test_gemm_weight_gradient_equals_conv_backward(method, k: int, s: int, p: int, steps: int) -> None:
    torch.manual_seed(k + s + p + steps)
    x = torch.randn(4, 6, steps, dtype=torch.float64)
    w = torch.randn(5, 6, k, dtype=torch.float64, requires_grad=True)
    y = F.conv1d(x, w, stride=s, padding=p)
    g = torch.randn_like(y)
    (expect,) = torch.autograd.grad(y, w, g)
    torch.testing.assert_close(method(x, g, k, s, p), expect, atol=1e-12, rtol=1e-12)


def test_weight_gradient_of_large_batches_takes_the_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the size limit of the unfolded input the per-tap products are used (same values)."""
    from sqvae_speech.nets.cpu import conv

    calls = []
    monkeypatch.setattr(conv, "_weight_grad_phases", lambda *a: calls.append(a) or _weight_grad_phases(*a))
    x, g = torch.randn(2, 3, 9), torch.randn(2, 4, 4)  # k4 s2 p1: 9 frames -> 4
    conv.conv1d_weight_grad(x, g, 4, 2, 1)
    assert not calls
    monkeypatch.setattr(conv, "_IM2COL_MAX_BYTES", 100)
    got = conv.conv1d_weight_grad(x, g, 4, 2, 1)
    assert len(calls) == 1
    torch.testing.assert_close(got, _weight_grad_im2col(x, g, 4, 2, 1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("k,s,p", ENCODER_CONVS)
def test_encoder_conv_fast_paths_equal_stock_conv(k: int, s: int, p: int) -> None:
    """float32, as the encoder runs them: values and both gradients within float rounding."""
    torch.manual_seed(1)
    conv = nn.Conv1d(32, 24, k, stride=s, padding=p, bias=False)
    x = torch.randn(5, 32, 30, requires_grad=True)
    y_fast = encoder_conv(conv, x)
    g = torch.randn_like(y_fast)
    fast = torch.autograd.grad(y_fast, (x, conv.weight), g)
    y_ref = F.conv1d(x, conv.weight, stride=s, padding=p)
    ref = torch.autograd.grad(y_ref, (x, conv.weight), g)
    torch.testing.assert_close(y_fast, y_ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def _plain_encoder(enc: SpeechEncoder) -> nn.Sequential:
    """The same weights as the reference formulation writes them: Conv1d, BatchNorm1d, ReLU."""
    layers: list[nn.Module] = []
    for conv, norm in zip(enc.convs, enc.norms):
        c = nn.Conv1d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
        c.weight = conv.weight
        bn = nn.BatchNorm1d(norm.num_features)
        bn.weight, bn.bias = norm.weight, norm.bias
        layers += [c, bn, nn.ReLU()]
    return nn.Sequential(*layers, enc.out)


def test_encoder_on_crops_equals_plain_stack_in_training() -> None:
    """Equal-length crops take the unmasked fast path; it must equal Conv1d/BatchNorm1d/ReLU."""
    torch.manual_seed(2)
    enc = SpeechEncoder(80, 48, 16).train()
    plain = _plain_encoder(enc).train()
    mel = torch.randn(6, 80, 34) + 0.5
    out, out_len = enc(mel, torch.full((6,), 34))
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [c.weight for c in enc.convs], g)
    ref = plain(mel)
    ref_grads = torch.autograd.grad(ref, [c.weight for c in enc.convs], g)
    assert torch.equal(out_len, torch.full((6,), 16))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for norm, bn in zip(enc.norms, plain[1::3]):
        torch.testing.assert_close(norm.running_mean, bn.running_mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(norm.running_var, bn.running_var, atol=1e-6, rtol=1e-5)


def test_encoder_fast_path_equals_masked_path_in_training() -> None:
    """The same crops once exactly as long as the batch (fast path) and once with extra
    padding (masked path, packed batch norm): outputs, statistics and gradients agree."""
    torch.manual_seed(3)
    mel = torch.randn(5, 80, 30) + 0.2
    results = []
    for extra in (0, 9):
        torch.manual_seed(4)
        enc = SpeechEncoder(80, 32, 16).train()
        padded = F.pad(mel, (0, extra), value=7.0)  # garbage in the padding
        out, out_len = enc(padded, torch.full((5,), 30))
        t = int(out_len[0])
        (out[:, :, :t] * torch.linspace(-1, 1, t)).sum().backward()
        results.append((out[:, :, :t].detach(), [n.running_var.clone() for n in enc.norms],
                        [c.weight.grad.clone() for c in enc.convs]))
        if extra:
            assert torch.all(out[:, :, t:] == 0)
    (a_out, a_var, a_grad), (b_out, b_var, b_grad) = results
    torch.testing.assert_close(a_out, b_out, atol=1e-5, rtol=1e-5)
    for x, y in zip(a_var, b_var):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)
    for x, y in zip(a_grad, b_grad):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_without_padding_equals_nn_batchnorm(momentum: float | None) -> None:
    torch.manual_seed(5)
    bn, ref = MaskedBatchNorm1d(6, momentum=momentum).train(), nn.BatchNorm1d(6, momentum=momentum).train()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    ref.load_state_dict(bn.state_dict())
    for _ in range(3):
        x = (3 * torch.randn(4, 6, 9) + 5).requires_grad_(True)
        xr = x.detach().clone().requires_grad_(True)
        y, yr = bn(x, None), ref(xr)
        torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(y)
        y.backward(g)
        yr.backward(g)
        torch.testing.assert_close(x.grad, xr.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 3


def test_packed_batch_norm_zero_padding_and_gradients() -> None:
    torch.manual_seed(6)
    lengths = torch.tensor([9, 1, 4])
    x = (torch.randn(3, 5, 9) * 2 + 3).requires_grad_(True)
    y = MaskedBatchNorm1d(5).train()(x, lengths)
    mask = lengths_to_mask(lengths, 9).unsqueeze(1)
    assert torch.all(y.masked_select(~mask) == 0)
    valid = torch.cat([x[b, :, : int(n)] for b, n in enumerate(lengths)], dim=1).detach().double()
    expect = (valid - valid.mean(1, keepdim=True)) / torch.sqrt(valid.var(1, unbiased=False, keepdim=True) + 1e-5)
    got = torch.cat([y[b, :, : int(n)] for b, n in enumerate(lengths)], dim=1)
    torch.testing.assert_close(got.double(), expect, atol=1e-5, rtol=1e-5)
    (y * torch.randn_like(y)).sum().backward()
    assert torch.all(x.grad.masked_select(~mask) == 0)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_batch_norm_in_the_padding_equals_packed_batch_norm(relu: bool, affine: bool) -> None:
    """``overwrite_padding`` (normalization in place, fused kernels) against the packed path:
    outputs, running statistics and gradients of input, weight and bias agree, the padding
    gets zero output and zero gradient, and only the padding of the input is written."""
    torch.manual_seed(7)
    lengths = torch.tensor([11, 3, 8, 11, 6])
    x0 = torch.randn(5, 4, 11, dtype=torch.float32) * 3 + 2
    mask = lengths_to_mask(lengths, 11).unsqueeze(1)
    g = torch.randn(5, 4, 11)
    results = []
    for overwrite in (False, True):
        bn = MaskedBatchNorm1d(4, affine=affine).train()
        if affine:
            with torch.no_grad():
                bn.weight.copy_(torch.linspace(0.5, 2.0, 4))
                bn.bias.copy_(torch.linspace(-1.0, 1.0, 4))
        x = x0.clone().requires_grad_(True)
        y = bn(x, lengths, relu=relu, overwrite_padding=overwrite)
        y.backward(g)
        assert torch.all(y.masked_select(~mask) == 0)
        assert torch.all(x.grad.masked_select(~mask) == 0)
        assert torch.equal(x.detach().masked_select(mask), x0.masked_select(mask))
        params = [bn.weight.grad, bn.bias.grad] if affine else []
        results.append((y.detach(), x.grad, bn.running_mean.clone(), bn.running_var.clone(), *params))
    if relu:
        assert 0 < int((results[0][0] > 0).sum()) < int(mask.sum()) * 4  # the ReLU cut something
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_winograd_output_is_not_a_view() -> None:
    """Batch norm writes into the padding of the conv outputs; autograd forbids that on a
    view created inside a custom Function."""
    x = torch.randn(2, 3, 7, requires_grad=True)
    y = conv1d_k3_winograd(x, torch.randn(4, 3, 3))
    assert y._base is None and y.is_contiguous()


def test_time_major_bigru_equals_packed_gru() -> None:
    torch.manual_seed(7)
    dec = SpeechDecoder(in_channels=12, n_speakers=3, speaker_embedding_dim=4, hidden_size=10, n_mels=8).train()
    lengths = torch.tensor([13, 4, 9, 1])
    x = torch.randn(4, 26, 16, requires_grad=True)
    out_len = 2 * lengths
    got = bigru_time_major(dec.rnn, x.transpose(0, 1), out_len).transpose(0, 1)
    packed = pack_padded_sequence(x, out_len, batch_first=True, enforce_sorted=False)
    ref, _ = pad_packed_sequence(dec.rnn(packed)[0], batch_first=True, total_length=26)
    mask = lengths_to_mask(out_len, 26).unsqueeze(-1)
    g = torch.randn_like(ref) * mask
    torch.testing.assert_close(got * mask, ref, atol=1e-6, rtol=1e-5)
    params = list(dec.rnn.parameters())
    a = torch.autograd.grad(got, [x, *params], g)
    b = torch.autograd.grad(ref, [x, *params], g)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)
    # teeth: one bidirectional pass over the padded batch reads padding backwards
    plain = dec.rnn(x)[0]
    assert ((plain - ref) * mask).abs().max() > 1e-3


def test_gumbel_sample_follows_the_softmax() -> None:
    """Gumbel-max: at a tiny temperature the sample is one-hot at a code drawn from softmax(logits)."""
    torch.manual_seed(8)
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0]]).expand(200_000, 4).contiguous()
    sample = gumbel_softmax_sample(logits, 1e-4)
    assert torch.allclose(sample.sum(-1), torch.ones(200_000))
    freq = torch.bincount(sample.argmax(-1), minlength=4).float() / 200_000
    torch.testing.assert_close(freq, torch.softmax(logits[0], -1), atol=5e-3, rtol=0)
    assert torch.isfinite(gumbel_softmax_sample(logits[:10], 1.0)).all()


def test_fused_adam_takes_the_same_steps() -> None:
    torch.manual_seed(9)
    a = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    b = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = build_optimizer(a, 1e-2), torch.optim.Adam(b.parameters(), lr=1e-2)
    for _ in range(5):
        x = torch.randn(10, 6)
        for m, opt in ((a, opt_a), (b, opt_b)):
            m(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_block_sparse_mel_projection_equals_dense() -> None:
    cfg = FeatureConfig()
    mag = np.random.default_rng(0).random((37, 1 + cfg.n_fft // 2)).astype(np.float32)
    dense = mag.astype(np.float64) @ mel_filterbank(cfg).T
    np.testing.assert_allclose(_mel_project_np(mag, cfg), dense, rtol=1e-5, atol=1e-6)
