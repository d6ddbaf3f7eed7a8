"""sqvae_speech.nets.cpu.gru: the hand-written GRU layer equals torch's GRU, values and gradients."""

from __future__ import annotations

import pytest
import torch

from sqvae_speech.nets.cpu import use_cpu_kernels
from sqvae_speech.nets.cpu.bigru import bigru_time_major, hand_written_applies
from sqvae_speech.nets.cpu.gru import gru_layer
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
        with use_cpu_kernels(True):
            got, _ = dec(z, lengths, spk)
        assert hand_written_applies(dec.rnn, z)  # what is compared here is the fast path
        with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast: torch.gru by autograd
            assert not hand_written_applies(dec.rnn, z)
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


def test_time_major_bigru_with_torch_gru_layers_equals_packed_gru() -> None:
    """The CPU path used under autocast (torch.gru layers, autograd) on a padded batch."""
    torch.manual_seed(4)
    dec = SpeechDecoder(in_channels=6, n_speakers=3, speaker_embedding_dim=4, hidden_size=7, n_mels=5).train()
    lengths = torch.tensor([12, 3, 8])
    x = torch.randn(3, 12, 10, requires_grad=True)
    got = bigru_time_major(dec.rnn, x.transpose(0, 1), lengths, hand_written=False).transpose(0, 1)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref, _ = torch.nn.utils.rnn.pad_packed_sequence(dec.rnn(packed)[0], batch_first=True, total_length=12)
    mask = (torch.arange(12)[None, :] < lengths[:, None]).unsqueeze(-1)
    torch.testing.assert_close(got * mask, ref, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(ref) * mask
    for u, v in zip(torch.autograd.grad(got, [x, *dec.rnn.parameters()], g),
                    torch.autograd.grad(ref, [x, *dec.rnn.parameters()], g)):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)
