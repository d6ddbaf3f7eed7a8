"""The Fish Fillets corpus: scanning, data dir preparation, and the recipe end to end (stages 0-6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import soundfile
import torch
from corpus_trees import copy_recipe

from sqvae_speech.corpora import fishfillets as ff
from sqvae_speech.data.datadir import read_datadir, validate_datadir
from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.errors import SQVAEError
from sqvae_speech.synthesis.neural import load_vocoder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(sound_dir: Path) -> list[ff.Clip]:
    return ff.scan(sound_dir)


@pytest.fixture(scope="module")
def prepared(sound_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ff.PrepareSummary]:
    out = tmp_path_factory.mktemp("prep") / "data"
    return out, ff.prepare(sound_dir, out)


def read_table(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split(" ", 1)) for line in path.read_text().splitlines()]  # type: ignore[misc]


def test_parse_name_rules() -> None:
    assert ff.parse_name("let-m-divna") == ("m", "divna")
    assert ff.parse_name("rand-2-3-0") == ("2", "3-0")  # the word keeps its dashes
    assert ff.parse_name("m-bude") == ("m", "bude")
    assert ff.parse_name("agenti-m") == ("m", "agenti")
    assert ff.parse_name("b1-voda1") == ("b1", "voda1")
    assert ff.parse_name("help1") == ("", "help1")


def test_scan_finds_the_main_voices(clips: list[ff.Clip], sound_dir: Path) -> None:
    counts = Counter(c.speaker for c in clips)
    for spk in ff.MAIN_SPEAKERS:
        assert 600 <= counts[spk] <= 800, (spk, counts[spk])
    assert {c.lang for c in clips} == {"cs", "nl"}
    assert all(c.speaker == f"{c.lang}-{c.code}" for c in clips)
    assert [str(c.path) for c in clips] == sorted(str(c.path) for c in clips)
    # a word with dashes
    (rand,) = [c for c in clips if c.path.name == "rand-2-3-0.ogg" and c.lang == "nl"]
    assert (rand.level, rand.code, rand.word, rand.speaker) == ("electromagnet", "2", "3-0", "nl-2")
    # the shared sets (lines said in any level) are voices of the two fish
    (joke,) = [c for c in clips if c.path.name == "ob-m-ach.ogg" and c.lang == "cs"]
    assert (joke.level, joke.speaker, joke.utt_id) == ("borejokes", "cs-m", "cs-m_borejokes_ach")
    # a download dir (with .done) resolves to the same clips
    download = sound_dir.parents[5]  # <download>/root/usr/share/games/fillets-ng/sound
    assert (download / ".done").is_file()
    assert ff.scan(download) == clips


def test_minor_speaker_rule(clips: list[ff.Clip]) -> None:
    assert ff.minor_speakers(clips) == ["cs-b1", "cs-b2", "cs-c", "cs-hs", "cs-pap"]


def test_prepare_writes_valid_disjoint_splits(prepared: tuple[Path, ff.PrepareSummary]) -> None:
    out, summary = prepared
    for split in ("train", "test"):
        # reading every file header again would double the test's time: the test split
        # gets the full check, train the structural one plus a plain existence check
        validate_datadir(out / split, check_files=split == "test")
        utts = [u for u, _ in read_table(out / split / "utt2spk")]
        assert utts == sorted(utts)
        assert all(u.startswith(spk + "_") for u, spk in read_table(out / split / "utt2spk"))
    train, test = read_datadir(out / "train", check_files=False), read_datadir(out / "test", check_files=False)
    assert all(Path(p).is_file() for p in train.wav_scp.values())
    assert not set(train.utt2spk) & set(test.utt2spk)
    assert train.speakers == test.speakers == list(ff.MAIN_SPEAKERS)
    for spk in ff.MAIN_SPEAKERS:
        assert len(test.spk2utt[spk]) == 30
        assert len(train.spk2utt[spk]) > 550
    for utt in test.utterances:
        assert soundfile.info(test.wav_scp[utt]).duration >= ff.TEST_MIN_SECONDS
    # the two empty nl clips are skipped, nothing else
    assert summary.skipped == ["nl-m_elevator1_cesta", "nl-v_gems_sto"]
    stats = {s.speaker: s for s in summary.speakers}
    assert stats["cs-m"].test_utts == 30 and 0.4 < stats["cs-m"].train_hours < 0.9
    assert json.loads((out / "prepare.json").read_text())["speakers"][0]["speaker"] == "cs-m"
    assert "cs-m" in summary.table() and "total" in summary.table()


def test_prepare_is_deterministic_and_caps_train_only(
    sound_dir: Path, prepared: tuple[Path, ff.PrepareSummary], tmp_path: Path
) -> None:
    out, _ = prepared
    again = tmp_path / "again"
    ff.prepare(sound_dir, again)
    for split in ("train", "test"):
        for name in ("wav.scp", "utt2spk", "spk2utt"):
            assert (again / split / name).read_bytes() == (out / split / name).read_bytes(), (split, name)

    capped = tmp_path / "capped"
    ff.prepare(sound_dir, capped, include_minor=True, max_utts_per_speaker=20)
    train = read_datadir(capped / "train", check_files=False)
    sizes = {spk: len(u) for spk, u in train.spk2utt.items()}
    assert set(sizes) == set(ff.MAIN_SPEAKERS) | set(ff.minor_speakers(ff.scan(sound_dir)))
    assert all(sizes[spk] == 20 for spk in ff.MAIN_SPEAKERS)
    assert sizes["cs-pap"] == 23 - 23 // 5  # fewer clips than the cap
    test = read_table(capped / "test" / "utt2spk")
    main_test = [row for row in test if row[1] in ff.MAIN_SPEAKERS]
    # neither the cap nor the minor speakers change the main voices' test set
    assert main_test == read_table(out / "test" / "utt2spk")
    # a minor speaker's test set takes at most a fifth of its clips
    assert Counter(spk for _, spk in test)["cs-pap"] == 23 // 5


def test_relative_sound_dir_gives_absolute_paths(sound_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A sound dir given relative to the working dir (as a recipe's `download` link) still
    names files that read_datadir finds from its data dir."""
    (tmp_path / "download").symlink_to(sound_dir)
    monkeypatch.chdir(tmp_path)
    ff.prepare("download", "data", max_utts_per_speaker=2)
    for split in ("train", "test"):
        paths = [p for _, p in read_table(tmp_path / "data" / split / "wav.scp")]
        assert paths and all(Path(p).is_absolute() and Path(p).is_file() for p in paths)
        read_datadir(tmp_path / "data" / split)  # checks every file exists


def test_bad_sound_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SQVAEError, match="does not exist.*download.sh"):
        ff.scan(tmp_path / "missing")
    (tmp_path / "level" / "en").mkdir(parents=True)
    (tmp_path / "level" / "en" / "a-m-b.ogg").write_bytes(b"")
    with pytest.raises(SQVAEError, match=r"<level>/<cs\|nl>/.*make corpus"):
        ff.prepare(tmp_path, tmp_path / "out")
    (tmp_path / ".done").write_text(str(tmp_path / "gone") + "\n")
    with pytest.raises(SQVAEError, match="names the sound dir"):
        ff.scan(tmp_path)


def test_unknown_speaker_lists_the_available_ones(sound_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SQVAEError, match="cs-zz.*not found.*cs-m"):
        ff.prepare(sound_dir, tmp_path, speakers=["cs-m", "cs-zz"])


def _run_recipe(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SQVAE_ROOT=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(["./run.sh", *args], check=False, cwd=recipe, env=env, capture_output=True, text=True, timeout=1500)


TINY_CONFIG = """
model:
  encoder: {channels: 32}
  quantizer: {num_embeddings: 32, embedding_dim: 8}
  decoder: {speaker_embedding_dim: 8, hidden_size: 16}
train: {steps: 12, batch_size: 8, crop_frames: 16, num_workers: 0, checkpoint_every: 6, log_every: 3}
"""


TINY_VOCODER_CONFIG = """\
vocoder: {channels: 16, layers: 2}
train: {steps: 6, batch_size: 4, segment_frames: 50, utts_per_speaker: 2, checkpoint_every: 3, log_every: 3}
"""


def test_recipe_end_to_end(sound_dir: Path, tmp_path: Path) -> None:
    """Stages 0-8 on real speech: data dirs, features, two models trained, evaluated, compared,
    converted, exported, packaged and reported; the model file then encodes audio files as
    stage 6 exported them."""
    # A copy of the recipe, so its data/ and feats/ land in tmp_path; SQVAE_ROOT points
    # it at this repository's tools and virtual environment.
    recipe = copy_recipe("fishfillets", tmp_path)
    (recipe / "conf" / "tiny.yaml").write_text(TINY_CONFIG)
    (recipe / "conf" / "tiny_vocoder.yaml").write_text(TINY_VOCODER_CONFIG)
    opts = ["--corpus-dir", str(sound_dir), "--stage", "0", "--stop-stage", "8", "--report-utts", "4",
            "--vocoder-config", "conf/tiny_vocoder.yaml",
            "--max-utts-per-speaker", "6", "--test-per-speaker", "3", "--nj", "2", "--config", "conf/tiny.yaml",
            "--convert-per-speaker", "1", "--flite-voices", "awb,slt", "--flite-sentences", "12"]
    r = _run_recipe(recipe, *opts)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in range(9):
        assert f"Stage {stage}:" in r.stderr
    record = json.loads((recipe / "data" / ".prepare.json").read_text())
    assert record["corpus"] == "fishfillets" and record["corpus_dir"] == str(sound_dir.resolve())
    assert (record["test_per_speaker"], record["max_utts_per_speaker"], record["include_minor"]) == (3, 6, False)
    assert "data/test: 12 utterances, 4 speakers" in r.stdout and "OK" in r.stdout  # checked as validate-data does
    train = read_datadir(recipe / "data" / "train")
    test = read_datadir(recipe / "data" / "test")
    assert {spk: len(u) for spk, u in train.spk2utt.items()} == {spk: 6 for spk in ff.MAIN_SPEAKERS}
    assert {spk: len(u) for spk, u in test.spk2utt.items()} == {spk: 3 for spk in ff.MAIN_SPEAKERS}
    for split, dd in (("train", train), ("test", test)):
        feats = recipe / "feats" / split
        assert (feats / ".done").is_file()
        store = FeatureStore.open(feats)
        assert store.utt2spk() == dd.utt2spk, split
        assert store[dd.utterances[0]].shape[0] == 80
        assert not (feats / "failed.txt").exists()
    results = {}
    for variant in ("gaussian_4", "vqvae_ema"):
        exp = recipe / "exp" / variant
        assert (exp / ".done").is_file() and (exp / "checkpoints" / "ckpt-00000012.pt").is_file()
        result = json.loads((exp / "results.json").read_text())
        results[variant] = result
        assert result["variant"] == variant and result["step"] == 12 and result["num_utterances"] == 12
        assert 0 < result["mse_db2"] < 10_000 and 1 <= result["used_codes"] <= 32
    table = (recipe / "exp" / "RESULTS.md").read_text()
    assert "Gaussian SQ-VAE (IV)" in table and "VQ-VAE w/ EMA" in table and table in r.stdout
    assert (recipe / "exp" / "curves.png").stat().st_size > 10_000
    # stage 3 also trained the neural vocoder on the training audio
    vocoder = load_vocoder(recipe / "exp" / "vocoder" / "vocoder.pt")
    assert vocoder.step == 6 and (recipe / "exp" / "vocoder" / ".done").is_file()
    # stage 5: for each model, 4 sources x 4 targets, each a 16 kHz wav through the neural vocoder (and
    # through WORLD and Griffin-Lim beside it) and a spectrogram, on one page
    for variant in ("gaussian_4", "vqvae_ema"):
        conv = recipe / "exp" / variant / "conversion"
        manifest = json.loads((conv / "conversion.json").read_text())
        assert manifest["vocoder"] == "neural" and manifest["other_vocoders"] == ["world", "griffinlim"]
        assert len(manifest["items"]) == 16
        page = (conv / "index.html").read_text()
        wavs = sorted(conv.glob("*.wav"))
        assert len(wavs) == 48 and all(w.name in page for w in wavs)
        assert all(soundfile.info(w).samplerate == 16000 for w in wavs)
        assert all(set(it["other_vocoders"]) == {"world", "griffinlim"} for it in manifest["items"])
    # stage 6: ZeroSpeech text export of every held-out utterance, bitrate, ABX table
    for variant in ("gaussian_4", "vqvae_ema"):
        zs = recipe / "exp" / variant / "zerospeech" / "quantized"
        assert len(list(zs.glob("*.txt"))) == 12
        # a 12-step model may use a single code (bitrate 0): check the definition, not the value
        rate = json.loads((recipe / "exp" / variant / "zerospeech" / "bitrate.json").read_text())
        assert rate["files"] == 12 and rate["frames"] > 0 and 1 <= rate["symbols"] <= 32
        assert rate["bitrate"] == pytest.approx(rate["frames"] / rate["duration_s"] * rate["entropy_bits"])
        abx = (recipe / "exp" / variant / "abx.md").read_text()
        assert "log-mel" in abx and "within" in abx.lower() and "across" in abx.lower()
    # stage 7: the model file, used the way a user would on the held-out recordings themselves
    model_file = recipe / "exp" / "gaussian_4.pt"
    packaged = torch.load(model_file, weights_only=True)
    assert packaged["format"] == "sqvae-speech-model" and packaged["step"] == 12
    assert packaged["metrics"]["mse_db2"] == results["gaussian_4"]["mse_db2"] and packaged["f0_stats"] is not None
    assert "gaussian_4" in (recipe / "exp" / "gaussian_4.md").read_text()
    audio = tmp_path / "audio"
    audio.mkdir()
    for utt in test.utterances[:4]:
        (audio / f"{utt}{Path(test.wav_scp[utt]).suffix}").symlink_to(test.wav_scp[utt])
    enc = subprocess.run([sys.executable, "-m", "sqvae_speech.cli", "encode", "--model", str(model_file), str(audio),
                          "--out", str(tmp_path / "units"), "--kind", "quantized", "--format", "zerospeech",
                          "--no-progress"], capture_output=True, text=True, check=False, timeout=300)
    assert enc.returncode == 0, enc.stderr[-3000:]
    for utt in test.utterances[:4]:  # the same text, character for character, as stage 6's export
        exported = recipe / "exp" / "gaussian_4" / "zerospeech" / "quantized" / f"{utt}.txt"
        assert (tmp_path / "units" / f"{utt}.txt").read_text() == exported.read_text(), utt

    # stage 8: the report compares both models on units (flite phones), probe, resynthesis, conversion
    report = json.loads((recipe / "exp" / "report" / "report.json").read_text())
    assert [e["variant"] for e in report["experiments"]] == ["gaussian_4", "vqvae_ema"]
    for e in report["experiments"]:
        assert e["units"]["num_phones"] > 30 and e["abx"]["z_q"]["within"] >= 0
        assert e["probe"]["z_q"]["test_frames"] > 0 and e["conversion"]["total"] == 12
    assert len(report["resynthesis"]) == 9 and len(report["resynthesis_utterances"]) == 4  # 3 vocoders x (1 + 2)
    assert [row["vocoder"] for row in report["resynthesis"][:3]] == ["neural", "world", "griffinlim"]
    assert "report: exp/report/report.html" in r.stderr and (recipe / "exp" / "report" / "report.md").is_file()

    stamps = {p: p.stat().st_mtime_ns for p in (recipe / "feats").rglob("*") if p.is_file()}
    ckpts = {p: p.stat().st_mtime_ns for p in (recipe / "exp").rglob("*.pt")}

    # a rerun skips every finished stage and rewrites nothing (stage 6 is not repeated: slow)
    r = _run_recipe(recipe, *[("5" if a == "8" and opts[i - 1] == "--stop-stage" else a) for i, a in enumerate(opts)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "data/.prepare.json: data is already prepared with these options: skipping" in r.stdout
    assert "feats/train/.done exists: skipping" in r.stderr
    assert "feats/test/.done exists: skipping" in r.stderr
    assert "exp/gaussian_4/.done exists: skipping" in r.stderr
    assert "exp/vocoder/.done exists: skipping" in r.stderr
    assert "feats/train/.f0_stats.done exists" in r.stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in (recipe / "feats").rglob("*") if p.is_file()}
    assert ckpts == {p: p.stat().st_mtime_ns for p in (recipe / "exp").rglob("*.pt")}

    # other preparation options must not reuse the data silently
    r = _run_recipe(recipe, "--corpus-dir", str(sound_dir), "--stop-stage", "1",
                    "--max-utts-per-speaker", "7", "--test-per-speaker", "3")
    assert r.returncode != 0
    assert "max_utts_per_speaker 6 -> 7" in r.stderr and "data/.prepare.json" in r.stderr
    assert "remove data/" in r.stderr and "feats/" in r.stderr

    r = _run_recipe(recipe, "--no-such-option", "1")
    assert r.returncode != 0 and "--max-utts-per-speaker" in r.stderr

    # --seeds: one run per variant and seed, and one table row per variant, mean +- std
    seeds = [*opts[:2], "--stage", "3", "--stop-stage", "4", "--config", "conf/tiny.yaml", "--max-utts-per-speaker",
             "6", "--test-per-speaker", "3", "--variants", "gaussian_4 vq_kmeans", "--seeds", "0 1", "--exp", "exp_seeds"]
    r = _run_recipe(recipe, *seeds)
    assert r.returncode == 0, r.stderr[-3000:]
    for run, seed in (("gaussian_4_seed0", 0), ("gaussian_4_seed1", 1), ("vq_kmeans_seed0", 0), ("vq_kmeans_seed1", 1)):
        assert json.loads((recipe / "exp_seeds" / run / "results.json").read_text())["seed"] == seed
    table = (recipe / "exp_seeds" / "RESULTS.md").read_text()
    assert "| Gaussian SQ-VAE (IV) | 2 (0, 1) | 12 |" in table and "| VQ, k-means init" in table and "+-" in table
    r = _run_recipe(recipe, *seeds[:-4], "--seeds", "0 x")
    assert r.returncode != 0 and "--seeds takes non-negative integers, not 'x'" in r.stderr
