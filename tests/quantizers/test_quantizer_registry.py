"""The name -> quantizer registry: every name builds, asks for the right encoder channels,
runs on a masked padded batch in training and evaluation, gives per-item results on a
padded batch, and rejects unknown names and arguments."""

from __future__ import annotations

import math

import pytest
import torch

from sqvae_speech.errors import ConfigError
from sqvae_speech.quantizers import (
    FSQ,
    QUANTIZERS,
    VMFSQ,
    VQEMA,
    GaussianSQ,
    GaussianVAE,
    KMeansVQ,
    QuantizerSpec,
    get_quantizer,
)

K, D = 8, 4
LENGTHS = (6, 4, 1)
NAMES = [
    "gaussian_1", "gaussian_2", "gaussian_3", "gaussian_4", "gaussian_fixed",
    "vqvae_ema", "vqvae_ema_reset", "vq_kmeans", "fsq", "vae", "vmf",
]
# (class, encoder channels for D = 4, default reconstruction term)
EXPECTED = {
    "gaussian_1": (GaussianSQ, D, "arelbo"),
    "gaussian_2": (GaussianSQ, D + 1, "arelbo"),
    "gaussian_3": (GaussianSQ, D + 1, "arelbo"),
    "gaussian_4": (GaussianSQ, 2 * D, "arelbo"),
    "gaussian_fixed": (GaussianSQ, D, "arelbo"),
    "vqvae_ema": (VQEMA, D, "mse"),
    "vqvae_ema_reset": (VQEMA, D, "mse"),
    "vq_kmeans": (KMeansVQ, D, "mse"),
    "fsq": (FSQ, D, "mse"),
    "vae": (GaussianVAE, 2 * D, "arelbo"),
    "vmf": (VMFSQ, D, "arelbo"),
}


def options(name: str) -> dict:
    """Config-section arguments for a small model; the same K for every name."""
    kw = {"num_embeddings": K, "embedding_dim": D}
    if name == "fsq":
        kw["levels"] = (2, 4)  # 8 codes
    return kw


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_quantizer(name).build(**options(name)).double()


def encoder_output(name: str, seed: int = 0):
    """What the encoder emits ([B, L, C], C from the registry), split as the models do, and the mask."""
    spec = get_quantizer(name)
    channels = spec.encoder_channels(**options(name))
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(len(LENGTHS), max(LENGTHS), channels, generator=g, dtype=torch.float64)
    mask = torch.arange(max(LENGTHS))[None, :] < torch.tensor(LENGTHS)[:, None]
    out[~mask] = math.nan
    z, log_var = out[..., :D], (out[..., D:] if channels > D else None)
    return z, log_var, mask


def test_names_and_specs() -> None:
    assert list(QUANTIZERS) == NAMES
    for name, (cls, channels, recon) in EXPECTED.items():
        spec = get_quantizer(name)
        assert isinstance(spec, QuantizerSpec) and spec.name == name and spec.cls is cls
        assert spec.recon == recon and spec.summary
        assert spec.encoder_channels(**options(name)) == channels, name
        assert not set(spec.fixed) & set(spec.arguments())
        assert "self" not in spec.arguments() and "embedding_dim" in spec.arguments()
    assert dict(get_quantizer("gaussian_4").fixed) == {"variant": "IV"}
    assert dict(get_quantizer("gaussian_fixed").fixed) == {"variant": "I", "learn_variance": False}
    assert dict(get_quantizer("vqvae_ema_reset").fixed) == {"reset_unused": True}
    assert get_quantizer("gaussian_2").encoder_channels(embedding_dim=64) == 65
    assert get_quantizer("gaussian_4").encoder_channels(embedding_dim=64) == 128


@pytest.mark.parametrize("name", NAMES)
def test_build_sets_the_fixed_arguments(name: str) -> None:
    q = build(name)
    spec = get_quantizer(name)
    assert isinstance(q, spec.cls) and q.embedding_dim == D
    for key, value in spec.fixed.items():
        assert getattr(q, key) == value, key
    if name == "vqvae_ema":  # the reference defaults
        assert (q.init, q.store_smoothed_count, q.reset_unused, float(q.ema_count.sum())) == ("uniform", True, False, 0.0)
    if name == "gaussian_fixed":
        assert "log_var_scalar" not in dict(q.named_parameters())


@pytest.mark.parametrize("name", NAMES)
def test_forward_train_then_eval_on_a_padded_batch(name: str) -> None:
    q = build(name).train()
    z, log_var, mask = encoder_output(name)
    z.requires_grad_(True)
    out = q(z, log_var, mask, temperature=0.5)
    assert out.quantized.shape == z.shape and out.indices.shape == mask.shape
    assert torch.isfinite(out.loss) and torch.isfinite(out.quantized).all()
    assert torch.all(out.quantized[~mask] == 0) and torch.all(out.indices[~mask] == -1)
    assert out.num_valid.item() == sum(LENGTHS)
    (out.loss + out.quantized.square().sum()).backward()
    assert torch.isfinite(z.grad).all() and z.grad[mask].abs().sum() > 0 and torch.all(z.grad[~mask] == 0)
    if name == "vae":
        assert torch.all(out.indices == -1) and math.isnan(out.perplexity.item())
    else:
        assert out.indices[mask].min() >= 0 and out.indices[mask].max() < q.num_embeddings
        assert 1.0 <= out.perplexity.item() <= q.num_embeddings + 1e-6

    # Evaluation: deterministic, padded batch == items alone, lookup gives what the decoder got.
    q.eval()
    z = z.detach()
    out = q(z, log_var, mask)
    again = q(z, log_var, mask)
    assert torch.equal(out.quantized, again.quantized) and torch.equal(out.indices, again.indices)
    loss = kl_c = 0.0
    for i, n in enumerate(LENGTHS):
        alone = q(z[i : i + 1, :n], None if log_var is None else log_var[i : i + 1, :n])
        torch.testing.assert_close(out.quantized[i, :n], alone.quantized[0], msg=f"{name} item {i}")
        assert torch.equal(out.indices[i, :n], alone.indices[0])
        loss, kl_c = loss + alone.loss, kl_c + alone.kl_continuous
    torch.testing.assert_close(out.loss, torch.as_tensor(loss, dtype=out.loss.dtype))
    torch.testing.assert_close(out.kl_continuous, torch.as_tensor(kl_c, dtype=out.kl_continuous.dtype))
    if name == "vae":
        with pytest.raises(NotImplementedError):
            q.lookup(out.indices)
    else:
        torch.testing.assert_close(q.lookup(out.indices), out.quantized)
        assert q.lookup(out.indices[0, 0]).shape == (D,)


def test_unknown_keys_and_names_are_config_errors() -> None:
    spec = get_quantizer("gaussian_4")
    with pytest.raises(ConfigError, match=r"no argument 'reset_unused'.*valid arguments: num_embeddings, embedding_dim"):
        spec.build(num_embeddings=K, embedding_dim=D, reset_unused=True)
    with pytest.raises(ConfigError, match=r"sets variant='IV' itself"):
        spec.build(num_embeddings=K, embedding_dim=D, variant="II")
    with pytest.raises(ConfigError, match="learn_variance"):
        get_quantizer("gaussian_fixed").build(num_embeddings=K, embedding_dim=D, learn_variance=True)
    with pytest.raises(ConfigError, match="no argument 'levels'"):
        get_quantizer("vqvae_ema").encoder_channels(embedding_dim=D, levels=(8, 8))
    with pytest.raises(ConfigError, match="needs embedding_dim"):
        spec.encoder_channels(num_embeddings=K)
    with pytest.raises(ConfigError, match="gaussian_1, gaussian_2.*vmf"):
        get_quantizer("vqvae")
    # The constructors' own checks still apply.
    with pytest.raises(ConfigError, match="decay"):
        get_quantizer("vq_kmeans").build(num_embeddings=K, embedding_dim=D, decay=1.5)
