import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, tiny_experiment

from sqvae_speech.checkpoint import list_checkpoints, load_checkpoint
from sqvae_speech.cli import main as cli_main
from sqvae_speech.config import dump_yaml
from sqvae_speech.errors import CheckpointError, ConfigError, NonFiniteError
from sqvae_speech.models import SpeechSQVAE
from sqvae_speech.train import train

VENV_BIN = Path(sys.executable).parent


def metrics(exp):
    return [json.loads(ln) for ln in (exp / "metrics.jsonl").read_text().splitlines()]


def test_experiment_dir_describes_itself(real_featstore, tmp_path):
    cfg = tiny_experiment(steps=4)
    exp = tmp_path / "exp"
    summary = train(cfg, real_featstore.path, exp, progress=False)
    assert summary["step"] == 4
    saved = yaml.safe_load((exp / "config.yaml").read_text())
    assert saved["model"]["speakers"] == ["cs-m", "cs-v", "nl-m", "nl-v"]
    assert saved["train"]["steps"] == 4
    assert [s for s, _ in list_checkpoints(exp)] == [2, 4]
    ckpt = torch.load(exp / "checkpoints/ckpt-00000004.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["config"]["model"]["variant"] == "gaussian_4"
    assert ckpt["config"]["features"] == real_featstore.config.to_dict()
    assert [m["step"] for m in metrics(exp)] == [1, 2, 3, 4]
    assert all(math.isfinite(m["loss"]) for m in metrics(exp))
    assert (exp / "tensorboard").is_dir() and any((exp / "tensorboard").iterdir())


@pytest.mark.parametrize("variant", ["gaussian_1", "gaussian_3", "gaussian_4", "vqvae_ema"])
def test_training_lowers_the_reconstruction_error(real_featstore, tmp_path, variant):
    cfg = tiny_experiment(steps=40, lr=3e-3, checkpoint_every=40)
    cfg = cfg.replace(model=cfg.model.replace(variant=variant))
    train(cfg, real_featstore.path, tmp_path / "exp", progress=False)
    m = metrics(tmp_path / "exp")
    first = sum(r["mse_db2"] for r in m[:5]) / 5
    last = sum(r["mse_db2"] for r in m[-5:]) / 5
    assert last < 0.5 * first, (first, last)


def test_resume_continues_step_schedule_and_optimizer(real_featstore, tmp_path):
    cfg = tiny_experiment(steps=6, checkpoint_every=3, milestones=[4], gamma=0.5)
    exp = tmp_path / "exp"
    train(cfg, real_featstore.path, exp, progress=False, stop_after=3)
    assert [s for s, _ in list_checkpoints(exp)] == [3]
    train(cfg, real_featstore.path, exp, resume=True, progress=False)
    ckpt = load_checkpoint(exp / "checkpoints/ckpt-00000006.pt")
    assert ckpt["scheduler"]["last_epoch"] == 6
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(cfg.train.lr * 0.5)
    assert int(next(iter(ckpt["optimizer"]["state"].values()))["step"]) == 6
    assert [m["step"] for m in metrics(exp)] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_another_model(real_featstore, tmp_path):
    exp = tmp_path / "exp"
    cfg = tiny_experiment(steps=2)
    train(cfg, real_featstore.path, exp, progress=False)
    other = cfg.replace(model=cfg.model.replace(encoder=cfg.model.encoder.replace(channels=48)), train=cfg.train.replace(steps=4))
    with pytest.raises(CheckpointError, match=r"model.encoder.channels: 32 vs 48"):
        train(other, real_featstore.path, exp, resume=True, progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, real_featstore.path, exp, progress=False)


def test_non_finite_loss_stops_and_names_the_step(real_featstore, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = SpeechSQVAE._losses

    def poisoned(self, *a, **k):
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            out = out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(SpeechSQVAE, "_losses", poisoned)
    exp = tmp_path / "exp"
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step 3.*ckpt-00000002\.pt"):
        train(tiny_experiment(steps=6, checkpoint_every=2), real_featstore.path, exp, progress=False)
    assert [s for s, _ in list_checkpoints(exp)] == [2]
    ckpt = load_checkpoint(exp / "checkpoints/ckpt-00000002.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_utterance_batching_with_bf16_autocast(real_featstore, tmp_path):
    cfg = tiny_experiment(steps=3, batching="utterances", max_frames=600, max_utterance_frames=300,
                          mixed_precision="bf16")
    train(cfg, real_featstore.path, tmp_path / "exp", progress=False)
    assert all(math.isfinite(m["loss"]) for m in metrics(tmp_path / "exp"))


def _write_config(path, cfg):
    data = yaml.safe_load(dump_yaml(cfg))
    del data["features"]  # taken from the store
    path.write_text(yaml.safe_dump(data))


def test_sigkill_at_any_moment_then_resume(real_featstore, tmp_path):
    conf = tmp_path / "tiny.yaml"
    _write_config(conf, tiny_experiment(steps=120, checkpoint_every=7, keep_checkpoints=2, log_every=5))
    exp = tmp_path / "exp"
    cmd = [str(VENV_BIN / "sqvae-speech"), "train", "--config", str(conf), "--feats", str(real_featstore.path),
           "--exp", str(exp), "--no-progress", "--resume"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for kill_after_ckpts in (1, 3):
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            done = list_checkpoints(exp)
            if done and done[-1][0] >= 7 * kill_after_ckpts:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # whatever moment the kill hit, every visible checkpoint is complete and loadable
        for _, path in list_checkpoints(exp):
            load_checkpoint(path)
    killed_at = list_checkpoints(exp)[-1][0]
    assert 0 < killed_at < 120
    assert subprocess.run(cmd, env=env, stderr=subprocess.DEVNULL, check=False).returncode == 0
    assert list_checkpoints(exp)[-1][0] == 120
    steps = [m["step"] for m in metrics(exp)]
    assert steps == sorted(set(steps)) and steps[-1] == 120  # no step logged twice


def test_cli_user_errors_exit_2_without_traceback(real_featstore, tmp_path, capsys):
    conf = tmp_path / "bad.yaml"
    conf.write_text("train: {stepz: 3}\n")
    rc = cli_main(["train", "--config", str(conf), "--feats", str(real_featstore.path), "--exp", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2 and "stepz" in err and "Traceback" not in err
    rc = cli_main(["train", "--feats", str(tmp_path / "nowhere"), "--exp", str(tmp_path / "e")])
    assert rc == 2 and "extract" in capsys.readouterr().err


def test_two_processes_through_accelerate_launch(real_featstore, tmp_path):
    conf = tmp_path / "tiny.yaml"
    cfg = tiny_experiment(steps=4, checkpoint_every=2)
    _write_config(conf, cfg.replace(model=cfg.model.replace(variant="vqvae_ema")))
    exp = tmp_path / "exp"
    cmd = [str(VENV_BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "sqvae_speech.cli", "train", "--config", str(conf), "--feats", str(real_featstore.path),
           "--exp", str(exp), "--variant", "vqvae_ema", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stderr
    assert [s for s, _ in list_checkpoints(exp)] == [2, 4]
    assert [m["step"] for m in metrics(exp)] == [1, 2, 3, 4]
