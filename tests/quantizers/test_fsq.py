"""FSQ's bound / round / index math against a re-implementation of lucidrains'
finite_scalar_quantization.py (which follows the paper's appendix), and the interface."""

from __future__ import annotations

import math

import pytest
import torch

from sqvae_speech.errors import ConfigError
from sqvae_speech.quantizers import FSQ


def ref_bound(z: torch.Tensor, levels: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    half_l = (levels - 1) * (1 + eps) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0)
    shift = (offset / half_l).atanh()
    return (z + shift).tanh() * half_l - offset


def ref_quantize(z: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    return ref_bound(z, levels).round() / (levels // 2)


def ref_codes_to_indices(codes: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    basis = torch.cumprod(torch.cat([torch.ones(1, dtype=levels.dtype), levels[:-1]]), 0)
    half = levels // 2
    return ((codes * half + half) * basis).sum(-1).to(torch.int32)


def ref_indices_to_codes(indices: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    basis = torch.cumprod(torch.cat([torch.ones(1, dtype=levels.dtype), levels[:-1]]), 0)
    half = levels // 2
    return ((indices.unsqueeze(-1) // basis) % levels - half) / half


LEVELS = [(8, 8, 8), (8, 5, 5, 5), (7, 5, 3), (2, 4)]


@pytest.mark.parametrize("levels", LEVELS, ids=str)
def test_math_matches_reference(levels: tuple[int, ...]) -> None:
    d = len(levels)
    q = FSQ(d, levels=levels)  # D = d: no projections, the math alone
    lv = torch.tensor(levels)
    h = torch.randn(500, d) * 3
    torch.testing.assert_close(q.bound(h), ref_bound(h, lv), rtol=0, atol=1e-6)
    codes = q.quantize(h)
    torch.testing.assert_close(codes, ref_quantize(h, lv), rtol=0, atol=0)
    idx = q.codes_to_indices(codes)
    assert idx.dtype == torch.int64
    assert torch.equal(idx, ref_codes_to_indices(codes, lv).long())
    everything = torch.arange(math.prod(levels))
    all_codes = q.indices_to_codes(everything)
    torch.testing.assert_close(all_codes, ref_indices_to_codes(everything, lv), rtol=0, atol=0)
    # A bijection between [0, K) and the grid; every code in [-1, 1]; L values per channel.
    assert torch.equal(q.codes_to_indices(all_codes), everything)
    assert torch.unique(all_codes, dim=0).shape[0] == math.prod(levels)
    assert all_codes.abs().max() <= 1.0
    for i, n in enumerate(levels):
        assert torch.unique(all_codes[:, i]).numel() == n
        # The bound reaches every level: large |h| and a sweep give all L values.
        sweep = torch.zeros(2001, d)
        sweep[:, i] = torch.linspace(-6, 6, 2001)
        assert torch.unique(q.quantize(sweep)[:, i]).numel() == n


def test_even_levels_use_the_half_level_offset() -> None:
    q = FSQ(1, levels=(8,))
    vals = torch.unique(q.quantize(torch.linspace(-10, 10, 4001).unsqueeze(1)))
    torch.testing.assert_close(vals, torch.arange(-4, 4, dtype=torch.float32) / 4)
    assert q.num_embeddings == 8


def test_interface_projection_lookup_and_gradient() -> None:
    torch.manual_seed(0)
    d_model = 6
    q = FSQ(d_model).eval()
    assert q.num_embeddings == 512 and q.levels == (8, 8, 8)
    assert isinstance(q.project_in, torch.nn.Linear) and q.project_in.out_features == 3
    assert FSQ.encoder_channels(embedding_dim=d_model) == d_model
    z = torch.randn(2, 5, d_model, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = q(z, mask=mask)
    assert out.loss.item() == 0.0 and out.kl_continuous.item() == 0.0 and math.isnan(out.log_var_mean.item())
    assert torch.all(out.indices[~mask] == -1) and torch.all(out.quantized[~mask] == 0)
    assert out.indices[mask].min() >= 0 and out.indices[mask].max() < 512
    cb = q.codebook
    assert cb.shape == (512, d_model)
    torch.testing.assert_close(out.quantized[mask], cb[out.indices[mask]])
    torch.testing.assert_close(q.lookup(out.indices), out.quantized)
    # Same in training; the straight-through rounding passes gradients to z and both projections.
    q.train()
    out = q(z, mask=mask)
    out.quantized.square().sum().backward()
    assert z.grad[mask].abs().sum() > 0 and torch.all(z.grad[~mask] == 0)
    assert q.project_in.weight.grad.abs().sum() > 0 and q.project_out.weight.grad.abs().sum() > 0


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="prod"):
        FSQ(4, levels=(8, 8, 8), num_embeddings=1024)
    FSQ(4, levels=(8, 8, 8), num_embeddings=512)
    with pytest.raises(ConfigError, match="levels"):
        FSQ(4, levels=(8, 1))
    with pytest.raises(ValueError, match="lookup"):
        FSQ(4).lookup(torch.tensor([512]))
