"""Parity of the image code with the authors' code (sony/sqvae, directory vision/).

The references below are small re-implementations, written for these tests, of what the
authors' files compute:

- networks: sony/sqvae vision/networks/net_28.py, net_32.py, net_64.py (and util.py for
  the residual block), with the CelebAMask-HQ decoder activation of
  vision/configs/celebamask_vmf.yaml (``act_decoder: "exp"``, a softplus in net_64.py);
- Gaussian SQ-VAE I: vision/model.py (log-variance fixed at 0, sigma^2 = 1 + exp(s)) and
  vision/quantizer.py (``GaussianVectorQuantizer``: logits and latent loss);
- AR-ELBO reconstruction term: vision/model.py (``GaussianSQVAE._calc_loss``),
  0.5 D_x log(SSE / B).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sqvae_speech.vision.config import VisionModelConfig
from sqvae_speech.vision.likelihoods import image_recon
from sqvae_speech.vision.models import VisionSQVAE
from sqvae_speech.vision.nets import VisionDecoder, VisionEncoder

# ---------------------------------------------------------------------------------------
# Reference networks: the authors' layer order, built independently of sqvae_speech.vision.
# ---------------------------------------------------------------------------------------


class RefResBlock(nn.Module):
    """x + [ReLU, 3x3 conv, BN, ReLU, 1x1 conv, BN](x) (sony/sqvae vision/networks/util.py)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, 3, 1, 1), nn.BatchNorm2d(dim),
                                  nn.ReLU(), nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class RefEncoder(nn.Module):
    """Encoder of net_28 / net_32 / net_64 (image and label): convs, num_rb - 1 shared
    residual blocks, a mean block and (variance flag) a log-variance block."""

    def __init__(self, convs: list[nn.Module], dim: int, num_rb: int, var_head: bool, one_hot: int = 0) -> None:
        super().__init__()
        self.one_hot = one_hot
        self.convs = nn.Sequential(*convs)
        self.shared = nn.Sequential(*[RefResBlock(dim) for _ in range(num_rb - 1)])
        self.mean = RefResBlock(dim)
        self.var = RefResBlock(dim) if var_head else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.one_hot:
            x = F.one_hot(x.long(), self.one_hot).permute(0, 3, 1, 2).float()
        h = self.shared(self.convs(x))
        return self.mean(h), (None if self.var is None else self.var(h))


class RefDecoder(nn.Module):
    """Decoder: ``blocks`` residual blocks, then the transposed convs."""

    def __init__(self, blocks: int, convts: list[nn.Module], dim: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[RefResBlock(dim) for _ in range(blocks)])
        self.convts = nn.Sequential(*convts)

    def forward(self, z: Tensor) -> Tensor:
        return self.convts(self.blocks(z))


def _down(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 4, stride=2, padding=1)


def _up(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)


def official_pair(net: str, dim: int, num_rb: int, var_head: bool, num_class: int = 19) -> tuple[RefEncoder, RefDecoder]:
    """(encoder, decoder) as the authors build them (flg_bn=True, the default)."""
    h = dim // 2
    if net == "28":  # net_28.py: EncoderVqResnet28 / DecoderVqResnet28
        enc = [_down(1, h), nn.BatchNorm2d(h), nn.ReLU(), _down(h, dim)]
        dec = [_up(dim, h), nn.BatchNorm2d(h), nn.ReLU(), _up(h, 1), nn.Sigmoid()]
        return RefEncoder(enc, dim, num_rb, var_head), RefDecoder(num_rb, dec, dim)
    if net in ("32", "64"):  # net_32.py / net_64.py: EncoderVqResnet32|64, DecoderVqResnet32|64
        enc = [_down(3, h), nn.BatchNorm2d(h), nn.ReLU(), _down(h, dim), nn.BatchNorm2d(dim), nn.ReLU(),
               nn.Conv2d(dim, dim, 3, stride=1, padding=1)]
        if net == "32":  # only net_32 normalizes and rectifies after the 3x3 conv
            enc += [nn.BatchNorm2d(dim), nn.ReLU()]
        dec = [nn.ConvTranspose2d(dim, dim, 3, stride=1, padding=1), nn.BatchNorm2d(dim), nn.ReLU(),
               _up(dim, h), nn.BatchNorm2d(h), nn.ReLU(), _up(h, 3), nn.Sigmoid()]
        blocks = num_rb if net == "32" else num_rb - 1  # net_64's decoder: num_rb - 1 blocks
        return RefEncoder(enc, dim, num_rb, var_head), RefDecoder(blocks, dec, dim)
    if net == "64label":  # net_64.py: EncoderVqResnet64Label / DecoderVqResnet64Label, act "exp"
        n_class = int(math.ceil(num_class / 2) * 2)  # the authors pad to an even count
        enc = [_down(n_class, h), nn.BatchNorm2d(h), nn.ReLU(), _down(h, dim), nn.BatchNorm2d(dim), nn.ReLU(),
               _down(dim, dim)]
        dec = [_up(dim, dim), nn.BatchNorm2d(dim), nn.ReLU(), _up(dim, h), nn.BatchNorm2d(h), nn.ReLU(),
               _up(h, n_class), nn.Softplus()]
        return RefEncoder(enc, dim, num_rb, var_head, one_hot=n_class), RefDecoder(num_rb - 1, dec, dim)
    raise ValueError(net)


def _leaf_types(m: nn.Module) -> list[str]:
    """Class names of the leaf layers in registration (= forward) order."""
    return [type(x).__name__ for x in m.modules() if not list(x.children())]


def _shapes(m: nn.Module) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    return [tuple(p.shape) for p in m.parameters()], [tuple(b.shape) for b in m.buffers()]


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# (net, image channels / classes of ours, num_rb, D, dummy input, decoder output shape)
CASES = [
    ("28", 1, 2, 64, (2, 1, 28, 28), (2, 1, 28, 28)),  # MNIST, Fashion-MNIST
    ("32", 3, 2, 64, (2, 3, 32, 32), (2, 3, 32, 32)),  # CIFAR-10
    ("64", 3, 6, 64, (2, 3, 64, 64), (2, 3, 64, 64)),  # CelebA (num_rb 6)
    ("64", 3, 2, 64, (2, 3, 64, 64), (2, 3, 64, 64)),
    ("64label", 20, 2, 65, (2, 64, 64), (2, 20, 64, 64)),  # CelebAMask-HQ: 20 padded classes, D = 64 + 1
    ("64label", 20, 2, 64, (2, 64, 64), (2, 20, 64, 64)),
]


@pytest.mark.parametrize("var_head", [False, True])
@pytest.mark.parametrize("net,channels,num_rb,dim,in_shape,out_shape", CASES)
def test_networks_match_the_official_layer_structure(net: str, channels: int, num_rb: int, dim: int,
                                                     in_shape: tuple, out_shape: tuple, var_head: bool) -> None:
    """Layer order, parameter / buffer shapes and counts, and output shapes equal the
    authors' nets (sony/sqvae vision/networks/net_28.py, net_32.py, net_64.py)."""
    torch.manual_seed(0)
    ref_enc, ref_dec = official_pair(net, dim, num_rb, var_head, num_class=19)
    enc = VisionEncoder(net, channels, dim, num_rb, var_head)
    dec = VisionDecoder(net, channels, dim, num_rb)
    assert _leaf_types(enc) == _leaf_types(ref_enc)
    assert _leaf_types(dec) == _leaf_types(ref_dec)
    assert _shapes(enc) == _shapes(ref_enc) and _shapes(dec) == _shapes(ref_dec)
    assert _count(enc) == _count(ref_enc) and _count(dec) == _count(ref_dec)

    x = torch.randint(0, channels, in_shape) if net == "64label" else torch.rand(in_shape)
    with torch.no_grad():
        mean, log_var = enc(x)
        ref_mean, ref_log_var = ref_enc(x)
        assert mean.shape == ref_mean.shape
        assert (log_var is None) == (ref_log_var is None) == (not var_head)
        if var_head:
            assert log_var.shape == ref_log_var.shape == mean.shape
        out, ref_out = dec(mean), ref_dec(mean)
    assert out.shape == ref_out.shape == out_shape
    if net == "64label":
        assert float(out.min()) >= 0.0  # softplus


def test_networks_compute_the_official_function_with_copied_weights() -> None:
    """Same layer order, so the official reference loads our weights one to one and gives
    the same outputs (CelebA-size 64 px net, num_rb 3, eval-mode BatchNorm)."""
    torch.manual_seed(0)
    enc, dec = VisionEncoder("64", 3, 16, 3, True), VisionDecoder("64", 3, 16, 3)
    ref_enc, ref_dec = official_pair("64", 16, 3, True)
    for ours, ref in ((enc, ref_enc), (dec, ref_dec)):
        for m in ours.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        with torch.no_grad():
            for t, s in zip(list(ref.parameters()) + list(ref.buffers()), list(ours.parameters()) + list(ours.buffers())):
                t.copy_(s)
        ours.eval()
        ref.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        (m, v), (rm, rv) = enc(x), ref_enc(x)
        assert torch.allclose(m, rm, atol=1e-6) and torch.allclose(v, rv, atol=1e-6)
        assert torch.allclose(dec(m), ref_dec(m), atol=1e-6)


def test_label_net_differs_from_official_only_by_the_padded_class() -> None:
    """Known difference: CelebAMask-HQ's 19 classes give us 19 class channels, the authors
    pad to 20 (one input channel of the first conv, one output channel of the last
    transposed conv); with 20 classes the counts are equal (see the test above)."""
    dim, num_rb = 65, 2
    ref_enc, ref_dec = official_pair("64label", dim, num_rb, False, num_class=19)
    enc, dec = VisionEncoder("64label", 19, dim, num_rb, False), VisionDecoder("64label", 19, dim, num_rb)
    assert _count(ref_enc) - _count(enc) == (dim // 2) * 4 * 4
    assert _count(ref_dec) - _count(dec) == (dim // 2) * 4 * 4 + 1


# ---------------------------------------------------------------------------------------
# Reference losses: sony/sqvae vision/model.py and vision/quantizer.py.
# ---------------------------------------------------------------------------------------


def official_gaussian_1_latent(z: Tensor, codebook: Tensor, log_param_q_scalar: Tensor, zq: Tensor) -> tuple[Tensor, Tensor]:
    """(logits [B*h*w, K], latent loss) of Gaussian SQ-VAE I as the authors compute them.

    z, zq: [B, D, h, w]; codebook: [K, D]; log_param_q_scalar: scalar. The model fixes the
    log-variance at 0: var_q = exp(0) + exp(s); the quantizer takes precision 1 / var_q,
    logit = -0.5 precision ||z - b_k||^2, and the loss sum(P log P) / B plus the batch
    mean of sum_{d,h,w} 0.5 precision (z - z_q)^2.
    """
    batch, dim = z.shape[:2]
    var_q = torch.exp(torch.zeros(1)) + log_param_q_scalar.exp()
    precision = 1.0 / torch.clamp(var_q, min=1e-10)
    flat = z.permute(0, 2, 3, 1).reshape(-1, dim)
    dist = flat.square().sum(1, keepdim=True) + codebook.square().sum(1) - 2 * flat @ codebook.t()
    logit = -(0.5 * precision) * dist
    prob, log_prob = torch.softmax(logit, -1), torch.log_softmax(logit, -1)
    kld_discrete = (prob * log_prob).sum() / batch
    kld_continuous = ((z - zq).square() * (0.5 * precision)).sum(dim=(1, 2, 3)).mean()
    return logit, kld_discrete + kld_continuous


def official_arelbo(out: Tensor, x: Tensor) -> Tensor:
    """dim_x * log(F.mse_loss(out, x, "sum") / B) / 2, dim_x = C H W."""
    mse = F.mse_loss(out, x, reduction="sum") / x.shape[0]
    return x[0].numel() * torch.log(mse) / 2


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("log_s", [math.log(10.0), math.log(0.05)])
def test_gaussian_1_latent_loss_and_logits_equal_official(training: bool, log_s: float) -> None:
    """sigma^2 = 1 + exp(s) (never below 1), logits and latent term as sony/sqvae vision/model.py
    and vision/quantizer.py compute them, in eval mode (argmax) and training (Gumbel sample)."""
    torch.manual_seed(3)
    model = VisionSQVAE(VisionModelConfig(variant="gaussian_1", net="28", channels=1,
                                          quantizer={"num_embeddings": 16, "embedding_dim": 8, "init_log_var": log_s}))
    model.train(training)
    x = torch.rand(4, 1, 28, 28)
    z, log_var, q = model.quantize(x, temperature=0.5)
    assert log_var is None
    zq = q.quantized.detach().transpose(1, 2).reshape(z.shape)
    s = model.quantizer.log_var_scalar.detach()
    ref_logit, ref_latent = official_gaussian_1_latent(z.detach(), model.codebook(), s, zq)

    assert float(q.log_var_mean) == pytest.approx(math.log(1.0 + math.exp(log_s)), rel=1e-6)
    seq = z.detach().flatten(2).transpose(1, 2)
    logits = model.quantizer.logits(seq, None).detach().reshape(-1, 16)
    assert torch.allclose(logits, ref_logit, rtol=1e-5, atol=1e-4)
    assert float(q.loss.detach()) / 4 == pytest.approx(float(ref_latent), rel=1e-5)
    if not training:
        assert torch.equal(q.indices.reshape(-1), ref_logit.argmax(-1))


def test_gaussian_1_full_loss_equals_official() -> None:
    """loss = 0.5 D_x log(SSE / B) + latent term, each as the authors compute it
    (sony/sqvae vision/model.py), for a 32 px colour model in eval mode."""
    torch.manual_seed(4)
    model = VisionSQVAE(VisionModelConfig(variant="gaussian_1", net="32", channels=3,
                                          quantizer={"num_embeddings": 32, "embedding_dim": 16,
                                                     "init_log_var": math.log(20.0)})).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        losses, out, _ = model.step(x)
        z, _ = model.encoder(x)
        zq = model.encode(x).quantized
    _, ref_latent = official_gaussian_1_latent(z, model.codebook(), model.quantizer.log_var_scalar.detach(), zq)
    ref_recon = official_arelbo(out, x)
    assert float(losses.recon) == pytest.approx(float(ref_recon), rel=1e-6)
    assert float(losses.latent) == pytest.approx(float(ref_latent), rel=1e-5)
    assert float(losses.loss) == pytest.approx(float(ref_recon + ref_latent), rel=1e-5)


def test_arelbo_value_equals_official() -> None:
    """0.5 D_x log(SSE / B), positive while the per-image SSE exceeds 1; it is the
    per-element form 0.5 D_x log(MSE) shifted by 0.5 D_x log D_x, with the same gradient."""
    torch.manual_seed(5)
    x = torch.rand(5, 3, 32, 32)
    out = (x + 0.05 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    recon, mse = image_recon("arelbo", out, x, None)
    d_x = 3 * 32 * 32
    assert float(recon.detach()) == pytest.approx(float(official_arelbo(out.detach(), x)), rel=1e-6)
    assert float(recon.detach()) == pytest.approx(0.5 * d_x * (math.log(float(mse.detach())) + math.log(d_x)), rel=1e-6)
    assert float(recon.detach()) > 0
    (g,) = torch.autograd.grad(recon, out)
    out2 = out.detach().clone().requires_grad_(True)
    (g_elem,) = torch.autograd.grad(0.5 * d_x * torch.log(F.mse_loss(out2, x)), out2)
    assert torch.allclose(g, g_elem, rtol=1e-5, atol=1e-9)
