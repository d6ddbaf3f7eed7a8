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
)
from sqvae_speech.errors import CheckpointError
from sqvae_speech.models import SpeechSQVAE


def tiny_model_payload(channels=16):
    cfg = ExperimentConfig(model=ModelConfig(encoder=EncoderConfig(channels=channels),
                                             quantizer={"num_embeddings": 8, "embedding_dim": 4},
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


# Checkpoint format 1 (sqvae-speech 0.1): one fixed set of quantizer keys for every variant,
# the EMA ones named ema_*, and train.keep_freed_memory. Written here by hand, key by key,
# as 0.1 wrote them.
_V1_QUANTIZER = {"num_embeddings": 8, "embedding_dim": 4, "init_log_var": 2.302585092994046, "ema_decay": 0.99,
                 "ema_epsilon": 1e-5, "commitment_cost": 0.25, "reset_unused": False}


def _v1_checkpoint(tmp_path, variant):
    """A format-1 checkpoint: today's state dict under yesterday's config keys."""
    new_cfg = ExperimentConfig.from_dict({"model": {
        "variant": variant, "encoder": {"channels": 16}, "speakers": ["a", "b"],
        "quantizer": {"num_embeddings": 8, "embedding_dim": 4} | ({"decay": 0.99} if variant == "vqvae_ema" else {})}})
    torch.manual_seed(0)
    state = SpeechSQVAE(new_cfg.model).state_dict()
    old = new_cfg.to_dict()
    old["model"]["quantizer"] = dict(_V1_QUANTIZER)
    old["train"]["keep_freed_memory"] = True
    path = tmp_path / "checkpoints" / "ckpt-00000005.pt"
    path.parent.mkdir(parents=True)
    torch.save({"format": "sqvae-speech-checkpoint", "version": 1, "step": 5, "config": old, "model": state}, path)
    return path, state


@pytest.mark.parametrize("variant", ["gaussian_4", "vqvae_ema"])
def test_format_1_checkpoints_still_load(tmp_path, variant):
    _, state = _v1_checkpoint(tmp_path, variant)
    model, cfg, step, _ = load_model(tmp_path)
    assert step == 5 and "keep_freed_memory" not in cfg.train.to_dict()
    q = cfg.model.quantizer
    if variant == "vqvae_ema":
        # renamed keys, and the 0.1 behaviour spelled out so a resumed run continues exactly
        assert (q["decay"], q["epsilon"], q["commitment_cost"]) == (0.99, 1e-5, 0.25)
        assert (q["init"], q["init_count"], q["store_smoothed_count"], q["reset_threshold"]) == ("normal", 1.0, False, 0.01)
        assert "init_log_var" not in q
    else:
        assert q["init_log_var"] == pytest.approx(2.302585092994046) and "ema_decay" not in q and "decay" not in q
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v)


def test_format_1_yaml_keys_are_an_error_outside_a_checkpoint():
    """A config file is not versioned: yesterday's key names there get a clear error."""
    with pytest.raises(Exception, match="ema_decay.*valid arguments"):
        ExperimentConfig.from_dict({"model": {"variant": "vqvae_ema", "quantizer": {"ema_decay": 0.9}}})
