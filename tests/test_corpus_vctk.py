"""VCTK 0.80 / 0.92: layout detection, microphone choice, the split, data dirs, and the
recipe end to end, on corpus trees in the real layouts filled with real speech."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from corpus_trees import copy_recipe, make_vctk

from sqvae_speech.cli import main as cli_main
from sqvae_speech.config import ExperimentConfig, FeatureConfig, load_yaml
from sqvae_speech.corpora import vctk
from sqvae_speech.data.datadir import read_datadir, validate_datadir
from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.errors import SQVAEError

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "vctk"


@pytest.fixture(scope="module")
def trees(sound_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Corpus dirs: 0.80 (inside VCTK-Corpus/) and 0.92 (p226_003 without mic2), same speech."""
    root = tmp_path_factory.mktemp("vctk")
    return {"0.80": make_vctk(root / "v080", sound_dir, "0.80"),
            "0.92": make_vctk(root / "v092", sound_dir, "0.92", no_mic2=("p226_003",))}


def read_table(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split(" ", 1)) for line in path.read_text().splitlines()]  # type: ignore[misc]


def test_detect_layout(trees: dict[str, Path], tmp_path: Path) -> None:
    v80, v92 = trees["0.80"], trees["0.92"]
    assert vctk.detect_layout(v80) == vctk.Layout("0.80", v80)
    assert vctk.detect_layout(v80.parent) == vctk.Layout("0.80", v80)  # the dir the archive unpacks into
    assert vctk.detect_layout(v92) == vctk.Layout("0.92", v92)
    assert vctk.detect_layout(v92).audio_dir == v92 / "wav48_silence_trimmed"
    with pytest.raises(SQVAEError, match="version 0.80 .wav48/"):
        vctk.detect_layout(v92, version="0.80")
    both = tmp_path / "both"
    (both / "wav48").mkdir(parents=True)
    (both / "wav48_silence_trimmed").mkdir()
    with pytest.raises(SQVAEError, match="holds both wav48 and wav48_silence_trimmed.*--vctk-version"):
        vctk.detect_layout(both)
    assert vctk.detect_layout(both, version="0.92").version == "0.92"


def test_wrong_corpus_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SQVAEError, match=r"does not exist.*wav48/<spk>/<spk>_<nnn>\.wav.*datashare\.ed\.ac\.uk"):
        vctk.detect_layout(tmp_path / "missing")
    (tmp_path / "LibriSpeech" / "train-clean-100").mkdir(parents=True)
    with pytest.raises(SQVAEError, match=r"does not look like the VCTK corpus.*wav48_silence_trimmed.*10283/3443"):
        vctk.prepare(tmp_path, tmp_path / "out")
    (tmp_path / "wav48" / "p225").mkdir(parents=True)
    (tmp_path / "wav48" / "p225" / "readme.txt").write_text("x")
    with pytest.raises(SQVAEError, match=r"no <spk>_<nnn>\.wav files in the speaker dirs under .*wav48"):
        vctk.scan(vctk.detect_layout(tmp_path))


def test_microphone_choice(trees: dict[str, Path]) -> None:
    layout = vctk.detect_layout(trees["0.92"])
    mic1, mic2 = vctk.scan(layout, "mic1"), vctk.scan(layout, "mic2")
    assert len(mic1.utterances) == 15 and mic1.missing_mic == []
    assert set(mic2.utterances) == set(mic1.utterances) - {"p226_003"}
    assert mic2.missing_mic == ["p226_003"]
    assert all(u.path.name == f"{u.utt_id}_mic1.flac" for u in mic1.utterances.values())
    assert all(u.path.name == f"{u.utt_id}_mic2.flac" for u in mic2.utterances.values())
    # the two microphones hold different signals of the same utterance
    a = soundfile.read(str(mic1.utterances["p225_001"].path))[0]
    b = soundfile.read(str(mic2.utterances["p225_001"].path))[0]
    assert a.shape == b.shape and abs(a - b).max() > 0.01
    assert mic1.speakers == ["p225", "p226", "p227"]
    assert "1 utterance(s) without a mic2 file" in mic2.describe()
    with pytest.raises(SQVAEError, match="--mic mic2 needs VCTK 0.92"):
        vctk.scan(vctk.detect_layout(trees["0.80"]), "mic2")
    with pytest.raises(SQVAEError, match="--mic 'mic3' unknown"):
        vctk.scan(layout, "mic3")


def test_split_rule_is_deterministic() -> None:
    utts = [f"p225_{i:03d}" for i in range(1, 401)]
    durations = dict.fromkeys(utts, 3.0)
    train, test = vctk.split_speaker(utts, durations, 10)
    assert len(test) == 10 and len(train) == 390 and not set(train) & set(test)
    # the first 10 ids in SHA-1 order, whatever the input order
    assert test == sorted(sorted(utts, key=lambda u: hashlib.sha1(u.encode()).hexdigest())[:10])
    shuffled = utts[:]
    random.Random(0).shuffle(shuffled)
    assert vctk.split_speaker(shuffled, durations, 10) == (train, test)
    # capping training data leaves the test set alone
    capped, test_capped = vctk.split_speaker(utts, durations, 10, max_train=50)
    assert test_capped == test and len(capped) == 50 and set(capped) < set(train)
    # a test set never takes more than a fifth of a speaker, and skips too-short files
    assert len(vctk.split_speaker(utts[:12], durations, 10)[1]) == 2
    short = dict(durations, **{test[0]: 0.3})
    assert test[0] not in vctk.split_speaker(utts, short, 10)[1]
    # sorted "<spk>_<nnn>" ids must keep speakers together ("p22_..." sorts after "p225_...")
    vctk.check_sort_order(["p225", "p226", "s5"])
    with pytest.raises(SQVAEError, match="p22 and p225 would interleave"):
        vctk.check_sort_order(["p22", "p225"])


def test_prepare_writes_the_split(trees: dict[str, Path], tmp_path: Path) -> None:
    out80 = tmp_path / "v080"
    summary = vctk.prepare(trees["0.80"], out80, test_per_speaker=1, heldout_speakers=["p227"], nj=2)
    for split in ("train", "test", "heldout"):
        validate_datadir(out80 / split)
        rows = read_table(out80 / split / "utt2spk")
        assert [u for u, _ in rows] == sorted(u for u, _ in rows)
        assert all(u.startswith(spk + "_") for u, spk in rows)
    train, test = read_datadir(out80 / "train"), read_datadir(out80 / "test")
    heldout = read_datadir(out80 / "heldout")
    assert train.speakers == test.speakers == ["p225", "p226"] and heldout.speakers == ["p227"]
    assert {s: len(u) for s, u in train.spk2utt.items()} == {"p225": 4, "p226": 4}
    assert {s: len(u) for s, u in test.spk2utt.items()} == {"p225": 1, "p226": 1}
    assert len(heldout.utterances) == 5 and not set(train.utt2spk) & set(test.utt2spk)
    assert all(p.endswith(".wav") and "/wav48/" in p for p in train.wav_scp.values())
    saved = json.loads((out80 / "prepare.json").read_text())
    assert saved["version"] == "0.80" and saved["mic"] is None and saved["options"]["heldout_speakers"] == ["p227"]
    assert "heldout utts" in summary.table() and "total" in summary.table()

    # 0.92 with mic1 selects the very same test utterances (ids do not depend on the version)
    out92 = tmp_path / "v092"
    vctk.prepare(trees["0.92"], out92, test_per_speaker=1, heldout_speakers=["p227"])
    assert read_table(out92 / "test" / "utt2spk") == read_table(out80 / "test" / "utt2spk")
    assert (out92 / "train" / "utt2spk").read_text() == (out80 / "train" / "utt2spk").read_text()
    # a rerun writes identical files
    again = tmp_path / "again"
    vctk.prepare(trees["0.80"], again, test_per_speaker=1, heldout_speakers=["p227"])
    for split in ("train", "test", "heldout"):
        assert (again / split / "wav.scp").read_bytes() == (out80 / split / "wav.scp").read_bytes()

    with pytest.raises(SQVAEError, match="--heldout-speakers p999: not in .*speakers there: p225 p226 p227"):
        vctk.prepare(trees["0.80"], tmp_path / "bad", heldout_speakers=["p999"])


def test_prepare_skips_missing_and_broken_files(trees: dict[str, Path], tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(trees["0.92"], corpus)
    (corpus / "wav48_silence_trimmed" / "p225" / "p225_009_mic2.flac").write_bytes(b"not audio at all")
    (corpus / "wav48_silence_trimmed" / "p225" / "log.txt").write_text("recording notes\n")
    summary = vctk.prepare(corpus, tmp_path / "out", mic="mic2", test_per_speaker=1)
    assert summary.skipped["no mic2 file"] == ["p226_003"]
    assert summary.skipped["unreadable header"] == ["p225_009"]
    assert summary.skipped["not named like VCTK"] == [str(corpus / "wav48_silence_trimmed" / "p225" / "log.txt")]
    utts = set(read_datadir(tmp_path / "out" / "train").utt2spk) | set(read_datadir(tmp_path / "out" / "test").utt2spk)
    assert len(utts) == 13 and "p225_009" not in utts and "p226_003" not in utts
    assert "skipped (unreadable header): 1: p225_009" in summary.table()
    # too few utterances left for any test set: a clear error, not an empty data dir
    for f in (corpus / "wav48_silence_trimmed").glob("*/*_00[13]_mic1.flac"):
        f.unlink()
    with pytest.raises(SQVAEError, match="no test utterances: .* from 5 usable utterances on; .* has 9 usable"):
        vctk.prepare(corpus, tmp_path / "few", test_per_speaker=1)


def test_cli_check_and_prepare(trees: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["prepare", "vctk", str(trees["0.92"]), "--check", "--mic", "mic2"]) == 0
    assert "VCTK 0.92 (wav48_silence_trimmed, mic2)" in capsys.readouterr().out
    assert not (tmp_path / "data").exists()
    assert cli_main(["prepare", "vctk", str(trees["0.80"])]) == 2
    assert "OUT_DIR is required" in capsys.readouterr().err
    assert cli_main(["prepare", "vctk", str(trees["0.80"]), str(tmp_path / "data"), "--test-per-speaker", "1",
                     "--heldout-speakers", "p226,p227", "--no-progress"]) == 0
    assert read_datadir(tmp_path / "data" / "heldout").speakers == ["p226", "p227"]


def test_prepare_records_its_options(trees: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """data/.prepare.json: the same options again skip, other ones stop with what to remove."""
    monkeypatch.chdir(tmp_path)
    opts = ["prepare", "vctk", str(trees["0.80"]), "data", "--test-per-speaker", "1", "--heldout-speakers", "p227",
            "--no-progress"]
    assert cli_main(opts) == 0
    out = capsys.readouterr().out
    for name in ("train", "test", "heldout"):  # each dir written is checked, as validate-data does
        assert f"data/{name}: " in out
    assert out.count("OK") == 3
    record = json.loads((tmp_path / "data" / ".prepare.json").read_text())
    assert record == {"corpus": "vctk", "corpus_dir": str(trees["0.80"].resolve()), "vctk_version": "auto",
                      "mic": "mic1", "test_per_speaker": 1, "heldout_speakers": ["p227"], "max_utts_per_speaker": 0}
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*")}

    # the same options (the corpus named by another relative path, --nj differs): nothing to do
    monkeypatch.chdir(trees["0.80"].parent)
    assert cli_main([*opts[:2], trees["0.80"].name, str(tmp_path / "data"), *opts[4:], "--nj", "2"]) == 0
    assert "data is already prepared with these options: skipping" in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*")}

    # other options: an error naming the difference, the record and what to remove; nothing rewritten
    monkeypatch.chdir(tmp_path)
    assert cli_main([*opts, "--max-utts-per-speaker", "3"]) == 2
    err = capsys.readouterr().err
    assert "max_utts_per_speaker 0 -> 3" in err and "data/.prepare.json" in err and "remove data/" in err
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*")}
    (tmp_path / "data" / ".prepare.json").write_text("{not json")
    assert cli_main(opts) == 2
    assert "data/.prepare.json cannot be read" in capsys.readouterr().err
    # a finished run writes the record last: without it, the dirs are prepared again
    (tmp_path / "data" / ".prepare.json").unlink()
    assert cli_main(opts) == 0 and (tmp_path / "data" / ".prepare.json").is_file()


@pytest.mark.parametrize("name", ["paper", "small"])
def test_configs_parse(name: str) -> None:
    cfg = ExperimentConfig.from_dict(load_yaml(REPO / "recipes" / "conf" / f"{name}.yaml"), where=name)
    q = cfg.model.quantizer  # the quantizer's arguments (a dataclass in older configs)
    q = q if isinstance(q, dict) else dataclasses.asdict(q)
    assert (q["num_embeddings"], q["embedding_dim"], cfg.model.jitter, cfg.train.crop_frames) == (512, 64, 0.5, 32)
    if name == "paper":  # the paper's setting, value for value (docs/PROTOCOL.md)
        t = cfg.train
        assert cfg.model.encoder.channels == 768 and cfg.model.decoder.hidden_size == 128
        assert (t.steps, t.batch_size, t.lr, t.milestones, t.gamma, t.grad_clip) == \
            (500_000, 52, 4e-4, (300_000, 400_000), 0.5, 1.0)
        assert (t.mixed_precision, t.temperature_decay, t.batching) == ("fp16", 1e-5, "crops")
    features = load_yaml(RECIPE / "conf" / "features.yaml")["features"]
    assert FeatureConfig.from_dict(features) == FeatureConfig()  # the reference protocol


def _run_recipe(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SQVAE_ROOT=str(REPO), OMP_NUM_THREADS="1", SQVAE_NO_PROGRESS="1")
    return subprocess.run(["./run.sh", *args], check=False, cwd=recipe, env=env, capture_output=True, text=True,
                          timeout=600)


TINY_CONFIG = """
model:
  encoder: {channels: 32}
  quantizer: {num_embeddings: 32, embedding_dim: 8}
  decoder: {speaker_embedding_dim: 8, hidden_size: 16}
train: {steps: 12, batch_size: 8, crop_frames: 16, num_workers: 0, checkpoint_every: 6, log_every: 3}
"""


def test_recipe_end_to_end(trees: dict[str, Path], tmp_path: Path) -> None:
    """Stages 0-6 on VCTK 0.92 (mic2) with p227 held out: data dirs, features, two models,
    the dB^2 table, Griffin-Lim conversion of seen and unseen speakers with a listening
    page, the ZeroSpeech export of data/test with its bitrate, and ABX with an item file."""
    recipe = copy_recipe("vctk", tmp_path)
    (recipe / "conf" / "tiny.yaml").write_text(TINY_CONFIG)
    # ABX items on the one test utterance (p225's): two tokens of a 'phone' a, one of b
    # (the audio does not hold these phones; the file only has to be well-formed)
    items = tmp_path / "test.item"
    items.write_text("#file onset offset #phone prev-phone next-phone speaker\n" + "".join(
        f"p225_009 {t:.2f} {t + 0.2:.2f} {ph} x y p225\n" for t, ph in ((0.05, "a"), (0.30, "b"), (0.55, "a"))))
    opts = ["--corpus-dir", str(trees["0.92"]), "--mic", "mic2", "--test-per-speaker", "1", "--nj", "1",
            "--heldout-speakers", "p227", "--convert-per-speaker", "1", "--vocoder", "griffinlim", "--train-vocoder", "false",
            "--config", "conf/tiny.yaml", "--variants", "gaussian_1 vqvae_ema"]
    r = _run_recipe(recipe, *opts, "--abx-item", str(items))
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in range(7):
        assert f"Stage {stage}:" in r.stderr
    assert "VCTK 0.92 (wav48_silence_trimmed, mic2)" in r.stdout
    assert "skipped (no mic2 file): 1: p226_003" in r.stdout
    train, test = read_datadir(recipe / "data" / "train"), read_datadir(recipe / "data" / "test")
    heldout = read_datadir(recipe / "data" / "heldout")
    assert {s: len(u) for s, u in train.spk2utt.items()} == {"p225": 4, "p226": 4}
    assert {s: len(u) for s, u in test.spk2utt.items()} == {"p225": 1}  # p226 has 4: none held out
    assert {s: len(u) for s, u in heldout.spk2utt.items()} == {"p227": 5}
    assert test.utterances == ["p225_009"]
    assert all(p.endswith("_mic2.flac") for p in train.wav_scp.values())
    for split, dd in (("train", train), ("test", test), ("heldout", heldout)):
        store = FeatureStore.open(recipe / "feats" / split)
        assert store.utt2spk() == dd.utt2spk
        # 48 kHz audio resampled to 16 kHz: 100 frames per second
        utt = dd.utterances[0]
        seconds = soundfile.info(dd.wav_scp[utt]).duration
        assert store[utt].shape[0] == 80 and abs(store.frames(utt) - 100 * seconds) <= 2
    for variant in ("gaussian_1", "vqvae_ema"):
        result = json.loads((recipe / "exp" / variant / "results.json").read_text())
        assert result["variant"] == variant and result["step"] == 12 and result["num_utterances"] == 1
        assert set(result["per_speaker_mse_db2"]) == {"p225"}
        assert 0 < result["mse_db2"] < 10_000
    table = (recipe / "exp" / "RESULTS.md").read_text()
    assert "Gaussian SQ-VAE (I)" in table and "VQ-VAE w/ EMA" in table
    assert "| Gaussian SQ-VAE (IV) | 24.68 +- 0.21 |" in table and "24.68 +- 0.21" in r.stdout

    # stage 5: the targets are the first training speakers (p225, p226); the sources their
    # held-out utterances (p226 has none) and the unseen speaker p227; Griffin-Lim needs
    # no F0 statistics
    assert "sources: p227, p225; targets: p225, p226; 4 items" in r.stdout
    assert "--vocoder griffinlim: no F0 statistics needed" in r.stdout
    assert not (recipe / "feats" / "train" / "f0_stats.json").exists()
    conv = recipe / "exp" / "gaussian_1" / "conversion"
    # the sources come from two data dirs: the ones converted are written as one
    assert read_datadir(conv / "data").speakers == ["p225", "p227"]
    assert not (recipe / "data" / "convert").exists()
    manifest = json.loads((conv / "conversion.json").read_text())
    assert manifest["vocoder"] == "griffinlim"
    assert sorted((it["source_speaker"], it["target"]) for it in manifest["items"]) == [
        ("p225", "p225"), ("p225", "p226"), ("p227", "p225"), ("p227", "p226")]
    assert {it["source"] for it in manifest["items"]} <= {"p225_009", *heldout.utterances}
    page = (conv / "index.html").read_text()
    wavs = sorted(conv.glob("*.wav"))
    assert len(wavs) == 4 and all(w.name in page for w in wavs)
    for w in wavs:
        info = soundfile.info(w)
        assert info.samplerate == 16000 and info.frames > 8000

    # stage 6: <utt>.txt per test utterance, one latent frame (20 ms) per line, D = 8
    # values (the tiny config); bitrate; ABX (one speaker: within only)
    store = FeatureStore.open(recipe / "feats" / "test")
    t = store.frames("p225_009") - store.frames("p225_009") % 2
    for variant in ("gaussian_1", "vqvae_ema"):
        zs = recipe / "exp" / variant / "zerospeech"
        rows = {}
        for kind in ("quantized", "auxiliary"):
            assert sorted(f.name for f in (zs / kind).glob("*.txt")) == ["p225_009.txt"]
            rows[kind] = np.loadtxt(zs / kind / "p225_009.txt", ndmin=2)
            assert rows[kind].shape == ((t - 2) // 2, 8)
        assert len(np.unique(rows["quantized"], axis=0)) <= 32 < len(np.unique(rows["auxiliary"], axis=0))
        rate = json.loads((zs / "bitrate.json").read_text())
        assert rate["files"] == 1 and rate["frames"] == (t - 2) // 2 and 1 <= rate["symbols"] <= 32
        assert rate["bitrate"] == pytest.approx(rate["frames"] / rate["duration_s"] * rate["entropy_bits"])
        abx = json.loads((recipe / "exp" / variant / "abx.json").read_text())
        assert list(abx) == ["log-mel (model input)", f"{variant} auxiliary (z)", f"{variant} quantized (z_q)"]
        for result in abx.values():
            assert result["items"] == 3 and result["within"]["triplets"] > 0
            assert 0 <= result["within"]["error"] <= 100 and result["across"]["error"] is None
    assert "ABX skipped" not in r.stderr

    # a held-out (or unknown) speaker cannot be a target: the model has no embedding for it
    r = _run_recipe(recipe, *opts, "--stage", "5", "--convert-speakers", "p225,p227")
    assert r.returncode != 0
    assert "target speaker 'p227' is unknown to the model; known speakers: p225, p226" in r.stderr
    assert "can be a source, not a target" in r.stderr

    # a rerun skips the finished stages; other options do not reuse data/ silently
    r = _run_recipe(recipe, *opts, "--stop-stage", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "data is already prepared with these options: skipping" in r.stdout
    assert "feats/test/.done exists: skipping" in r.stderr and "exp/vqvae_ema/.done exists: skipping" in r.stderr
    r = _run_recipe(recipe, *opts[:-4], "--stop-stage", "1", "--mic", "mic1")
    assert r.returncode != 0 and 'mic "mic2" -> "mic1"' in r.stderr and "remove data/" in r.stderr
    r = _run_recipe(recipe, "--stop-stage", "1")
    assert r.returncode != 0 and "--corpus-dir is required" in r.stderr and "datashare" in r.stderr
    r = _run_recipe(recipe, "--corpus-dir", str(tmp_path / "nowhere"), "--stop-stage", "0")
    assert r.returncode != 0 and "does not exist" in r.stderr and "DataShare" in r.stderr
