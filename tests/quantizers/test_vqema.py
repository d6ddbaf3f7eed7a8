"""VQ-EMA (the VQ-VAE baseline): the EMA update on known codes (reference default and the
pseudo-count variant), masking, straight-through, the dead-code reset and two processes
agreeing. Parity with bshall/ZeroSpeech is in test_vqema_parity.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp

from sqvae_speech.quantizers import VQEMA


def make_vq(**kwargs) -> VQEMA:
    """K=4 codes at known places: 0 and 1 attract the data, 2 and 3 lie far away."""
    q = VQEMA(4, 2, **kwargs).double()
    codes = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 50.0], [50.0, 50.0]], dtype=torch.float64)
    q.codebook.copy_(codes)
    q.ema_sum.copy_(codes)
    return q


def vq_batch():
    z = torch.tensor(
        [[[0.5, 0.3], [4.4, -0.2], [0.1, -0.3]], [[3.6, 0.4], [50.0, 50.0], [0.0, 49.0]]], dtype=torch.float64
    )
    mask = torch.tensor([[True, True, True], [True, False, False]])  # padding sits on codes 3 and 2
    return z, mask


@pytest.mark.parametrize("legacy", [False, True], ids=["reference", "pseudo_count"])
def test_vqema_ema_update_moves_codes_to_assigned_means(legacy: bool) -> None:
    """Default: bshall/ZeroSpeech's update (counts start at 0, the smoothed count is stored).
    legacy: pseudo-count 1 per code, smoothed count used for the division only."""
    decay, eps = 0.5, 1e-5
    options = {"init_count": 1.0, "store_smoothed_count": False} if legacy else {}
    q = make_vq(decay=decay, epsilon=eps, **options).train()
    z, mask = vq_batch()
    before = q.codebook.clone()
    out = q(z, mask=mask)
    assert out.indices.tolist() == [[0, 1, 0], [1, -1, -1]]
    rows = z[mask]
    counts = torch.tensor([2.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    sums = torch.stack([rows[[0, 2]].sum(0), rows[[1, 3]].sum(0), torch.zeros(2), torch.zeros(2)])
    ema_count = decay * torch.full((4,), 1.0 if legacy else 0.0, dtype=torch.float64) + (1 - decay) * counts
    ema_sum = decay * before + (1 - decay) * sums
    n = ema_count.sum()
    smoothed = (ema_count + eps) / (n + 4 * eps) * n
    torch.testing.assert_close(q.codebook, ema_sum / smoothed.unsqueeze(1))
    torch.testing.assert_close(q.ema_count, ema_count if legacy else smoothed)
    torch.testing.assert_close(q.ema_sum, ema_sum)
    means = torch.stack([rows[[0, 2]].mean(0), rows[[1, 3]].mean(0)])
    if legacy:  # the pseudo-count balances the initial code: codes move towards their means
        assert torch.all((q.codebook[:2] - means).norm(dim=1) < (before[:2] - means).norm(dim=1))
    else:  # count 0: the initial code enters undivided; code 0 (initially at 0) lands on its mean
        torch.testing.assert_close(q.codebook[0], means[0], rtol=1e-4, atol=1e-4)
    # Padding (sitting exactly on codes 2, 3) did not count: the same update as without it.
    q2 = make_vq(decay=decay, epsilon=eps, **options).train()
    q2(rows.unsqueeze(0))
    torch.testing.assert_close(q.codebook, q2.codebook)
    torch.testing.assert_close(q.ema_count, q2.ema_count)
    # The loss used the pre-update codes.
    torch.testing.assert_close(out.loss, 0.25 * ((rows - before[[0, 1, 0, 1]]) ** 2).sum() / 2)
    assert out.kl_discrete.item() == 0.0 and math.isnan(out.log_var_mean.item())


def test_vqema_straight_through_and_eval() -> None:
    q = make_vq().train()
    z, mask = vq_batch()
    z.requires_grad_(True)
    before = q.codebook.clone()
    out = q(z, mask=mask)
    assert torch.equal(out.quantized[mask].detach(), before[out.indices[mask]])
    assert torch.all(out.quantized[~mask] == 0)
    g = torch.randn_like(z)
    out.quantized.backward(g)
    torch.testing.assert_close(z.grad[mask], g[mask])
    assert torch.all(z.grad[~mask] == 0)
    # Eval: nothing moves.
    q.eval()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    q(z.detach(), mask=mask)
    for k, v in q.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_vqema_reset_replaces_dead_codes() -> None:
    q = make_vq(decay=0.4, reset_unused=True, reset_threshold=0.5).train()
    z, mask = vq_batch()
    q(z, mask=mask)  # codes 2 and 3 unused: ema count 0.4 < 0.5
    rows = z[mask]
    assert q.num_resets.item() == 2
    for k in (2, 3):
        assert (q.codebook[k] - rows).norm(dim=1).min() == 0, "reset code must be a valid encoder output"
        assert q.ema_count[k].item() == 1.0
        torch.testing.assert_close(q.ema_sum[k], q.codebook[k])
    assert not torch.equal(q.codebook[2], q.codebook[3])  # drawn without replacement
    assert torch.all(q.ema_count[:2] > 0.5)


def _ddp_worker(rank: int, world: int, tmp: str, z, mask) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdv", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different RNG per rank: resets must still agree
        plain = make_vq(decay=0.5).train()
        reset = make_vq(decay=0.4, reset_unused=True, reset_threshold=0.5).train()
        for _ in range(2):
            plain(z[rank : rank + 1], mask=mask[rank : rank + 1])
            reset(z[rank : rank + 1], mask=mask[rank : rank + 1])
        torch.save((plain.codebook, reset.codebook), f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_vqema_distributed_ranks_agree(tmp_path) -> None:
    z, mask = vq_batch()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path), z, mask), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = make_vq(decay=0.5).train()
    for _ in range(2):
        single(z, mask=mask)
    torch.testing.assert_close(got[0][0], single.codebook)
    torch.testing.assert_close(got[1][0], single.codebook)
    assert torch.equal(got[0][1], got[1][1])
