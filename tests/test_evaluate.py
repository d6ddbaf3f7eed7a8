import json

import numpy as np
import pytest
import torch
from conftest import tiny_experiment

from sqvae_speech.checkpoint import load_model
from sqvae_speech.cli import main as cli_main
from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.featstore import write_featstore
from sqvae_speech.errors import FeatureStoreError, SQVAEError
from sqvae_speech.evaluate import evaluate, evaluate_model, read_eval_list
from sqvae_speech.train import train


@pytest.fixture(scope="module")
def trained(real_featstore, tmp_path_factory):
    exp = tmp_path_factory.mktemp("exp")
    cfg = tiny_experiment(steps=30, lr=3e-3, checkpoint_every=30)
    train(cfg, real_featstore.path, exp, progress=False)
    return exp


def reference_mse(model, store, items):
    """The protocol's formula, written plainly: one utterance at a time."""
    spk = {s: i for i, s in enumerate(model.config.speakers)}
    sse, frames = 0.0, 0
    for utt, s in items:
        mel = torch.from_numpy(store[utt])
        t = mel.shape[1] - mel.shape[1] % 2
        mel = mel[None, :, :t]
        enc = model.encode(mel, torch.tensor([t]))
        out, _ = model.decode(enc.quantized, enc.lengths, torch.tensor([spk[s]]))
        sse += float(((out[0] - mel[0, :, 1:-1]) ** 2).sum()) * 80**2
        frames += t - 2
    return sse / (80 * frames)


def test_batched_mse_equals_the_one_at_a_time_formula(trained, real_featstore):
    model, cfg, _, _ = load_model(trained)
    items = [(u, real_featstore.speaker(u)) for u in real_featstore.utterances]
    ref = reference_mse(model, real_featstore, items)
    batched, usage, per_spk, frames = evaluate_model(model, real_featstore, items, max_frames=4000)
    single, _, _, _ = evaluate_model(model, real_featstore, items, max_frames=1)
    assert batched == pytest.approx(ref, rel=1e-5)
    assert single == pytest.approx(ref, rel=1e-5)
    assert frames == sum(real_featstore.frames(u) - real_featstore.frames(u) % 2 - 2 for u, _ in items)
    assert 1 <= usage.used() <= cfg.model.quantizer["num_embeddings"]
    assert set(per_spk) == {"cs-m", "cs-v", "nl-m", "nl-v"}


def test_segments_equal_the_segments_as_utterances(trained, real_featstore, tmp_path, capsys):
    """--segment-frames N: each utterance's consecutive N-frame segments, each evaluated on
    its own, equal a store whose utterances are those segments."""
    model, cfg, _, _ = load_model(trained)
    n = 32
    items, seg_items = [], []
    for u in real_featstore.utterances:
        mel = real_featstore[u]
        items.append((u, real_featstore.speaker(u)))
        for k, start in enumerate(range(0, mel.shape[1] - n + 1, n)):
            seg_items.append((f"{u}-{k:03d}", real_featstore.speaker(u), np.ascontiguousarray(mel[:, start : start + n])))
    seg_items.sort(key=lambda x: x[0])
    segs = write_featstore(tmp_path / "segs", seg_items, real_featstore.config)
    ref, _, ref_spk, ref_frames = evaluate_model(model, segs, [(u, s) for u, s, _ in seg_items], max_frames=4000)
    got, _, got_spk, got_frames = evaluate_model(model, real_featstore, items, max_frames=4000, segment_frames=n)
    assert got == pytest.approx(ref, rel=1e-5) and got_frames == ref_frames == len(seg_items) * (n - 2)
    assert {k: v[1] for k, v in got_spk.items()} == {k: v[1] for k, v in ref_spk.items()}
    whole, _, _, _ = evaluate_model(model, real_featstore, items, max_frames=4000)
    assert got != pytest.approx(whole, rel=1e-3)  # the segments are another measurement
    out = tmp_path / "seg.json"
    assert cli_main(["evaluate", "--exp", str(trained), "--feats", str(real_featstore.path), "--segment-frames", "32",
                     "--out", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["segment_frames"] == 32 and r["mse_db2"] == pytest.approx(ref, rel=1e-5)
    assert "in 32-frame segments" in capsys.readouterr().out
    assert cli_main(["evaluate", "--exp", str(trained), "--feats", str(real_featstore.path), "--segment-frames", "7",
                     "--out", str(out), "--no-progress"]) == 2
    assert "--segment-frames must be an even number" in capsys.readouterr().err


def test_results_json_and_cli(trained, real_featstore, capsys):
    rc = cli_main(["evaluate", "--exp", str(trained), "--feats", str(real_featstore.path), "--no-progress"])
    assert rc == 0
    r = json.loads((trained / "results.json").read_text())
    for key in ("variant", "step", "mse_db2", "set_perplexity", "used_codes", "num_utterances", "num_frames"):
        assert key in r
    assert r["variant"] == "gaussian_4" and r["step"] == 30 and r["num_utterances"] == len(real_featstore)
    assert 1 <= r["set_perplexity"] <= r["used_codes"] <= 16
    assert f"dB^2 MSE {r['mse_db2']:.2f}" in capsys.readouterr().out


def test_eval_list_with_chosen_speakers(trained, real_featstore, tmp_path):
    utts = real_featstore.utterances[:4]
    lst = tmp_path / "list.json"
    lst.write_text(json.dumps([[u, "nl-v"] for u in utts]))
    assert read_eval_list(lst) == [(u, "nl-v") for u in utts]
    r = evaluate(trained, real_featstore.path, lst, out=tmp_path / "r.json", progress=False)
    assert r.num_utterances == 4 and list(r.per_speaker_mse_db2) == ["nl-v"]
    txt = tmp_path / "list.txt"
    txt.write_text("".join(f"{u} nl-v\n" for u in utts))
    assert evaluate(trained, real_featstore.path, txt, out=tmp_path / "r2.json", progress=False).mse_db2 == pytest.approx(r.mse_db2)


def test_clear_errors(trained, real_featstore, tmp_path):
    bad_spk = tmp_path / "spk.txt"
    bad_spk.write_text(f"{real_featstore.utterances[0]} en-x\n")
    with pytest.raises(SQVAEError, match=r"speaker 'en-x'.*known speakers: cs-m, cs-v, nl-m, nl-v"):
        evaluate(trained, real_featstore.path, bad_spk, progress=False)
    bad_utt = tmp_path / "utt.txt"
    bad_utt.write_text("nope cs-m\n")
    with pytest.raises(SQVAEError, match="utterance 'nope' is not in the feature store"):
        evaluate(trained, real_featstore.path, bad_utt, progress=False)
    malformed = tmp_path / "m.txt"
    malformed.write_text("a b c\n")
    with pytest.raises(SQVAEError, match="line 1"):
        read_eval_list(malformed)


def test_short_nan_and_foreign_feature_stores(trained, tmp_path):
    cfg = FeatureConfig()
    short = write_featstore(tmp_path / "short", [("cs-m_a", "cs-m", np.zeros((80, 3), np.float32))], cfg)
    with pytest.raises(SQVAEError, match="3 frames; the encoder needs at least 4"):
        evaluate(trained, short.path, progress=False)
    bad = np.full((80, 40), 0.5, np.float32)
    bad[3, 7] = np.nan
    nan = write_featstore(tmp_path / "nan", [("cs-m_a", "cs-m", bad)], cfg)
    with pytest.raises(FeatureStoreError, match="NaN"):
        evaluate(trained, nan.path, progress=False)
    other = write_featstore(tmp_path / "other", [("cs-m_a", "cs-m", np.zeros((40, 20), np.float32))], cfg.replace(n_mels=40))
    with pytest.raises(FeatureStoreError, match="n_mels"):
        evaluate(trained, other.path, progress=False)


def test_compare_table_and_curves(trained, tmp_path, capsys):
    out, png = tmp_path / "t.md", tmp_path / "c.png"
    assert cli_main(["compare", str(trained), "--out", str(out), "--curves", str(png)]) == 0
    table = out.read_text()
    assert "Gaussian SQ-VAE (IV)" in table and "| 30 |" in table
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_evaluate_bitrate_equals_the_zerospeech_bitrate_of_the_exported_codes(trained, real_featstore, tmp_path):
    """results.json's bitrate is what `export --kind quantized` + `bitrate` give, without the files."""
    results = tmp_path / "r.json"
    assert cli_main(["evaluate", "--exp", str(trained), "--feats", str(real_featstore.path), "--out", str(results),
                     "--no-progress"]) == 0
    out, rate = tmp_path / "zs", tmp_path / "rate.json"
    assert cli_main(["export", "--exp", str(trained), "--feats", str(real_featstore.path), "--out", str(out),
                     "--kind", "quantized", "--no-progress"]) == 0
    assert cli_main(["bitrate", str(out), "--json", str(rate)]) == 0
    exported = json.loads(rate.read_text())
    assert exported["bitrate"] > 0
    assert json.loads(results.read_text())["bitrate"] == pytest.approx(exported["bitrate"], rel=1e-9)
