"""The public Python API (``sq.load_model`` -> ``Model``): encoding files and arrays equals
``export`` on the same audio, deterministic in any mode, chunked equals whole; decoding,
resynthesis, model files, and the quantizers used as a library."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_experiment

import sqvae_speech as sq
from sqvae_speech.checkpoint import save_checkpoint
from sqvae_speech.cli import main as cli_main
from sqvae_speech.config import FeatureConfig
from sqvae_speech.data import longaudio
from sqvae_speech.data.datadir import write_datadir
from sqvae_speech.data.extract import extract
from sqvae_speech.errors import AudioError, CheckpointError, SQVAEError
from sqvae_speech.inference import model as model_module
from sqvae_speech.models import SpeechSQVAE
from sqvae_speech.synthesis.f0 import compute_f0_stats, write_f0_stats
from sqvae_speech.train import train
from sqvae_speech.zerospeech.export import export_features, load_feature_file

CFG = FeatureConfig()
SPEAKERS = "cs-m, cs-v, nl-m, nl-v"


class Foreign:
    """Another program's pickled object."""

    def __init__(self) -> None:
        self.weights = [1.0, 2.0]


@pytest.fixture(scope="module")
def exp(real_featstore, tmp_path_factory):
    """A tiny gaussian_4 model trained 30 steps on real speech."""
    exp = tmp_path_factory.mktemp("api_exp")
    train(tiny_experiment(steps=30, checkpoint_every=30), real_featstore.path, exp, progress=False)
    return exp


@pytest.fixture(scope="module")
def model(exp):
    return sq.load_model(exp)


@pytest.fixture(scope="module")
def clips(speech_files, sound_dir):
    """Real recordings: 22.05 kHz mono (cs), 22.05 kHz stereo (nl) and 44.1 kHz stereo."""
    stereo44 = next(p for p in sorted(sound_dir.glob("hanoi/cs/m-*.ogg"))
                    if (sf.info(str(p)).samplerate, sf.info(str(p)).channels) == (44100, 2) and sf.info(str(p)).duration > 2)
    files = {"mono22": speech_files["cs-m"][1], "stereo22": speech_files["nl-v"][2], "stereo44": stereo44}
    assert [(sf.info(str(p)).samplerate, sf.info(str(p)).channels) for p in files.values()] == [
        (22050, 1), (22050, 2), (44100, 2)]
    return files


@pytest.fixture(scope="module")
def f0_stats(speech_files, tmp_path_factory):
    """F0 statistics (DIO, fast) of one real clip of each main voice."""
    root = tmp_path_factory.mktemp("f0")
    wav_scp = {f"{v}-0": str(files[0]) for v, files in sorted(speech_files.items())}
    write_datadir(root / "data", wav_scp, {u: u[:-2] for u in wav_scp})
    path = root / "f0.json"
    write_f0_stats(path, compute_f0_stats(root / "data", method="dio", progress=False))
    return path


def _same_units(a, b, atol=1e-5):
    assert np.array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.z, b.z, atol=atol, rtol=0)
    np.testing.assert_allclose(a.quantized, b.quantized, atol=atol, rtol=0)
    np.testing.assert_allclose(a.times, b.times, atol=1e-12, rtol=0)


# ------------------------------------------------------------------------- encoding


def test_encoding_a_file_equals_export_of_its_features(exp, model, clips, tmp_path):
    write_datadir(tmp_path / "data", {k: str(p) for k, p in clips.items()}, {k: "s" for k in clips})
    s = extract(tmp_path / "data", tmp_path / "feats", CFG, batch_size=0, progress=False)  # the reference log-mel
    assert s.complete and not s.failed
    out = {}
    for kind in ("indices", "quantized", "auxiliary"):
        out[kind] = tmp_path / kind
        export_features(exp, tmp_path / "feats", out[kind], kind, "npy", device="cpu", progress=False)
    for name, path in clips.items():
        units = model.encode(path)
        idx, _ = load_feature_file(out["indices"] / f"{name}.npy")
        q, _ = load_feature_file(out["quantized"] / f"{name}.npy")
        z, _ = load_feature_file(out["auxiliary"] / f"{name}.npy")
        assert units.indices.dtype == np.int64 and units.quantized.dtype == units.z.dtype == np.float32
        assert len(units) == idx.shape[0] and units.quantized.shape == units.z.shape == (len(units), 8)
        assert np.array_equal(units.indices, idx[:, 0]), name
        np.testing.assert_allclose(units.quantized, q, atol=1e-5, rtol=0)
        np.testing.assert_allclose(units.z, z, atol=1e-5, rtol=0)
        assert units.source == str(path) and units.seconds == pytest.approx(sf.info(str(path)).duration, abs=1e-3)
        assert units.rate == 50.0 and units.to_text() == " ".join(map(str, units.indices))


def test_arrays_encode_like_the_file(model, clips, tmp_path):
    path = clips["stereo44"]
    ref = model.encode(path)
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [N, 2] as the file reader sees it
    assert sr == 44100 and x.shape[1] == 2
    for arr in (x, x.T, np.ascontiguousarray(x.T), torch.from_numpy(x), torch.from_numpy(x.T.copy())):
        _same_units(model.encode(arr, sample_rate=sr), ref, atol=0)
    mono = sf.read(str(clips["mono22"]), dtype="float32")[0]
    ref = model.encode(clips["mono22"])
    _same_units(model.encode(mono, sample_rate=22050), ref, atol=0)
    _same_units(model.encode(torch.from_numpy(mono), sample_rate=22050), ref, atol=0)
    # int16 samples: the same as the 16-bit file they came from
    sf.write(tmp_path / "pcm.wav", x, sr, subtype="PCM_16")
    pcm = sf.read(str(tmp_path / "pcm.wav"), dtype="int16", always_2d=True)[0]
    _same_units(model.encode(pcm, sample_rate=sr), model.encode(tmp_path / "pcm.wav"), atol=0)
    with pytest.raises(AudioError, match=r"needs its sample_rate \(encode\(array, sample_rate=16000\)\)"):
        model.encode(mono)
    with pytest.raises(AudioError, match="sample_rate is for arrays"):
        model.encode(clips["mono22"], sample_rate=16000)


def _state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _vqvae_ema_exp(real_featstore, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_experiment()
    cfg = cfg.replace(model=cfg.model.replace(variant="vqvae_ema", speakers=tuple(real_featstore.speakers),
                                              quantizer={"num_embeddings": 16, "embedding_dim": 8, "init": "normal"}))
    save_checkpoint(tmp_path / "vq", 3, {"config": cfg.to_dict(), "model": SpeechSQVAE(cfg.model).state_dict()}, keep=1)
    return tmp_path / "vq"


@pytest.mark.parametrize("variant", ["gaussian_4", "vqvae_ema"])
def test_encoding_is_deterministic_and_changes_nothing_in_training_mode(variant, exp, real_featstore, clips, tmp_path):
    m = sq.load_model(exp if variant == "gaussian_4" else _vqvae_ema_exp(real_featstore, tmp_path))
    assert m.config.model.variant == variant
    ref = m.encode(clips["mono22"])
    m.net.train()
    before = _state(m.net)
    assert any("running_mean" in k for k in before) and "quantizer.codebook" in before
    _same_units(m.encode(clips["mono22"]), ref, atol=0)
    _same_units(m.encode_batch([clips["mono22"], clips["stereo22"]])[0], ref)  # padded batch: float rounding
    assert m.net.training  # left in the mode it was in
    after = _state(m.net)
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]
    if variant == "vqvae_ema":  # the guard matters: a training-mode forward moves the EMA codebook
        m.net.quantizer(torch.from_numpy(ref.z)[None])
        assert not torch.equal(m.net.quantizer.codebook, before["quantizer.codebook"])


def test_chunked_and_streamed_encoding_equals_whole(model, clips, monkeypatch):
    path, other = clips["stereo22"], clips["mono22"]
    whole, other_whole = model.encode(path), model.encode(other)
    assert len(whole) > 40
    monkeypatch.setattr(model_module, "CHUNK_FRAMES", 7)
    pieces = list(model.iter_encode(path))  # features in memory, encoded 7 frames at a time
    assert [len(p) for p in pieces[:-1]] == [7] * (len(pieces) - 1) and 1 <= len(pieces[-1]) <= 7
    _same_units(sq.Units.concatenate(pieces), whole, atol=1e-5)
    streamed = []
    real = longaudio.logmel_long
    monkeypatch.setattr(longaudio, "STREAM_MIN_SECONDS", 1.0)
    monkeypatch.setattr(longaudio, "BLOCK_FRAMES", 13)
    monkeypatch.setattr(longaudio, "logmel_long", lambda p, *a, **k: streamed.append(str(p)) or real(p, *a, **k))
    got = model.encode(path)
    assert streamed == [str(path)]  # read and computed block by block
    _same_units(got, whole, atol=1e-5)
    assert got.seconds == pytest.approx(whole.seconds)
    # encode_batch streams long recordings too, and keeps the order
    batch = model.encode_batch([other, path])
    assert streamed == [str(path), str(other), str(path)]
    _same_units(batch[0], other_whole, atol=1e-5)
    _same_units(batch[1], whole, atol=1e-5)


def test_encode_batch_equals_one_at_a_time(model, clips, speech_files):
    files = [clips["stereo44"], speech_files["cs-v"][0], clips["mono22"], speech_files["nl-m"][3], clips["stereo22"]]
    batch = model.encode_batch(files, max_frames=1200)  # several length-bucketed batches
    assert len(batch) == len(files)
    for f, u in zip(files, batch):
        one = model.encode(f)
        _same_units(u, one)
        assert u.source == one.source == str(f) and u.seconds == one.seconds
    x, sr = sf.read(str(clips["mono22"]), dtype="float32")
    mixed = model.encode_batch([x, clips["stereo44"], x[: len(x) // 2]], sample_rate=sr)  # files read their own rate
    _same_units(mixed[0], model.encode(clips["mono22"]))
    _same_units(mixed[1], model.encode(clips["stereo44"]))
    _same_units(mixed[2], model.encode(x[: len(x) // 2], sample_rate=sr))
    assert [u.source for u in mixed] == ["<array>", str(clips["stereo44"]), "<array>"]
    with pytest.raises(AudioError, match="needs its sample_rate"):
        model.encode_batch([clips["mono22"], x])


def test_frame_times_are_the_latent_frame_centres(model, clips):
    u = model.encode(clips["mono22"])
    assert u.times.shape == u.indices.shape and u.times[0] == pytest.approx(0.015, abs=1e-12)
    np.testing.assert_allclose(np.diff(u.times), 0.02, atol=1e-12)
    frames = 1 + int(np.ceil(sf.info(str(clips["mono22"])).frames * 16000 / 22050)) // 160
    assert len(u) == (frames - frames % 2 - 2) // 2
    d = u.dedup()
    assert np.all(d[1:] != d[:-1]) and u.to_text(dedup=True) == " ".join(map(str, d))


# ------------------------------------------------------------------------- decoding


def test_decode_lookup_and_their_errors(model, clips):
    u = model.encode(clips["stereo22"])
    mel = model.decode(u, "cs-v")
    assert mel.shape == (80, 2 * len(u)) and mel.dtype == np.float32 and np.isfinite(mel).all()
    assert np.array_equal(model.decode(u.indices, "cs-v"), mel)
    assert np.array_equal(model.decode(torch.from_numpy(u.indices), "cs-v"), mel)
    assert np.array_equal(model.decode(u.quantized, "cs-v"), mel)
    codebook = model.net.quantizer.codebook.detach().numpy()
    assert np.array_equal(model.lookup(u.indices), codebook[u.indices])
    assert np.array_equal(u.quantized, codebook[u.indices])
    assert not np.array_equal(model.decode(u, "nl-m"), mel)  # the speaker matters
    with pytest.raises(SQVAEError, match=f"unknown speaker 'en-x'; the model knows: {SPEAKERS}"):
        model.decode(u, "en-x")
    with pytest.raises(SQVAEError, match=r"unit 16 is outside the codebook: this model's codes are 0 \.\. 15"):
        model.decode(np.array([1, 2, 16]), "cs-v")
    with pytest.raises(SQVAEError, match=r"unit -1 is outside the codebook: this model's codes are 0 \.\. 15"):
        model.lookup([3, -1])
    with pytest.raises(SQVAEError, match="integer code indices"):
        model.lookup(np.array([1.5, 2.0]))
    with pytest.raises(SQVAEError, match=r"quantized latents must be \[frames, 8\]"):
        model.decode(np.zeros((5, 3), np.float32), "cs-v")
    with pytest.raises(SQVAEError, match="NaN or inf"):
        model.decode(np.full((5, 8), np.nan, np.float32), "cs-v")


def test_synthesize_and_resynthesize(exp, model, clips, f0_stats):
    path = clips["stereo22"]
    n = int(np.ceil(sf.info(str(path)).frames * 16000 / 22050))
    u = model.encode(path)
    wav, sr = model.synthesize(u, "nl-m", gl_iters=4)
    assert sr == 16000 and wav.dtype == np.float32 and np.isfinite(wav).all() and 0 < np.abs(wav).max() <= 1
    assert abs(wav.size - 2 * len(u) * 160) <= 2 * 160
    wav, sr = model.resynthesize(path, "cs-m", vocoder="griffinlim", gl_iters=4)
    assert sr == 16000 and np.isfinite(wav).all() and np.abs(wav).max() > 0
    assert abs(wav.size - n) <= 3 * 160, (wav.size, n)
    with pytest.raises(SQVAEError, match=r"carries no F0 statistics, which WORLD conversion needs: pass "
                                         r"load_model\(\.\.\., f0_stats=.*--f0-stats.*vocoder='griffinlim'"):
        model.resynthesize(path, "cs-m")
    with pytest.raises(SQVAEError, match=f"unknown speaker 'x'; the model knows: {SPEAKERS}"):
        model.resynthesize(path, "x", vocoder="griffinlim")
    world = sq.load_model(exp, f0_stats=f0_stats)
    assert world.f0_stats is not None and set(world.f0_stats.speakers) == set(model.speakers)
    wav, sr = world.resynthesize(path, "cs-m", source_speaker="nl-v")
    assert sr == 16000 and np.isfinite(wav).all() and np.abs(wav).max() > 0
    assert abs(wav.size - n) <= 3 * 160, (wav.size, n)
    x, sr_in = sf.read(str(path), dtype="float32")
    wav2, _ = world.resynthesize(x, "cs-m", sample_rate=sr_in, source_speaker="nl-v")
    assert np.array_equal(wav, wav2)


# ------------------------------------------------------------------------- model files


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_model_file_round_trip_and_refusals(exp, model, real_featstore, f0_stats, clips, tmp_path, capsys):
    from sqvae_speech.evaluate import evaluate

    results = evaluate(exp, real_featstore.path, device="cpu", progress=False)
    out = tmp_path / "share" / "tiny.pt"
    meta = sq.write_model_file(exp, out, f0_stats=f0_stats, results=exp / "results.json")
    data = torch.load(out, weights_only=True)  # plain values and tensors only
    assert (data["format"], data["version"], data["config_version"]) == ("sqvae-speech-model", 1, 2)
    assert data["speakers"] == SPEAKERS.split(", ") and data["step"] == 30 == meta["step"]
    assert data["config"]["model"]["variant"] == "gaussian_4" and data["config"]["features"]["n_mels"] == 80
    assert data["metrics"]["mse_db2"] == pytest.approx(results.mse_db2) and data["metrics"]["step"] == 30
    assert set(data["f0_stats"]["speakers"]) == set(data["speakers"]) and data["f0_stats"]["method"] == "dio"
    assert data["source"] == {"experiment": exp.name, "checkpoint": "ckpt-00000030.pt"}
    no_weights = json.dumps({k: v for k, v in data.items() if k != "model"})
    assert str(tmp_path) not in no_weights and str(exp) not in no_weights  # no machine paths
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in data["model"].items())
    card = out.with_suffix(".md").read_text()
    assert card.startswith("# tiny.pt: gaussian_4 speech model") and "K = 16, D = 8" in card
    assert "dB^2 MSE" in card and "of cs-m, cs-v, nl-m, nl-v" in card and 'sq.load_model("tiny.pt")' in card

    packaged = sq.load_model(out)
    assert (packaged.step, packaged.speakers, packaged.metrics["mse_db2"]) == (30, model.speakers, data["metrics"]["mse_db2"])
    assert packaged.f0_stats is not None and packaged.f0_stats.method == "dio"
    for path in clips.values():
        _same_units(packaged.encode(path), model.encode(path), atol=0)
    wav, _ = packaged.resynthesize(clips["mono22"], "nl-v")  # WORLD with the packaged statistics
    assert np.isfinite(wav).all() and wav.size > 0

    # `export --exp model.pt` reads it like the experiment dir
    utts = real_featstore.utterances[:3]
    utt_list = tmp_path / "utts.txt"
    utt_list.write_text("".join(u + "\n" for u in utts))
    for name, src in (("from_file", out), ("from_exp", exp)):
        rc = cli_main(["export", "--exp", str(src), "--feats", str(real_featstore.path), "--out", str(tmp_path / name),
                       "--utts", str(utt_list), "--kind", "indices", "--format", "npy", "--device", "cpu", "--no-progress"])
        assert rc == 0
    for u in utts:
        assert np.array_equal(np.load(tmp_path / "from_file" / f"{u}.npy"), np.load(tmp_path / "from_exp" / f"{u}.npy"))

    newer = tmp_path / "newer.pt"
    torch.save({**data, "version": 2}, newer)
    with pytest.raises(CheckpointError, match=r"is a model file of format version 2; this sqvae-speech \(0\.1\.0\) "
                                              r"reads up to version 1: upgrade sqvae-speech"):
        sq.load_model(newer)
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 3}, plain)
    with pytest.raises(CheckpointError, match=r"is not an sqvae-speech checkpoint or model file .*another program"):
        sq.load_model(plain)
    for pickled, how in ((tmp_path / "class.pt", torch.save), (tmp_path / "class.pkl", None)):
        if how is None:
            pickled.write_bytes(pickle.dumps(Foreign()))
        else:
            how(Foreign(), pickled)
        with pytest.raises(CheckpointError, match=r"cannot be read .*holds more than tensors and plain values "
                                                  r"\(another program's\)"):
            sq.load_model(pickled)
    with pytest.raises(SQVAEError, match="is already a model file"):
        sq.write_model_file(out, tmp_path / "again.pt")
    with pytest.raises(SQVAEError, match=r"give it the suffix \.pt"):
        sq.write_model_file(exp, tmp_path / "tiny.pth")
    assert not (tmp_path / "again.pt").exists() and not list(tmp_path.rglob(".tmp-*"))


# ------------------------------------------------------------------------- quantizers as a library


def test_quantizers_as_a_library():
    torch.manual_seed(0)
    q = sq.GaussianSQ(num_embeddings=32, embedding_dim=4, variant="IV").eval()
    z, log_var = torch.randn(2, 10, 4), torch.zeros(2, 10, 4)
    out = q(z, log_var)
    assert isinstance(out, sq.QuantizerOutput)
    assert out.quantized.shape == (2, 10, 4) and out.indices.shape == (2, 10) and out.indices.dtype == torch.int64
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < 32
    assert torch.equal(q.lookup(out.indices), q.codebook.detach()[out.indices])
    assert torch.equal(out.quantized, q.lookup(out.indices))  # evaluation: the most probable code itself
    nearest = torch.cdist(z.reshape(-1, 4), q.codebook.detach()).argmin(-1).reshape(2, 10)
    assert torch.equal(out.indices, nearest)  # unit variance: the nearest code
    vq = sq.VQEMA(num_embeddings=8, embedding_dim=4).eval()
    o = vq(z)
    assert torch.equal(o.quantized, vq.lookup(o.indices)) and torch.equal(vq.lookup(o.indices), vq.codebook[o.indices])
    assert sq.get_quantizer("gaussian_4").build(num_embeddings=8, embedding_dim=4)(z, log_var).quantized.shape == z.shape
    assert {"GaussianSQ", "VQEMA", "load_model", "Units", "Model"} <= set(dir(sq))
