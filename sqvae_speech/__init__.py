"""sqvae-speech: stochastically quantized VAEs (SQ-VAE, Takida et al., ICML 2022) for speech.

The public API (names are imported on first use, so ``import sqvae_speech`` stays fast)::

    import sqvae_speech as sq
    model = sq.load_model("exp/gaussian_4")     # experiment dir, checkpoint or model file
    units = model.encode("a.wav")               # sq.Units: indices [T'], quantized / z [T', D], times
    mel = model.decode(units, speaker="cs-v")   # [n_mels, 2T']
    wav, sr = model.resynthesize("a.wav", speaker="cs-v")

    q = sq.GaussianSQ(num_embeddings=512, embedding_dim=64, variant="IV")   # the quantizers alone

See docs/API.md.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "load_model": "sqvae_speech.inference.model",
    "Model": "sqvae_speech.inference.model",
    "Units": "sqvae_speech.inference.units",
    "SpeechSQVAE": "sqvae_speech.models",
    "ExperimentConfig": "sqvae_speech.config",
    "FeatureConfig": "sqvae_speech.config",
    "ModelConfig": "sqvae_speech.config",
    "logmel": "sqvae_speech.data.features",
    "load_audio": "sqvae_speech.data.audio",
    "GaussianSQ": "sqvae_speech.quantizers",
    "VQEMA": "sqvae_speech.quantizers",
    "KMeansVQ": "sqvae_speech.quantizers",
    "FSQ": "sqvae_speech.quantizers",
    "GaussianVAE": "sqvae_speech.quantizers",
    "VMFSQ": "sqvae_speech.quantizers",
    "QuantizerOutput": "sqvae_speech.quantizers",
    "get_quantizer": "sqvae_speech.quantizers",
    "QUANTIZERS": "sqvae_speech.quantizers",
    "SQVAEError": "sqvae_speech.errors",
    "AudioError": "sqvae_speech.errors",
    "CheckpointError": "sqvae_speech.errors",
    "write_model_file": "sqvae_speech.modelfile",
}

__all__ = [  # noqa: PLE0604 (names resolved by __getattr__)
    "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sqvae_speech' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({"__version__", *_EXPORTS, *(k for k in globals() if k.startswith("__"))})
