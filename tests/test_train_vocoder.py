"""Training the neural vocoder (sqvae_speech/synthesis/neural_data.py, neural_train.py,
`sqvae-speech train-vocoder`) on real speech with tiny networks."""


from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import tiny_experiment
from vocoder_setup import (
    FC,
    HOP,
    KEY,
    TINY,
    metrics,
    new_exp,
    no_temp_files,
    run,
    tiny,
)

from sqvae_speech.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_model,
)
from sqvae_speech.cli import main as cli_main
from sqvae_speech.config import ConfigError
from sqvae_speech.errors import SQVAEError
from sqvae_speech.synthesis import f0 as f0_module
from sqvae_speech.synthesis.neural import (
    MultiResolutionSTFTLoss,
    NeuralVocoder,
    load_vocoder,
)
from sqvae_speech.synthesis.neural_data import _read_f0_cache, load_clips, sample_batch
from sqvae_speech.synthesis.neural_train import resolve_vocoder_config

# ----------------------------------------------------------------------------- training


def test_training_writes_its_files_and_refuses_a_second_run(trained, voc_data):
    exp = trained
    assert [s for s, _ in list_checkpoints(exp)] == [8, 12]
    assert [m["step"] for m in metrics(exp)] == list(range(1, 13))
    assert all(np.isfinite(m["loss"]) and m["loss"] > 0 and m["lr"] == 1e-3 for m in metrics(exp))
    assert (exp / "config.yaml").is_file() and (exp / "f0.npz").is_file() and (exp / "tensorboard").is_dir()
    assert not no_temp_files(exp)
    model = load_vocoder(exp)
    final = load_checkpoint(exp / "checkpoints" / "ckpt-00000012.pt")
    assert final["kind"] == "vocoder" and final["config"]["features"] == FC.to_dict()
    assert model.step == 12 and all(torch.equal(v, final["model"][k]) for k, v in model.state_dict().items())
    assert not torch.equal(model.out.weight, torch.zeros_like(model.out.weight))  # it did train
    with pytest.raises(ConfigError, match="already holds checkpoints .*--resume"):
        run(tiny(steps=12), voc_data, exp)


def test_training_lowers_the_loss(voc_data, tmp_path):
    """100 steps at lr 3e-3 on the 4 clips: the loss on 4 fixed batches of 8 windows drops
    from 1.85 to 1.60-1.65 (measured with seeds 0-3); the logged loss of the last 10 steps
    is below that of the first 10 (1.53-1.63 vs 1.81-2.08)."""
    cfg = tiny(steps=100, lr=3e-3, checkpoint_every=100)
    exp = new_exp(tmp_path / "exp", voc_data)
    run(cfg, voc_data, exp)
    clips = voc_data["clips"]
    eligible = np.flatnonzero([c.mel.shape[1] >= 40 for c in clips])
    loss_fn = MultiResolutionSTFTLoss()

    def fixed_set_loss(model: NeuralVocoder) -> float:
        rng, total = np.random.default_rng(1234), 0.0
        with torch.no_grad():
            for _ in range(4):
                mel, f0, y, pulses = sample_batch(clips, eligible, 8, 40, HOP, rng)
                noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
                sc, mag = loss_fn(model(mel, f0, pulses, noise), y)
                total += float(sc + mag)
        return total / 4

    torch.manual_seed(0)
    before = fixed_set_loss(NeuralVocoder(cfg.vocoder, FC).eval())
    after = fixed_set_loss(load_vocoder(exp))
    assert after < before - 0.1, (before, after)
    logged = [m["loss"] for m in metrics(exp)]
    assert np.mean(logged[-10:]) < np.mean(logged[:10]) - 0.1, logged


def test_resume_equals_an_uninterrupted_run(voc_data, tmp_path):
    """Each step's windows and noise come from (seed, step, rank): stopped after 3 steps
    (between two checkpoints) and resumed, the run ends with the very same weights, Adam
    state, learning-rate schedule and logged losses as one that never stopped."""
    cfg = tiny(steps=10, milestones=[5], gamma=0.5)
    a, b = new_exp(tmp_path / "a", voc_data), new_exp(tmp_path / "b", voc_data)
    run(cfg, voc_data, a)
    assert run(cfg, voc_data, b, stop_after=3) == {"step": 3, "checkpoint": str(b / "checkpoints/ckpt-00000003.pt"),
                                                   "vocoder": None, "main": True}
    assert not (b / "vocoder.pt").exists() and [s for s, _ in list_checkpoints(b)] == [3]
    with pytest.raises(ConfigError, match="vocoder settings differ"):
        run(resolve_vocoder_config(None, TINY + ["vocoder.channels=24", "train.steps=10"]), voc_data, b, resume=True)
    run(cfg, voc_data, b, resume=True)
    wa, wb = (torch.load(e / "vocoder.pt", weights_only=True) for e in (a, b))
    assert wa["step"] == wb["step"] == 10 and wa["model"].keys() == wb["model"].keys()
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k
    ca, cb = (load_checkpoint(e / "checkpoints/ckpt-00000010.pt") for e in (a, b))
    assert ca["scheduler"] == cb["scheduler"] and ca["scheduler"]["last_epoch"] == 10
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ma, mb = metrics(a), metrics(b)
    assert [m["step"] for m in mb] == list(range(1, 11))
    assert [(m["loss"], m["lr"]) for m in ma] == [(m["loss"], m["lr"]) for m in mb]
    assert [m["lr"] for m in mb] == [1e-3] * 4 + [5e-4] * 6


def test_a_run_killed_before_its_first_checkpoint_leaves_no_stale_metrics(voc_data, tmp_path):
    """A run killed before its first checkpoint has logged steps that the rerun, from step 0,
    logs again: they are dropped (as after the newest checkpoint), with or without --resume."""
    for resume in (True, False):
        exp = new_exp(tmp_path / f"exp-{resume}", voc_data)
        stale = "".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo'
        (exp / "metrics.jsonl").write_text(stale)
        run(tiny(steps=2), voc_data, exp, resume=resume)
        assert [(m["step"], m["loss"] != 9.0) for m in metrics(exp)] == [(1, True), (2, True)]


def test_f0_cache_is_reused_and_a_damaged_one_recomputed(voc_data, tmp_path, monkeypatch):
    real = f0_module.extract_f0
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    exp = tmp_path / "exp"
    monkeypatch.setattr(f0_module, "extract_f0", counted)
    run(tiny(steps=2), voc_data, exp)  # no cache: Harvest on every training utterance
    assert len(calls) == 4
    cache = exp / "f0.npz"
    first = _read_f0_cache(cache, sorted(c.utt for c in voc_data["clips"]), KEY % "harvest")
    assert first is not None and all(np.array_equal(first[c.utt], c.f0) for c in voc_data["clips"])

    def no_f0(*args, **kwargs):
        raise AssertionError("the F0 cache was not used")

    monkeypatch.setattr(f0_module, "extract_f0", no_f0)
    run(tiny(steps=4), voc_data, exp, resume=True)
    assert load_vocoder(exp).step == 4
    monkeypatch.setattr(f0_module, "extract_f0", counted)
    utts = sorted(first)
    calls.clear()
    # another F0 method is another cache (DIO from here on: 25 times faster than Harvest)
    run(tiny(steps=5, f0_method="dio"), voc_data, exp, resume=True)
    assert len(calls) == 4
    dio = _read_f0_cache(cache, utts, KEY % "dio")
    assert dio is not None and _read_f0_cache(cache, utts, KEY % "harvest") is None
    assert _read_f0_cache(cache, utts, "dio sr=16000 hop=80") is None  # F0 of other frames: recomputed
    good = cache.read_bytes()
    mid = len(good) // 2  # inside the F0 values (its CRC-32 fails)
    damaged = {"truncated": good[:mid], "flipped byte": good[:mid] + bytes([good[mid] ^ 0xFF]) + good[mid + 1:],
               "empty": b"", "not a zip": b"hello"}
    for step, (what, data) in enumerate(damaged.items(), start=6):
        cache.write_bytes(data)
        calls.clear()
        run(tiny(steps=step, f0_method="dio"), voc_data, exp, resume=True)
        assert len(calls) == 4, what
        again = _read_f0_cache(cache, utts, KEY % "dio")  # recomputed and rewritten
        assert again is not None and all(np.array_equal(again[u], dio[u]) for u in utts), what
    assert load_vocoder(exp).step == 9 and not no_temp_files(exp)


def test_train_vocoder_command(voc_data, tmp_path, capsys):
    exp = new_exp(tmp_path / "exp", voc_data)
    sets = [a for s in TINY for a in ("--set", s)]
    base = ["train-vocoder", "--data", str(voc_data["data"]), "--feats", str(voc_data["feats"]), "--exp", str(exp),
            "--cpu", "--no-progress", *sets]
    assert cli_main([*base, "--steps", "3"]) == 0
    assert load_vocoder(exp / "vocoder.pt").step == 3 and "done: step 3" in capsys.readouterr().err
    # a second run needs --resume; with it, more steps continue the run
    assert cli_main([*base, "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "--resume" in err and "Traceback" not in err
    assert cli_main([*base, "--steps", "5", "--resume"]) == 0
    assert load_vocoder(exp).step == 5 and [m["step"] for m in metrics(exp)] == [1, 2, 3, 4, 5]
    capsys.readouterr()
    for bad, words in ((["--set", "train.stepz=3"], "stepz"), (["--nj", "0"], "--nj"),
                       (["--set", "vocoder.kernel_size=4"], "kernel_size must be odd")):
        assert cli_main([*base, "--exp", str(tmp_path / "other"), *bad]) == 2, bad
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
    assert cli_main(["train-vocoder", "--data", str(tmp_path / "nowhere"), "--feats", str(voc_data["feats"]),
                     "--exp", str(tmp_path / "other2"), "--no-progress"]) == 2
    assert "nowhere" in capsys.readouterr().err


# ----------------------------------------------------------------------------- fine-tuning on decoded mels


def test_decoded_from_feeds_the_sqvae_reconstructions(voc_data, tmp_path):
    """--decoded-from: each clip carries the SQ-VAE's reconstruction of its mel, placed as the
    vocoders place decoder output (offset 1, edges held); windows take it at decoded_share;
    the run says which it trains on; a model that lacks a speaker of the data is refused."""
    from sqvae_speech.synthesis.convert import Converter
    from sqvae_speech.synthesis.vocoders import align_frames
    from sqvae_speech.train import train

    train(tiny_experiment(steps=2, checkpoint_every=2), voc_data["feats"], tmp_path / "sqvae", progress=False)
    cfg = tiny(decoded_from=str(tmp_path / "sqvae"), decoded_share=1.0)
    clips, _ = load_clips(voc_data["data"], voc_data["feats"], cfg.train, voc_data["f0"], progress=False)
    model = load_model(tmp_path / "sqvae")[0]
    conv = Converter(model, FC, "griffinlim")
    for c in clips:
        assert c.decoded is not None and c.decoded.shape == c.mel.shape
        spk = c.utt.rsplit("-", 1)[0]
        np.testing.assert_array_equal(c.decoded, align_frames(conv.decode(c.mel, spk), c.mel.shape[1], 1))
        assert float(np.abs(c.decoded - c.mel).mean()) > 0.01  # a reconstruction, not the recording's mel
    eligible = np.arange(len(clips))
    for share, want in ((1.0, "decoded"), (0.0, "mel")):
        mel = sample_batch(clips, eligible, 4, 40, HOP, np.random.default_rng(0), share)[0].numpy()
        for row in mel:  # each window is a slice of one clip's decoded (or recorded) mel
            assert any(any(np.array_equal(row, getattr(c, want)[:, t: t + 40])
                           for t in range(c.mel.shape[1] - 39)) for c in clips)
    # a real-mel-only config with decoded_share set but no model: recorded mels, no decoding
    clips, _ = load_clips(voc_data["data"], voc_data["feats"], tiny(decoded_share=0.5).train, voc_data["f0"],
                          progress=False)
    assert all(c.decoded is None for c in clips)
    # the CLI switch, through a short run
    exp = new_exp(tmp_path / "voc", voc_data)
    assert cli_main(["train-vocoder", "--data", str(voc_data["data"]), "--feats", str(voc_data["feats"]), "--exp",
                     str(exp), "--decoded-from", str(tmp_path / "sqvae"), "--steps", "2", "--cpu", "--no-progress",
                     *itertools.chain.from_iterable(("--set", o) for o in TINY + ["train.decoded_share=0.5"])]) == 0
    assert (exp / "vocoder.pt").is_file()
    assert "decoded_from" in (exp / "config.yaml").read_text()
    # a clip of a speaker the SQ-VAE was not trained on cannot be reconstructed as its own voice
    from sqvae_speech.synthesis.neural_data import add_decoded

    with pytest.raises(SQVAEError, match="does not know speaker 'nobody'"):
        add_decoded(clips[:1], str(tmp_path / "sqvae"), FC, {clips[0].utt: "nobody"})


