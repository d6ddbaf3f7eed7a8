"""Fixtures of the fault-injection suite (tests/faults)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_experiment

from sqvae_speech.checkpoint import save_checkpoint
from sqvae_speech.data.audio import load_audio
from sqvae_speech.models import SpeechSQVAE

THREE_HOURS = 3 * 3600 * 16000  # samples of the 3-hour recording


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


@pytest.fixture(scope="session")
def three_hour_wav(speech_files, tmp_path_factory) -> Iterator[Path]:
    """3 h of real speech (16 clips looped) as 16 kHz mono 16-bit PCM, 345.6 MB: written
    once for the long-recording tests (~2 s) and removed when the session ends."""
    loop = np.concatenate([load_audio(p, 16000) for p in speech_files["cs-m"] + speech_files["nl-v"]])
    wav = tmp_path_factory.mktemp("three_hours") / "long.wav"
    try:
        with sf.SoundFile(wav, "w", 16000, 1, "PCM_16") as f:
            left = THREE_HOURS
            while left:
                f.write(loop[:left])
                left -= min(left, loop.shape[0])
        assert sf.info(str(wav)).frames == THREE_HOURS
        yield wav
    finally:
        wav.unlink(missing_ok=True)
