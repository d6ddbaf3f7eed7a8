"""Checkpoints that cannot be used: truncated, foreign, from another config or another
feature setup, and feature stores that do not fit the model. Each is refused with exit 2
and a message naming the file and both sides of a mismatch."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_experiment

from sqvae_speech.checkpoint import list_checkpoints
from sqvae_speech.cli import main as cli_main
from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.featstore import write_featstore
from sqvae_speech.train import train

from .helpers import write_train_config


@pytest.fixture(scope="module")
def trained_exp(real_featstore, tmp_path_factory) -> Path:
    """Four steps of a tiny model, checkpoints at steps 2 and 4."""
    exp = tmp_path_factory.mktemp("ckpt") / "exp"
    train(tiny_experiment(steps=4, checkpoint_every=2), real_featstore.path, exp, progress=False)
    assert [s for s, _ in list_checkpoints(exp)] == [2, 4]
    return exp


def _copy_exp(src: Path, dst: Path) -> Path:
    (dst / "checkpoints").mkdir(parents=True)
    for p in (src / "checkpoints").iterdir():
        (dst / "checkpoints" / p.name).write_bytes(p.read_bytes())
    return dst


def _train_args(conf: Path, feats: Path, exp: Path, *more: str) -> list[str]:
    return ["train", "--config", str(conf), "--feats", str(feats), "--exp", str(exp), "--no-progress", "--resume", *more]


def test_truncated_checkpoint_is_refused_by_name(trained_exp, real_featstore, tmp_path, capsys):
    exp = _copy_exp(trained_exp, tmp_path / "exp")
    newest = exp / "checkpoints/ckpt-00000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size * 2 // 3])  # e.g. a copy cut short
    rc = cli_main(["evaluate", "--exp", str(newest), "--feats", str(real_featstore.path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"checkpoint {newest} cannot be read" in err and "truncated, corrupt" in err and "earlier checkpoint" in err
    conf = write_train_config(tmp_path / "c.yaml", tiny_experiment(steps=6, checkpoint_every=2))
    assert cli_main(_train_args(conf, real_featstore.path, exp)) == 2  # resuming never trusts it either
    assert str(newest) in capsys.readouterr().err
    newest.unlink()  # the earlier checkpoint is intact: resume from it
    assert cli_main(_train_args(conf, real_featstore.path, exp)) == 0
    assert "from step 2 to 6" in capsys.readouterr().err


def _text(p: Path) -> None:
    p.write_text("model weights\n")


def _random_bytes(p: Path) -> None:
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _other_zip(p: Path) -> None:
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "not a checkpoint")


def _other_torch_file(p: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, p)


def _pickled_object(p: Path) -> None:
    torch.save({"format": "sqvae-speech-checkpoint", "obj": Path("x")}, p)  # needs unpickling code: refused


@pytest.mark.parametrize("make, words", [
    (_text, "cannot be read"), (_random_bytes, "cannot be read"), (_empty, "cannot be read"),
    (_other_zip, "cannot be read"), (_other_torch_file, "is not an sqvae-speech checkpoint"),
    (_pickled_object, "cannot be read"),
])
def test_foreign_file_is_not_taken_for_a_checkpoint(make, words, real_featstore, tmp_path, capsys):
    path = tmp_path / "exp/checkpoints/ckpt-00000009.pt"
    path.parent.mkdir(parents=True)
    make(path)
    for cmd in ("evaluate", "export"):
        args = [cmd, "--exp", str(tmp_path / "exp"), "--feats", str(real_featstore.path), "--no-progress"]
        args += ["--out", str(tmp_path / "out")] if cmd == "export" else []
        assert cli_main(args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and str(path) in err and words in err, err


def test_checkpoint_of_another_config_names_both_sides(trained_exp, real_featstore, tmp_path, capsys):
    exp = _copy_exp(trained_exp, tmp_path / "exp")
    conf = write_train_config(tmp_path / "c.yaml", tiny_experiment(steps=6, checkpoint_every=2))
    rc = cli_main(_train_args(conf, real_featstore.path, exp, "--set", "model.encoder.channels=48",
                              "--set", "model.quantizer.num_embeddings=32"))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"does not match checkpoint {exp / 'checkpoints/ckpt-00000004.pt'}" in err
    assert "saved value vs requested value" in err
    assert "model.encoder.channels: 32 vs 48" in err and "model.quantizer.num_embeddings: 16 vs 32" in err
    assert [s for s, _ in list_checkpoints(exp)] == [2, 4]  # nothing was touched


def test_checkpoint_of_another_feature_setup_names_both_sides(trained_exp, real_featstore, tmp_path, capsys):
    exp = _copy_exp(trained_exp, tmp_path / "exp")
    conf = write_train_config(tmp_path / "c.yaml", tiny_experiment(steps=6, checkpoint_every=2))
    rng = np.random.default_rng(0)
    items = [(u, real_featstore.speaker(u), rng.random((40, 60), dtype=np.float32)) for u in real_featstore.utterances]
    mel40 = write_featstore(tmp_path / "mel40", items, FeatureConfig(n_mels=40)).path
    items = [(u, s, np.resize(f, (80, 60))) for u, s, f in items]
    sr22k = write_featstore(tmp_path / "sr22k", items, FeatureConfig(sample_rate=22050, hop_length=220)).path

    assert cli_main(_train_args(conf, sr22k, exp)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "checkpoints/ckpt-00000004.pt" in err
    assert "features.sample_rate: 16000 vs 22050" in err and "features.hop_length: 160 vs 220" in err

    # 40 mel bands: the model must say so too, and then the checkpoint's 80 is named.
    assert cli_main(_train_args(conf, mel40, exp)) == 2
    err = capsys.readouterr().err
    assert "model.n_mels is 80 but features.n_mels is 40" in err and "set model.n_mels: 40" in err
    assert cli_main(_train_args(conf, mel40, exp, "--set", "model.n_mels=40")) == 2
    err = capsys.readouterr().err
    assert "features.n_mels: 80 vs 40" in err and "model.n_mels: 80 vs 40" in err
    assert [s for s, _ in list_checkpoints(exp)] == [2, 4]


@pytest.mark.parametrize("cmd", ["evaluate", "export"])
def test_feature_store_of_other_settings_than_the_model_names_both_sides(cmd, trained_exp, real_featstore, tmp_path,
                                                                           capsys):
    rng = np.random.default_rng(0)
    items = [(u, real_featstore.speaker(u), rng.random((80, 60), dtype=np.float32)) for u in real_featstore.utterances]
    other = write_featstore(tmp_path / "other", items, FeatureConfig(hop_length=200, fmin=0.0)).path
    args = [cmd, "--exp", str(trained_exp), "--feats", str(other), "--no-progress"]
    args += ["--out", str(tmp_path / "out")] if cmd == "export" else []
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"feature store {other} was extracted with other feature settings than expected by checkpoint " in err
    assert str(trained_exp / "checkpoints/ckpt-00000004.pt") in err
    assert "hop_length: store 200, expected 160" in err and "fmin: store 0.0, expected 50.0" in err
