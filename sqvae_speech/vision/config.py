"""Configuration of the image experiments (PROTOCOL.md, "Vision experiments").

Three sections, as for speech: ``data`` (which data set, where), ``model`` (network,
quantizer, likelihood) and ``train``. :func:`paper_defaults` gives the paper's
per-data-set settings (the authors' configs), and a YAML file or ``--set`` overrides only
what it names::

    cfg = resolve_config("conf/sweep.yaml", ["model.num_embeddings=64"], dataset="fashion_mnist",
                         variant="vqvae_ema")

Variance: vision adds the learned scalar to the encoder's variance in *linear* space,
sigma^2 = exp(log_var) + exp(scalar) (``GaussianSQ(var_space="linear")``); variant I has no
encoder variance, sigma^2 = exp(scalar). The scalar starts at log 10 for MNIST and
Fashion-MNIST and at log 20 for CIFAR-10 and CelebA. The vMF quantizer's concentration is
kappa = 1 + exp(s), s starting at log 0.05 (see ``sqvae_speech.quantizers.vmf``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..config import ConfigBase, apply_overrides, load_yaml
from ..errors import ConfigError

VARIANTS = ("gaussian_1", "gaussian_2", "gaussian_3", "gaussian_4", "vmf", "vqvae_ema")
NETS = ("28", "32", "64", "64label")
RECONS = ("auto", "arelbo", "learned", "mse", "vmf", "categorical")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Geometry of a data set: the network it needs and the default folder name under
    ``$SQVAE_VISION_DATA``."""

    net: str
    channels: int  # image channels; label maps: number of classes
    subdir: str


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("28", 1, "mnist"),
    "fashion_mnist": DatasetSpec("28", 1, "fashion-mnist"),
    "mnist5k": DatasetSpec("28", 1, "mnist5k"),
    "cifar10": DatasetSpec("32", 3, "cifar10"),
    "celeba": DatasetSpec("64", 3, "celeba"),
    "celebamask_hq": DatasetSpec("64label", 19, "CelebAMask-HQ"),
}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclasses.dataclass(frozen=True)
class VisionDataConfig(ConfigBase):
    name: str = "fashion_mnist"
    # Folder holding the data set; empty: $SQVAE_VISION_DATA/<subdir> (see DATASETS).
    root: str = ""
    # Images held out of the train file for validation (MNIST-likes and CIFAR-10: the last
    # val_size of the official training set, as the authors' Subset does).
    val_size: int = 10000
    # Quick runs: use only the first N images of a split (0: all).
    train_limit: int = 0
    val_limit: int = 0
    test_limit: int = 0

    def validate(self) -> None:
        _check(self.name in DATASETS, f"data.name '{self.name}' unknown; choose one of {', '.join(DATASETS)}")
        _check(self.val_size >= 1, f"data.val_size must be >= 1, got {self.val_size}")
        _check(min(self.train_limit, self.val_limit, self.test_limit) >= 0,
               "data.train_limit, data.val_limit and data.test_limit must be >= 0 (0: all)")


@dataclasses.dataclass(frozen=True)
class VisionModelConfig(ConfigBase):
    variant: str = "gaussian_1"
    net: str = "28"  # 28 (grey 28x28), 32 (colour 32x32), 64 (colour 64x64), 64label (label maps)
    channels: int = 1  # image channels, or classes of a label map
    num_rb: int = 2  # residual blocks (encoder: num_rb - 1 shared + one per head; decoder: num_rb)
    num_embeddings: int = 512
    embedding_dim: int = 64
    # Gaussian SQ: learned scalar, sigma^2 = exp(log_var) + exp(init_log_var) at the start.
    init_log_var: float = math.log(10.0)
    # vMF SQ: kappa = min_kappa + exp(s), s = init_log_kappa at the start.
    init_log_kappa: float = math.log(0.05)
    min_kappa: float = 1.0
    # Likelihood: arelbo (0.5 D_x log MSE), learned (learned scalar decoder variance),
    # mse (VQ-VAE), vmf (authors' vMF likelihood of one-hot label vectors),
    # categorical (softmax cross-entropy). auto: vmf for label maps, mse for VQ-VAE,
    # arelbo otherwise.
    recon: str = "auto"
    init_log_var_x: float = math.log(0.1)  # recon=learned
    init_log_kappa_inv_x: float = math.log(0.01)  # recon=vmf: 1/kappa_x of the decoder
    # VQ-VAE with EMA.
    ema_decay: float = 0.999
    ema_epsilon: float = 1e-5
    commitment_cost: float = 0.25
    reset_unused: bool = False
    # reset a code once its EMA count (uses per batch) falls below this; with decay 0.999 an
    # unused code falls from 1 to 0.01 in ~4600 steps, to 0.1 in ~2300
    reset_threshold: float = 0.01

    def __post_init__(self) -> None:
        # YAML reads `net: 28` as a number
        if isinstance(self.net, int):
            object.__setattr__(self, "net", str(self.net))

    def validate(self) -> None:
        _check(self.variant in VARIANTS, f"model.variant '{self.variant}' unknown; choose one of {', '.join(VARIANTS)}")
        _check(self.net in NETS, f"model.net '{self.net}' unknown; choose one of {', '.join(NETS)}")
        _check(self.recon in RECONS, f"model.recon '{self.recon}' unknown; choose one of {', '.join(RECONS)}")
        _check(self.channels >= 1, f"model.channels must be >= 1, got {self.channels}")
        _check(self.num_rb >= 1, f"model.num_rb must be >= 1, got {self.num_rb}")
        _check(self.num_embeddings >= 2, f"model.num_embeddings (K) must be >= 2, got {self.num_embeddings}")
        _check(self.embedding_dim >= 2, f"model.embedding_dim must be >= 2, got {self.embedding_dim}")
        label = self.net == "64label"
        _check(not label or self.channels >= 2, "model.channels of a label map (net 64label) is its number of classes, >= 2")
        kind = self.recon_kind
        _check(label == (kind in ("vmf", "categorical")),
               f"model.recon '{kind}' does not fit net '{self.net}': label maps use vmf or categorical, images arelbo, learned or mse")

    @property
    def recon_kind(self) -> str:
        if self.recon != "auto":
            return self.recon
        if self.net == "64label":
            return "vmf"
        return "mse" if self.variant == "vqvae_ema" else "arelbo"


@dataclasses.dataclass(frozen=True)
class VisionTrainConfig(ConfigBase):
    epochs: int = 100
    max_steps: int = 0  # stop after this many steps in all (0: run every epoch)
    batch_size: int = 32
    eval_batch_size: int = 32  # the authors evaluate in batches of 32 too (batch perplexity)
    lr: float = 1e-3
    plateau_factor: float = 0.5  # ReduceLROnPlateau on the validation loss
    plateau_patience: int = 3
    temperature_init: float = 1.0
    temperature_decay: float = 1e-5
    temperature_min: float = 0.0
    num_workers: int = 0
    log_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0

    def validate(self) -> None:
        _check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _check(self.max_steps >= 0, f"train.max_steps must be >= 0 (0: no limit), got {self.max_steps}")
        _check(self.batch_size >= 2, f"train.batch_size must be >= 2 (BatchNorm), got {self.batch_size}")
        _check(self.eval_batch_size >= 1, f"train.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(0 < self.plateau_factor < 1, f"train.plateau_factor must be in (0, 1), got {self.plateau_factor}")
        _check(self.plateau_patience >= 0, "train.plateau_patience must be >= 0")
        _check(self.log_every >= 1 and self.keep_checkpoints >= 1, "train.log_every and train.keep_checkpoints must be >= 1")

    def temperature(self, step: int) -> float:
        """tau = init * exp(-decay * step), clamped at ``temperature_min``."""
        return max(self.temperature_min, self.temperature_init * math.exp(-self.temperature_decay * step))


@dataclasses.dataclass(frozen=True)
class VisionConfig(ConfigBase):
    data: VisionDataConfig = dataclasses.field(default_factory=VisionDataConfig)
    model: VisionModelConfig = dataclasses.field(default_factory=VisionModelConfig)
    train: VisionTrainConfig = dataclasses.field(default_factory=VisionTrainConfig)

    def validate(self) -> None:
        spec = DATASETS[self.data.name]
        _check(self.model.net == spec.net and self.model.channels == spec.channels,
               f"data set '{self.data.name}' needs model.net={spec.net} and model.channels={spec.channels}, "
               f"got net={self.model.net}, channels={self.model.channels}; leave them out of the config "
               "to take the data set's defaults")


# The authors' per-data-set settings (their configs/*.yaml).
_PAPER: dict[str, dict[str, Any]] = {
    "mnist": {"model": {"num_rb": 2, "num_embeddings": 128, "init_log_var": math.log(10.0)}},
    "fashion_mnist": {"model": {"num_rb": 2, "num_embeddings": 256, "init_log_var": math.log(10.0)}},
    "mnist5k": {"model": {"num_rb": 2, "num_embeddings": 128, "init_log_var": math.log(10.0)}},
    "cifar10": {"model": {"num_rb": 2, "num_embeddings": 512, "init_log_var": math.log(20.0)}},
    # JPEG / PNG files decoded on the fly: two loader processes, as the authors use
    "celeba": {"model": {"num_rb": 6, "num_embeddings": 512, "init_log_var": math.log(20.0)},
               "train": {"epochs": 70, "num_workers": 2}},
    "celebamask_hq": {"model": {"num_rb": 2, "num_embeddings": 64, "variant": "vmf"},
                      "train": {"epochs": 70, "num_workers": 2}},
}


def paper_defaults(dataset: str, variant: str | None = None) -> dict[str, Any]:
    """Config mapping with the paper's settings for ``dataset`` (and ``variant``)."""
    if dataset not in DATASETS:
        raise ConfigError(f"data set '{dataset}' unknown; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    paper = _PAPER[dataset]
    data = {"data": {"name": dataset, **paper.get("data", {})},
            "model": {"net": spec.net, "channels": spec.channels, **paper.get("model", {})},
            "train": dict(paper.get("train", {}))}
    if variant is not None:
        data["model"]["variant"] = variant
    return data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config(config_path: str | None = None, overrides: list[str] | None = None,
                   dataset: str | None = None, variant: str | None = None) -> VisionConfig:
    """Paper defaults for the data set, then the YAML file, then ``--set`` overrides.

    The data set comes from ``dataset``, else the file's ``data.name``, else fashion_mnist;
    ``variant`` (if given) wins over the file.
    """
    user = load_yaml(config_path) if config_path else {}
    name = dataset or (user.get("data") or {}).get("name") or "fashion_mnist"
    merged = _merge(paper_defaults(name), user)
    merged.setdefault("data", {})["name"] = name
    if variant:
        merged.setdefault("model", {})["variant"] = variant
    merged = apply_overrides(merged, list(overrides or []))
    return VisionConfig.from_dict(merged, where=config_path or "vision config")
