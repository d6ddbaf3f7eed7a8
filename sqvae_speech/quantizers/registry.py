"""The one name -> quantizer map that the speech and vision models build from.

A config names a quantizer (``gaussian_4``, ``vqvae_ema``, ...) and may set its
constructor arguments; the name itself fixes some of them (``gaussian_4`` is
``GaussianSQ(variant="IV")``). Example::

    spec = get_quantizer("gaussian_4")
    channels = spec.encoder_channels(embedding_dim=64)        # 128: means + variances
    quantizer = spec.build(num_embeddings=512, embedding_dim=64, var_space="log")
    spec.recon                                                # "arelbo"

Every quantizer has ``forward(z [B, L, D], log_var=None, mask=None, temperature=1.0) ->
QuantizerOutput``, ``lookup(indices) -> [..., D]`` (the continuous VAE raises) and
``encoder_channels(embedding_dim, **kwargs)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from ..errors import ConfigError, name_unknown
from .continuous import GaussianVAE
from .fsq import FSQ
from .gaussian import GaussianSQ
from .kmeans_vq import KMeansVQ
from .vmf import VMFSQ
from .vqema import VQEMA

RECON_KINDS = ("arelbo", "mse")


@dataclass(frozen=True)
class QuantizerSpec:
    """One registry entry.

    name:    registry name, e.g. "gaussian_4".
    cls:     the quantizer class, e.g. GaussianSQ.
    fixed:   constructor arguments the name sets, e.g. {"variant": "IV"}; a config may not
             set them.
    summary: one line for docs and help.
    recon:   default reconstruction term of the family: "arelbo" (SQ, VAE) or "mse" (VQ
             baselines and FSQ, as bshall/ZeroSpeech trains its VQ-VAE).
    """

    name: str
    cls: type
    fixed: Mapping[str, Any] = field(default_factory=dict, hash=False)
    summary: str = ""
    recon: str = "arelbo"

    def __post_init__(self) -> None:
        if self.recon not in RECON_KINDS:
            raise ValueError(f"quantizer {self.name}: recon must be one of {RECON_KINDS}, got {self.recon!r}")
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))
        unknown = set(self.fixed) - set(self._signature_names())
        if unknown:
            raise ValueError(f"quantizer {self.name}: fixed arguments {sorted(unknown)} are not {self.cls.__name__}'s")

    def _signature_names(self) -> list[str]:
        params = inspect.signature(self.cls.__init__).parameters.values()
        return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def arguments(self) -> list[str]:
        """Constructor arguments a config section may set (the signature minus the fixed ones)."""
        return [n for n in self._signature_names() if n not in self.fixed]

    def _check(self, kwargs: Mapping[str, Any]) -> None:
        valid = self.arguments()
        fixed = sorted(k for k in kwargs if k in self.fixed)
        if fixed:
            raise ConfigError(
                f"quantizer '{self.name}' sets {', '.join(f'{k}={self.fixed[k]!r}' for k in fixed)} itself; "
                f"valid arguments: {', '.join(valid)}"
            )
        unknown = sorted(k for k in kwargs if k not in valid)
        if unknown:
            raise ConfigError(
                f"quantizer '{self.name}' ({self.cls.__name__}) has no argument {name_unknown(unknown, valid)}; "
                f"valid arguments: {', '.join(valid)}"
            )

    def defaults_for(self, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of a domain's ``defaults`` (speech, vision: K, D, ...) that this class
        takes. K is skipped where the constructor derives it (``num_embeddings=None``: FSQ's
        prod(levels), the VAE's no codes), so a domain default never contradicts it."""
        params = inspect.signature(self.cls.__init__).parameters
        args = self.arguments()
        return {k: v for k, v in defaults.items()
                if k in args and not (k == "num_embeddings" and params[k].default is None)}

    def resolve(self, kwargs: Mapping[str, Any], where: str = "quantizer",
                defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``kwargs`` over the domain ``defaults`` it accepts (:meth:`defaults_for`) over the
        constructor's defaults: every argument a config may set, in signature order. A
        numeric string becomes a float where the constructor's default is a float (YAML
        1.1 reads ``1e-5`` as a string). An unknown or fixed key, a missing required one or
        a non-number is a ConfigError that names ``where`` (e.g. "model.quantizer")."""
        try:
            self._check(kwargs)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        given = self.defaults_for(defaults or {}) | dict(kwargs)
        params = inspect.signature(self.cls.__init__).parameters
        out: dict[str, Any] = {}
        for name in self.arguments():
            default = params[name].default
            if name in given:
                value = given[name]
                if isinstance(value, str) and isinstance(default, float):
                    try:
                        value = float(value)
                    except ValueError:
                        raise ConfigError(f"{where}.{name} must be a number, got {value!r}") from None
                out[name] = value
            elif default is not inspect.Parameter.empty:
                out[name] = list(default) if isinstance(default, tuple) else default
            else:
                raise ConfigError(f"{where}: quantizer '{self.name}' needs '{name}'")
        return out

    def build(self, **kwargs: Any) -> nn.Module:
        """``cls(**fixed, **kwargs)``; an unknown or fixed key is a ConfigError naming the valid ones."""
        self._check(kwargs)
        return self.cls(**self.fixed, **kwargs)

    def encoder_channels(self, **kwargs: Any) -> int:
        """Channels the encoder must emit for ``build(**kwargs)`` (needs ``embedding_dim``)."""
        self._check(kwargs)
        if "embedding_dim" not in kwargs:
            raise ConfigError(f"quantizer '{self.name}': encoder_channels needs embedding_dim")
        return int(self.cls.encoder_channels(**self.fixed, **kwargs))


def _specs(*specs: QuantizerSpec) -> dict[str, QuantizerSpec]:
    return {s.name: s for s in specs}


QUANTIZERS: dict[str, QuantizerSpec] = _specs(
    QuantizerSpec("gaussian_1", GaussianSQ, {"variant": "I"},
                  "Gaussian SQ-VAE, variance I: one learned scalar sigma^2", "arelbo"),
    QuantizerSpec("gaussian_2", GaussianSQ, {"variant": "II"},
                  "Gaussian SQ-VAE, variance II: one sigma^2 per item from the encoder", "arelbo"),
    QuantizerSpec("gaussian_3", GaussianSQ, {"variant": "III"},
                  "Gaussian SQ-VAE, variance III: one sigma^2 per position from the encoder", "arelbo"),
    QuantizerSpec("gaussian_4", GaussianSQ, {"variant": "IV"},
                  "Gaussian SQ-VAE, variance IV: diagonal sigma^2 per position from the encoder", "arelbo"),
    QuantizerSpec("gaussian_fixed", GaussianSQ, {"variant": "I", "learn_variance": False},
                  "Gaussian SQ-VAE with a fixed sigma^2 = exp(init_log_var) (paper Table 2 ablation)", "arelbo"),
    QuantizerSpec("vqvae_ema", VQEMA, {},
                  "VQ-VAE with an EMA codebook, as bshall/ZeroSpeech VQEmbeddingEMA", "mse"),
    QuantizerSpec("vqvae_ema_reset", VQEMA, {"reset_unused": True},
                  "VQ-VAE with an EMA codebook and dead codes re-seeded from the batch (Jukebox-style)", "mse"),
    QuantizerSpec("vq_kmeans", KMeansVQ, {},
                  "VQ with k-means init, EMA (decay 0.8) and dead-code replacement, as vector-quantize-pytorch", "mse"),
    QuantizerSpec("fsq", FSQ, {},
                  "finite scalar quantization (Mentzer et al. 2024), levels (8, 8, 8) = 512 codes", "mse"),
    QuantizerSpec("vae", GaussianVAE, {},
                  "continuous Gaussian VAE (no quantization; KL to N(0, I))", "arelbo"),
    QuantizerSpec("vmf", VMFSQ, {},
                  "von Mises-Fisher SQ-VAE (unit-norm latents and codes)", "arelbo"),
)


def get_quantizer(name: str) -> QuantizerSpec:
    """The registry entry for ``name``; an unknown name is a ConfigError listing the names."""
    try:
        return QUANTIZERS[name]
    except KeyError:
        raise ConfigError(f"quantizer '{name}' unknown; choose one of {', '.join(QUANTIZERS)}") from None
