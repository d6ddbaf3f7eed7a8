"""Configuration of the image experiments (docs/PROTOCOL.md, "Vision experiments").

Three sections, as for speech: ``data`` (which data set, where), ``model`` (network,
quantizer, likelihood) and ``train``. :func:`paper_defaults` gives the paper's
per-data-set settings (the authors' configs), and a YAML file or ``--set`` overrides only
what it names::

    cfg = resolve_config("conf/sweep.yaml", ["model.quantizer.num_embeddings=64"],
                         dataset="fashion_mnist", variant="vqvae_ema")

The model section names a quantizer of the registry (``model.variant``: gaussian_1..4,
gaussian_fixed, vmf, vqvae_ema, vqvae_ema_reset, vq_kmeans, fsq, vae; see
:data:`sqvae_speech.quantizers.QUANTIZERS`) and ``model.quantizer`` holds that class's
constructor arguments, as in the speech config::

    model:
      variant: gaussian_1
      quantizer: {num_embeddings: 256, embedding_dim: 64, var_space: linear, init_log_var: 2.302585}

Missing arguments take the vision defaults (:data:`VISION_QUANTIZER_DEFAULTS`: K 512,
D 64, linear variance space, sigma^2 scalar from log 10), then the data set's paper values
(:func:`paper_defaults`), each only where the class takes the argument, and finally the
constructor's own defaults; a resolved config lists every argument the quantizer was
built with.

Variance: vision adds the learned scalar to the encoder's variance in *linear* space,
sigma^2 = exp(log_var) + exp(scalar) (``GaussianSQ(var_space="linear")``); variant I has no
encoder variance and, as in the authors' code (sony/sqvae vision/model.py), sigma^2 =
1 + exp(scalar). The scalar starts at log 10 for MNIST and Fashion-MNIST and at log 20
for CIFAR-10 and CelebA. The vMF quantizer's concentration is kappa = 1 + exp(s), s
starting at log 0.05 (see ``sqvae_speech.quantizers.vmf``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ..config import ConfigBase, apply_overrides, load_yaml
from ..errors import ConfigError
from ..quantizers.registry import QUANTIZERS, QuantizerSpec, get_quantizer

# The paper's image models; every registry name (VARIANTS) builds and trains.
PAPER_VARIANTS = ("gaussian_1", "gaussian_2", "gaussian_3", "gaussian_4", "vmf", "vqvae_ema")
VARIANTS = tuple(QUANTIZERS)
NETS = ("28", "32", "64", "64label")
RECONS = ("auto", "arelbo", "learned", "mse", "vmf", "categorical")
# Vision's quantizer arguments, filled before the constructor's own defaults and only where
# the class takes them (var_space and init_log_var: GaussianSQ only).
VISION_QUANTIZER_DEFAULTS: dict[str, Any] = {"num_embeddings": 512, "embedding_dim": 64, "var_space": "linear",
                                             "init_log_var": math.log(10.0)}


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


def _spec(variant: str) -> QuantizerSpec:
    if variant not in QUANTIZERS:
        raise ConfigError(f"model.variant '{variant}' unknown; choose one of {', '.join(QUANTIZERS)}")
    return get_quantizer(variant)


def quantizer_defaults(variant: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``defaults`` that ``variant``'s class takes (QuantizerSpec.defaults_for)."""
    return _spec(variant).defaults_for(defaults)


# The flat quantizer keys of the first vision release -> their constructor argument.
FLAT_QUANTIZER_KEYS = {"num_embeddings": "num_embeddings", "embedding_dim": "embedding_dim",
                       "init_log_var": "init_log_var", "init_log_kappa": "init_log_kappa", "min_kappa": "min_kappa",
                       "ema_decay": "decay", "ema_epsilon": "epsilon", "commitment_cost": "commitment_cost",
                       "reset_unused": "reset_unused", "reset_threshold": "reset_threshold"}


@dataclasses.dataclass(frozen=True)
class VisionModelConfig(ConfigBase):
    """The image model: network geometry, likelihood and the quantizer. ``variant`` names a
    registry quantizer; ``quantizer`` holds its constructor arguments (see the module
    docstring), resolved when the config is made."""

    variant: str = "gaussian_1"
    net: str = "28"  # 28 (grey 28x28), 32 (colour 32x32), 64 (colour 64x64), 64label (label maps)
    channels: int = 1  # image channels, or classes of a label map
    # residual blocks (encoder: num_rb - 1 shared + one per head; decoder: num_rb for 28 / 32 px,
    # num_rb - 1 for 64 px, as sony/sqvae vision/networks/net_64.py)
    num_rb: int = 2
    # Likelihood: arelbo (0.5 D_x log(SSE / B), SSE / B the per-image sum), learned (learned
    # scalar decoder variance), mse (VQ-VAE), vmf (authors' vMF likelihood of one-hot label
    # vectors), categorical (softmax cross-entropy). auto: vmf for label maps, else the
    # quantizer family's own (registry: mse for VQ and FSQ, arelbo for SQ and VAE).
    recon: str = "auto"
    init_log_var_x: float = math.log(0.1)  # recon=learned
    init_log_kappa_inv_x: float = math.log(0.01)  # recon=vmf: 1/kappa_x of the decoder
    # Constructor arguments of the variant's quantizer class (num_embeddings, embedding_dim,
    # init_log_var, var_space, init_log_kappa, decay, commitment_cost, reset_unused, ...).
    quantizer: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # YAML reads `net: 28` as a number
        if isinstance(self.net, int):
            object.__setattr__(self, "net", str(self.net))
        spec = _spec(self.variant)
        resolved = spec.resolve(self.quantizer or {}, where="model.quantizer", defaults=VISION_QUANTIZER_DEFAULTS)
        object.__setattr__(self, "quantizer", resolved)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "") -> VisionModelConfig:
        """As :meth:`ConfigBase.from_dict`; a flat quantizer key of the first vision release
        is an error that names its place in ``model.quantizer``."""
        flat = sorted(k for k in (data or {}) if k in FLAT_QUANTIZER_KEYS)
        if flat:
            moved = ", ".join(f"model.{k} -> model.quantizer.{FLAT_QUANTIZER_KEYS[k]}" for k in flat)
            raise ConfigError(f"{where + ': ' if where else ''}quantizer settings live in model.quantizer now "
                              f"(the constructor arguments of the variant's class): {moved}")
        return super().from_dict(data, where)

    def validate(self) -> None:
        import torch

        _check(self.net in NETS, f"model.net '{self.net}' unknown; choose one of {', '.join(NETS)}")
        _check(self.recon in RECONS, f"model.recon '{self.recon}' unknown; choose one of {', '.join(RECONS)}")
        _check(self.channels >= 1, f"model.channels must be >= 1, got {self.channels}")
        _check(self.num_rb >= 1, f"model.num_rb must be >= 1, got {self.num_rb}")
        _check(self.embedding_dim >= 2,
               f"model.quantizer.embedding_dim must be >= 2 (the encoder's first conv has D/2 channels), got {self.embedding_dim}")
        # The constructor checks its arguments' values; fork_rng: the check draws no numbers
        # from the generator that initializes the model.
        with torch.random.fork_rng(devices=[]):
            try:
                _spec(self.variant).build(**self.quantizer)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"model.quantizer of '{self.variant}': {e}") from None
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
        return _spec(self.variant).recon

    @property
    def embedding_dim(self) -> int:
        """D, the latent channels the encoder emits and the decoder reads."""
        return int(self.quantizer["embedding_dim"])


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


# The authors' per-data-set settings (their configs/*.yaml). Quantizer values are defaults:
# each is kept only where the chosen variant's class takes it (quantizer_defaults).
_PAPER: dict[str, dict[str, Any]] = {
    "mnist": {"model": {"num_rb": 2, "quantizer": {"num_embeddings": 128, "init_log_var": math.log(10.0)}}},
    "fashion_mnist": {"model": {"num_rb": 2, "quantizer": {"num_embeddings": 256, "init_log_var": math.log(10.0)}}},
    "mnist5k": {"model": {"num_rb": 2, "quantizer": {"num_embeddings": 128, "init_log_var": math.log(10.0)}}},
    "cifar10": {"model": {"num_rb": 2, "quantizer": {"num_embeddings": 512, "init_log_var": math.log(20.0)}}},
    # JPEG / PNG files decoded on the fly: two loader processes, as the authors use
    "celeba": {"model": {"num_rb": 6, "quantizer": {"num_embeddings": 512, "init_log_var": math.log(20.0)}},
               "train": {"epochs": 70, "num_workers": 2}},
    "celebamask_hq": {"model": {"num_rb": 2, "variant": "vmf", "quantizer": {"num_embeddings": 64}},
                      "train": {"epochs": 70, "num_workers": 2}},
}


def paper_defaults(dataset: str, variant: str | None = None) -> dict[str, Any]:
    """Config mapping with the paper's settings for ``dataset``, its ``model.quantizer``
    reduced to the arguments of ``variant``'s class (default: the data set's paper variant,
    else gaussian_1)."""
    if dataset not in DATASETS:
        raise ConfigError(f"data set '{dataset}' unknown; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[dataset]
    paper = copy.deepcopy(_PAPER[dataset])
    model = paper.get("model", {})
    variant = variant or model.get("variant") or VisionModelConfig.variant
    model["variant"] = variant
    model["quantizer"] = quantizer_defaults(variant, model.get("quantizer", {}))
    return {"data": {"name": dataset, **paper.get("data", {})},
            "model": {"net": spec.net, "channels": spec.channels, **model},
            "train": dict(paper.get("train", {}))}


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config(config_path: str | None = None, overrides: list[str] | None = None,
                   dataset: str | None = None, variant: str | None = None) -> VisionConfig:
    """Paper defaults for the data set and variant, then the YAML file, then ``--set`` overrides.

    The data set comes from ``dataset``, else the file's ``data.name``, else fashion_mnist;
    ``variant`` (if given) wins over the file; overrides win over both.
    """
    top = copy.deepcopy(load_yaml(config_path) if config_path else {})
    if dataset:
        top.setdefault("data", {})["name"] = dataset
    if variant:
        top.setdefault("model", {})["variant"] = variant
    top = apply_overrides(top, list(overrides or []))
    name = (top.get("data") or {}).get("name") or "fashion_mnist"
    merged = _merge(paper_defaults(name, (top.get("model") or {}).get("variant")), top)
    merged.setdefault("data", {})["name"] = name
    return VisionConfig.from_dict(merged, where=config_path or "vision config")


# What the first vision release computed, as today's constructor arguments: gaussian_1 had
# sigma^2 = exp(s) (GaussianSQ variant I in log space; today's linear space gives
# 1 + exp(s)); the VQ-EMA started from N(0, 1) codes with a pseudo-count of 1, used the
# smoothed count for the division only and reset codes under an EMA count of 0.01.
_FLAT_BEHAVIOUR: dict[str, dict[str, Any]] = {
    "gaussian_1": {"var_space": "log"},
    "vqvae_ema": {"init": "normal", "init_count": 1.0, "store_smoothed_count": False, "reset_threshold": 0.01},
}


def upgrade_vision_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A vision config mapping with the flat quantizer keys of the first release (model.
    num_embeddings, model.ema_decay, ...) -> today's ``model.quantizer`` section.

    Flat keys become constructor arguments (``ema_decay`` / ``ema_epsilon`` -> ``decay`` /
    ``epsilon``); those the variant's class does not take are dropped, and the variant's
    old behaviour is recorded (``_FLAT_BEHAVIOUR``) so an old checkpoint computes what it
    was trained with. A mapping already in today's form comes back unchanged (a copy).
    """
    data = copy.deepcopy(dict(data))
    model = data.get("model")
    if not isinstance(model, dict) or not any(k in model for k in FLAT_QUANTIZER_KEYS):
        return data
    flat = {new: model.pop(old) for old, new in FLAT_QUANTIZER_KEYS.items() if old in model}
    variant = model.get("variant", VisionModelConfig.variant)
    args = _spec(variant).arguments()
    upgraded = _FLAT_BEHAVIOUR.get(variant, {}) | {k: v for k, v in flat.items() if k in args}
    model["quantizer"] = upgraded | dict(model.get("quantizer") or {})
    return data
