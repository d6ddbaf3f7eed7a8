"""What the neural vocoder's tests share (tests/test_neural_vocoder.py and
tests/test_train_vocoder.py): tiny configs and experiment helpers (the fixtures
voc_data and trained are in tests/conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from sqvae_speech.config import FeatureConfig
from sqvae_speech.synthesis.neural import (
    NeuralVocoder,
    NeuralVocoderConfig,
)
from sqvae_speech.synthesis.neural_train import resolve_vocoder_config, train_vocoder

FC = FeatureConfig()
SR, HOP = FC.sample_rate, FC.hop_length
KEY = "%s sr=16000 hop=160"  # the F0 cache's key: method, rate and hop
TINY_NET = NeuralVocoderConfig(channels=16, layers=2)
# 16 channels, 2 residual blocks, 1 s windows cut to 40 frames: ~15 ms a step on one core
TINY = ["vocoder.channels=16", "vocoder.layers=2", "train.batch_size=2", "train.segment_frames=40",
        "train.checkpoint_every=4", "train.keep_checkpoints=2", "train.log_every=1"]


def tiny(**train):
    return resolve_vocoder_config(None, TINY + [f"train.{k}={json.dumps(v)}" for k, v in train.items()])


def metrics(exp: Path) -> list[dict]:
    return [json.loads(ln) for ln in (exp / "metrics.jsonl").read_text().splitlines()]


def randomize_output(model: NeuralVocoder, seed: int = 0, scale: float = 0.3) -> NeuralVocoder:
    """The last convolution starts at zero (the network then adds nothing to the prior):
    random weights there make the network part visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.out.weight.copy_(torch.randn(model.out.weight.shape, generator=g) * scale)
        model.out.bias.copy_(torch.randn(model.out.bias.shape, generator=g) * scale)
    return model


def receptive_radius(cfg: NeuralVocoderConfig) -> int:
    """Frames on each side that reach one frame of the responses: the input convolution,
    then one dilated convolution per block (the others are 1x1)."""
    half = (cfg.kernel_size - 1) // 2
    return half + sum(cfg.dilations[i % len(cfg.dilations)] * half for i in range(cfg.layers))


def no_temp_files(root: Path) -> list[Path]:
    return list(root.rglob(".tmp-*"))


# ----------------------------------------------------------------------------- experiments


def new_exp(path: Path, voc_data: dict) -> Path:
    """An experiment dir holding the F0 cache already (its Harvest analysis is done once)."""
    path.mkdir(parents=True)
    shutil.copy(voc_data["f0"], path / "f0.npz")
    return path


def run(cfg, voc_data: dict, exp: Path, **kw) -> dict:
    return train_vocoder(cfg, voc_data["data"], voc_data["feats"], exp, cpu=True, progress=False, **kw)
