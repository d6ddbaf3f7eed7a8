"""Numerical guards: a non-finite gradient stops training naming the step and the last
good checkpoint (the non-finite loss case is tests/test_train.py), features holding NaN
stop training at once, and evaluation and export refuse NaN / inf features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_experiment

from sqvae_speech.checkpoint import list_checkpoints, load_checkpoint
from sqvae_speech.cli import main as cli_main
from sqvae_speech.data.featstore import write_featstore
from sqvae_speech.errors import NonFiniteError
from sqvae_speech.models import SpeechSQVAE
from sqvae_speech.train import train

from .helpers import write_train_config


def test_non_finite_gradient_stops_naming_step_and_last_checkpoint(real_featstore, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = SpeechSQVAE._losses

    def poisoned(self, *a, **k):
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 5:
            p = next(self.parameters())
            # value 0, gradient 0 * inf = NaN: the loss stays finite, the gradients do not
            out = out._replace(loss=out.loss + 0.0 * torch.sqrt((p * 0.0).sum()))
        return out

    monkeypatch.setattr(SpeechSQVAE, "_losses", poisoned)
    exp = tmp_path / "exp"
    with pytest.raises(NonFiniteError) as e:
        train(tiny_experiment(steps=8, checkpoint_every=2), real_featstore.path, exp, progress=False)
    msg = str(e.value)
    assert "non-finite gradient norm at step 5" in msg and str(exp / "checkpoints/ckpt-00000004.pt") in msg
    assert "without saving the bad weights" in msg
    assert [s for s, _ in list_checkpoints(exp)] == [2, 4]
    ckpt = load_checkpoint(exp / "checkpoints/ckpt-00000004.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def _poisoned_store(real_featstore, path, value: float, utt_index: int = 3):
    items = []
    for i, u in enumerate(real_featstore.utterances):
        f = real_featstore[u]
        if i == utt_index:
            f[5, 10] = value
        items.append((u, real_featstore.speaker(u), f))
    return write_featstore(path, items, real_featstore.config), real_featstore.utterances[utt_index]


def test_nan_features_stop_training_at_the_first_step(real_featstore, tmp_path, capsys):
    items = []
    for u in real_featstore.utterances:
        f = real_featstore[u]
        f[5] = np.nan  # one mel band of every utterance
        items.append((u, real_featstore.speaker(u), f))
    store = write_featstore(tmp_path / "nan", items, real_featstore.config)
    conf = write_train_config(tmp_path / "c.yaml", tiny_experiment(steps=4))
    rc = cli_main(["train", "--config", str(conf), "--feats", str(store.path), "--exp", str(tmp_path / "exp"),
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "non-finite loss at step 1" in err and "no checkpoint was written yet" in err and "NaN" in err
    assert list_checkpoints(tmp_path / "exp") == []


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_evaluation_refuses_non_finite_features(value, untrained_exp, real_featstore, tmp_path, capsys):
    store, utt = _poisoned_store(real_featstore, tmp_path / "bad", value)
    out = tmp_path / "results.json"
    rc = cli_main(["evaluate", "--exp", str(untrained_exp), "--feats", str(store.path), "--out", str(out),
                   "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"features of {utt} in {store.path} contain NaN/inf; re-extract them" in err
    assert not out.exists()


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_export_refuses_non_finite_features(value, untrained_exp, real_featstore, tmp_path, capsys):
    store, utt = _poisoned_store(real_featstore, tmp_path / "bad", value)
    out = tmp_path / "out"
    rc = cli_main(["export", "--exp", str(untrained_exp), "--feats", str(store.path), "--out", str(out),
                   "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"features of {utt} in {store.path} contain NaN/inf; re-extract them" in err
    assert not (out / f"{utt}.txt").exists()
    assert json.loads((out / "export.json").read_text())["complete"] is False
    for p in out.glob("*.txt"):  # what was written before the bad utterance is finite
        assert np.isfinite(np.loadtxt(p, ndmin=2)).all()
