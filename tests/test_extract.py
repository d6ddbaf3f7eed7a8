"""`sqvae-speech extract`: features of real speech, bad input, resuming a killed run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sqvae_speech import cli
from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.datadir import write_datadir
from sqvae_speech.data.extract import extract
from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.data.features import logmel
from sqvae_speech.errors import FeatureStoreError

CFG = FeatureConfig()
BAD = {"csm-bad-empty", "csm-bad-text", "nlv-bad-silent"}


@pytest.fixture()
def data_dir(tmp_path: Path, speech_files: dict[str, list[Path]]) -> Path:
    """Ten real clips of two speakers (cs-m mono, nl-v stereo) and three bad files."""
    wav_scp, utt2spk = {}, {}
    for spk, key in (("csm", "cs-m"), ("nlv", "nl-v")):
        for i, path in enumerate(speech_files[key][:5]):
            wav_scp[f"{spk}-{i}"] = str(path)
            utt2spk[f"{spk}-{i}"] = spk
    assert sf.info(wav_scp["nlv-0"]).channels == 2 and sf.info(wav_scp["csm-0"]).channels == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "text.wav").write_text("this is not audio\n")
    sf.write(bad / "silent.wav", np.zeros(16000, np.float32), 16000)
    for utt, name in (("csm-bad-empty", "empty.wav"), ("csm-bad-text", "text.wav"), ("nlv-bad-silent", "silent.wav")):
        wav_scp[utt] = str(bad / name)
        utt2spk[utt] = utt[:3]
    write_datadir(tmp_path / "data", wav_scp, utt2spk)
    return tmp_path / "data"


def _reference(path: str, start: float | None = None, end: float | None = None) -> np.ndarray:
    """logmel() of the file read independently of the extraction code path."""
    wav, sr = sf.read(path, dtype="float32", always_2d=True)
    if start is not None:
        wav = wav[round(start * sr) : round(end * sr)]
    return logmel(wav, sr, CFG)


def _check_store(feat_dir: Path, data_dir: Path) -> FeatureStore:
    store = FeatureStore.open(feat_dir, expect_config=CFG)
    wav_scp = dict(line.split(" ", 1) for line in (data_dir / "wav.scp").read_text().splitlines())
    assert store.utterances == sorted(set(wav_scp) - BAD)
    assert store.speakers == ["csm", "nlv"]
    for utt in store.utterances:
        assert store.speaker(utt) == utt[:3]
        ref = _reference(wav_scp[utt])
        assert store[utt].shape == ref.shape
        np.testing.assert_allclose(store[utt], ref, atol=1e-4, rtol=0)
    return store


def _failed(feat_dir: Path) -> dict[str, str]:
    return dict(line.split("\t") for line in (feat_dir / "failed.txt").read_text().splitlines())


def test_extract_parallel_matches_logmel_and_lists_bad_files(data_dir: Path, tmp_path: Path) -> None:
    feat_dir = tmp_path / "feats"
    s = extract(data_dir, feat_dir, CFG, nj=2, shard_size=4, progress=False)  # 4 shards, 2 processes
    assert s.complete and s.num_shards == 4 and s.shards_computed == [0, 1, 2, 3]
    assert s.num_utterances == 10 and set(s.failed) == BAD and s.audio_seconds > 10
    _check_store(feat_dir, data_dir)
    failed = _failed(feat_dir)
    assert set(failed) == BAD
    assert "empty" in failed["csm-bad-empty"] and "empty.wav" in failed["csm-bad-empty"]
    assert "text.wav" in failed["csm-bad-text"]
    assert "silent" in failed["nlv-bad-silent"]
    assert sorted(p.name for p in feat_dir.iterdir()) == ["failed.txt", "feats.npy", "index.json"]


def test_segments(tmp_path: Path, speech_files: dict[str, list[Path]]) -> None:
    rec = str(speech_files["nl-m"][0])  # stereo
    dur = sf.info(rec).duration
    segs = {"s-a": ("r", 0.0, dur / 2), "s-b": ("r", dur / 3, dur)}
    write_datadir(tmp_path / "data", {"r": rec}, {u: "s" for u in segs}, segs)
    s = extract(tmp_path / "data", tmp_path / "feats", CFG, progress=False)
    assert s.complete and not s.failed
    store = FeatureStore.open(tmp_path / "feats")
    for utt, (_, start, end) in segs.items():
        np.testing.assert_allclose(store[utt], _reference(rec, start, end), atol=1e-4, rtol=0)
    assert not (tmp_path / "feats/failed.txt").exists()


def test_resume_computes_only_missing_shards(data_dir: Path, tmp_path: Path) -> None:
    feat_dir = tmp_path / "feats"
    # A "killed" run: two of five shards done, plus a killed writer's temp files.
    first = extract(data_dir, feat_dir, CFG, nj=1, shard_size=3, max_shards=2, progress=False)
    assert not first.complete and first.shards_computed == [0, 1] and first.num_shards == 5
    parts = feat_dir / ".parts"
    assert sorted(p.name for p in parts.glob("shard-*")) == ["shard-00000.npz", "shard-00001.npz"]
    (parts / ".tmp-shard-00002.npz.abc.npz").write_bytes(b"half a shard")
    (feat_dir / ".tmp-feats.npy.xyz.npy").write_bytes(b"half a store")
    with pytest.raises(FeatureStoreError, match="incomplete"):
        FeatureStore.open(feat_dir)

    # Another --nj on the rerun still reuses the shards (their size is fixed).
    second = extract(data_dir, feat_dir, CFG, nj=2, shard_size=3, progress=False)
    assert second.complete and second.shards_computed == [2, 3, 4]
    assert set(second.failed) == BAD and set(_failed(feat_dir)) == BAD
    assert sorted(p.name for p in feat_dir.iterdir()) == ["failed.txt", "feats.npy", "index.json"]
    store = _check_store(feat_dir, data_dir)

    # A complete, matching store is not recomputed.
    third = extract(data_dir, feat_dir, CFG, nj=2, shard_size=3, progress=False)
    assert third.already_extracted and third.shards_computed == [] and set(third.failed) == BAD
    np.testing.assert_array_equal(FeatureStore.open(feat_dir)["csm-0"], store["csm-0"])


def test_shards_of_other_settings_are_discarded(data_dir: Path, tmp_path: Path) -> None:
    feat_dir = tmp_path / "feats"
    extract(data_dir, feat_dir, CFG.replace(fmin=0.0), shard_size=3, max_shards=2, progress=False)
    s = extract(data_dir, feat_dir, CFG, shard_size=3, progress=False)
    assert s.complete and s.shards_computed == [0, 1, 2, 3, 4]
    _check_store(feat_dir, data_dir)


def test_existing_store_with_other_settings(data_dir: Path, tmp_path: Path) -> None:
    feat_dir = tmp_path / "feats"
    extract(data_dir, feat_dir, CFG, progress=False)
    with pytest.raises(FeatureStoreError, match="fmin: store 50.0, expected 0.0.*--overwrite"):
        extract(data_dir, feat_dir, CFG.replace(fmin=0.0), progress=False)
    s = extract(data_dir, feat_dir, CFG.replace(fmin=0.0), overwrite=True, progress=False)
    assert s.complete and not s.already_extracted
    assert FeatureStore.open(feat_dir).config.fmin == 0.0


def test_cli(data_dir: Path, tmp_path: Path, capsys) -> None:
    feat_dir = tmp_path / "feats"
    conf = tmp_path / "conf.yaml"
    conf.write_text("features:\n  fmin: 50.0\n")
    assert cli.main(["extract", str(data_dir), str(feat_dir), "--nj", "2", "--config", str(conf), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert "10 utterances extracted, 3 failed" in out and "x real time" in out and "--skip-bad" in err
    _check_store(feat_dir, data_dir)
    assert cli.main(["extract", str(data_dir), str(feat_dir), "--skip-bad"]) == 0
    assert "already extracted" in capsys.readouterr().out
    index = json.loads((feat_dir / "index.json").read_text())
    assert set(index["extraction"]["failed"]) == BAD

    # Without bad input the exit status is 0 even without --skip-bad.
    for line in ("csm-bad-empty", "csm-bad-text", "nlv-bad-silent"):
        for name in ("wav.scp", "utt2spk"):
            f = data_dir / name
            f.write_text("".join(l + "\n" for l in f.read_text().splitlines() if not l.startswith(line)))
    (data_dir / "spk2utt").unlink()
    assert cli.main(["extract", str(data_dir), str(tmp_path / "clean"), "--batch-size", "4", "--no-progress"]) == 0
    assert "0 failed" in capsys.readouterr().out
    assert not (tmp_path / "clean/failed.txt").exists()
    _check_store(tmp_path / "clean", data_dir)  # the batched path agrees too

    conf.write_text("features:\n  n_melz: 80\n")
    assert cli.main(["extract", str(data_dir), str(tmp_path / "x"), "--config", str(conf)]) == 2
    assert "n_melz" in capsys.readouterr().err
