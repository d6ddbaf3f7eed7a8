"""The stock path (what a GPU runs; on CPU with SQVAE_CPU_KERNELS off) equals the CPU
kernels (switch on) for the speech encoder and decoder, on padded batches with lengths and
on crops: forward outputs, the gradients of the input and of every parameter, the batch
norms' running statistics and the eval-mode outputs after a training step.

Tolerance: max |kernels - stock| <= 1e-5 * max |stock| per tensor (float32; the two
differ only in summation order: Winograd vs direct convolution, fused vs masked batch
norm, hand-written vs autograd GRU backward). Measured: at most ~3e-6.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from sqvae_speech.nets.cpu import use_cpu_kernels
from sqvae_speech.nets.masking import lengths_to_mask
from sqvae_speech.nets.speech import SpeechDecoder, SpeechEncoder

REL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pad(items: list[Tensor], seed: int) -> tuple[Tensor, Tensor]:
    """[C, T_i] items -> ([B, C, T_max] with large random garbage as padding, lengths [B])."""
    lengths = torch.tensor([x.shape[-1] for x in items])
    g = torch.Generator().manual_seed(seed)
    out = 100.0 * torch.randn(len(items), items[0].shape[0], int(lengths.max()), generator=g)
    for b, x in enumerate(items):
        out[b, :, : x.shape[-1]] = x
    return out, lengths


def _assert_equal_to_rounding(got: Tensor, ref: Tensor, what: str) -> None:
    """max |got - ref| <= REL * max |ref| (a zero reference must be matched exactly)."""
    assert got.shape == ref.shape, what
    diff = (got - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert diff <= REL * scale, f"{what}: max abs diff {diff:.3e}, max |ref| {scale:.3e}, rel {diff / max(scale, 1e-30):.3e}"


def _run(module: torch.nn.Module, kernels: bool, inputs: tuple[Tensor, ...], lengths: Tensor,
         extra: tuple[Tensor, ...] = ()) -> dict[str, Tensor]:
    """A copy of ``module`` in training: forward with the switch at ``kernels``, gradients of
    the input and all parameters for a fixed output gradient, then one eval forward."""
    module = copy.deepcopy(module).train()
    x = inputs[0].clone().requires_grad_(True)
    with use_cpu_kernels(kernels):
        out, out_len = module(x, lengths, *extra)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        names = ["input", *(n for n, _ in module.named_parameters())]
        grads = torch.autograd.grad(out, [x, *module.parameters()], g)
        module.eval()
        with torch.no_grad():
            out_eval, _ = module(inputs[0], lengths, *extra)
    result = {"out": out.detach(), "out_lengths": out_len, "eval out": out_eval}
    result.update({f"grad {n}": gr for n, gr in zip(names, grads)})
    result.update({f"buffer {n}": b.clone() for n, b in module.named_buffers()})
    return result


def _compare(module: torch.nn.Module, inputs: tuple[Tensor, ...], lengths: Tensor, extra: tuple[Tensor, ...] = ()) -> None:
    stock = _run(module, False, inputs, lengths, extra)
    kernels = _run(module, True, inputs, lengths, extra)
    assert stock.keys() == kernels.keys()
    assert torch.equal(stock["out_lengths"], kernels["out_lengths"])
    for key in stock:
        if key != "out_lengths":
            _assert_equal_to_rounding(kernels[key], stock[key], key)
    # Both zero past each output length (training mode), bit for bit.
    out_len = stock["out_lengths"]
    pad = ~lengths_to_mask(out_len, stock["out"].shape[-1]).unsqueeze(1).expand_as(stock["out"])
    assert torch.all(stock["out"][pad] == 0) and torch.all(kernels["out"][pad] == 0)
    # Teeth: the input gradient is not trivially zero, and the padding of the input gets none.
    assert stock["grad input"].abs().max() > 0
    in_pad = ~lengths_to_mask(lengths, inputs[0].shape[-1]).unsqueeze(1).expand_as(inputs[0])
    assert torch.all(stock["grad input"][in_pad] == 0) and torch.all(kernels["grad input"][in_pad] == 0)


@pytest.mark.parametrize("lengths", [(61, 4, 23, 40, 9), (30, 30, 30)], ids=["padded", "crops"])
def test_encoder_stock_path_equals_cpu_kernels(lengths: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    enc = SpeechEncoder(80, 64, 16)
    with torch.no_grad():
        for norm in enc.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    mel, lens = _pad([torch.randn(80, t) + 0.3 for t in lengths], seed=1)
    _compare(enc, (mel,), lens)


@pytest.mark.parametrize("lengths", [(30, 1, 12, 5), (9, 9, 9, 9)], ids=["padded", "crops"])
def test_decoder_stock_path_equals_cpu_kernels(lengths: tuple[int, ...]) -> None:
    torch.manual_seed(2)
    dec = SpeechDecoder(in_channels=16, n_speakers=5, speaker_embedding_dim=8, hidden_size=24, n_mels=20)
    z, lens = _pad([torch.randn(16, t) for t in lengths], seed=3)
    _compare(dec, (z,), lens, (torch.tensor([0, 3, 1, 4]),))


def test_encoder_then_decoder_stock_path_equals_cpu_kernels() -> None:
    """The two chained, as the model trains them (latents of the encoder into the decoder)."""
    torch.manual_seed(4)
    enc = SpeechEncoder(80, 32, 8).train()
    dec = SpeechDecoder(in_channels=8, n_speakers=3, speaker_embedding_dim=4, hidden_size=12, n_mels=80).train()
    mel, lengths = _pad([torch.randn(80, t) for t in (36, 12, 27)], seed=5)
    results = []
    for kernels in (False, True):
        e, d = copy.deepcopy(enc), copy.deepcopy(dec)
        with use_cpu_kernels(kernels):
            z, z_len = e(mel, lengths)
            out, out_len = d(z, z_len, torch.tensor([0, 2, 1]))
            mask = lengths_to_mask(out_len, out.shape[-1]).unsqueeze(1)
            loss = ((out - mel[:, :, 1:-1]) ** 2 * mask).sum()
            params = [*e.parameters(), *d.parameters()]
            results.append([loss.detach(), *torch.autograd.grad(loss, params)])
    names = ["loss", *(f"grad {n}" for n, _ in [*enc.named_parameters(), *dec.named_parameters()])]
    for name, a, b in zip(names, results[1], results[0]):
        _assert_equal_to_rounding(a, b, name)
