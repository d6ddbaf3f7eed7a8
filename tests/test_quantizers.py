"""Quantizers: the two-matmul logits against the plain broadcast formula, variance
reductions, gradients, masking, vMF, the usage meters and mixed precision. The EMA
baseline's tests are in tests/quantizers/test_vqema.py."""

from __future__ import annotations

import math

import pytest
import torch

from sqvae_speech.errors import ConfigError
from sqvae_speech.quantizers import (
    FSQ,
    VMFSQ,
    VQEMA,
    CodebookUsage,
    GaussianSQ,
    GaussianVAE,
    KMeansVQ,
    batch_perplexity,
    gaussian_logits,
)

K, D = 7, 4
LENGTHS = (5, 3, 1)


def direct_logits(z: torch.Tensor, codebook: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """The reference formula with the [N, D, K] tensor: -0.5 sum_d p_d (z_d - b_kd)^2."""
    diff = z.unsqueeze(2) - codebook.t().unsqueeze(0)  # [N, D, K]
    return -0.5 * (precision.expand_as(z).unsqueeze(2) * diff**2).sum(1)


def padded_batch(channels: int = D, seed: int = 0, pad_value: float = float("nan")):
    """z [3, 5, D], log_var [3, 5, channels] (float64), mask [3, 5]; padding holds pad_value."""
    g = torch.Generator().manual_seed(seed)
    b, length = len(LENGTHS), max(LENGTHS)
    z = torch.randn(b, length, D, generator=g, dtype=torch.float64) * 1.5
    log_var = torch.randn(b, length, channels, generator=g, dtype=torch.float64)
    mask = torch.arange(length).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)
    z[~mask] = pad_value
    log_var[~mask] = pad_value
    return z, log_var, mask


def make_sq(variant: str, var_space: str = "log", seed: int = 0) -> GaussianSQ:
    torch.manual_seed(seed)
    q = GaussianSQ(K, D, variant=variant, var_space=var_space, init_log_var=-0.3).double()
    return q


def expected_precision(variant: str, var_space: str, log_var, mask, scalar: float) -> torch.Tensor:
    """Precision at valid positions, [N, 1] or [N, D], written out item by item."""
    rows = []
    for i, n in enumerate(mask.sum(1).tolist()):
        lv = log_var[i, :n]
        if variant == "I":
            red = None
        elif variant == "II":
            red = lv.mean().expand(n, 1)
        elif variant == "III":
            red = lv.mean(-1, keepdim=True)
        else:
            red = lv
        if red is None:  # I: linear space takes the encoder's log-variance as 0 (sony/sqvae vision)
            s2 = torch.full((n, 1), math.exp(scalar) + (1.0 if var_space == "linear" else 0.0), dtype=torch.float64)
        elif var_space == "log":
            s2 = torch.exp(red + scalar)
        else:
            s2 = torch.exp(red) + math.exp(scalar)
        rows.append(1.0 / s2)
    return torch.cat(rows)


@pytest.mark.parametrize("var_space", ["log", "linear"])
@pytest.mark.parametrize("variant,channels", [("I", D), ("II", D), ("II", 3), ("III", 1), ("III", D), ("IV", D)])
def test_logits_match_direct_formula(variant: str, channels: int, var_space: str) -> None:
    q = make_sq(variant, var_space)
    z, log_var, mask = padded_batch(channels)
    got = q.logits(z, log_var if variant != "I" else None, mask)
    prec = expected_precision(variant, var_space, log_var, mask, q.log_var_scalar.item())
    want = direct_logits(z[mask], q.codebook.detach(), prec)
    assert got.shape == (3, 5, K)
    torch.testing.assert_close(got[mask].detach(), want, rtol=1e-10, atol=1e-10)
    assert torch.all(got[~mask] == 0)
    # The library function directly, with per-row precisions.
    zz, cb = z[mask], q.codebook.detach()
    for p in (torch.rand(zz.shape[0], D, dtype=torch.float64) + 0.1, torch.rand(zz.shape[0], 1, dtype=torch.float64)):
        torch.testing.assert_close(gaussian_logits(zz, cb, p), direct_logits(zz, cb, p), rtol=1e-10, atol=1e-10)


def test_eval_loss_matches_formula_iv() -> None:
    q = make_sq("IV").eval()
    z, log_var, mask = padded_batch()
    out = q(z, log_var, mask)
    zz = z[mask]
    prec = torch.exp(-(log_var[mask] + q.log_var_scalar.item()))
    logits = direct_logits(zz, q.codebook.detach(), prec)
    idx = logits.argmax(-1)
    zq = q.codebook.detach()[idx]
    kl_c = 0.5 * (prec * (zz - zq) ** 2).sum()
    logp = torch.log_softmax(logits, -1)
    kl_d = (logp.exp() * logp).sum()
    torch.testing.assert_close(out.kl_continuous.detach(), kl_c)
    torch.testing.assert_close(out.kl_discrete.detach(), kl_d)
    torch.testing.assert_close(out.loss.detach(), kl_c + kl_d)
    assert torch.equal(out.indices[mask], idx)
    assert out.num_valid.item() == sum(LENGTHS)
    torch.testing.assert_close(out.log_var_mean, (log_var[mask] + q.log_var_scalar.item()).mean())


@pytest.mark.parametrize("var_space", ["log", "linear"])
@pytest.mark.parametrize("variant,channels", [("II", D), ("III", 1), ("IV", D)])
def test_equal_variances_reduce_to_variant_i(variant: str, channels: int, var_space: str) -> None:
    z, _, mask = padded_batch(channels)
    c = 0.7
    log_var = torch.full((3, 5, channels), c, dtype=torch.float64)
    qv = make_sq(variant, var_space)
    q1 = make_sq("I", var_space)
    s = qv.log_var_scalar.item()
    with torch.no_grad():
        q1.codebook.copy_(qv.codebook)
        # linear: 1 + exp(s1) = exp(c) + exp(s)
        q1.log_var_scalar.fill_(c + s if var_space == "log" else math.log(math.exp(c) + math.exp(s) - 1.0))
    for mode in ("eval", "train"):
        getattr(qv, mode)()
        getattr(q1, mode)()
        torch.manual_seed(3)
        a = qv(z, log_var, mask, temperature=0.5)
        torch.manual_seed(3)
        b = q1(z, None, mask, temperature=0.5)
        for name in ("quantized", "indices", "loss", "kl_continuous", "kl_discrete", "log_var_mean"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-9, msg=name)
    qv.eval()
    torch.testing.assert_close(qv.logits(z, log_var, mask), q1.logits(z, None, mask), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variant", ["I", "II", "III", "IV"])
def test_gradients_reach_every_input(variant: str) -> None:
    channels = {"I": D, "II": D, "III": 1, "IV": D}[variant]
    q = make_sq(variant).train()
    z, log_var, mask = padded_batch(channels)
    z.requires_grad_(True)
    log_var.requires_grad_(True)
    out = q(z, log_var if variant != "I" else None, mask)
    (out.loss + out.quantized.square().sum()).backward()
    assert torch.isfinite(z.grad).all() and z.grad[mask].abs().sum() > 0
    assert torch.all(z.grad[~mask] == 0)
    if variant != "I":
        assert torch.isfinite(log_var.grad).all() and log_var.grad[mask].abs().sum() > 0
        assert torch.all(log_var.grad[~mask] == 0)
    assert q.codebook.grad.abs().sum() > 0
    assert q.log_var_scalar.grad is not None and q.log_var_scalar.grad.abs() > 0
    # No stop-gradient: the decoder's gradient alone reaches the codebook and, through the
    # Gumbel-softmax weights, the variance parameters.
    q.zero_grad()
    lv = log_var.detach().requires_grad_(True)
    q(z.detach(), lv if variant != "I" else None, mask).quantized.square().sum().backward()
    assert q.codebook.grad.abs().sum() > 0
    assert q.log_var_scalar.grad.abs() > 0
    if variant != "I":
        assert lv.grad[mask].abs().sum() > 0


def test_eval_is_deterministic_nearest_code() -> None:
    q = make_sq("I").eval()
    z, _, mask = padded_batch()
    a, b = q(z, None, mask), q(z, None, mask)
    assert torch.equal(a.quantized, b.quantized) and torch.equal(a.indices, b.indices)
    nearest = torch.cdist(z[mask], q.codebook.detach()).argmin(-1)
    assert torch.equal(a.indices[mask], nearest)
    assert torch.equal(a.quantized[mask], q.codebook.detach()[nearest])
    assert torch.all(a.quantized[~mask] == 0) and torch.all(a.indices[~mask] == -1)
    assert a.perplexity.item() == pytest.approx(batch_perplexity(a.indices, mask, K).item())


def test_training_with_tiny_temperature_is_hard() -> None:
    q = make_sq("I").train()
    z, _, mask = padded_batch()
    cb = q.codebook.detach()
    out = q(z, None, mask, temperature=1e-4)
    # Every soft sample is (numerically) one code: a one-hot mixture.
    gap = torch.cdist(out.quantized[mask].detach(), cb).min(-1).values
    assert gap.max() < 1e-6
    # With a tiny variance too, P is one-hot, so the sample is the nearest code.
    with torch.no_grad():
        q.log_var_scalar.fill_(-12.0)
    out = q(z, None, mask, temperature=1e-4)
    torch.testing.assert_close(out.quantized[mask].detach(), q.eval()(z, None, mask).quantized[mask])


@pytest.mark.parametrize("variant,channels", [("I", D), ("II", D), ("III", 1), ("IV", D)])
def test_padded_batch_equals_items_alone(variant: str, channels: int) -> None:
    q = make_sq(variant).eval()
    z, log_var, mask = padded_batch(channels)
    lv = log_var if variant != "I" else None
    out = q(z, lv, mask)
    assert torch.isfinite(out.loss) and out.num_valid.item() == sum(LENGTHS)
    loss = kl_c = kl_d = lvm = 0.0
    for i, n in enumerate(LENGTHS):
        alone = q(z[i : i + 1, :n], None if lv is None else lv[i : i + 1, :n])
        torch.testing.assert_close(out.quantized[i, :n], alone.quantized[0])
        assert torch.equal(out.indices[i, :n], alone.indices[0])
        assert torch.all(out.indices[i, n:] == -1) and torch.all(out.quantized[i, n:] == 0)
        loss, kl_c, kl_d = loss + alone.loss, kl_c + alone.kl_continuous, kl_d + alone.kl_discrete
        lvm = lvm + alone.log_var_mean * n
    torch.testing.assert_close(out.loss, loss)
    torch.testing.assert_close(out.kl_continuous, kl_c)
    torch.testing.assert_close(out.kl_discrete, kl_d)
    torch.testing.assert_close(out.log_var_mean, lvm / sum(LENGTHS))
    flat = torch.cat([out.indices[i, :n] for i, n in enumerate(LENGTHS)])
    assert out.perplexity.item() == pytest.approx(batch_perplexity(flat, None, K).item())


def test_padding_is_ignored_in_training() -> None:
    q = make_sq("II").train()
    outs = []
    for pad in (float("nan"), 1e6):
        z, log_var, mask = padded_batch(pad_value=pad)
        z.requires_grad_(True)
        torch.manual_seed(5)
        out = q(z, log_var, mask)
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(z.grad).all()
        assert torch.all(z.grad[~mask] == 0)
        outs.append(out)
    torch.testing.assert_close(outs[0].loss, outs[1].loss)
    torch.testing.assert_close(outs[0].quantized, outs[1].quantized)


def test_bad_options_and_shapes() -> None:
    with pytest.raises(ConfigError, match="variant"):
        GaussianSQ(K, D, variant="V")
    with pytest.raises(ConfigError, match="var_space"):
        GaussianSQ(K, D, var_space="exp")
    z, log_var, mask = padded_batch(channels=3)
    with pytest.raises(ValueError, match="C = D"):
        make_sq("IV")(z, log_var, mask)
    with pytest.raises(ValueError, match="needs log_var"):
        make_sq("III")(z, None, mask)
    with pytest.raises(ValueError, match="temperature"):
        make_sq("I").train()(z, None, mask, temperature=0.0)
    # Any positive threshold is valid now (default 1.0: used less than once per batch).
    with pytest.raises(ConfigError, match="reset_threshold"):
        VQEMA(K, D, reset_threshold=0.0)
    with pytest.raises(ConfigError, match="init"):
        VQEMA(K, D, init="zeros")


# ---------------------------------------------------------------- vMF


def test_vmf_unit_norms_and_kappa_cosine_logits() -> None:
    torch.manual_seed(0)
    q = VMFSQ(K, D).double().eval()
    z, _, mask = padded_batch()
    kappa = 1.0 + math.exp(q.log_kappa_scalar.item())
    assert kappa == pytest.approx(1.05)
    cb = q.codebook.detach()
    cos = torch.nn.functional.cosine_similarity(z[mask].unsqueeze(1), cb.unsqueeze(0), dim=-1)
    torch.testing.assert_close(q.logits(z, None, mask)[mask].detach(), kappa * cos)
    out = q(z * 3.0, None, mask)  # scale of z must not matter
    torch.testing.assert_close(out.quantized[mask].norm(dim=-1), torch.ones(sum(LENGTHS), dtype=torch.float64))
    torch.testing.assert_close(q.normalized_codebook().norm(dim=-1), torch.ones(K, dtype=torch.float64))
    idx = cos.argmax(-1)
    assert torch.equal(out.indices[mask], idx)
    logp = torch.log_softmax(kappa * cos, -1)
    want = (kappa * (1 - cos.gather(1, idx[:, None]))).sum() + (logp.exp() * logp).sum()
    torch.testing.assert_close(out.loss.detach(), want)
    torch.testing.assert_close(out.log_var_mean.detach(), torch.tensor(-math.log(kappa), dtype=torch.float64))
    # Training: gradients reach z, the codebook and kappa.
    q.train()
    zg = z.clone().requires_grad_(True)
    out = q(zg, None, mask)
    (out.loss + out.quantized.square().sum()).backward()
    assert zg.grad[mask].abs().sum() > 0 and torch.all(zg.grad[~mask] == 0)
    assert q.codebook.grad.abs().sum() > 0 and q.log_kappa_scalar.grad.abs() > 0


# ---------------------------------------------------------------- usage meters


def test_usage_meters() -> None:
    uniform = torch.arange(K).repeat(3).reshape(3, K)
    assert batch_perplexity(uniform, None, K).item() == pytest.approx(K)
    single = torch.full((4, 5), 2)
    assert batch_perplexity(single, None, K).item() == pytest.approx(1.0)
    # -1 and masked-out positions are ignored.
    idx = torch.tensor([[0, 1, -1], [1, 5, 6]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    p = torch.tensor([1 / 4, 2 / 4, 1 / 4])
    assert batch_perplexity(idx, mask, K).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))

    usage = CodebookUsage(K)
    usage.update(idx, mask)
    assert usage.counts.tolist() == [1, 2, 0, 0, 0, 1, 0] and usage.used() == 3 and usage.total() == 4
    other = CodebookUsage(K)
    other.update(uniform)
    merged = CodebookUsage.from_state_dict(usage.state_dict()).merge(other)
    assert merged.counts.tolist() == [4, 5, 3, 3, 3, 4, 3] and merged.used() == K
    u2 = CodebookUsage(K)
    u2.update(uniform)
    assert u2.perplexity() == pytest.approx(K)
    u1 = CodebookUsage(K)
    u1.update(single)
    assert u1.perplexity() == pytest.approx(1.0) and u1.used() == 1
    assert math.isnan(CodebookUsage(K).perplexity())
    with pytest.raises(ValueError, match="out of range"):
        usage.update(torch.tensor([K]))
    # No codes at all (the continuous VAE): only -1 indices, nothing counted.
    none = CodebookUsage(0)
    none.update(torch.full((2, 3), -1))
    assert none.total() == 0 and none.used() == 0 and math.isnan(none.perplexity())


# ---------------------------------------------------------------- mixed precision


@pytest.mark.parametrize(
    "make",
    [
        lambda: GaussianSQ(K, D, "IV"),
        lambda: GaussianSQ(K, D, "II", "linear"),
        lambda: GaussianSQ(K, D, "I", learn_variance=False),
        lambda: VMFSQ(K, D),
        lambda: VQEMA(K, D),
        lambda: VQEMA(K, D, reset_unused=True),
        lambda: KMeansVQ(K, D),
        lambda: KMeansVQ(K, D, use_cosine_sim=True),
        lambda: FSQ(D),
        lambda: GaussianVAE(D),
    ],
)
def test_autocast_bfloat16(make) -> None:
    torch.manual_seed(0)
    q = make()
    proj = torch.nn.Linear(3, 2 * D)
    x = torch.randn(2, 6, 3)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    for mode in ("train", "eval"):
        getattr(q, mode)()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = proj(x)
            assert h.dtype == torch.bfloat16
            out = q(h[..., :D], h[..., D:], mask)
        assert out.quantized.dtype == torch.bfloat16
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
        assert torch.isfinite(out.quantized).all()
        assert torch.isfinite(out.perplexity) or isinstance(q, GaussianVAE)  # VAE: no codes, NaN
        if mode == "train":
            (out.loss + out.quantized.float().square().mean()).backward()  # FSQ's loss is a constant 0
            assert torch.isfinite(proj.weight.grad).all()
