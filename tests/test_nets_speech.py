"""Speech networks on zero-padded batches: each item must get what it gets alone.

Every test runs twice: with the CPU kernels (sqvae_speech.nets.cpu) and with the stock
path that a GPU runs (switch off), so the padding semantics hold for both.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from sqvae_speech.nets.cpu import use_cpu_kernels
from sqvae_speech.nets.masking import MaskedBatchNorm1d, lengths_to_mask
from sqvae_speech.nets.speech import (
    ENCODER_CONVS,
    SpeechDecoder,
    SpeechEncoder,
    conv_out_lengths,
    jitter,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, params=[True, False], ids=["cpu_kernels", "stock"])
def _cpu_kernels(request: pytest.FixtureRequest):
    with use_cpu_kernels(request.param):
        yield request.param


def _pad(items: list[torch.Tensor], fill: str = "zero", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[C, T_i] items -> ([B, C, T_max], lengths [B]); padding zero or large random garbage."""
    lengths = torch.tensor([x.shape[-1] for x in items])
    g = torch.Generator().manual_seed(seed)
    if fill == "zero":
        out = torch.zeros(len(items), items[0].shape[0], int(lengths.max()))
    else:
        out = 100.0 * torch.randn(len(items), items[0].shape[0], int(lengths.max()), generator=g)
    for b, x in enumerate(items):
        out[b, :, : x.shape[-1]] = x
    return out, lengths


def _trained_encoder(channels: int = 32, out_channels: int = 16) -> SpeechEncoder:
    """An encoder in eval mode whose batch norms hold non-trivial running statistics."""
    torch.manual_seed(0)
    enc = SpeechEncoder(80, channels, out_channels)
    with torch.no_grad():
        for norm in enc.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        enc.train()
        mel, lengths = _pad([torch.randn(80, t) + 0.3 for t in (30, 17, 44)])
        enc(mel, lengths)
    return enc.eval()


def test_conv_out_lengths_matches_actual_output_sizes() -> None:
    enc = SpeechEncoder(80, 8, 4).eval()
    for t in range(4, 41):
        out, out_len = enc(torch.randn(1, 80, t), torch.tensor([t]))
        assert out.shape[-1] == out_len.item() == conv_out_lengths(torch.tensor([t])).item() == (t - 2) // 2
    ts = torch.arange(4, 200)
    assert torch.equal(conv_out_lengths(ts), (ts - 2) // 2)
    # Odd T gives the count of T - 1: the protocol trims odd T by one frame before encoding.
    assert torch.equal(conv_out_lengths(torch.tensor([33, 34])), torch.tensor([15, 16]))


def test_encoder_eval_batched_equals_alone_and_ignores_padding() -> None:
    enc = _trained_encoder()
    torch.manual_seed(1)
    items = [torch.randn(80, t) for t in (61, 4, 23, 8, 40)]
    with torch.no_grad():
        outs = {}
        for fill in ("zero", "garbage"):
            mel, lengths = _pad(items, fill)
            outs[fill] = enc(mel, lengths)
        out, out_len = outs["zero"]
        torch.testing.assert_close(outs["garbage"][0], out, atol=1e-6, rtol=0)
        assert torch.equal(outs["garbage"][1], out_len)
        assert out.shape == (5, 16, (61 - 2) // 2)
        for b, x in enumerate(items):
            alone, alone_len = enc(x.unsqueeze(0), torch.tensor([x.shape[-1]]))
            assert alone_len.item() == out_len[b].item() == (x.shape[-1] - 2) // 2
            torch.testing.assert_close(out[b, :, : out_len[b]], alone[0], atol=1e-5, rtol=0)
            assert torch.all(out[b, :, out_len[b]:] == 0)


def test_odd_length_trimmed_through_lengths_equals_sliced_input() -> None:
    """Passing T - 1 as the length of an odd-T item is the protocol's trim: the extra frame is masked."""
    enc = _trained_encoder()
    torch.manual_seed(11)
    mel = torch.randn(1, 80, 35)
    with torch.no_grad():
        by_length, n = enc(mel, torch.tensor([34]))
        sliced, _ = enc(mel[:, :, :34], torch.tensor([34]))
        untrimmed, n_odd = enc(mel, torch.tensor([35]))
    assert n.item() == n_odd.item() == 16
    torch.testing.assert_close(by_length, sliced, atol=1e-6, rtol=0)
    # Untrimmed, the stride-2 conv reads mel frame 34 into the last latent frame and the
    # two k3 convs after it spread that to the last three; the earlier frames agree.
    torch.testing.assert_close(untrimmed[..., :-3], sliced[..., :-3], atol=1e-6, rtol=0)
    assert (untrimmed[..., -1] - sliced[..., -1]).abs().max() > 1e-4


def test_unmasked_stack_differs_on_padded_batch() -> None:
    """The same weights without masking give wrong outputs for short items: the test has teeth."""
    enc = _trained_encoder()
    layers: list[nn.Module] = []
    for conv, norm in zip(enc.convs, enc.norms):
        bn = nn.BatchNorm1d(norm.num_features).eval()
        bn.load_state_dict(norm.state_dict())
        layers += [conv, bn, nn.ReLU()]
    plain = nn.Sequential(*layers, enc.out).eval()
    torch.manual_seed(2)
    items = [torch.randn(80, 60), torch.randn(80, 12)]
    mel, lengths = _pad(items)
    with torch.no_grad():
        masked, out_len = enc(mel, lengths)
        unmasked = plain(mel)
        alone = plain(items[1].unsqueeze(0))
        torch.testing.assert_close(alone[0], masked[1, :, : out_len[1]], atol=1e-5, rtol=0)
        assert (unmasked[1, :, : out_len[1]] - alone[0]).abs().max() > 1e-2


def _masked_bn_vs_reference(momentum: float | None) -> None:
    torch.manual_seed(3)
    channels, lengths = 6, torch.tensor([9, 2, 15, 5])
    bn = MaskedBatchNorm1d(channels, momentum=momentum).train()
    ref = nn.BatchNorm1d(channels, momentum=momentum).train()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    ref.load_state_dict(bn.state_dict())
    for step in range(3):
        items = [3.0 * torch.randn(channels, int(t)) + 5.0 for t in lengths]
        x, _ = _pad(items, "garbage", seed=step)
        x.requires_grad_(True)
        valid = torch.cat(items, dim=-1).unsqueeze(0).requires_grad_(True)  # [1, C, sum(L)]
        y = bn(x, lengths)
        y_ref = ref(valid)
        mask = lengths_to_mask(lengths, x.shape[-1])
        y_valid = y.transpose(1, 2)[mask].T.unsqueeze(0)  # the valid frames, in the same order
        torch.testing.assert_close(y_valid, y_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bn.running_mean, ref.running_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bn.running_var, ref.running_var, atol=1e-5, rtol=1e-5)
        assert bn.num_batches_tracked.item() == ref.num_batches_tracked.item() == step + 1
        # Gradients: the same for the valid frames, none into the padding.
        w = torch.randn_like(y_ref)
        (y_valid * w).sum().backward()
        (y_ref * w).sum().backward()
        grad_valid = x.grad.transpose(1, 2)[mask].T.unsqueeze(0)
        torch.testing.assert_close(grad_valid, valid.grad, atol=1e-5, rtol=1e-4)
        assert torch.all(x.grad.transpose(1, 2)[~mask] == 0)
    torch.testing.assert_close(bn.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bn.bias.grad, ref.bias.grad, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(bn.running_mean, torch.zeros(channels))
    # Eval uses the running statistics, like nn.BatchNorm1d.
    bn.eval()
    ref.eval()
    x = torch.randn(2, channels, 7)
    torch.testing.assert_close(bn(x, torch.tensor([7, 7])), ref(x), atol=1e-6, rtol=1e-6)


def test_masked_batch_norm_matches_batch_norm_on_valid_frames() -> None:
    _masked_bn_vs_reference(momentum=0.1)


def test_masked_batch_norm_cumulative_average() -> None:
    _masked_bn_vs_reference(momentum=None)


def test_masked_batch_norm_differs_from_plain_batch_norm_on_padding() -> None:
    torch.manual_seed(4)
    x, lengths = _pad([torch.randn(4, 20) + 2.0, torch.randn(4, 3) + 2.0])
    bn, plain = MaskedBatchNorm1d(4).train(), nn.BatchNorm1d(4).train()
    bn(x, lengths)
    plain(x)
    # The zeros of the padding drag the plain estimate of the mean (about 2) down.
    assert (bn.running_mean - plain.running_mean).abs().min() > 0.02


def test_encoder_training_ignores_padding() -> None:
    torch.manual_seed(5)
    items = [torch.randn(80, t) for t in (50, 6, 27)]
    results = []
    for fill in ("zero", "garbage"):
        torch.manual_seed(6)
        enc = SpeechEncoder(80, 32, 16).train()
        mel, lengths = _pad(items, fill)
        out, out_len = enc(mel, lengths)
        out.pow(2).sum().backward()
        results.append((out.detach(), [n.running_var.clone() for n in enc.norms], enc.convs[0].weight.grad.clone()))
    (out_a, var_a, grad_a), (out_b, var_b, grad_b) = results
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=0)
    for va, vb in zip(var_a, var_b):
        torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_a, grad_b, atol=1e-4, rtol=1e-4)
    assert torch.all(out_a[1, :, out_len[1]:] == 0)


def test_decoder_batched_equals_alone_and_ignores_padding() -> None:
    torch.manual_seed(7)
    dec = SpeechDecoder(in_channels=16, n_speakers=5, speaker_embedding_dim=8, hidden_size=24, n_mels=20).eval()
    items = [torch.randn(16, t) for t in (30, 1, 12, 5)]
    speakers = torch.tensor([0, 3, 1, 4])
    with torch.no_grad():
        outs = {fill: dec(*_pad(items, fill), speakers) for fill in ("zero", "garbage")}
        mel, out_len = outs["zero"]
        assert mel.shape == (4, 20, 60)
        assert torch.equal(out_len, torch.tensor([60, 2, 24, 10]))
        torch.testing.assert_close(outs["garbage"][0], mel, atol=1e-6, rtol=0)
        for b, z in enumerate(items):
            alone, alone_len = dec(z.unsqueeze(0), torch.tensor([z.shape[-1]]), speakers[b : b + 1])
            assert alone_len.item() == 2 * z.shape[-1]
            torch.testing.assert_close(mel[b, :, : out_len[b]], alone[0], atol=1e-5, rtol=0)
            assert torch.all(mel[b, :, out_len[b]:] == 0)
        # Teeth: the same GRU over the unpacked padded batch reads the padding backwards.
        z, _ = _pad(items)
        x = torch.cat([z.repeat_interleave(2, dim=2), dec.speaker_embedding(speakers)[:, :, None].expand(-1, -1, 60)], 1)
        unpacked = dec.proj(dec.rnn(x.transpose(1, 2))[0]).transpose(1, 2)
        assert (unpacked[2, :, :24] - mel[2, :, :24]).abs().max() > 1e-3


def test_decoder_output_aligns_with_trimmed_mel() -> None:
    enc = SpeechEncoder(80, 16, 8).eval()
    dec = SpeechDecoder(in_channels=8, n_speakers=2, speaker_embedding_dim=4, hidden_size=8, n_mels=80).eval()
    mel, lengths = _pad([torch.randn(80, t) for t in (34, 20, 6)])
    with torch.no_grad():
        z, z_len = enc(mel, lengths)
        out, out_len = dec(z, z_len, torch.tensor([0, 1, 0]))
    # Even T: the decoder gives exactly the T - 2 frames of mel[:, 1:-1].
    assert torch.equal(out_len, lengths - 2)
    assert out.shape == mel[:, :, 1:-1].shape


def test_jitter_identity_for_zero_probability() -> None:
    z = torch.randn(3, 4, 10)
    assert torch.equal(jitter(z, torch.tensor([10, 3, 7]), p=0.0), z)


def test_jitter_takes_frames_only_from_valid_neighbours() -> None:
    lengths = torch.tensor([40, 1, 2, 17])
    steps = 40
    # Distinct value per (item, frame), the same on every channel; padding zero.
    z = (torch.arange(4 * steps, dtype=torch.float32).reshape(4, 1, steps) + 1.0).expand(4, 3, steps).clone()
    z = z * lengths_to_mask(lengths, steps).unsqueeze(1)
    g = torch.Generator().manual_seed(0)
    moved = 0
    for _ in range(20):
        out = jitter(z, lengths, p=0.5, generator=g)
        assert out.shape == z.shape
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(out[b, :, n:] == 0)
            for t in range(n):
                allowed = {z[b, 0, s].item() for s in (t - 1, t, t + 1) if 0 <= s < n}
                assert out[b, 0, t].item() in allowed
                assert torch.all(out[b, :, t] == out[b, 0, t])  # channels move together
        moved += int((out[0] != z[0]).any(dim=0).sum())
    assert moved > 0
    # A single-frame item can only keep its frame.
    assert out[1, 0, 0].item() == z[1, 0, 0].item()


def test_jitter_replacement_rate() -> None:
    n = 20000
    z = torch.arange(n, dtype=torch.float32).reshape(1, 1, n)
    out = jitter(z, torch.tensor([n]), p=0.5, generator=torch.Generator().manual_seed(1))
    delta = (out - z)[0, 0]
    assert abs((delta == -1).float().mean().item() - 0.25) < 0.02
    assert abs((delta == 1).float().mean().item() - 0.25) < 0.02
    assert torch.all(delta.abs() <= 1)


def test_gradients_flow_and_speaker_changes_output() -> None:
    torch.manual_seed(8)
    enc = SpeechEncoder(80, 32, 16).train()
    dec = SpeechDecoder(in_channels=16, n_speakers=3, speaker_embedding_dim=8, hidden_size=16, n_mels=80).train()
    mel, lengths = _pad([torch.randn(80, t) for t in (36, 12)])
    z, z_len = enc(mel, lengths)
    out, out_len = dec(jitter(z, z_len, p=0.5), z_len, torch.tensor([0, 2]))
    mask = lengths_to_mask(out_len, out.shape[-1]).unsqueeze(1)
    ((out - mel[:, :, 1:-1]) ** 2 * mask).sum().backward()
    for name, param in [*enc.named_parameters(), *dec.named_parameters()]:
        if name == "speaker_embedding.weight":
            # Only the rows of the speakers in the batch receive gradient.
            assert param.grad[[0, 2]].abs().sum() > 0 and torch.all(param.grad[1] == 0)
            continue
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    dec.eval()
    with torch.no_grad():
        a, _ = dec(z.detach(), z_len, torch.tensor([0, 0]))
        b, _ = dec(z.detach(), z_len, torch.tensor([1, 1]))
    assert (a - b).abs().max() > 1e-4


def test_paper_size_shapes() -> None:
    torch.manual_seed(9)
    enc = SpeechEncoder().train()  # 80 -> 768 channels -> 64
    dec = SpeechDecoder().train()  # 102 speakers, GRU 2 x 2 x 128
    assert len(enc.convs) == len(ENCODER_CONVS) == 5
    assert all(c.out_channels == 768 for c in enc.convs)
    mel, lengths = _pad([torch.randn(80, 20), torch.randn(80, 17)])
    z, z_len = enc(mel, lengths)
    assert z.shape == (2, 64, 9) and z_len.tolist() == [9, 7]
    out, out_len = dec(z, z_len, torch.tensor([0, 101]))
    assert out.shape == (2, 80, 18) and out_len.tolist() == [18, 14]
    assert dec.rnn.hidden_size == 128 and dec.rnn.num_layers == 2 and dec.rnn.bidirectional
    assert dec.proj.in_features == 256


def test_bad_lengths_are_rejected() -> None:
    enc = SpeechEncoder(80, 8, 4)
    with pytest.raises(ValueError, match="fewer than the 4"):
        enc(torch.randn(2, 80, 10), torch.tensor([10, 3]))
    with pytest.raises(ValueError, match="only 10"):
        enc(torch.randn(2, 80, 10), torch.tensor([10, 11]))
    with pytest.raises(ValueError, match="integer"):
        enc(torch.randn(1, 80, 10), torch.tensor([10.0]))
    dec = SpeechDecoder(in_channels=4, n_speakers=2, speaker_embedding_dim=2, hidden_size=4, n_mels=8)
    with pytest.raises(ValueError, match="fewer than the 1"):
        dec(torch.randn(2, 4, 5), torch.tensor([5, 0]), torch.tensor([0, 1]))


_DDP_WORKER = textwrap.dedent(
    """
    import datetime, sys, torch, torch.distributed as dist
    from sqvae_speech.nets.masking import MaskedBatchNorm1d
    rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    data = torch.load(out + "/data.pt")
    bn = MaskedBatchNorm1d(data["x"].shape[1]).train()
    bn.load_state_dict(data["state"])
    x = data["x"][rank::2].clone().requires_grad_(True)
    y = bn(x, data["lengths"][rank::2])
    (y * data["w"][rank::2]).sum().backward()
    torch.save({"y": y.detach(), "gx": x.grad, "gw": bn.weight.grad, "rm": bn.running_mean, "rv": bn.running_var},
               f"{out}/rank{rank}.pt")
    dist.barrier()  # no rank tears gloo down while the other still talks to it
    dist.destroy_process_group()
    """
)


def test_masked_batch_norm_all_reduces_statistics_across_processes(tmp_path: Path) -> None:
    """Two gloo processes with half a batch each give the statistics and gradients of the whole batch."""
    torch.manual_seed(10)
    lengths = torch.tensor([12, 3, 7, 9])
    x, _ = _pad([torch.randn(5, int(t)) * 2 + 1 for t in lengths], "garbage")
    w = torch.randn_like(x) * lengths_to_mask(lengths, x.shape[-1]).unsqueeze(1)
    bn = MaskedBatchNorm1d(5).train()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
    torch.save({"x": x, "lengths": lengths, "w": w, "state": bn.state_dict()}, tmp_path / "data.pt")
    init = f"file://{tmp_path / 'store'}"
    procs = [
        subprocess.Popen([sys.executable, "-c", _DDP_WORKER, str(r), init, str(tmp_path)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in range(2)
    ]
    try:
        for proc in procs:
            log, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, log
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    xg = x.clone().requires_grad_(True)
    y = bn(xg, lengths)
    (y * w).sum().backward()
    for r, res in enumerate(ranks):
        torch.testing.assert_close(res["y"], y.detach()[r::2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(res["gx"], xg.grad[r::2], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(res["rm"], bn.running_mean, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(res["rv"], bn.running_var, atol=1e-6, rtol=1e-6)
    # Each rank holds the gradient of its own half; DDP sums (then averages) them.
    torch.testing.assert_close(ranks[0]["gw"] + ranks[1]["gw"], bn.weight.grad, atol=1e-4, rtol=1e-4)
