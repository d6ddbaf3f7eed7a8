"""The continuous Gaussian VAE and the fixed-variance Gaussian SQ (learn_variance=False)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from sqvae_speech.quantizers import GaussianSQ, GaussianVAE

D = 4


def padded(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, 5, D, generator=g, dtype=torch.float64)
    lv = torch.randn(3, 5, D, generator=g, dtype=torch.float64) * 0.5
    mask = torch.arange(5)[None, :] < torch.tensor([5, 3, 1])[:, None]
    z[~mask], lv[~mask] = math.nan, math.nan
    return z, lv, mask


def test_vae_kl_mean_and_no_codes() -> None:
    q = GaussianVAE(D, num_embeddings=512).eval()
    assert q.num_embeddings == 0 and q.codebook is None
    assert GaussianVAE.encoder_channels(embedding_dim=D) == 2 * D
    z, lv, mask = padded()
    out = q(z, lv, mask)
    want = kl_divergence(Normal(z[mask], torch.exp(0.5 * lv[mask])), Normal(0.0, 1.0)).sum()
    torch.testing.assert_close(out.loss, want)
    torch.testing.assert_close(out.kl_continuous, want)
    assert out.kl_discrete.item() == 0.0
    torch.testing.assert_close(out.quantized[mask], z[mask])  # evaluation: the mean
    assert torch.all(out.quantized[~mask] == 0)
    assert torch.all(out.indices == -1) and math.isnan(out.perplexity.item())
    torch.testing.assert_close(out.log_var_mean, lv[mask].mean())
    assert out.num_valid.item() == 9
    with pytest.raises(NotImplementedError, match="no codebook"):
        q.lookup(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="log_var"):
        q(z, None, mask)


def test_vae_training_samples_with_reparameterization() -> None:
    q = GaussianVAE(D).train()
    mu = torch.full((1, 20000, D), 2.0, dtype=torch.float64, requires_grad=True)
    lv = torch.full((1, 20000, D), math.log(0.25), dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    out = q(mu, lv)
    s = out.quantized.detach()
    assert abs(s.mean().item() - 2.0) < 0.01 and abs(s.std().item() - 0.5) < 0.01
    (out.quantized.sum() + out.loss).backward()
    assert mu.grad.abs().sum() > 0 and lv.grad.abs().sum() > 0


def test_fixed_variance_is_a_buffer_that_never_moves() -> None:
    torch.manual_seed(0)
    q = GaussianSQ(8, D, variant="I", init_log_var=-1.0, learn_variance=False).double().train()
    assert "log_var_scalar" not in dict(q.named_parameters())
    assert "log_var_scalar" in q.state_dict() and not q.log_var_scalar.requires_grad
    opt = torch.optim.SGD(q.parameters(), lr=0.5)
    z, _, mask = padded()
    for _ in range(3):
        opt.zero_grad()
        out = q(z, None, mask)
        (out.loss + out.quantized.square().sum()).backward()
        opt.step()
    assert q.log_var_scalar.item() == -1.0
    assert q.codebook.grad.abs().sum() > 0
    torch.testing.assert_close(out.log_var_mean, torch.tensor(-1.0, dtype=torch.float64))
    # Same numbers as a learned scalar at the same value; the state dicts are interchangeable.
    torch.manual_seed(0)
    learned = GaussianSQ(8, D, variant="I", init_log_var=-1.0).double().eval()
    learned.load_state_dict(q.state_dict())
    q.eval()
    a, b = q(z, None, mask), learned(z, None, mask)
    torch.testing.assert_close(a.loss, b.loss.detach())
    assert torch.equal(a.indices, b.indices)
    assert GaussianSQ.encoder_channels(embedding_dim=D, variant="I", learn_variance=False) == D
    assert "learn_variance=False" in repr(q)
