"""Configuration dataclasses. YAML is only storage: every config is a dataclass whose
field names equal the constructor arguments of the part it builds, and unknown keys are
an error that lists the valid ones.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, name_unknown


class ConfigBase:
    """Mixin: ``to_dict`` / ``from_dict`` with strict key checking and nested dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "") -> typing.Self:
        data = dict(data or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        prefix = f"{where}: " if where else ""
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{prefix}unknown config key(s) {name_unknown(unknown, fields)} in section "
                f"'{cls.__name__}'; valid keys: {', '.join(sorted(fields))}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            sub = _dataclass_of(hints[name])
            if sub is not None and not isinstance(value, sub):
                if value is not None and not isinstance(value, dict):
                    raise ConfigError(f"{prefix}'{name}' in section '{cls.__name__}' must be a mapping of "
                                      f"{sub.__name__} settings, got {value!r}")
                value = sub.from_dict(value, where=f"{where}{'.' if where else ''}{name}")  # None: defaults
            elif isinstance(value, list) and _is_tuple(hints[name]):
                value = tuple(value)
            kwargs[name] = value
        try:
            obj = cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{prefix}{e}") from None
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in kwargs and _dataclass_of(hints[f.name]) is None:
                value = _coerce(getattr(obj, f.name), hints[f.name], f"{prefix}'{f.name}' in section '{cls.__name__}'")
                object.__setattr__(obj, f.name, value)
        validate = getattr(obj, "validate", None)
        if validate is not None:
            validate()
        return obj

    def replace(self, **changes: Any) -> typing.Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _coerce(value: Any, hint: Any, what: str) -> Any:
    """``value`` checked against a field's type hint (int, float, str, bool, ``X | None``,
    ``tuple[X, ...]``); a float field also takes an int or a numeric string (YAML 1.1 reads
    ``4e-4`` as a string). A value of another type is a :class:`ConfigError`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict or hint is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{what} must be a mapping, got {value!r}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], what) if len(inner) == 1 else value
    if origin is tuple or hint is tuple:
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{what} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{what} item {i}") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{what} must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{what} must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{what} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{what} must be a number, got {value!r}")
        value = float(value)
    elif hint is str:
        if isinstance(value, bool):
            raise ConfigError(f"{what} must be a string, got {value!r} (YAML reads no/yes/off/on as booleans: "
                              "quote the value, e.g. 'no')")
        if not isinstance(value, str):
            raise ConfigError(f"{what} must be a string, got {value!r}")
    return value


def _dataclass_of(hint: Any) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    return None


def _is_tuple(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple(a) for a in typing.get_args(hint))
    return origin is tuple or hint is tuple


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclasses.dataclass(frozen=True)
class FeatureConfig(ConfigBase):
    """Log-mel features of the reference protocol (docs/PROTOCOL.md, "Speech features")."""

    sample_rate: int = 16000
    n_fft: int = 2048
    hop_length: int = 160
    win_length: int = 400
    n_mels: int = 80
    fmin: float = 50.0
    fmax: float | None = None  # None: sample_rate / 2
    preemph: float = 0.97
    top_db: float = 80.0
    amin: float = 1e-5
    peak: float = 0.999
    pad_mode: str = "reflect"

    def validate(self) -> None:
        _check(self.sample_rate > 0, f"features.sample_rate must be > 0, got {self.sample_rate}")
        _check(0 < self.win_length <= self.n_fft, "features.win_length must be in (0, n_fft]")
        _check(self.hop_length > 0, f"features.hop_length must be > 0, got {self.hop_length}")
        _check(self.n_mels > 0, f"features.n_mels must be > 0, got {self.n_mels}")
        _check(self.top_db > 0, f"features.top_db must be > 0, got {self.top_db}")
        _check(self.pad_mode in ("reflect", "constant"), "features.pad_mode: reflect or constant")


@dataclasses.dataclass(frozen=True)
class EncoderConfig(ConfigBase):
    """Arguments of :class:`~sqvae_speech.nets.speech.SpeechEncoder` that a config sets (the
    model supplies ``in_channels`` = n_mels and ``out_channels`` from the quantizer)."""

    channels: int = 768


@dataclasses.dataclass(frozen=True)
class DecoderConfig(ConfigBase):
    """Arguments of :class:`~sqvae_speech.nets.speech.SpeechDecoder` that a config sets (the
    model supplies ``in_channels``, ``n_speakers`` and ``n_mels``)."""

    speaker_embedding_dim: int = 64
    hidden_size: int = 128
    num_layers: int = 2


# Speech defaults for the two arguments most quantizers share (paper: K 512, D 64).
SPEECH_QUANTIZER_DEFAULTS: dict[str, Any] = {"num_embeddings": 512, "embedding_dim": 64}


@dataclasses.dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """The speech model. ``variant`` names a quantizer of the registry
    (:data:`sqvae_speech.quantizers.QUANTIZERS`: gaussian_1..4, vqvae_ema, vq_kmeans, fsq,
    ...); ``quantizer`` holds that class's constructor arguments, checked against its
    signature. Missing arguments take the speech defaults (K 512, D 64) and then the
    constructor's own defaults, so a validated config lists every argument the quantizer
    was built with."""

    variant: str = "gaussian_4"
    n_mels: int = 80
    jitter: float = 0.5
    # Reconstruction term: "arelbo" (0.5 * D_x * log MSE), "learned" (learned decoder
    # variance) or "mse" (plain MSE, the VQ-VAE baseline of bshall/ZeroSpeech).
    recon: str = "auto"  # auto: the quantizer family's own (registry), arelbo for SQ, mse for VQ
    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    quantizer: dict[str, Any] = dataclasses.field(default_factory=dict)
    decoder: DecoderConfig = dataclasses.field(default_factory=DecoderConfig)
    # Speaker ids seen in training, in embedding order (filled in by `train`).
    speakers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from .quantizers.registry import get_quantizer

        spec = get_quantizer(self.variant)
        resolved = spec.resolve(self.quantizer, where="model.quantizer", defaults=SPEECH_QUANTIZER_DEFAULTS)
        object.__setattr__(self, "quantizer", resolved)

    def validate(self) -> None:
        import torch

        from .quantizers.registry import get_quantizer

        # The constructor checks its arguments' values; building it here reports a bad
        # value when the config is read, not later. fork_rng: the check draws no numbers
        # from the generator that initializes the model.
        with torch.random.fork_rng(devices=[]):
            try:
                get_quantizer(self.variant).build(**self.quantizer)
            except ConfigError as e:
                raise ConfigError(f"model.quantizer: {e}") from None
        _check(self.recon in ("auto", "arelbo", "learned", "mse"), "model.recon: auto, arelbo, learned or mse")
        _check(0.0 <= self.jitter < 1.0, f"model.jitter must be in [0, 1), got {self.jitter}")

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes``. A new ``variant`` without a new ``quantizer`` keeps the
        quantizer arguments the new class also takes (K, D, ...) and drops the others,
        which the old class alone knew."""
        if "variant" in changes and "quantizer" not in changes and changes["variant"] != self.variant:
            from .quantizers.registry import get_quantizer

            keep = set(get_quantizer(changes["variant"]).arguments())
            changes["quantizer"] = {k: v for k, v in self.quantizer.items() if k in keep}
        return dataclasses.replace(self, **changes)

    @property
    def recon_kind(self) -> str:
        if self.recon != "auto":
            return self.recon
        from .quantizers.registry import get_quantizer

        return get_quantizer(self.variant).recon

    @property
    def embedding_dim(self) -> int:
        """D, the latent dimension the decoder reads."""
        return int(self.quantizer["embedding_dim"])


@dataclasses.dataclass(frozen=True)
class TrainConfig(ConfigBase):
    steps: int = 500_000
    batching: str = "crops"  # "crops" (paper) or "utterances" (whole, bucketed)
    batch_size: int = 52
    crop_frames: int = 32  # latent-rate crops are crop_frames/2; +2 context frames
    # utterances mode: padded frames per batch (batch x longest). 8000 rather than 4000:
    # the GRU runs one step per frame for the whole batch, so ~20 utterances per batch
    # instead of ~10 halve its per-frame cost (bench/README.md, whole-utterance training).
    max_frames: int = 8000
    max_utterance_frames: int = 1500  # utterances mode: longer ones are cropped
    # utterances mode: lengths are jittered by up to this fraction before bucketing, so
    # batch composition varies between epochs. Padding waste on the embedded corpus:
    # 0.9 % at 0 (fixed batches), 1.45 % at 0.02, 4.6 % at 0.1 (bench/README.md).
    bucket_noise: float = 0.02
    lr: float = 4e-4
    milestones: tuple[int, ...] = (300_000, 400_000)
    gamma: float = 0.5
    grad_clip: float = 1.0
    temperature_init: float = 1.0
    temperature_decay: float = 1e-5
    temperature_min: float = 0.0
    mixed_precision: str = "no"
    num_workers: int = 2
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 50
    seed: int = 1234

    def validate(self) -> None:
        _check(self.steps > 0, f"train.steps must be > 0, got {self.steps}")
        _check(self.batching in ("crops", "utterances"), f"train.batching must be crops or utterances, got '{self.batching}'")
        _check(self.batch_size > 0, f"train.batch_size must be > 0, got {self.batch_size}")
        _check(0.0 <= self.bucket_noise <= 1.0, f"train.bucket_noise must be in [0, 1], got {self.bucket_noise}")
        _check(self.crop_frames >= 2 and self.crop_frames % 2 == 0, f"train.crop_frames must be even and >= 2, got {self.crop_frames}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(self.mixed_precision in ("no", "fp16", "bf16"), "train.mixed_precision: no, fp16 or bf16")
        _check(self.checkpoint_every > 0, "train.checkpoint_every must be > 0")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints must be >= 1")
        _check(self.grad_clip > 0, "train.grad_clip must be > 0")

    def temperature(self, step: int) -> float:
        """tau = init * exp(-decay * step), clamped at ``temperature_min``."""
        return max(self.temperature_min, self.temperature_init * math.exp(-self.temperature_decay * step))


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(ConfigBase):
    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def validate(self) -> None:
        _check(self.model.n_mels == self.features.n_mels,
               f"model.n_mels is {self.model.n_mels} but features.n_mels is {self.features.n_mels}: the model reads "
               f"the feature store's mel bands; set model.n_mels: {self.features.n_mels} (or extract features with "
               f"n_mels {self.model.n_mels})")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_feature_config(path: str | None) -> FeatureConfig:
    """FeatureConfig from a YAML file: its ``features`` section, or the whole mapping."""
    if path is None:
        return FeatureConfig()
    data = load_yaml(path)
    section = data["features"] if isinstance(data.get("features"), dict) else data
    return FeatureConfig.from_dict(section, where=str(path))


def dump_yaml(obj: ConfigBase) -> str:
    """YAML text of a config (tuples written as lists)."""
    return yaml.safe_dump(_plain(obj.to_dict()), sort_keys=False)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (value parsed as YAML) to a config mapping."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, value = item.split("=", 1)
        parts = key.split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return data


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any], sections: tuple[str, ...] | None = None,
                ignore: tuple[str, ...] = ()) -> list[str]:
    """Lines ``key: A vs B`` for every differing leaf (optionally only in ``sections``)."""
    fa, fb = _flatten(a), _flatten(b)
    lines = []
    for key in sorted(set(fa) | set(fb)):
        if sections is not None and key.split(".")[0] not in sections:
            continue
        if key in ignore:
            continue
        va, vb = fa.get(key, "<missing>"), fb.get(key, "<missing>")
        if va != vb:
            lines.append(f"{key}: {va!r} vs {vb!r}")
    return lines
