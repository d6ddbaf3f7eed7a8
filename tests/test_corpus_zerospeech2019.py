"""ZeroSpeech 2019 English: names and speakers, the paper's evaluation list, data dirs,
and the recipe end to end, on corpus trees in the real layout filled with real speech."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
from corpus_trees import (
    REFERENCE_EVAL_LIST,
    copy_recipe,
    make_zerospeech2019,
    reference_eval_items,
    voice_clips,
    write_clip,
)

from sqvae_speech.cli import main as cli_main
from sqvae_speech.config import ExperimentConfig, FeatureConfig, load_yaml
from sqvae_speech.corpora import zerospeech2019 as zs
from sqvae_speech.data.datadir import read_datadir, validate_datadir
from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.errors import SQVAEError
from sqvae_speech.evaluate import read_eval_list as read_evaluate_list
from sqvae_speech.zerospeech.submission import read_synthesis_list, validate_submission

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "zerospeech2019"
# sha256 of reference/zerospeech2019_english_mse_evaluation.json (the paper's list)
REFERENCE_SHA256 = "2e9e5292bfac4b4a936b3c1317c6035429c8b850a433d3d8ed105ef971a6fa45"


@pytest.fixture(scope="module")
def eval_items() -> list[list[str]]:
    """A reduced evaluation list: the first 2 V001 and 2 V002 items of the paper's."""
    return reference_eval_items(2)


@pytest.fixture(scope="module")
def corpus(sound_dir: Path, eval_items: list[list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_zerospeech2019(tmp_path_factory.mktemp("zs2019"), sound_dir, eval_items)


@pytest.fixture(scope="module")
def eval_list(eval_items: list[list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("list") / "eval.json"
    path.write_text(json.dumps(eval_items, indent=4))
    return path


def test_parse_name() -> None:
    assert zs.parse_name("S015_0361841101.wav") == ("S015", "S015_0361841101")
    assert zs.parse_name("english/train/parallel/voice/V001_0000000047") == ("V001", "V001_0000000047")
    assert zs.parse_name("V002_0000000112.wav") == ("V002", "V002_0000000112")
    assert zs.parse_name("readme.txt") is None
    assert zs.parse_name("V001.wav") is None


def test_resolve_root_and_clear_errors(corpus: Path, tmp_path: Path) -> None:
    assert zs.resolve_root(corpus) == corpus
    assert zs.resolve_root(corpus / "english") == corpus
    with pytest.raises(SQVAEError, match=r"does not exist.*english/train/unit/<spk>_<id>\.wav.*zerospeech\.com"):
        zs.resolve_root(tmp_path / "missing")
    (tmp_path / "english" / "train" / "unit").mkdir(parents=True)
    with pytest.raises(SQVAEError, match=r"english/train/voice, english/test not found.*zerospeech\.com"):
        zs.prepare(tmp_path, tmp_path / "out")


def test_reference_list_parses_and_maps_to_paths(sound_dir: Path, tmp_path: Path) -> None:
    assert hashlib.sha256(REFERENCE_EVAL_LIST.read_bytes()).hexdigest() == REFERENCE_SHA256
    pairs = zs.read_eval_list(REFERENCE_EVAL_LIST)
    assert len(pairs) == 190 and Counter(s for _, s in pairs) == {"V001": 92, "V002": 98}
    assert all(p.startswith("english/train/parallel/voice/") for p, _ in pairs)
    # every listed file present (short real speech): all 190 map to utterance ids and files
    clip = voice_clips(sound_dir, "nl-m", 1)[0]
    first = tmp_path / "english" / "train" / "parallel" / "voice" / "first.wav"
    write_clip(clip, first, 16000)
    for rel, _ in pairs:
        shutil.copyfile(first, tmp_path / f"{rel}.wav")
    first.unlink()
    utts = zs.map_eval_list(pairs, tmp_path)
    assert [u.utt_id for u in utts] == [Path(p).name for p, _ in pairs]
    assert [u.speaker for u in utts] == [s for _, s in pairs]
    assert all(u.path.is_file() and u.path.parent.name == "voice" for u in utts)
    assert len({u.utt_id for u in utts}) == 190
    # missing files: one error naming each of them
    gone = [utts[3].path, utts[150].path]
    for p in gone:
        p.unlink()
    with pytest.raises(SQVAEError, match="2 file\\(s\\) of the evaluation list are missing") as err:
        zs.map_eval_list(pairs, tmp_path)
    assert all(str(p) in str(err.value) for p in gone)


def test_eval_list_errors(corpus: Path, eval_items: list[list[str]], tmp_path: Path) -> None:
    wrong = [[eval_items[0][0], "V002"]]
    with pytest.raises(SQVAEError, match="item 0: .* listed as speaker V002 but its name says V001"):
        zs.map_eval_list([tuple(x) for x in wrong], corpus)
    with pytest.raises(SQVAEError, match="items 0 and 1 both name utterance"):
        zs.map_eval_list([tuple(eval_items[0])] * 2, corpus)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([["a", "b", "c"]]))
    with pytest.raises(SQVAEError, match=r"item 0: expected \[path, speaker\]"):
        zs.read_eval_list(bad)


def test_prepare_writes_train_eval_test(corpus: Path, eval_list: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    summary = zs.prepare(corpus, out, eval_list=eval_list, nj=2)
    for split in ("train", "eval", "test"):
        validate_datadir(out / split)
    train, ev, test = (read_datadir(out / s) for s in ("train", "eval", "test"))
    # speakers from the file names: unit speakers + the two target voices
    assert train.speakers == ["S015", "S020", "V001", "V002"]
    assert {s: len(u) for s, u in train.spk2utt.items()} == dict.fromkeys(train.speakers, 5)
    assert all("/train/unit/" in p for u, p in train.wav_scp.items() if u.startswith("S"))
    assert all("/train/voice/" in p for u, p in train.wav_scp.items() if u.startswith("V"))
    assert ev.utterances == ["V001_0000000047", "V001_0000000074", "V002_0000000112", "V002_0000000140"]
    assert all("/train/parallel/voice/" in p for p in ev.wav_scp.values())
    assert test.speakers == ["S002", "S003"] and len(test.utterances) == 4
    assert not set(train.utt2spk) & set(ev.utt2spk)
    # the `utt spk` list for `sqvae-speech evaluate --list`, in the JSON's order
    listed = read_evaluate_list(out / "eval_list.txt")
    assert listed == [(Path(p).name, s) for p, s in json.loads(eval_list.read_text())]
    assert summary.eval == {"V001": 2, "V002": 2} and len(summary.train) == 4
    assert "4 training speakers" in summary.table()
    assert json.loads((out / "prepare.json").read_text())["test"][0] == 4

    # without a list: all of parallel/voice; a cap keeps the same first utterances per speaker
    capped = tmp_path / "capped"
    zs.prepare(corpus / "english", capped, max_utts_per_speaker=2)
    small = read_datadir(capped / "train")
    assert {s: len(u) for s, u in small.spk2utt.items()} == dict.fromkeys(train.speakers, 2)
    assert set(small.utt2spk) < set(train.utt2spk)
    assert read_datadir(capped / "eval").utterances == ev.utterances


def test_eval_speaker_must_be_trained(corpus: Path, sound_dir: Path, tmp_path: Path) -> None:
    tree = tmp_path / "corpus"
    shutil.copytree(corpus, tree)
    rel = "english/train/parallel/voice/V003_0000000001"
    write_clip(voice_clips(sound_dir, "cs-m", 1)[0], tree / f"{rel}.wav", 16000)
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([[rel, "V003"]]))
    with pytest.raises(SQVAEError, match=r"evaluation speaker\(s\) V003 have no \(readable\) training audio"):
        zs.prepare(tree, tmp_path / "out", eval_list=listed)


def test_cli_check(corpus: Path, eval_list: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["prepare", "zerospeech2019", str(corpus), "--check", "--eval-list", str(eval_list)]) == 0
    out = capsys.readouterr().out
    assert "english/train/unit: 2 speakers, 10 files" in out and "english/train/voice: 2 speakers, 10 files" in out
    assert "4 files, all present" in out
    assert cli_main(["prepare", "zerospeech2019", str(corpus), "--check", "--eval-list", str(REFERENCE_EVAL_LIST)]) == 2
    assert "186 file(s) of the evaluation list" in capsys.readouterr().err


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


TINY_VOCODER_CONFIG = """
vocoder: {channels: 16, layers: 2}
train: {steps: 4, batch_size: 2, segment_frames: 30, utts_per_speaker: 1, checkpoint_every: 2, log_every: 2}
"""


def write_abx_items(path: Path, test_dir: Path) -> list[str]:
    """A tiny ABX item file on the test files: in each, two tokens of a 'phone' a and one
    of b, all in the context x_y (the audio does not hold these phones; the file only has
    to be well-formed: times within the files, two phones, two speakers)."""
    rows = []
    files = sorted(f.stem for f in test_dir.glob("*.wav"))
    for name in files:
        for onset, phone in ((0.05, "a"), (0.30, "b"), (0.55, "a")):
            rows.append(f"{name} {onset:.2f} {onset + 0.2:.2f} {phone} x y {name.split('_')[0]}")
    path.write_text("#file onset offset #phone prev-phone next-phone speaker\n" + "\n".join(rows) + "\n")
    return files


def test_recipe_end_to_end(corpus: Path, eval_list: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Stages 0-6: data dirs, features, two models, the dB^2 table on the (reduced) list,
    WORLD conversion of the test speakers to V001 / V002 with a listening page, the
    submission layout of english/test with its bitrate, ABX with an item file, and the
    complete submission (synthesis list, metadata, code statement) zipped and validated."""
    recipe = copy_recipe("zerospeech2019", tmp_path, REFERENCE_EVAL_LIST.name)
    (recipe / "conf" / "tiny.yaml").write_text(TINY_CONFIG)
    (recipe / "conf" / "tiny_vocoder.yaml").write_text(TINY_VOCODER_CONFIG)
    test_files = write_abx_items(tmp_path / "test.item", corpus / "english" / "test")
    assert [f.split("_")[0] for f in test_files] == ["S002", "S002", "S003", "S003"]
    opts = ["--corpus-dir", str(corpus), "--eval-list", str(eval_list), "--nj", "1",
            "--config", "conf/tiny.yaml", "--variants", "gaussian_1 vqvae_ema", "--convert-per-speaker", "1",
            "--vocoder-config", "conf/tiny_vocoder.yaml"]
    r = _run_recipe(recipe, *opts, "--abx-item", str(tmp_path / "test.item"))
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in range(7):
        assert f"Stage {stage}:" in r.stderr
    assert "on the paper's list (data/eval_list.txt)" in r.stderr
    assert json.loads((recipe / "data" / ".prepare.json").read_text())["eval_list"] == str(eval_list.resolve())
    train = read_datadir(recipe / "data" / "train")
    assert train.speakers == ["S015", "S020", "V001", "V002"]
    for split in ("train", "eval", "test"):
        dd = read_datadir(recipe / "data" / split)
        store = FeatureStore.open(recipe / "feats" / split)
        assert store.utt2spk() == dd.utt2spk and (recipe / "feats" / split / ".done").is_file()
    for variant in ("gaussian_1", "vqvae_ema"):
        result = json.loads((recipe / "exp" / variant / "results.json").read_text())
        assert result["variant"] == variant and result["step"] == 12 and result["num_utterances"] == 4
        assert set(result["per_speaker_mse_db2"]) == {"V001", "V002"}
        assert result["data"] == "data/eval_list.txt" and 0 < result["mse_db2"] < 10_000
    table = (recipe / "exp" / "RESULTS.md").read_text()
    assert "Gaussian SQ-VAE (I)" in table and "VQ-VAE w/ EMA" in table
    assert "| Gaussian SQ-VAE (IV) | 32.32 +- 0.88 |" in table and "32.32 +- 0.88" in r.stdout

    # stage 5: F0 statistics of the target voices only; each source speaker's first
    # utterance (the test speakers' and, as references, V001's and V002's held-out
    # recordings) decoded as V001 and as V002 with WORLD, on one page
    f0 = json.loads((recipe / "feats" / "train" / "f0_stats.json").read_text())
    assert sorted(f0["speakers"]) == ["V001", "V002"] and f0["data"] == str((recipe / "data" / "train").resolve())
    assert "feats/train/f0_stats.json: F0 statistics of V001, V002 from data/train (harvest, 50 utterances" in r.stdout
    assert "sources: S002, S003, V001, V002; targets: V001, V002; 8 items" in r.stdout
    conv = recipe / "exp" / "gaussian_1" / "conversion"
    manifest = json.loads((conv / "conversion.json").read_text())
    # stage 3's neural vocoder (half its windows decoded by gaussian_1) converts; WORLD and Griffin-Lim beside it
    assert (recipe / "exp" / "vocoder" / "vocoder.pt").is_file()
    assert manifest["vocoder"] == "neural" and manifest["f0_norm"] == "utterance"
    assert manifest["other_vocoders"] == ["world", "griffinlim"]
    items = manifest["items"]
    assert sorted((it["source_speaker"], it["target"]) for it in items) == sorted(
        (s, t) for s in ("S002", "S003", "V001", "V002") for t in ("V001", "V002"))
    assert {it["source"] for it in items if it["source_speaker"].startswith("S")} <= set(test_files)
    assert {it["source"] for it in items if it["source_speaker"].startswith("V")} <= {
        Path(rel).name for rel, _ in json.loads(eval_list.read_text())}
    page = (conv / "index.html").read_text()
    wavs = sorted(conv.glob("*.wav"))  # each item through the neural vocoder, WORLD and Griffin-Lim
    assert len(wavs) == 24 and all(w.name in page for w in wavs)
    assert sorted(w.name for w in wavs if w.suffixes == [".wav"]) == sorted(it["wav"] for it in items)
    for w in wavs:
        info = soundfile.info(w)
        assert info.samplerate == 16000 and info.frames > 8000
    assert "listening page: exp/gaussian_1/conversion/index.html" in r.stderr

    # stage 6: english/test in the submission layout, one file per test utterance named
    # as in the corpus, one latent frame (20 ms) per line, D = 8 values (the tiny config)
    store = FeatureStore.open(recipe / "feats" / "test")
    for variant in ("gaussian_1", "vqvae_ema"):
        english = recipe / "exp" / variant / "submission" / "english"
        for kind in ("test", "auxiliary_embedding1"):
            assert sorted(f.stem for f in (english / kind).glob("*.txt")) == test_files
            for name in test_files:
                rows = np.loadtxt(english / kind / f"{name}.txt", ndmin=2)
                t = store.frames(name) - store.frames(name) % 2
                assert rows.shape == ((t - 2) // 2, 8), (kind, name)
        quantized = np.concatenate([np.loadtxt(english / "test" / f"{n}.txt", ndmin=2) for n in test_files])
        auxiliary = np.concatenate([np.loadtxt(english / "auxiliary_embedding1" / f"{n}.txt", ndmin=2) for n in test_files])
        # z_q: codebook vectors (at most K = 32 distinct rows); z: continuous
        assert len(np.unique(quantized, axis=0)) <= 32 < len(np.unique(auxiliary, axis=0))
        rate = json.loads((recipe / "exp" / variant / "bitrate.json").read_text())
        assert rate["files"] == 4 and rate["frames"] == len(quantized) and 1 <= rate["symbols"] <= 32
        assert rate["duration_s"] == pytest.approx(sum(store.frames(n) for n in test_files) / 100)
        assert rate["bitrate"] == pytest.approx(rate["frames"] / rate["duration_s"] * rate["entropy_bits"])
        abx = json.loads((recipe / "exp" / variant / "abx.json").read_text())
        assert list(abx) == ["log-mel (model input)", f"{variant} auxiliary (z)", f"{variant} quantized (z_q)"]
        for result in abx.values():
            assert result["items"] == 12 and result["speakers"] == 2 and result["phones"] == 2
            for condition in ("within", "across"):
                assert result[condition]["triplets"] > 0 and 0 <= result[condition]["error"] <= 100
        assert f"{variant} quantized (z_q)" in (recipe / "exp" / variant / "abx.md").read_text()
        # the complete submission: the synthesis list in V001 / V002, metadata, code statement,
        # zipped and valid; broken copies of it fail with named problems
        zipped = recipe / "exp" / variant / "submission.zip"
        assert f"{zipped.relative_to(recipe)} is a valid ZeroSpeech 2019 submission" in r.stdout
        assert validate_submission(zipped, corpus) == []
        with zipfile.ZipFile(zipped) as z:
            listed = set(z.namelist())
        voices = {f"english/test/{it.output}" for it in read_synthesis_list(corpus)}
        assert {f[:18] for f in voices} == {"english/test/V001_", "english/test/V002_"} and voices < listed
        assert {"metadata.yaml", "code/README.md"} < listed and not any(f.endswith(".json") for f in listed)
        assert len(listed) == 2 + len(voices) + 2 * len(test_files)
        broken = tmp_path / f"broken-{variant}"
        with zipfile.ZipFile(zipped) as z:
            z.extractall(broken)
        (broken / "english" / "test" / f"{test_files[0]}.txt").unlink()
        first = broken / "english" / "auxiliary_embedding1" / f"{test_files[1]}.txt"
        first.write_text(first.read_text().replace(" ", " 0.5 ", 1))
        meta = broken / "metadata.yaml"
        meta.write_text(meta.read_text().replace("open source: true", "open source: maybe"))
        problems = {p.code: p.message for p in validate_submission(broken, corpus)}
        assert problems == {
            "missing-file": f"english/test/{test_files[0]}.txt is missing",
            "frame-width": f"english/auxiliary_embedding1/{test_files[1]}.txt line 2 has 8 values, line 1 9",
            "metadata-type": "metadata.yaml field 'open source' must be true or false, got 'maybe'"}

    # a rerun of stage 6 keeps the written files; without an item file ABX is skipped,
    # saying how to run it
    r = _run_recipe(recipe, *opts, "--stage", "6", "--variants", "gaussian_1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("0 file(s) written, 4 already there") == 2
    assert "submission: 0 file(s) synthesized (neural), 2 already there" in r.stdout
    assert "ABX skipped: no --abx-item" in r.stderr and "--abx-item FILE" in r.stderr
    # a target speaker the model was not trained on: a clear error from `convert`, in the
    # recipe and by itself
    r = _run_recipe(recipe, *opts, "--stage", "5", "--stop-stage", "5", "--convert-targets", "V001 V003")
    assert r.returncode != 0
    assert "target speaker 'V003' is unknown to the model; known speakers: S015, S020, V001, V002" in r.stderr
    assert cli_main(["convert", "--exp", str(recipe / "exp" / "gaussian_1"), "--make-list", str(recipe / "data" / "test"),
                     "--targets", "V001,V003", "--vocoder", "griffinlim", "--out", str(tmp_path / "conv")]) == 2
    assert "target speaker 'V003' is unknown to the model; known speakers: S015, S020, V001, V002" in capsys.readouterr().err
    assert not (tmp_path / "conv").exists()
    r = _run_recipe(recipe, *opts, "--stage", "6", "--abx-item", str(tmp_path / "missing.item"))
    assert r.returncode != 0 and "--abx-item" in r.stderr and "missing.item is not a file" in r.stderr

    # a rerun skips what is done; the default list (the paper's 190) fails on this corpus,
    # naming the missing files, before anything is written
    r = _run_recipe(recipe, *opts, "--stop-stage", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "data is already prepared with these options: skipping" in r.stdout
    assert "feats/eval/.done exists: skipping" in r.stderr
    r = _run_recipe(recipe, "--corpus-dir", str(corpus), "--stop-stage", "1")
    assert r.returncode != 0 and "186 file(s) of the evaluation list" in r.stderr
    assert "V001_0000000114.wav" in r.stderr
