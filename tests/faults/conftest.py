"""Fixtures of the fault-injection suite (tests/faults)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_experiment

from sqvae_speech.checkpoint import save_checkpoint
from sqvae_speech.models import SpeechSQVAE


@pytest.fixture(scope="session")
def untrained_exp(real_featstore, tmp_path_factory) -> Path:
    """An experiment dir holding one checkpoint (step 7) of an untrained tiny model that
    knows the speakers of ``real_featstore``: evaluation and export only encode."""
    torch.manual_seed(0)
    cfg = tiny_experiment()
    cfg = cfg.replace(model=cfg.model.replace(speakers=tuple(real_featstore.speakers)))
    exp = tmp_path_factory.mktemp("untrained_exp")
    save_checkpoint(exp, 7, {"config": cfg.to_dict(), "model": SpeechSQVAE(cfg.model).state_dict()}, keep=1)
    return exp
