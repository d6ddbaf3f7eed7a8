"""``sqvae-speech encode`` / ``synthesize`` / ``convert --model FILE...`` / ``package`` on
real recordings: output names and formats, values equal to the Python API, resuming, a bad
file among good ones, and the outputs read back by ``bitrate`` and ``synthesize``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tiny_experiment

import sqvae_speech as sq
from sqvae_speech.cli import main as cli_main
from sqvae_speech.data.audio import load_audio
from sqvae_speech.data.datadir import write_datadir
from sqvae_speech.inference import model as model_module
from sqvae_speech.synthesis.f0 import compute_f0_stats, write_f0_stats
from sqvae_speech.train import train
from sqvae_speech.zerospeech.bitrate import entropy_bits

SPEAKERS = "cs-m, cs-v, nl-m, nl-v"


@pytest.fixture(scope="module")
def exp(real_featstore, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("enc_exp")
    train(tiny_experiment(steps=30, checkpoint_every=30), real_featstore.path, exp, progress=False)
    return exp


@pytest.fixture(scope="module")
def f0_stats(speech_files, tmp_path_factory) -> Path:
    """F0 statistics (DIO) of one real clip of each main voice."""
    root = tmp_path_factory.mktemp("f0")
    wav_scp = {f"{v}-0": str(files[0]) for v, files in sorted(speech_files.items())}
    write_datadir(root / "data", wav_scp, {u: u[:-2] for u in wav_scp})
    write_f0_stats(root / "f0.json", compute_f0_stats(root / "data", method="dio", progress=False))
    return root / "f0.json"


@pytest.fixture(scope="module")
def model_file(exp, f0_stats, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny.pt"
    sq.write_model_file(exp, out, f0_stats=f0_stats)
    return out


@pytest.fixture(scope="module")
def model(model_file):
    return sq.load_model(model_file)


@pytest.fixture(scope="module")
def audio_dir(speech_files, sound_dir, tmp_path_factory) -> Path:
    """Real recordings in three formats, one in a subdirectory, one in a sub-subdirectory
    with a space in its name: ogg 22.05 kHz stereo, 16-bit wav 22.05 kHz mono, FLAC 44.1 kHz stereo."""
    root = tmp_path_factory.mktemp("audio") / "src"
    (root / "sub" / "deep").mkdir(parents=True)
    shutil.copy(speech_files["nl-v"][2], root / "a.ogg")
    x, sr = sf.read(str(speech_files["cs-m"][1]), dtype="float32")
    sf.write(root / "sub" / "b c.wav", x, sr, subtype="PCM_16")
    stereo44 = next(p for p in sorted(sound_dir.glob("hanoi/cs/m-*.ogg")) if sf.info(str(p)).channels == 2
                    and sf.info(str(p)).samplerate == 44100 and sf.info(str(p)).duration > 2)
    x, sr = sf.read(str(stereo44), dtype="float32")
    sf.write(root / "sub" / "deep" / "c.flac", x, sr)
    (root / "notes.txt").write_text("not audio: left out of a directory\n")
    return root


NAMES = {"a": "a.ogg", "sub/b_c": "sub/b c.wav", "sub/deep/c": "sub/deep/c.flac"}


def _cli(args, capsys) -> tuple[int, str, str]:
    rc = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def _encode(model_file, inputs, out, *more, capsys=None):
    return _cli(["encode", "--model", model_file, *inputs, "--out", out, *more, "--no-progress"], capsys)


def test_encode_a_directory_in_every_format(model, model_file, audio_dir, tmp_path, capsys, monkeypatch):
    units = {n: model.encode(audio_dir / f) for n, f in NAMES.items()}
    rc, out, _ = _encode(model_file, [audio_dir], tmp_path / "npy", capsys=capsys)
    assert rc == 0 and "encode: 3 file(s) written" in out and "0 already there, 0 failed" in out
    assert sorted(p.relative_to(tmp_path / "npy").as_posix() for p in (tmp_path / "npy").rglob("*") if p.is_file()) == [
        "a.npy", "export.json", "sub/b_c.npy", "sub/deep/c.npy"]
    for n, u in units.items():
        got = np.load(tmp_path / "npy" / f"{n}.npy")
        assert got.dtype == np.int64 and np.array_equal(got, u.indices)
    meta = json.loads((tmp_path / "npy" / "export.json").read_text())
    assert meta["complete"] and (meta["kind"], meta["file_format"], meta["dedup"]) == ("indices", "npy", False)
    assert (meta["rate"], meta["time_offset"], meta["step"], meta["variant"]) == (50.0, 0.015, 30, "gaussian_4")
    assert meta["names"] == {str(audio_dir / f): n for n, f in NAMES.items()}
    assert meta["durations"] == pytest.approx({n: sf.info(str(audio_dir / f)).duration for n, f in NAMES.items()}, abs=1e-3)

    rc, _, _ = _encode(model_file, [audio_dir], tmp_path / "txt", "--format", "zerospeech", capsys=capsys)
    assert rc == 0
    for n, u in units.items():
        assert (tmp_path / "txt" / f"{n}.txt").read_text() == "".join(f"{i}\n" for i in u.indices)

    rc, _, _ = _encode(model_file, [audio_dir], tmp_path / "units", "--format", "units", capsys=capsys)
    assert rc == 0
    for n, u in units.items():
        assert (tmp_path / "units" / f"{n}.units").read_text() == u.to_text() + "\n"
    assert (tmp_path / "units" / "units.txt").read_text() == "".join(f"{n}\t{units[n].to_text()}\n" for n in sorted(units))

    rc, _, _ = _encode(model_file, [audio_dir], tmp_path / "dedup", "--format", "units", "--dedup", capsys=capsys)
    assert rc == 0
    for n, u in units.items():
        text = (tmp_path / "dedup" / f"{n}.units").read_text()
        assert text == u.to_text(dedup=True) + "\n" and len(text.split()) < len(u)
        assert [int(t) for t in text.split()] == [int(k) for i, k in enumerate(u.indices) if i == 0 or k != u.indices[i - 1]]
    meta = json.loads((tmp_path / "dedup" / "export.json").read_text())
    assert meta["dedup"] and meta["rate"] is None and meta["time_offset"] is None  # no frame clock any more
    # written chunk by chunk: the same files, also where a run of one unit spans chunks
    monkeypatch.setattr(model_module, "CHUNK_FRAMES", 3)
    for d, more in (("units", ()), ("dedup", ("--dedup",))):
        assert _encode(model_file, [audio_dir], tmp_path / f"{d}3", "--format", "units", *more, capsys=capsys)[0] == 0
        for n in [*units, "units"]:
            name = "units.txt" if n == "units" else f"{n}.units"
            assert (tmp_path / f"{d}3" / name).read_bytes() == (tmp_path / d / name).read_bytes()
    monkeypatch.undo()

    rc, _, _ = _encode(model_file, [audio_dir], tmp_path / "q", "--kind", "quantized", capsys=capsys)
    assert rc == 0
    rc, _, _ = _encode(model_file, [audio_dir], tmp_path / "aux", "--kind", "auxiliary", "--format", "zerospeech",
                       capsys=capsys)
    assert rc == 0
    for n, u in units.items():
        q = np.load(tmp_path / "q" / f"{n}.npy")
        assert q.dtype == np.float32 and np.array_equal(q, u.quantized)
        aux = np.loadtxt(tmp_path / "aux" / f"{n}.txt", ndmin=2)
        np.testing.assert_allclose(aux, u.z, atol=1e-6, rtol=0)
    rc, _, err = _encode(model_file, [audio_dir], tmp_path / "bad", "--kind", "quantized", "--format", "units",
                         capsys=capsys)
    assert rc == 2 and "--format units writes code indices; it cannot hold --kind quantized" in err
    rc, _, err = _encode(model_file, [audio_dir], tmp_path / "bad", "--dedup", capsys=capsys)
    assert rc == 2 and "--dedup collapses repeated units: it goes with --format units" in err
    assert not (tmp_path / "bad").exists()


def test_rerun_skips_written_files_and_another_encoding_is_refused(model_file, audio_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _encode(model_file, [audio_dir], out, capsys=capsys)[0] == 0
    files = sorted(out.rglob("*.npy"))
    stamps = {f: f.stat().st_mtime_ns for f in files}
    rc, text, _ = _encode(model_file, [audio_dir], out, capsys=capsys)
    assert rc == 0 and "encode: 0 file(s) written" in text and "3 already there" in text
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    (out / "sub" / "b_c.npy").unlink()
    (out / "sub" / ".tmp-b_c-x.npy").write_bytes(b"partial")  # a killed writer's leftover
    rc, text, _ = _encode(model_file, [audio_dir], out, capsys=capsys)
    assert rc == 0 and "encode: 1 file(s) written" in text and "2 already there" in text
    assert all(f.stat().st_mtime_ns == stamps[f] for f in files if f.name != "b_c.npy")
    assert (out / "sub" / "b_c.npy").is_file() and not list(out.rglob(".tmp-*"))
    meta = json.loads((out / "export.json").read_text())
    assert meta["complete"] and sorted(meta["names"].values()) == sorted(NAMES)
    # a run killed before its export.json was final: the rerun describes the files it skips again
    (out / "export.json").write_text(json.dumps({**meta, "names": {}, "durations": {}, "complete": False}))
    rc, text, _ = _encode(model_file, [audio_dir], out, capsys=capsys)
    assert rc == 0 and "3 already there" in text
    again = json.loads((out / "export.json").read_text())
    assert again["complete"] and again["names"] == meta["names"]
    assert again["durations"] == pytest.approx(meta["durations"], abs=1e-9)
    rc, _, err = _encode(model_file, [audio_dir], out, "--kind", "auxiliary", capsys=capsys)
    assert rc == 2 and f"{out} holds another encoding (different kind); choose another --out or pass --overwrite" in err
    assert {f: f.stat().st_mtime_ns for f in files if f.name != "b_c.npy"} == {
        f: t for f, t in stamps.items() if f.name != "b_c.npy"}
    assert np.load(out / "a.npy").dtype == np.int64
    rc, text, _ = _encode(model_file, [audio_dir], out, "--kind", "auxiliary", "--overwrite", capsys=capsys)
    assert rc == 0 and "encode: 3 file(s) written" in text
    assert np.load(out / "a.npy").shape[1] == 8 and json.loads((out / "export.json").read_text())["kind"] == "auxiliary"


def test_batching_and_prefetch_do_not_change_the_outputs(model_file, audio_dir, tmp_path, capsys, monkeypatch):
    """The pipeline's padded batches equal one file at a time, byte for byte (indices, units)."""
    from sqvae_speech.inference import encode_files as ef

    outs = {}
    for frames, prefetch in ((1, 0), (100_000, 32)):  # every file alone; all files in one batch
        monkeypatch.setattr(ef, "BATCH_FRAMES", frames)
        monkeypatch.setattr(ef, "PREFETCH", prefetch)
        for fmt in ("npy", "units"):
            out = tmp_path / f"{fmt}{frames}"
            assert _encode(model_file, [audio_dir], out, "--format", fmt, capsys=capsys)[0] == 0
            outs[fmt, frames] = {p.relative_to(out): p.read_bytes() for p in out.rglob(f"*.{'npy' if fmt == 'npy' else 'units'}")}
    for fmt in ("npy", "units"):
        assert len(outs[fmt, 1]) == 3 and outs[fmt, 1] == outs[fmt, 100_000]


def test_list_input_names_the_outputs(model, model_file, audio_dir, tmp_path, capsys):
    lst = audio_dir.parent / "wav.scp"
    lst.write_text(f"spk1-utt1 src/a.ogg\n# a comment\n\nspk2-utt7 {audio_dir / 'sub' / 'b c.wav'}\n")
    rc, _, _ = _encode(model_file, ["--list", lst, audio_dir / "sub" / "deep" / "c.flac"], tmp_path / "out", "--format",
                       "units", capsys=capsys)
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.units")) == ["c.units", "spk1-utt1.units", "spk2-utt7.units"]
    assert (tmp_path / "out" / "spk1-utt1.units").read_text() == model.encode(audio_dir / "a.ogg").to_text() + "\n"
    lst.write_text(f"spk1-utt1 src/a.ogg\nspk1-utt1 {audio_dir / 'sub' / 'b c.wav'}\n")
    rc, _, err = _encode(model_file, ["--list", lst], tmp_path / "o2", capsys=capsys)
    assert rc == 2 and "would both be written as 'spk1-utt1'" in err
    lst.write_text("spk1-utt1 sox a.wav -t wav - |\n")
    rc, _, err = _encode(model_file, ["--list", lst], tmp_path / "o2", capsys=capsys)
    assert rc == 2 and f"{lst} line 1: expected 'name path-to-audio' (commands ending in '|' are not supported" in err
    assert not (tmp_path / "o2").exists()


def test_a_bad_file_among_good_ones_is_listed_and_the_others_written(model_file, audio_dir, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(audio_dir, src)
    (src / "sub" / "bad.wav").write_text("RIFF? no: a text file with a .wav name\n")
    out = tmp_path / "out"
    rc, text, err = _encode(model_file, [src], out, capsys=capsys)
    assert rc == 2 and "encode: 3 file(s) written" in text and "1 failed" in text
    assert f"1 of 4 file(s) could not be encoded; they are listed with the reason in {out / 'failed.txt'}" in err
    name, path, reason = (out / "failed.txt").read_text().rstrip("\n").split("\t")
    assert (name, path) == ("sub/bad", str(src / "sub" / "bad.wav")) and "not a readable audio file" in reason
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == ["a.npy", "sub/b_c.npy", "sub/deep/c.npy"]
    assert not list(out.rglob(".tmp-*"))
    meta = json.loads((out / "export.json").read_text())
    assert meta["complete"] and "sub/bad" not in meta["names"].values()
    # fixed: the rerun encodes only it and empties failed.txt
    shutil.copy(src / "sub" / "b c.wav", src / "sub" / "bad.wav")
    rc, text, _ = _encode(model_file, [src], out, capsys=capsys)
    assert rc == 0 and "encode: 1 file(s) written" in text and "3 already there" in text
    assert (out / "failed.txt").read_text() == "" and (out / "sub" / "bad.npy").is_file()


def test_bitrate_reads_an_encode_output(model, model_file, audio_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _encode(model_file, [audio_dir], out, capsys=capsys)[0] == 0
    rc, text, _ = _cli(["bitrate", out, "--json", tmp_path / "b.json"], capsys)
    assert rc == 0 and text.startswith("bitrate ")
    got = json.loads((tmp_path / "b.json").read_text())
    indices = np.concatenate([model.encode(audio_dir / f).indices for f in NAMES.values()])
    infos = [sf.info(str(audio_dir / f)) for f in NAMES.values()]
    seconds = sum(np.ceil(i.frames * 16000 / i.samplerate) / 16000 for i in infos)  # as resampled to 16 kHz
    _, counts = np.unique(indices, return_counts=True)
    assert (got["files"], got["frames"], got["symbols"]) == (3, indices.size, counts.size)
    assert got["duration_s"] == pytest.approx(seconds, rel=1e-12)
    assert got["bitrate"] == pytest.approx(indices.size / seconds * entropy_bits(counts), rel=1e-9)
    # the units format gives the same figures; collapsed units have no frame times for ABX
    units = tmp_path / "units"
    assert _encode(model_file, [audio_dir], units, "--format", "units", capsys=capsys)[0] == 0
    rc, _, _ = _cli(["bitrate", units, "--json", tmp_path / "u.json"], capsys)
    assert rc == 0 and {**json.loads((tmp_path / "u.json").read_text()), "dir": ""} == {**got, "dir": ""}
    dedup = tmp_path / "dedup"
    assert _encode(model_file, [audio_dir], dedup, "--format", "units", "--dedup", capsys=capsys)[0] == 0
    items = tmp_path / "x.item"
    items.write_text("#file onset offset #phone prev-phone next-phone speaker\nsub/a 0.1 0.3 a b c s\n")
    rc, _, err = _cli(["abx", "--features", dedup, "--items", items], capsys)
    assert rc == 2 and "no frame times" in err


def test_synthesize_from_units_npy_and_text(model, model_file, audio_dir, tmp_path, capsys):
    u = model.encode(audio_dir / "a.ogg")
    (tmp_path / "a.units").write_text(u.to_text() + "\n")
    np.save(tmp_path / "idx.npy", u.indices)
    np.save(tmp_path / "q.npy", u.quantized)
    (tmp_path / "idx.txt").write_text("".join(f"{i}\n" for i in u.indices))
    wavs = {}
    for name in ("a.units", "idx.npy", "q.npy", "idx.txt"):
        out = tmp_path / f"{name}.wav"
        rc, text, _ = _cli(["synthesize", "--model", model_file, "--units", tmp_path / name, "--speaker", "cs-m",
                            "--out", out, "--gl-iters", "4"], capsys)
        assert rc == 0 and f"synthesize: {out} (" in text and f"{len(u)} frames as cs-m, Griffin-Lim)" in text
        info = sf.info(str(out))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.frames - 2 * len(u) * 160) <= 2 * 160
        wavs[name] = sf.read(str(out), dtype="int16")[0]
    assert all(np.array_equal(w, wavs["a.units"]) for w in wavs.values())  # the same frames, the same audio
    ref, sr = model.synthesize(u, "cs-m", gl_iters=4)
    assert sr == 16000 and np.abs(wavs["a.units"] / 32768 - ref).max() < 1e-3
    rc, _, err = _cli(["synthesize", "--model", model_file, "--units", tmp_path / "a.units", "--speaker", "cs-m",
                       "--out", tmp_path / "x.mp3"], capsys)
    assert rc == 2 and "the output is a .wav file" in err


def test_convert_files_to_speakers(exp, model_file, audio_dir, tmp_path, capsys):
    a, b = audio_dir / "a.ogg", audio_dir / "sub" / "b c.wav"
    out = tmp_path / "gl"
    rc, text, _ = _cli(["convert", "--model", exp, a, b, "--speaker", "cs-v,nl-m", "--vocoder", "griffinlim",
                        "--gl-iters", "4", "--out", out, "--no-progress"], capsys)
    assert rc == 0 and f"4 items written to {out} (griffinlim)" in text
    manifest = json.loads((out / "conversion.json").read_text())
    assert [(m["name"], m["source"], m["target"]) for m in manifest["items"]] == [
        ("a_to_cs-v", str(a), "cs-v"), ("a_to_nl-m", str(a), "nl-m"), ("b_c_to_cs-v", str(b), "cs-v"),
        ("b_c_to_nl-m", str(b), "nl-m")]
    for m in manifest["items"]:
        wav, sr = sf.read(str(out / m["wav"]), dtype="float32")
        assert sr == 16000 and np.abs(wav).max() > 0
        assert abs(wav.size - load_audio(m["source"], 16000).size) <= 3 * 160
    # WORLD: the statistics a model file carries
    rc, text, _ = _cli(["convert", "--model", model_file, a, "--speaker", "cs-m", "--out", tmp_path / "world",
                        "--no-progress"], capsys)
    assert rc == 0 and "1 items written" in text and "(world)" in text
    manifest = json.loads((tmp_path / "world" / "conversion.json").read_text())
    assert manifest["f0_stats"] == "packaged" and manifest["vocoder"] == "world"
    wav, _ = sf.read(str(tmp_path / "world" / "a_to_cs-m.wav"), dtype="float32")
    assert np.isfinite(wav).all() and np.abs(wav).max() > 0
    # an experiment dir carries none: the error says what to pass
    rc, _, err = _cli(["convert", "--model", exp, a, "--speaker", "cs-m", "--out", tmp_path / "w2", "--no-progress"], capsys)
    assert rc == 2 and "needs F0 statistics: pass --f0-stats" in err and not (tmp_path / "w2").exists()
    rc, _, err = _cli(["convert", "--model", exp, a, "--out", tmp_path / "w3"], capsys)
    assert rc == 2 and "converting FILEs needs --speaker" in err
    rc, _, err = _cli(["convert", "--model", exp, a, "--speaker", "cs-m", "--list", tmp_path / "l.txt", "--out",
                       tmp_path / "w3"], capsys)
    assert rc == 2 and "give the sources one way" in err and "(got FILEs and --list)" in err


def test_package_command(exp, f0_stats, real_featstore, tmp_path, capsys):
    from sqvae_speech.evaluate import evaluate

    out = tmp_path / "models" / "plain.pt"
    rc, text, _ = _cli(["package", exp, out], capsys)
    assert rc == 0 and f"package: {out} (" in text and "gaussian_4 at step 30, not evaluated; 4 speakers, without F0 " \
                                                       "statistics (WORLD conversion needs --f0-stats)" in text
    assert f"model card {out.with_suffix('.md')}" in text and "Not evaluated" in out.with_suffix(".md").read_text()
    assert sq.load_model(out).f0_stats is None
    evaluate(exp, real_featstore.path, out=tmp_path / "results.json", device="cpu", progress=False)
    full = tmp_path / "models" / "full.pt"
    rc, text, _ = _cli(["package", exp, full, "--f0-stats", f0_stats, "--results", tmp_path / "results.json"], capsys)
    assert rc == 0 and ", dB^2 MSE " in text and "with F0 statistics" in text
    m = sq.load_model(full)
    assert m.f0_stats is not None and m.metrics["num_utterances"] == 40 and "## Evaluation" in full.with_suffix(".md").read_text()
    stats = json.loads(f0_stats.read_text())
    del stats["speakers"]["nl-m"]
    (tmp_path / "f0-3.json").write_text(json.dumps(stats))
    rc, _, err = _cli(["package", exp, tmp_path / "x.pt", "--f0-stats", tmp_path / "f0-3.json"], capsys)
    assert rc == 2 and "lack the model's speaker(s) nl-m" in err
    rc, _, err = _cli(["package", exp, tmp_path / "x.pth"], capsys)
    assert rc == 2 and "give it the suffix .pt" in err
    rc, _, err = _cli(["package", full, tmp_path / "x.pt"], capsys)
    assert rc == 2 and "is already a model file; copy it (and its .md) instead" in err
    assert not list(tmp_path.glob("x.*")) and not list(tmp_path.rglob(".tmp-*"))
