"""The bad-input catalogue of docs/RELIABILITY.md: malformed data dirs, list files naming
unknown utterances or speakers, paths escaping their directory, wrong config keys and
values, and every kind of bad audio. Each goes through the command line: a clear message
(file, line, value, fix), the documented exit status, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tiny_experiment

from sqvae_speech.cli import main as cli_main
from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.audio import load_audio
from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.data.features import logmel
from sqvae_speech.train import resolve_config

from .helpers import write_train_config

CFG = FeatureConfig()


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


# ------------------------------------------------------------------------- data dirs


@pytest.fixture()
def clips(speech_files) -> list[str]:
    return [str(speech_files["cs-m"][0]), str(speech_files["cs-m"][1]), str(speech_files["nl-v"][0])]


def _data_dir(d: Path, wav_scp: str, utt2spk: str, **more: str) -> Path:
    d.mkdir(parents=True)
    (d / "wav.scp").write_text(wav_scp)
    (d / "utt2spk").write_text(utt2spk)
    for name, text in more.items():
        (d / name).write_text(text)
    return d


def _refused_by_validate_and_extract(d: Path, where: str, words: str, capsys, tmp_path: Path) -> None:
    rc, _, err = _cli(["validate-data", d], capsys)
    assert rc == 2 and f"{d}/{where}" in err and words in err, err
    rc, _, err = _cli(["extract", d, tmp_path / "feats", "--no-progress"], capsys)
    assert rc == 2 and f"{d}/{where}" in err and words in err, err
    assert not (tmp_path / "feats").exists()


def test_duplicate_utterance_ids(clips, tmp_path, capsys):
    d = _data_dir(tmp_path / "d", f"a-1 {clips[0]}\na-1 {clips[1]}\nb-1 {clips[2]}\n", "a-1 a\nb-1 b\n")
    _refused_by_validate_and_extract(d, "wav.scp line 2", "'a-1' listed twice (first on line 1)", capsys, tmp_path)


def test_unsorted_ids(clips, tmp_path, capsys):
    d = _data_dir(tmp_path / "d", f"a-1 {clips[0]}\na-2 {clips[1]}\nb-1 {clips[2]}\n", "a-2 a\na-1 a\nb-1 b\n")
    _refused_by_validate_and_extract(d, "utt2spk line 2", "not sorted: 'a-1' comes after 'a-2'", capsys, tmp_path)
    rc, _, err = _cli(["validate-data", d], capsys)
    assert rc == 2 and "LC_ALL=C sort -o FILE FILE" in err  # the message says how to fix it


def test_utterance_without_speaker(clips, tmp_path, capsys):
    d = _data_dir(tmp_path / "d", f"a-1 {clips[0]}\na-2 {clips[1]}\nb-1 {clips[2]}\n", "a-1 a\nb-1 b\n")
    _refused_by_validate_and_extract(d, "wav.scp line 2", "utterance 'a-2' has no speaker", capsys, tmp_path)


def test_missing_audio_file(clips, tmp_path, capsys):
    gone = tmp_path / "gone.wav"
    d = _data_dir(tmp_path / "d", f"a-1 {clips[0]}\na-2 {gone}\nb-1 {clips[2]}\n", "a-1 a\na-2 a\nb-1 b\n")
    rc, _, err = _cli(["validate-data", d], capsys)
    assert rc == 2 and f"{d}/wav.scp line 2" in err and f"audio file '{gone}' of 'a-2' does not exist" in err
    # extract goes on with the others and lists it; exit 1 unless --skip-bad
    rc, out, err = _cli(["extract", d, tmp_path / "feats", "--no-progress"], capsys)
    assert rc == 1 and "2 utterances extracted, 1 failed" in out and "--skip-bad" in err
    assert (tmp_path / "feats/failed.txt").read_text() == f"a-2\t{gone}: audio file does not exist\n"
    assert FeatureStore.open(tmp_path / "feats").utterances == ["a-1", "b-1"]
    rc, out, _ = _cli(["extract", d, tmp_path / "feats", "--skip-bad"], capsys)
    assert rc == 0 and "already extracted" in out


def test_segment_past_the_end_of_its_file(clips, tmp_path, capsys):
    dur = sf.info(clips[0]).duration
    segs = f"r-a r 0.0 {dur / 2:.3f}\nr-b r {dur / 2:.3f} {dur + 2:.3f}\n"
    d = _data_dir(tmp_path / "d", f"r {clips[0]}\n", "r-a s\nr-b s\n", segments=segs)
    rc, _, err = _cli(["validate-data", d], capsys)
    assert rc == 2 and f"{d}/segments line 2" in err
    assert f"segment 'r-b' ends at {dur + 2:.3f} s but recording 'r' ({clips[0]}) lasts {dur:.3f} s" in err
    rc, out, _ = _cli(["extract", d, tmp_path / "feats", "--no-progress"], capsys)
    assert rc == 1 and "1 utterances extracted, 1 failed" in out
    failed = (tmp_path / "feats/failed.txt").read_text()
    assert failed.startswith(f"r-b\t{clips[0]}: segment [") and "lies past the end of the file" in failed


def test_list_file_with_unknown_utterance_or_speaker(untrained_exp, real_featstore, tmp_path, capsys):
    utt = real_featstore.utterances[0]
    feats = real_featstore.path
    lst = tmp_path / "list.txt"
    lst.write_text(f"{utt} cs-m\nnot-an-utt cs-m\n")
    rc, _, err = _cli(["evaluate", "--exp", untrained_exp, "--feats", feats, "--list", lst, "--no-progress"], capsys)
    assert rc == 2 and f"{lst}: utterance 'not-an-utt' is not in the feature store {feats}" in err
    lst.write_text(f"{utt} en-x\n")
    rc, _, err = _cli(["evaluate", "--exp", untrained_exp, "--feats", feats, "--list", lst, "--no-progress"], capsys)
    assert rc == 2 and "speaker 'en-x'" in err and "known speakers: cs-m, cs-v, nl-m, nl-v" in err
    utts = tmp_path / "utts.txt"
    utts.write_text(f"{utt}\nghost-1\n")
    rc, _, err = _cli(["export", "--exp", untrained_exp, "--feats", feats, "--out", tmp_path / "out", "--utts", utts,
                       "--no-progress"], capsys)
    assert rc == 2 and "1 utterance(s) are not in the feature store" in err and "ghost-1" in err


def test_list_path_escaping_the_corpus_dir(tmp_path, capsys):
    corpus = tmp_path / "zs"
    for sub in ("english/train/unit", "english/train/voice", "english/test"):
        (corpus / sub).mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    sf.write(outside / "V001_0001.wav", np.zeros(1600, np.float32), 16000)
    for rel in ("../outside/V001_0001", str(outside / "V001_0001"), "english/../../outside/V001_0001"):
        lst = tmp_path / "eval.json"
        lst.write_text(json.dumps([[rel, "V001"]]))
        rc, _, err = _cli(["prepare", "zerospeech2019", corpus, "--check", "--eval-list", lst], capsys)
        assert rc == 2 and f"evaluation list {lst} item 0: '{rel}' points outside the corpus at {corpus}" in err


def test_export_name_escaping_the_output_dir(untrained_exp, real_featstore, tmp_path, capsys):
    out = tmp_path / "out"
    for name in ("../escaped", "/tmp/escaped", "a/../../escaped"):
        names = tmp_path / "names.txt"
        names.write_text(f"{real_featstore.utterances[0]} {name}\n")
        rc, _, err = _cli(["export", "--exp", untrained_exp, "--feats", real_featstore.path, "--out", out,
                           "--names", names, "--no-progress"], capsys)
        assert rc == 2 and f"output name '{name}'" in err and "must be a relative path without '..'" in err
    assert not (tmp_path / "escaped").exists() and not out.exists()


# ----------------------------------------------------------------------------- config


def test_misspelled_config_key_lists_the_valid_keys(real_featstore, speech_files, tmp_path, capsys):
    conf = tmp_path / "c.yaml"
    conf.write_text("model:\n  quantizer:\n    num_embedings: 8\n")
    train = ["train", "--config", conf, "--feats", real_featstore.path, "--exp", tmp_path / "exp", "--no-progress"]
    rc, _, err = _cli(train, capsys)
    assert rc == 2 and str(conf) in err and "'num_embedings' (did you mean 'num_embeddings'?)" in err
    assert "valid arguments: num_embeddings, embedding_dim, var_space, init_log_var, learn_variance" in err
    conf.write_text("trian:\n  steps: 3\n")
    rc, _, err = _cli(train, capsys)
    assert rc == 2 and "'trian' (did you mean 'train'?)" in err and "valid keys: features, model, train" in err
    rc, _, err = _cli(train[:1] + train[3:] + ["--set", "train.stpes=3"], capsys)
    assert rc == 2 and "'stpes' (did you mean 'steps'?)" in err
    conf.write_text("features:\n  n_melz: 80\n")
    rc, _, err = _cli(["extract", tmp_path / "data", tmp_path / "feats", "--config", conf], capsys)
    assert rc == 2 and "'n_melz' (did you mean 'n_mels'?)" in err and "valid keys: amin, fmax, fmin" in err
    assert not (tmp_path / "exp").exists()


def _train_with(real_featstore, tmp_path, capsys, *more: str) -> tuple[int, str]:
    conf = write_train_config(tmp_path / "c.yaml", tiny_experiment(steps=4))
    rc, _, err = _cli(["train", "--config", conf, "--feats", real_featstore.path, "--exp", tmp_path / "exp",
                       "--no-progress", *more], capsys)
    assert not (tmp_path / "exp/checkpoints").exists()
    return rc, err


def test_negative_steps(real_featstore, tmp_path, capsys):
    rc, err = _train_with(real_featstore, tmp_path, capsys, "--steps", "-5")
    assert rc == 2 and "train.steps must be > 0, got -5" in err


def test_codebook_smaller_than_two(real_featstore, tmp_path, capsys):
    rc, err = _train_with(real_featstore, tmp_path, capsys, "--set", "model.quantizer.num_embeddings=1")
    assert rc == 2 and "model.quantizer: Gaussian SQ needs K >= 2" in err and "got K=1" in err


def test_crop_longer_than_every_utterance(real_featstore, tmp_path, capsys):
    longest = max(real_featstore.frames(u) for u in real_featstore.utterances)
    rc, err = _train_with(real_featstore, tmp_path, capsys, "--set", "train.crop_frames=5000")
    assert rc == 2 and "train.crop_frames=5000 needs utterances of at least 5002 frames" in err
    assert f"the longest in {real_featstore.path} has {longest}; lower train.crop_frames" in err


def test_config_values_of_the_wrong_type(real_featstore, tmp_path, capsys):
    rc, err = _train_with(real_featstore, tmp_path, capsys, "--set", "train.steps=many")
    assert rc == 2 and "'steps' in section 'TrainConfig' must be an integer, got 'many'" in err
    rc, err = _train_with(real_featstore, tmp_path, capsys, "--set", "train.lr=fast")
    assert rc == 2 and "'lr' in section 'TrainConfig' must be a number, got 'fast'" in err
    rc, err = _train_with(real_featstore, tmp_path, capsys, "--set", "train.mixed_precision=no")
    assert rc == 2 and "must be a string, got False" in err and "quote the value" in err
    rc, err = _train_with(real_featstore, tmp_path, capsys, "--set", "model=3")
    assert rc == 2 and "'model' in section 'ExperimentConfig' must be a mapping" in err
    # YAML 1.1 reads 4e-4 (no dot) as a string; a number field takes it as the number.
    conf = tmp_path / "lr.yaml"
    conf.write_text("train:\n  lr: 4e-4\n  temperature_decay: 1e-5\n")
    cfg = resolve_config(str(conf), [], None, real_featstore.path)
    assert cfg.train.lr == 4e-4 and cfg.train.temperature_decay == 1e-5


# ------------------------------------------------------------------------------ audio


@pytest.fixture(scope="module")
def bad_audio(speech_files, tmp_path_factory) -> dict:
    """One extraction over a data dir of real speech and every kind of bad or unusual audio."""
    root = tmp_path_factory.mktemp("bad_audio")
    clip = speech_files["cs-m"][3]  # 1.1 s, 22.05 kHz mono
    x = load_audio(clip, 16000)
    rng = np.random.default_rng(0)
    files = {
        "a-good": clip,
        "b-silent": root / "silent.wav",
        "c-clipped": root / "clipped.wav",
        "d-nan": root / "nan.wav",
        "e-empty": root / "empty.wav",
        "f-text": root / "notes.wav",
        "g-8k": root / "phone.wav",
        "h-48k": root / "studio.flac",
        "i-6ch": root / "surround.wav",
    }
    sf.write(files["b-silent"], (2e-5 * rng.standard_normal(16000)).astype(np.float32), 16000, subtype="FLOAT")
    sf.write(files["c-clipped"], np.clip(8.0 * x, -1.0, 1.0), 16000, subtype="PCM_16")
    nan = x.copy()
    nan[[100, 5000]] = [np.nan, np.inf]
    sf.write(files["d-nan"], nan, 16000, subtype="FLOAT")
    files["e-empty"].write_bytes(b"")
    files["f-text"].write_text("these are my notes, not audio\n" * 50)
    sf.write(files["g-8k"], load_audio(clip, 8000), 8000, subtype="PCM_16")
    sf.write(files["h-48k"], load_audio(clip, 48000), 48000, subtype="PCM_24")
    six = np.stack([g * np.roll(x, 7 * c) for c, g in enumerate((0.5, 0.4, 0.3, 0.2, 0.1, 0.05))], axis=1)
    sf.write(files["i-6ch"], six.astype(np.float32), 16000, subtype="PCM_16")
    data = root / "data"
    data.mkdir()
    (data / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p in files.items()))
    (data / "utt2spk").write_text("".join(f"{u} s\n" for u in files))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(["extract", str(data), str(root / "feats"), "--no-progress"])
    failed = dict(ln.split("\t") for ln in (root / "feats/failed.txt").read_text().splitlines())
    return {"rc": rc, "out": out.getvalue(), "err": err.getvalue(), "files": files, "failed": failed,
            "store": FeatureStore.open(root / "feats")}


def _assert_failed(bad_audio: dict, utt: str, words: str) -> None:
    assert bad_audio["rc"] == 1 and "Traceback" not in bad_audio["err"]
    assert "5 utterances extracted, 4 failed" in bad_audio["out"] and "--skip-bad" in bad_audio["err"]
    reason = bad_audio["failed"][utt]
    assert reason.startswith(f"{bad_audio['files'][utt]}: ") and words in reason, reason
    assert utt not in bad_audio["store"]


def _assert_extracted_as(bad_audio: dict, utt: str, wav: np.ndarray, sr: int) -> None:
    feats = bad_audio["store"][utt]
    ref = logmel(wav, sr, CFG)
    assert feats.shape == ref.shape and np.isfinite(feats).all()
    np.testing.assert_allclose(feats, ref, atol=1e-4, rtol=0)


def test_silent_audio(bad_audio):
    _assert_failed(bad_audio, "b-silent", "silent audio (peak ")
    assert bad_audio["failed"]["b-silent"].endswith("), nothing to learn from")


def test_clipped_audio(bad_audio):
    path = bad_audio["files"]["c-clipped"]
    wav, sr = sf.read(path, dtype="float32")
    frac = np.count_nonzero(np.abs(wav) >= 0.999) / wav.size
    assert frac > 0.05  # really clipped
    _assert_extracted_as(bad_audio, "c-clipped", wav, sr)  # extracted, not a failure ...
    assert "c-clipped" not in bad_audio["failed"]
    feats = bad_audio["store"].path  # ... but named: a warning, clipped.txt and the index
    assert f"extract: warning: 1 utterance(s) clipped, extracted anyway (at least 0.1 % of their samples at full " \
           f"scale): c-clipped ({100 * frac:.2g} %); all in {feats / 'clipped.txt'}; --max-clipped FRACTION makes " \
           "them failures" in bad_audio["err"]
    assert (feats / "clipped.txt").read_text() == f"c-clipped\t{path}: {100 * frac:.3g} % of the samples at full scale\n"
    assert bad_audio["store"].index["extraction"]["clipped"] == {"c-clipped": pytest.approx(frac)}


def test_nan_bearing_audio(bad_audio):
    _assert_failed(bad_audio, "d-nan", "2 NaN or infinite samples; the file is corrupt")


def test_zero_byte_audio(bad_audio):
    _assert_failed(bad_audio, "e-empty", "empty file (0 bytes)")


def test_file_that_is_not_audio(bad_audio):
    _assert_failed(bad_audio, "f-text", "not a readable audio file (Format not recognised.)")


def test_8khz_audio_is_resampled(bad_audio):
    wav, sr = sf.read(bad_audio["files"]["g-8k"], dtype="float32")
    assert sr == 8000 and bad_audio["store"].frames("g-8k") == 1 + 2 * len(wav) // CFG.hop_length
    _assert_extracted_as(bad_audio, "g-8k", wav, sr)


def test_48khz_audio_is_resampled(bad_audio):
    wav, sr = sf.read(bad_audio["files"]["h-48k"], dtype="float32")
    assert sr == 48000 and bad_audio["store"].frames("h-48k") == 1 + -(-len(wav) // 3) // CFG.hop_length
    _assert_extracted_as(bad_audio, "h-48k", wav, sr)


def test_six_channel_audio_is_downmixed(bad_audio):
    wav, sr = sf.read(bad_audio["files"]["i-6ch"], dtype="float32", always_2d=True)
    assert wav.shape[1] == 6
    _assert_extracted_as(bad_audio, "i-6ch", wav.mean(axis=1), sr)
    tiny = bad_audio["files"]["i-6ch"].with_name("three-frames.wav")  # fewer frames than channels
    sf.write(tiny, wav[:3], sr, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tiny, sr), wav[:3].mean(axis=1), atol=1e-7)
