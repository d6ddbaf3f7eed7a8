"""sqvae_speech.nets.gru: the hand-written GRU layer equals torch's GRU, values and gradients."""

from __future__ import annotations

import pytest
import torch

from sqvae_speech.nets.gru import bigru_layer, gru_layer
from sqvae_speech.nets.speech import SpeechDecoder


@pytest.mark.parametrize("with_h0", [False, True])
def test_gru_layer_equals_torch_gru(with_h0: bool) -> None:
    torch.manual_seed(0)
    rnn = torch.nn.GRU(12, 9)
    x = torch.randn(17, 5, 12, requires_grad=True)
    h0 = torch.randn(5, 9, requires_grad=True) if with_h0 else None
    g = torch.randn(17, 5, 9)
    ref, _ = rnn(x, None if h0 is None else h0.unsqueeze(0))
    got = gru_layer(x, *rnn.parameters(), h0=h0)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    inputs = [x, *rnn.parameters()] + ([h0] if h0 is not None else [])
    for a, b in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gru_layer_gradcheck_in_float64() -> None:
    torch.manual_seed(1)
    rnn = torch.nn.GRU(4, 3).double()
    x = torch.randn(6, 2, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in rnn.parameters()]
    assert torch.autograd.gradcheck(lambda x, h0, *p: gru_layer(x, *p, h0=h0), (x, h0, *params))


@pytest.mark.parametrize("threads", [1, 2])
def test_bigru_layer_equals_two_gru_layers(threads: int) -> None:
    """Both directions at once (on two threads when torch has two) = each one alone."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(3)
        fwd, bwd = torch.nn.GRU(6, 5), torch.nn.GRU(6, 5)
        x = torch.randn(11, 4, 6, requires_grad=True)
        xr = x.flip(0)
        ga, gb = torch.randn(11, 4, 5), torch.randn(11, 4, 5)
        a, b = bigru_layer(x, xr, list(fwd.parameters()), list(bwd.parameters()))
        ra, rb = gru_layer(x, *fwd.parameters()), gru_layer(xr, *bwd.parameters())
        torch.testing.assert_close(a, ra, atol=0, rtol=0)
        torch.testing.assert_close(b, rb, atol=0, rtol=0)
        params = [x, *fwd.parameters(), *bwd.parameters()]
        got = torch.autograd.grad((a * ga).sum() + (b * gb).sum(), params)
        ref = torch.autograd.grad((ra * ga).sum() + (rb * gb).sum(), params)
        for u, v in zip(got, ref):
            torch.testing.assert_close(u, v, atol=1e-6, rtol=1e-6)
    finally:
        torch.set_num_threads(old)


def test_bigru_layer_error_on_the_helper_thread_reaches_the_caller() -> None:
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fwd, bwd = torch.nn.GRU(6, 5), torch.nn.GRU(7, 5)  # the backward weights expect 7 inputs
        with pytest.raises(RuntimeError):
            bigru_layer(torch.randn(3, 2, 6), torch.randn(3, 2, 6), list(fwd.parameters()), list(bwd.parameters()))
    finally:
        torch.set_num_threads(old)


def test_bigru_layer_works_in_a_forked_child_after_the_parent_used_it() -> None:
    import multiprocessing as mp

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fwd, bwd = torch.nn.GRU(3, 2), torch.nn.GRU(3, 2)
        x = torch.randn(4, 1, 3)
        with torch.no_grad():
            expect = bigru_layer(x, x.flip(0), list(fwd.parameters()), list(bwd.parameters()))[1]
        with mp.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_bigru_in_child, (fwd, bwd, x)).get(timeout=60)
        torch.testing.assert_close(got, expect)
    finally:
        torch.set_num_threads(old)


def _bigru_in_child(fwd: torch.nn.GRU, bwd: torch.nn.GRU, x: torch.Tensor) -> torch.Tensor:
    torch.set_num_threads(2)
    with torch.no_grad():
        return bigru_layer(x, x.flip(0), list(fwd.parameters()), list(bwd.parameters()))[1]


def test_gru_layer_backward_is_not_autograd_of_the_forward() -> None:
    """Teeth: the gradient comes from GRULayer's own backward, so a wrong coefficient
    there would show up in the comparisons above rather than being hidden by autograd."""
    rnn = torch.nn.GRU(3, 2)
    y = gru_layer(torch.randn(4, 1, 3, requires_grad=True), *rnn.parameters())
    assert type(y.grad_fn).__name__ == "GRULayerBackward"


def test_decoder_fast_path_equals_stock_gru_on_crops_and_padded_batches() -> None:
    """The decoder's CPU path (time-major, hand-written layers) against the stock nn.GRU
    (plain for equal lengths, packed for padded batches), values and all gradients."""
    torch.manual_seed(2)
    dec = SpeechDecoder(in_channels=6, n_speakers=3, speaker_embedding_dim=4, hidden_size=7, n_mels=5).train()
    for lengths in (torch.tensor([9, 9, 9]), torch.tensor([9, 2, 5])):
        z = torch.randn(3, 6, 9, requires_grad=True)
        spk = torch.tensor([0, 2, 1])
        got, _ = dec(z, lengths, spk)
        assert dec._cpu_fast_path(z)  # what is compared here is the fast path
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast takes the stock path
            assert not dec._cpu_fast_path(z)
        x = torch.repeat_interleave(z, 2, dim=2).transpose(1, 2)
        x = torch.cat([x, dec.speaker_embedding(spk).unsqueeze(1).expand(-1, 18, -1)], dim=-1)
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, 2 * lengths, batch_first=True, enforce_sorted=False)
        h, _ = torch.nn.utils.rnn.pad_packed_sequence(dec.rnn(packed)[0], batch_first=True, total_length=18)
        mask = (torch.arange(18)[None, :] < 2 * lengths[:, None]).unsqueeze(1)
        ref = dec.proj(h).transpose(1, 2) * mask
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
        g = torch.randn_like(ref)
        params = [z, *dec.parameters()]
        a = torch.autograd.grad(got, params, g, allow_unused=True)
        b = torch.autograd.grad(ref, params, g, allow_unused=True)
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)
