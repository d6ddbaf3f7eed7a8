from collections import Counter

import pytest
import torch

from sqvae_speech.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_model,
    load_scheduler_state,
    save_checkpoint,
    scheduler_state,
)
from sqvae_speech.config import (
    EncoderConfig,
    ExperimentConfig,
    ModelConfig,
    QuantizerConfig,
)
from sqvae_speech.errors import CheckpointError
from sqvae_speech.models import SpeechSQVAE


def tiny_model_payload(channels=16):
    cfg = ExperimentConfig(model=ModelConfig(encoder=EncoderConfig(channels=channels),
                                             quantizer=QuantizerConfig(num_embeddings=8, embedding_dim=4),
                                             speakers=("a", "b")))
    return cfg, {"config": cfg.to_dict(), "model": SpeechSQVAE(cfg.model).state_dict()}


def test_save_prune_and_latest(tmp_path):
    _, payload = tiny_model_payload()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, payload, keep=2)
    (tmp_path / "checkpoints" / ".tmp-ckpt-00000009.pt.x").write_bytes(b"partial")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert latest_checkpoint(tmp_path).name == "ckpt-00000004.pt"


def test_load_model_round_trip(tmp_path):
    cfg, payload = tiny_model_payload()
    save_checkpoint(tmp_path, 7, payload, keep=1)
    model, loaded_cfg, step, _ = load_model(tmp_path)
    assert step == 7 and loaded_cfg == cfg and not model.training
    for k, v in payload["model"].items():
        assert torch.equal(model.state_dict()[k], v)


def test_truncated_foreign_and_mismatched_checkpoints(tmp_path):
    _, payload = tiny_model_payload()
    good = save_checkpoint(tmp_path, 1, payload, keep=1)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an sqvae-speech checkpoint"):
        load_checkpoint(foreign)
    cfg_small, _ = tiny_model_payload(channels=16)
    _, bigger = tiny_model_payload(channels=24)
    mismatched = {"config": cfg_small.to_dict(), "model": bigger["model"]}
    save_checkpoint(tmp_path / "x", 1, mismatched, keep=1)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_model(tmp_path / "x")
    empty = tmp_path / "empty_exp"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model(empty)


def test_multisteplr_state_survives_weights_only(tmp_path):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.5)
    for _ in range(3):
        opt.step()
        sched.step()
    path = tmp_path / "s.pt"
    torch.save(scheduler_state(sched), path)
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, milestones=[9], gamma=0.1)
    load_scheduler_state(sched2, torch.load(path, weights_only=True))
    assert sched2.milestones == Counter({2: 1, 4: 1}) and sched2.last_epoch == 3
