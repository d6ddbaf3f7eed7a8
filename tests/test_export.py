"""Export of quantized vectors, code indices and auxiliary embeddings: values equal to
encoding one utterance at a time, the ZeroSpeech text layout, frame times derived from the
encoder's receptive field, resumption and refusal to mix exports."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import tiny_experiment

from sqvae_speech.checkpoint import load_model, save_checkpoint
from sqvae_speech.cli import main as cli_main
from sqvae_speech.config import FeatureConfig
from sqvae_speech.models import SpeechSQVAE
from sqvae_speech.zerospeech.export import (
    ExportError,
    export_features,
    latent_time_convention,
    load_feature_file,
    read_export_meta,
)


@pytest.fixture(scope="module")
def exp_dir(real_featstore, tmp_path_factory):
    """An untrained gaussian_4 model (random weights) saved as a checkpoint: export only encodes."""
    torch.manual_seed(0)
    cfg = tiny_experiment()
    cfg = cfg.replace(model=cfg.model.replace(speakers=tuple(real_featstore.speakers)))
    model = SpeechSQVAE(cfg.model)
    exp = tmp_path_factory.mktemp("exp")
    save_checkpoint(exp, 7, {"config": cfg.to_dict(), "model": model.state_dict()}, keep=1)
    return exp


def encode_one(model, store, utt):
    mel = torch.from_numpy(store[utt])
    t = mel.shape[1] - mel.shape[1] % 2
    return model.encode(mel[None, :, :t], torch.tensor([t]))


def test_exported_values_equal_one_at_a_time_encoding(exp_dir, real_featstore, tmp_path):
    model, _, _, _ = load_model(exp_dir)
    utts = real_featstore.utterances[::7]
    outs = {}
    for kind in ("quantized", "indices", "auxiliary"):
        outs[kind] = tmp_path / kind
        s = export_features(exp_dir, real_featstore.path, outs[kind], kind, "npz", utts=utts, max_frames=3000,
                            device="cpu", progress=False)
        assert s.written == len(utts) and s.skipped_existing == 0
    codebook = model.codebook().numpy()
    for utt in utts:
        enc = encode_one(model, real_featstore, utt)
        t_lat = (real_featstore.frames(utt) - real_featstore.frames(utt) % 2 - 2) // 2
        q, times = load_feature_file(outs["quantized"] / f"{utt}.npz")
        idx, _ = load_feature_file(outs["indices"] / f"{utt}.npz")
        aux, _ = load_feature_file(outs["auxiliary"] / f"{utt}.npz")
        assert q.shape == (t_lat, 8) and idx.shape == (t_lat, 1) and aux.shape == (t_lat, 8)
        assert np.allclose(q, enc.quantized[0].numpy(), atol=1e-5)
        assert np.allclose(aux, enc.z[0].numpy(), atol=1e-5)  # the means, not the 8 variance channels
        assert np.array_equal(idx[:, 0], enc.indices[0].numpy())
        assert np.array_equal(q, codebook[idx[:, 0]])  # every quantized frame is a code vector
        assert np.allclose(times, 0.015 + 0.02 * np.arange(t_lat))
    meta = read_export_meta(outs["indices"])
    assert meta["complete"] and meta["kind"] == "indices" and meta["step"] == 7 and meta["rate"] == 50.0
    assert meta["durations"][utts[0]] == pytest.approx(real_featstore.frames(utts[0]) * 0.01)


def test_zerospeech_text_layout_round_trips_exactly(exp_dir, real_featstore, tmp_path):
    utts = real_featstore.utterances[:3]
    export_features(exp_dir, real_featstore.path, tmp_path / "npy", "quantized", "npy", utts=utts, device="cpu", progress=False)
    export_features(exp_dir, real_featstore.path, tmp_path / "txt", "quantized", "zerospeech", utts=utts, device="cpu",
                    progress=False)
    export_features(exp_dir, real_featstore.path, tmp_path / "ids", "indices", "zerospeech", utts=utts, device="cpu",
                    progress=False)
    for utt in utts:
        lines = (tmp_path / "txt" / f"{utt}.txt").read_text().splitlines()
        ref = np.load(tmp_path / "npy" / f"{utt}.npy")
        assert len(lines) == ref.shape[0] and all(len(ln.split(" ")) == 8 for ln in lines)  # one frame per line, values only
        assert np.array_equal(np.array([[float(v) for v in ln.split(" ")] for ln in lines], dtype=np.float32), ref)
        ids = (tmp_path / "ids" / f"{utt}.txt").read_text().split()
        assert all(v.isdigit() for v in ids) and len(ids) == ref.shape[0]


def test_latent_frame_times_follow_the_encoder_receptive_field():
    """Latent frame i depends on mel frames 2i-6 .. 2i+9: its centre is 2i + 1.5 hops."""
    torch.manual_seed(0)
    model = SpeechSQVAE(tiny_experiment().model.replace(speakers=("a",))).eval()
    with torch.no_grad():
        for norm in model.encoder.norms:
            norm.bias.fill_(100.0)  # keep every ReLU open so the gradient shows the whole receptive field
    mel = torch.randn(1, 80, 60, requires_grad=True)
    out, _ = model.encoder(mel, torch.tensor([60]))  # [1, C, T']
    rate, offset = latent_time_convention(FeatureConfig())
    for i in (10, 14):
        (g,) = torch.autograd.grad(out[0, :, i].sum(), mel, retain_graph=True)
        # Winograd F(4,3) convolutions mix the frames of a tile and cancel exactly only in
        # exact arithmetic: frames outside the field get float-rounding-sized gradients.
        weight = g[0].abs().sum(0)
        support = torch.nonzero(weight > 1e-5 * weight.max()).flatten()
        assert (int(support.min()), int(support.max())) == (2 * i - 6, 2 * i + 9)
        centre_s = 0.5 * (int(support.min()) + int(support.max())) * 0.01
        assert centre_s == pytest.approx(offset + i / rate)


def test_resume_names_and_refusing_another_export(exp_dir, real_featstore, tmp_path):
    utts = real_featstore.utterances[:4]
    names = tmp_path / "names.txt"
    names.write_text("".join(f"{u} english/test/S{i:03d}\n" for i, u in enumerate(utts)))
    out = tmp_path / "out"
    args = ["export", "--exp", str(exp_dir), "--feats", str(real_featstore.path), "--out", str(out),
            "--names", str(names), "--device", "cpu", "--no-progress"]
    assert cli_main(args) == 0
    files = sorted(out.rglob("*.txt"))
    assert [f.relative_to(out).as_posix() for f in files] == [f"english/test/S{i:03d}.txt" for i in range(4)]
    stamps = {f: f.stat().st_mtime_ns for f in files}
    os.remove(files[2])
    s = export_features(exp_dir, real_featstore.path, out, names={u: f"english/test/S{i:03d}" for i, u in enumerate(utts)},
                        device="cpu", progress=False)
    assert s.written == 1 and s.skipped_existing == 3
    assert all(f.stat().st_mtime_ns == stamps[f] for f in files if f != files[2]) and files[2].is_file()
    with pytest.raises(ExportError, match="holds another export.*kind.*--overwrite"):
        export_features(exp_dir, real_featstore.path, out, kind="auxiliary", names=dict(zip(utts, ["a", "b", "c", "d"])),
                        device="cpu", progress=False)
    with pytest.raises(ExportError, match="both map to output name 'x'"):
        export_features(exp_dir, real_featstore.path, tmp_path / "o2", names={utts[0]: "x", utts[1]: "x"},
                        device="cpu", progress=False)
    with pytest.raises(ExportError, match="not in the feature store"):
        export_features(exp_dir, real_featstore.path, tmp_path / "o3", utts=["nope"], device="cpu", progress=False)
    assert json.loads((out / "export.json").read_text())["names"][utts[0]] == "english/test/S000"
