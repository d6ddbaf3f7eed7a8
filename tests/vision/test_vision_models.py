"""VisionSQVAE: every variant on every network size, variance reductions, likelihoods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sqvae_speech.errors import ConfigError
from sqvae_speech.quantizers import VQEMA
from sqvae_speech.vision.config import PAPER_VARIANTS, VisionModelConfig, resolve_config
from sqvae_speech.vision.likelihoods import (
    image_recon,
    iou_from_confusion,
    log_bessel_i,
    vmf_log_normalizer,
)
from sqvae_speech.vision.models import VisionSQVAE

NETS = {"28": (1, 28, 7), "32": (3, 32, 8), "64": (3, 64, 16), "64label": (19, 64, 8)}
Q16 = {"num_embeddings": 16, "embedding_dim": 8}


def batch_for(net: str, b: int = 3, seed: int = 0) -> torch.Tensor:
    ch, size, _ = NETS[net]
    g = torch.Generator().manual_seed(seed)
    if net == "64label":
        return torch.randint(0, ch, (b, size, size), generator=g)
    return torch.rand(b, ch, size, size, generator=g)


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("variant", PAPER_VARIANTS)
def test_forward_backward_every_variant_and_net(net: str, variant: str) -> None:
    torch.manual_seed(0)
    ch, size, lat = NETS[net]
    cfg = VisionModelConfig(variant=variant, net=net, channels=ch, num_rb=2, quantizer=Q16)
    model = VisionSQVAE(cfg)
    x = batch_for(net)
    out = model(x, temperature=0.7)
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    assert 1.0 <= float(out.perplexity) <= 16.0
    out.loss.backward()
    assert model.encoder.conv[0].weight.grad.abs().sum() > 0
    assert list(model.decoder.parameters())[-1].grad.abs().sum() > 0
    if variant == "vqvae_ema":
        assert isinstance(model.quantizer, VQEMA) and math.isnan(float(out.log_var_mean))
        assert not model.quantizer.codebook.requires_grad
        assert not torch.equal(model.quantizer.codebook, model.quantizer.ema_sum)  # EMA step happened
    else:
        assert model.quantizer.codebook.grad.abs().sum() > 0  # SQ: no stop-gradient on the codebook
    if variant in ("gaussian_2", "gaussian_3", "gaussian_4"):
        assert model.encoder.res_log_var.block[1].weight.grad.abs().sum() > 0
    else:
        assert model.encoder.res_log_var is None
    label = net == "64label"
    assert math.isnan(float(out.mse)) == label and math.isnan(float(out.accuracy)) != label

    model.eval()
    enc = model.encode(x)
    assert enc.z.shape == (3, 8, lat, lat) and enc.quantized.shape == (3, 8, lat, lat)
    assert enc.indices.shape == (3, lat, lat) and int(enc.indices.min()) >= 0 and int(enc.indices.max()) < 16
    rec, idx = model.reconstruct(x)
    assert rec.shape == (3, ch, size, size) and torch.equal(idx, enc.indices)
    assert torch.allclose(model.decode_indices(idx), rec, atol=1e-6)  # eval: z_q is exactly a code
    if not label:
        assert float(rec.min()) >= 0.0 and float(rec.max()) <= 1.0  # sigmoid
    assert torch.equal(model.encode(x).indices, enc.indices)  # deterministic in eval mode


@pytest.mark.parametrize("variant,reduce", [("gaussian_2", (1, 2, 3)), ("gaussian_3", (1,)), ("gaussian_4", None)])
def test_linear_space_variances_match_the_paper(variant: str, reduce: tuple | None) -> None:
    """sigma^2 = exp(mean of the log-var map over C,H,W (II) / over C (III) / none (IV)) + exp(scalar)."""
    torch.manual_seed(1)
    cfg = VisionModelConfig(variant=variant, net="28", channels=1, quantizer={**Q16, "init_log_var": math.log(10.0)})
    model = VisionSQVAE(cfg)
    _, log_var = model.encoder(batch_for("28", 2))  # [B, D, 7, 7]
    ref = log_var if reduce is None else log_var.mean(dim=reduce, keepdim=True)
    ref = torch.log(ref.exp() + 10.0)  # [B, D|1, h|1, w|1]
    seq = log_var.flatten(2).transpose(1, 2)
    got = model.quantizer.log_variance(seq, None, 2, 49)  # [B, 1|49, 1|D]
    ref_seq = ref.expand(2, ref.shape[1], 7, 7).flatten(2).transpose(1, 2)
    assert torch.allclose(got.expand(2, 49, ref_seq.shape[-1]), ref_seq, atol=1e-5)
    # gaussian_1: the log-variance is fixed at 0, sigma^2 = exp(0) + exp(scalar) (sony/sqvae vision/model.py)
    g1 = VisionSQVAE(VisionModelConfig(variant="gaussian_1", quantizer={**Q16, "init_log_var": math.log(20.0)}))
    assert g1.quantizer.variant == "I" and g1.quantizer.var_space == "linear"
    _, none = g1.encoder(batch_for("28", 2))
    assert none is None
    got = g1.quantizer.log_variance(none, None, 2, 49).detach().expand(2, 49, 1)
    assert torch.allclose(got, torch.full_like(got, math.log(21.0)))


def test_arelbo_and_vq_losses() -> None:
    x = torch.rand(4, 1, 28, 28)
    out = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    recon, mse = image_recon("arelbo", out, x, None)
    assert float(mse) == pytest.approx(float(((out - x) ** 2).mean()), rel=1e-6)
    # sony/sqvae vision/model.py: 0.5 D_x log(SSE / B), i.e. 0.5 D_x log(MSE) + 0.5 D_x log D_x
    assert float(recon) == pytest.approx(0.5 * 784 * math.log(float(mse) * 784), rel=1e-6)
    recon_l, _ = image_recon("learned", out, x, torch.tensor(math.log(0.1)))
    sse = float(((out - x) ** 2).sum())
    assert float(recon_l) == pytest.approx(sse / (2 * 0.1 * 4) + 0.5 * 784 * math.log(0.1), rel=1e-5)

    torch.manual_seed(0)
    model = VisionSQVAE(VisionModelConfig(variant="vqvae_ema", quantizer=Q16))
    model.eval()
    x = batch_for("28", 2)
    with torch.no_grad():
        losses, rec, _ = model.step(x)
    z = model.encode(x).z
    zq = model.encode(x).quantized
    assert float(losses.latent) == pytest.approx(0.25 * float(((z - zq) ** 2).mean()), rel=1e-4)
    assert float(losses.loss) == pytest.approx(float(((rec - x) ** 2).mean()) + float(losses.latent), rel=1e-5)


def test_vmf_normalizer_and_bessel_gradient() -> None:
    for kappa in (0.5, 2.5, 50.0):
        k = torch.tensor(kappa, dtype=torch.float64)
        # p = 3 has a closed form: C_3(k) = k / (4 pi sinh k)
        closed = math.log(kappa) - math.log(4 * math.pi) - (kappa + math.log1p(-math.exp(-2 * kappa)) - math.log(2))
        assert float(vmf_log_normalizer(3, k)) == pytest.approx(closed, rel=1e-9, abs=1e-9)
        assert float(log_bessel_i(0.5, k)) == pytest.approx(math.log(math.sqrt(2 / (math.pi * kappa)) * math.sinh(kappa)), rel=1e-9)
    k = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: log_bessel_i(8.5, t), (k,))


def test_vmf_label_likelihood_prefers_the_right_class() -> None:
    torch.manual_seed(0)
    model = VisionSQVAE(VisionModelConfig(variant="vmf", net="64label", channels=19, quantizer=Q16))
    y = batch_for("64label", 2)
    good = torch.nn.functional.one_hot(y, 19).permute(0, 3, 1, 2).float() * 5
    bad = torch.roll(good, 1, dims=1)
    q = model.quantizer(torch.randn(2, 64, 8))
    l_good, l_bad = model.losses(good, y, q), model.losses(bad, y, q)
    assert float(l_good.accuracy) == 1.0 and float(l_bad.accuracy) == 0.0
    kappa = 100.0  # 1 / exp(log 0.01)
    per_pixel = float(l_bad.recon - l_good.recon) / (64 * 64)
    assert per_pixel == pytest.approx(kappa, rel=1e-4)  # <e_y, mu> is 1 vs 0


def test_iou_from_confusion() -> None:
    conf = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # class 2 never occurs
    acc, miou, per = iou_from_confusion(conf)
    assert acc == pytest.approx(5 / 6)
    assert per[0] == pytest.approx(3 / 4) and per[1] == pytest.approx(2 / 3) and math.isnan(per[2])
    assert miou == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_input_and_config_errors() -> None:
    model = VisionSQVAE(VisionModelConfig(quantizer=Q16))
    with pytest.raises(ValueError, match=r"\[B, 1, 28, 28\]"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(ConfigError, match="variant"):
        VisionModelConfig.from_dict({"variant": "gaussian_5"})
    with pytest.raises(ConfigError, match="needs model.net=32"):
        resolve_config(None, ["model.net=28", "model.channels=1"], dataset="cifar10")
    cfg = resolve_config(None, [], dataset="celeba", variant="gaussian_3")
    assert (cfg.model.net, cfg.model.channels, cfg.model.num_rb, cfg.model.quantizer["num_embeddings"]) == ("64", 3, 6, 512)
    assert cfg.model.quantizer["init_log_var"] == pytest.approx(math.log(20.0)) and cfg.train.epochs == 70
    cfg = resolve_config(None, [], dataset="celebamask_hq")
    assert cfg.model.variant == "vmf" and cfg.model.recon_kind == "vmf" and cfg.model.net == "64label"
    assert cfg.model.quantizer["num_embeddings"] == 64 and "init_log_var" not in cfg.model.quantizer
    assert resolve_config(None, [], dataset="mnist").model.quantizer["num_embeddings"] == 128
