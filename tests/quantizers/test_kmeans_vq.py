"""KMeansVQ against a re-implementation of vector-quantize-pytorch's EMA codebook
(vector_quantize_pytorch/vector_quantize_pytorch.py: kmeans, EuclideanCodebook,
CosineSimCodebook) for the deterministic parts, and k-means placing codes on the data."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sqvae_speech.errors import ConfigError
from sqvae_speech.quantizers import KMeansVQ
from sqvae_speech.quantizers.ema import kmeans

K, D = 6, 3


# ------------------------------------------------------------ the reference, re-implemented


def ref_sample(samples: torch.Tensor, num: int) -> torch.Tensor:
    n = samples.shape[0]
    pick = torch.randperm(n)[:num] if n >= num else torch.randint(0, n, (num,))
    return samples[pick]


def ref_kmeans(samples: torch.Tensor, num_clusters: int, num_iters: int, cosine: bool):
    means = ref_sample(samples, num_clusters)
    bins = None
    for _ in range(num_iters):
        dists = samples @ means.t() if cosine else -torch.cdist(samples, means)
        buckets = dists.argmax(-1)
        bins = torch.bincount(buckets, minlength=num_clusters)
        zero = bins == 0
        new = torch.zeros(num_clusters, samples.shape[1], dtype=samples.dtype).index_add_(0, buckets, samples)
        new = new / bins.masked_fill(zero, 1).unsqueeze(1)
        if cosine:
            new = F.normalize(new, dim=-1)
        means = torch.where(zero.unsqueeze(1), means, new)
    return means, bins


def ref_step(state: dict, x: torch.Tensor, decay: float, eps: float, cosine: bool, threshold: float = 0.0):
    """One training step of their codebook on rows x [N, D]: (indices, quantize) and the new
    state; dead codes are only *detected* here (returned mask), not replaced."""
    embed, cluster_size, embed_avg = state["embed"].clone(), state["cluster_size"].clone(), state["embed_avg"].clone()
    if cosine:
        x = F.normalize(x, dim=-1)
        idx = (x @ embed.t()).argmax(-1)
    else:
        idx = (-torch.cdist(x, embed)).argmax(-1)
    quantize = embed[idx]
    onehot = F.one_hot(idx, embed.shape[0]).to(x.dtype)
    cluster_size.lerp_(onehot.sum(0), 1 - decay)
    embed_avg.lerp_(onehot.t() @ x, 1 - decay)
    total = cluster_size.sum()
    smoothed = (cluster_size + eps) / (total + embed.shape[0] * eps) * total
    embed = embed_avg / smoothed.unsqueeze(1)
    if cosine:
        embed = F.normalize(embed, dim=-1)
    dead = cluster_size < threshold
    return idx, quantize, {"embed": embed, "cluster_size": cluster_size, "embed_avg": embed_avg}, dead


def set_state(q: KMeansVQ, state: dict) -> None:
    q.codebook.copy_(state["embed"])
    q.ema_count.copy_(state["cluster_size"])
    q.ema_sum.copy_(state["embed_avg"])
    q.initted.fill_(True)


def random_state(cosine: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    embed = torch.randn(K, D, generator=g, dtype=torch.float64)
    if cosine:
        embed = F.normalize(embed, dim=-1)
    count = torch.rand(K, generator=g, dtype=torch.float64) * 4
    return {"embed": embed, "cluster_size": count, "embed_avg": embed * count.unsqueeze(1)}


def rows(n: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.3


# ------------------------------------------------------------------------------ the tests


def test_defaults_are_theirs() -> None:
    q = KMeansVQ(K, D)
    assert (q.decay, q.epsilon, q.commitment_weight, q.kmeans_iters) == (0.8, 1e-5, 1.0, 10)
    assert q.kmeans_init and q.threshold_ema_dead_code == 2.0 and q.reset_cluster_size == 2.0
    assert not q.use_cosine_sim and not bool(q.initted) and torch.all(q.codebook == 0)
    assert KMeansVQ.encoder_channels(embedding_dim=D) == D


@pytest.mark.parametrize("cosine", [False, True], ids=["euclidean", "cosine"])
def test_ema_steps_match_reference(cosine: bool) -> None:
    decay, eps = 0.8, 1e-5
    state = random_state(cosine)
    q = KMeansVQ(K, D, threshold_ema_dead_code=0, use_cosine_sim=cosine).double().train()
    set_state(q, state)
    for step in range(4):
        x = rows(seed=step)
        idx, quantize, state, _ = ref_step(state, x, decay, eps, cosine)
        out = q(x.unsqueeze(0))
        assert torch.equal(out.indices[0], idx), step
        torch.testing.assert_close(out.quantized[0], quantize, msg=f"quantized, step {step}")
        torch.testing.assert_close(q.codebook, state["embed"], msg=f"codebook, step {step}")
        torch.testing.assert_close(q.ema_count, state["cluster_size"], msg=f"ema_count, step {step}")
        torch.testing.assert_close(q.ema_sum, state["embed_avg"], msg=f"ema_sum, step {step}")
        xin = F.normalize(x, dim=-1) if cosine else x
        want_loss = F.mse_loss(quantize, xin)  # theirs: mean over elements, weight 1
        torch.testing.assert_close(out.loss / out.num_valid, want_loss)
    if cosine:
        torch.testing.assert_close(q.codebook.norm(dim=-1), torch.ones(K, dtype=torch.float64))
        torch.testing.assert_close(out.quantized[0].norm(dim=-1), torch.ones(20, dtype=torch.float64))


def test_cosine_lookup_ignores_scale() -> None:
    q = KMeansVQ(K, D, use_cosine_sim=True, threshold_ema_dead_code=0).double().eval()
    set_state(q, random_state(True))
    x = rows().unsqueeze(0)
    a, b = q(x), q(x * 7.0)
    assert torch.equal(a.indices, b.indices)
    want = (F.normalize(x[0], dim=-1) @ q.codebook.t()).argmax(-1)
    assert torch.equal(a.indices[0], want)


@pytest.mark.parametrize("cosine", [False, True], ids=["euclidean", "cosine"])
def test_dead_codes_detected_and_replaced_as_reference(cosine: bool) -> None:
    threshold, decay, eps = 1.5, 0.8, 1e-5
    state = random_state(cosine, seed=3)
    x = rows(seed=4)
    _, _, want, dead = ref_step(state, x, decay, eps, cosine, threshold)
    assert 0 < int(dead.sum()) < K, "the test state must have dead and live codes"
    q = KMeansVQ(K, D, threshold_ema_dead_code=threshold, use_cosine_sim=cosine).double().train()
    set_state(q, state)
    q(x.unsqueeze(0))
    assert q.num_resets.item() == int(dead.sum())
    live = ~dead
    torch.testing.assert_close(q.codebook[live], want["embed"][live])
    torch.testing.assert_close(q.ema_count[live], want["cluster_size"][live])
    pool = F.normalize(x, dim=-1) if cosine else x
    for k in dead.nonzero().flatten().tolist():
        assert torch.cdist(q.codebook[k : k + 1], pool).min() < 1e-12, "a replaced code is a batch row"
        assert q.ema_count[k].item() == threshold  # reset_cluster_size defaults to the threshold
        torch.testing.assert_close(q.ema_sum[k], q.codebook[k] * threshold)


@pytest.mark.parametrize("cosine", [False, True], ids=["euclidean", "cosine"])
def test_kmeans_matches_reference(cosine: bool) -> None:
    x = rows(n=50, seed=5)
    if cosine:
        x = F.normalize(x, dim=-1)
    torch.manual_seed(7)
    want_means, want_bins = ref_kmeans(x, K, 10, cosine)
    torch.manual_seed(7)
    means, counts = kmeans(x, K, 10, cosine)
    torch.testing.assert_close(means, want_means)
    assert torch.equal(counts, want_bins.to(counts.dtype))
    # The module: k-means on the first training batch, then the first EMA step.
    torch.manual_seed(7)
    q = KMeansVQ(K, D, threshold_ema_dead_code=0, use_cosine_sim=cosine).double().train()
    q(x.unsqueeze(0))
    init = {"embed": want_means, "cluster_size": want_bins.double(), "embed_avg": want_means * want_bins.double()[:, None]}
    _, _, after, _ = ref_step(init, x, 0.8, 1e-5, cosine)
    assert bool(q.initted)
    torch.testing.assert_close(q.codebook, after["embed"])
    torch.testing.assert_close(q.ema_count, after["cluster_size"])


def test_kmeans_init_places_codes_on_well_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0]])
    labels = torch.randint(4, (2, 200), generator=g)
    z = centers[labels] + 0.2 * torch.randn(2, 200, 2, generator=g)
    torch.manual_seed(0)
    q = KMeansVQ(16, 2, threshold_ema_dead_code=0).train()
    q._init_codebook(z.reshape(-1, 2))
    codes, counts = q.codebook, q.ema_count
    owner = torch.cdist(codes, centers).argmin(1)
    # Every code sits inside one cluster, every cluster got codes, and the count-weighted
    # mean of a cluster's codes is the cluster's sample mean (k-means' fixed point).
    assert torch.cdist(codes, centers).min(1).values.max() < 1.0
    assert set(owner.tolist()) == {0, 1, 2, 3}
    flat, flat_labels = z.reshape(-1, 2), labels.reshape(-1)
    for c in range(4):
        sel = owner == c
        weighted = (codes[sel] * counts[sel, None]).sum(0) / counts[sel].sum()
        torch.testing.assert_close(weighted, flat[flat_labels == c].mean(0), rtol=1e-4, atol=1e-4)
    assert counts.sum().item() == 400
    # Quantization error is at the noise level, not the cluster spacing.
    q.eval()
    out = q(z)
    assert (out.quantized - z).norm(dim=-1).max() < 1.0


def test_init_once_on_training_batches_only_and_replaces_after_a_shift() -> None:
    torch.manual_seed(0)
    q = KMeansVQ(8, 2).train()
    far = torch.randn(1, 64, 2) + 20.0
    q.eval()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    q(far)  # evaluation: no k-means, nothing moves
    assert all(torch.equal(v, state[k]) for k, v in q.state_dict().items())
    q.train()
    a = torch.randn(1, 64, 2)
    q(a)
    assert bool(q.initted) and "initted" in q.state_dict()
    assert torch.cdist(q.codebook, a[0]).min(1).values.max() < 1.0
    # The data moves: codes whose EMA count falls under 2 are replaced by the new rows.
    for _ in range(10):
        q(far)
    assert q.num_resets.item() > 0
    assert torch.cdist(q.codebook, far[0]).min(1).values.max() < 3.0


def test_masked_padding_and_bad_options() -> None:
    torch.manual_seed(0)
    q = KMeansVQ(K, D).train()
    z = torch.randn(2, 5, D)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    z[~mask] = math.nan
    out = q(z, mask=mask)
    assert torch.isfinite(q.codebook).all() and torch.isfinite(out.loss)
    assert torch.all(out.indices[~mask] == -1) and torch.all(out.quantized[~mask] == 0)
    assert out.num_valid.item() == 7
    for bad in ({"decay": 1.0}, {"kmeans_iters": -1}, {"threshold_ema_dead_code": -1.0}, {"epsilon": 0.0}):
        with pytest.raises(ConfigError):
            KMeansVQ(K, D, **bad)


def _ddp_worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdv", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different RNG and data per rank: codebooks must still agree
        q = KMeansVQ(K, D).double().train()
        for step in range(4):
            x = torch.randn(1, 10 + 5 * rank, D, dtype=torch.float64) + (0.0 if step < 2 else 8.0)
            q(x)
        torch.save((q.codebook, q.ema_count, q.num_resets), f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_agree(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert a[2].item() > 0  # the shift in the data made codes die and be replaced
