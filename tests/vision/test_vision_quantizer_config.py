"""The vision config's quantizer section: keys are the registry class's constructor
arguments, vision and paper defaults fill only what the class takes, old flat configs
upgrade, and every registry quantizer trains and evaluates on 28x28 images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from sqvae_speech.checkpoint import FORMAT
from sqvae_speech.config import dump_yaml
from sqvae_speech.errors import ConfigError
from sqvae_speech.quantizers import (
    FSQ,
    QUANTIZERS,
    GaussianSQ,
    GaussianVAE,
    KMeansVQ,
    get_quantizer,
)
from sqvae_speech.vision.config import (
    VisionConfig,
    VisionModelConfig,
    resolve_config,
    upgrade_vision_config,
)
from sqvae_speech.vision.evaluate import evaluate
from sqvae_speech.vision.models import VisionSQVAE
from sqvae_speech.vision.sweep import NAMES, load_sweep, sweep_table
from sqvae_speech.vision.train import load_vision_model, train

VISION_PACKAGE = Path(__file__).resolve().parents[2] / "sqvae_speech" / "vision"


def test_quantizer_section_is_the_constructor_arguments_with_vision_defaults() -> None:
    g = VisionModelConfig()
    assert g.quantizer == {"num_embeddings": 512, "embedding_dim": 64, "var_space": "linear",
                           "init_log_var": pytest.approx(math.log(10.0)), "learn_variance": True}
    assert list(g.quantizer) == get_quantizer("gaussian_1").arguments()
    vq = VisionModelConfig(variant="vqvae_ema", quantizer={"num_embeddings": 32})
    assert list(vq.quantizer) == get_quantizer("vqvae_ema").arguments()
    assert (vq.quantizer["num_embeddings"], vq.quantizer["embedding_dim"], vq.quantizer["decay"]) == (32, 64, 0.999)
    assert vq.quantizer["reset_threshold"] == 0.1 and "var_space" not in vq.quantizer  # registry default
    # FSQ and VAE: K follows from the class (prod(levels); none), so no default K is forced on them
    assert VisionModelConfig(variant="fsq").quantizer["num_embeddings"] is None
    assert VisionModelConfig(variant="vae").quantizer == {"embedding_dim": 64, "num_embeddings": None}
    assert VisionModelConfig(variant="vmf").quantizer["init_log_kappa"] == pytest.approx(math.log(0.05))
    # YAML 1.1 reads 1e-5 as a string
    assert VisionModelConfig(variant="vqvae_ema", quantizer={"epsilon": "1e-5"}).quantizer["epsilon"] == 1e-5


def test_quantizer_section_errors() -> None:
    with pytest.raises(ConfigError, match=r"model.quantizer: .*no argument '?init_log_var'?; valid arguments: num_embeddings"):
        VisionModelConfig.from_dict({"variant": "vqvae_ema", "quantizer": {"init_log_var": 1.0}})
    with pytest.raises(ConfigError, match=r"sets variant='I' itself"):
        VisionModelConfig.from_dict({"variant": "gaussian_1", "quantizer": {"variant": "IV"}})
    with pytest.raises(ConfigError, match=r"decay must be in \(0, 1\)"):  # the value, when the config is read
        VisionModelConfig.from_dict({"variant": "vqvae_ema", "quantizer": {"decay": 1.5}})
    with pytest.raises(ConfigError, match=r"model.ema_decay -> model.quantizer.decay, "
                                          r"model.num_embeddings -> model.quantizer.num_embeddings"):
        resolve_config(None, ["model.num_embeddings=64", "model.ema_decay=0.9"], variant="vqvae_ema")
    with pytest.raises(ConfigError, match=r"model.variant 'gaussian_5' unknown; choose one of gaussian_1"):
        resolve_config(None, [], variant="gaussian_5")
    with pytest.raises(ConfigError, match="prod\\(levels\\) = 512"):
        VisionModelConfig(variant="fsq", quantizer={"num_embeddings": 64}).validate()


def test_paper_defaults_follow_the_variant_and_round_trip() -> None:
    mnist = resolve_config(None, [], dataset="mnist", variant="vqvae_ema").model.quantizer
    assert mnist["num_embeddings"] == 128 and "init_log_var" not in mnist
    cifar = resolve_config(None, ["model.quantizer.embedding_dim=32"], dataset="cifar10", variant="gaussian_4")
    assert cifar.model.quantizer["init_log_var"] == pytest.approx(math.log(20.0)) and cifar.model.embedding_dim == 32
    assert resolve_config(None, [], dataset="mnist", variant="fsq").model.quantizer["num_embeddings"] is None
    over = resolve_config(None, ["model.variant=vq_kmeans", "model.quantizer.decay=0.9"], dataset="mnist")
    assert over.model.variant == "vq_kmeans" and over.model.quantizer["decay"] == 0.9
    assert over.model.recon_kind == "mse" and resolve_config(None, [], variant="vae").model.recon_kind == "arelbo"
    assert VisionConfig.from_dict(yaml.safe_load(dump_yaml(cifar))) == cifar


# What the first vision release wrote into its checkpoints (VisionModelConfig.to_dict then).
_FLAT = {"variant": "gaussian_1", "net": "28", "channels": 1, "num_rb": 2, "num_embeddings": 16, "embedding_dim": 8,
         "init_log_var": 2.302585092994046, "init_log_kappa": -2.995732273553991, "min_kappa": 1.0, "recon": "auto",
         "init_log_var_x": -2.3, "init_log_kappa_inv_x": -4.6, "ema_decay": 0.99, "ema_epsilon": 1e-4,
         "commitment_cost": 0.5, "reset_unused": True, "reset_threshold": 0.05}


def test_old_flat_configs_upgrade() -> None:
    g1 = VisionModelConfig.from_dict(upgrade_vision_config({"model": _FLAT})["model"])
    # the first release computed sigma^2 = exp(s) for gaussian_1: variant I in log space
    assert g1.quantizer == {"num_embeddings": 16, "embedding_dim": 8, "var_space": "log",
                            "init_log_var": pytest.approx(2.302585092994046), "learn_variance": True}
    vq = upgrade_vision_config({"model": {**_FLAT, "variant": "vqvae_ema"}, "train": {"lr": 1e-3}})
    assert vq["train"] == {"lr": 1e-3} and "ema_decay" not in vq["model"]
    q = VisionModelConfig.from_dict(vq["model"]).quantizer
    assert (q["decay"], q["epsilon"], q["commitment_cost"], q["reset_unused"], q["reset_threshold"]) == (0.99, 1e-4, 0.5, True, 0.05)
    assert (q["init"], q["init_count"], q["store_smoothed_count"]) == ("normal", 1.0, False)
    old_vq = {k: v for k, v in _FLAT.items() if k != "reset_threshold"} | {"variant": "vqvae_ema"}
    assert VisionModelConfig.from_dict(upgrade_vision_config({"model": old_vq})["model"]).quantizer["reset_threshold"] == 0.01
    vmf = VisionModelConfig.from_dict(upgrade_vision_config({"model": {**_FLAT, "variant": "gaussian_3"}})["model"])
    assert vmf.quantizer["var_space"] == "linear" and "min_kappa" not in vmf.quantizer
    new = resolve_config(None, []).to_dict()
    assert upgrade_vision_config(new) == new


def test_checkpoint_with_the_old_flat_config_loads(tmp_path: Path) -> None:
    cfg = resolve_config(None, [], variant="vqvae_ema")
    old = cfg.to_dict()
    old["model"] = {**_FLAT, "variant": "vqvae_ema"}
    torch.manual_seed(0)
    model = VisionSQVAE(VisionModelConfig.from_dict(upgrade_vision_config(old)["model"]))
    path = tmp_path / "best.pt"
    torch.save({"format": FORMAT, "version": 1, "kind": "vision", "step": 7, "config": old, "model": model.state_dict(),
                "epoch": 0, "position": 7, "best_val_loss": 1.0}, path)
    loaded, cfg2, step, _ = load_vision_model(path)
    assert step == 7 and cfg2.model.quantizer["decay"] == 0.99 and cfg2.model.quantizer["init"] == "normal"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_library_holds_no_argparse_and_names_every_quantizer() -> None:
    assert set(NAMES) == set(QUANTIZERS)  # sweep tables and plots
    assert not [p.name for p in VISION_PACKAGE.glob("*.py") if "argparse" in p.read_text(encoding="utf-8")]


@pytest.mark.parametrize("variant,quantizer,cls", [
    ("vq_kmeans", {"num_embeddings": 16}, KMeansVQ),
    ("fsq", {"levels": [4, 4]}, FSQ),
    ("vae", {}, GaussianVAE),
    ("gaussian_fixed", {"num_embeddings": 16}, GaussianSQ),
])
def test_registry_quantizers_train_and_evaluate_on_28px_images(vision_env: Path, tmp_path: Path, variant: str,
                                                               quantizer: dict, cls: type) -> None:
    sets = [f"model.quantizer.{k}={json.dumps(v)}" for k, v in quantizer.items()]
    cfg = resolve_config(None, ["data.train_limit=64", "data.val_limit=32", "data.test_limit=40", "train.max_steps=4",
                                "train.log_every=2", "model.quantizer.embedding_dim=8", *sets], variant=variant)
    exp = tmp_path / variant
    summary = train(cfg, exp, progress=False)
    model, _, _, _ = load_vision_model(exp)
    assert summary["step"] == 4 and isinstance(model.quantizer, cls) and math.isfinite(summary["best_val_loss"])
    assert (model.encoder.res_log_var is not None) == (variant == "vae")  # only the VAE reads variances here
    r = evaluate(exp, split="test", device="cpu", progress=False, grid=False)
    assert r.num_images == 40 and r.variant == variant and 0 < r.mse < 1
    if variant == "vae":  # no codes: usage n/a
        assert r.num_codes == 0 and r.used_codes == 0 and math.isnan(r.set_perplexity)
        assert json.loads((exp / "results_test.json").read_text())["set_perplexity"] is None
        with pytest.raises(NotImplementedError):
            model.codebook()
    else:
        assert r.num_codes == 16 and 1 <= r.used_codes <= 16 and 1.0 <= r.set_perplexity <= r.used_codes
        idx = model.encode(torch.rand(2, 1, 28, 28)).indices
        assert model.decode_indices(idx).shape == (2, 1, 28, 28)
    table = sweep_table(load_sweep([str(exp)]))
    assert f"| {NAMES[variant]} |" in table and ("n/a (0)" in table) == (variant == "vae")
