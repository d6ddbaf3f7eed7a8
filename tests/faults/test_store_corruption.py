"""A feature store damaged after it was written: bytes flipped inside one utterance's rows
of ``feats.npy``, ``feats.npy`` truncated or grown. Every utterance's CRC-32 is in
``index.json``; ``validate-store`` names each damaged utterance, ``train`` and ``evaluate``
refuse the store naming it (exit 2), other readers refuse the utterance when they reach it,
and a truncated file is refused at open with both sizes. Stores written before checksums
existed still open and are reported as unchecked."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_experiment

from sqvae_speech.checkpoint import list_checkpoints
from sqvae_speech.cli import main as cli_main
from sqvae_speech.data.extract import extract
from sqvae_speech.data.featstore import DamagedStoreError, FeatureStore
from sqvae_speech.errors import FeatureStoreError

from .helpers import clip_data_dir, write_train_config


def _copy(store: FeatureStore, to: Path) -> Path:
    shutil.copytree(store.path, to)
    return to


def _header_bytes(feats: Path) -> int:
    with open(feats, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def _flip_bytes(feat_dir: Path, utt: str) -> None:
    """Invert the two low mantissa bytes of one value and the lowest of the next, in the middle
    of ``utt``'s rows: the features stay finite (no NaN check could see it)."""
    entry = json.loads((feat_dir / "index.json").read_text())["utterances"][utt]
    feats = feat_dir / "feats.npy"
    pos = _header_bytes(feats) + ((entry["offset"] + entry["frames"] // 2) * 80 + 37) * 4
    with open(feats, "r+b") as f:
        for p in (pos, pos + 1, pos + 4):
            f.seek(p)
            b = f.read(1)[0]
            f.seek(p)
            f.write(bytes([b ^ 0xFF]))


def _validate(capsys, *stores: Path) -> tuple[int, str, str]:
    rc = cli_main(["validate-store", *map(str, stores), "--no-progress"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_flipped_bytes_are_named_by_validate_store_train_and_evaluate(real_featstore, untrained_exp, tmp_path,
                                                                       capsys):
    feats = _copy(real_featstore, tmp_path / "feats")
    utt = real_featstore.utterances[17]
    _flip_bytes(feats, utt)
    store = FeatureStore.open(feats, verify="off")
    assert np.isfinite(store[utt]).all() and not np.array_equal(store[utt], real_featstore[utt])

    rc, out, err = _validate(capsys, feats)
    assert rc == 2 and "Traceback" not in err
    damaged = [line for line in out.splitlines() if ": damaged: " in line]
    assert len(damaged) == 1 and f": damaged: {utt}: {real_featstore.frames(utt)} frames" in damaged[0]
    assert "checksum" in damaged[0] and "index.json records" in damaged[0]
    assert f"{feats}: 40 utterances" in out and "1 damaged" in out and "--overwrite" in out
    assert f"1 of 1 feature store(s) damaged: {feats} (1 damaged utterance(s): {utt})" in err

    # Other readers (export, report, convert) open it lazily: the damaged utterance is
    # refused when they reach it, the others read as before.
    lazy = FeatureStore.open(feats)
    np.testing.assert_array_equal(lazy[real_featstore.utterances[3]], real_featstore[real_featstore.utterances[3]])
    for read in (lambda: lazy[utt], lambda: lazy.segment(utt, 0, 4)):
        with pytest.raises(DamagedStoreError, match=f"1 of its 40 utterance\\(s\\).*{utt}: .*--overwrite") as e:
            read()
        assert [d.utt for d in e.value.damaged] == [utt]

    conf = write_train_config(tmp_path / "tiny.yaml", tiny_experiment(steps=2))
    exp = tmp_path / "exp"
    rc = cli_main(["train", "--config", str(conf), "--feats", str(feats), "--exp", str(exp), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"feature store {feats} is damaged" in err and f"{utt}: {real_featstore.frames(utt)} frames" in err
    assert f"sqvae-speech extract DATA_DIR {feats} --overwrite" in err and "validate-store" in err
    assert list_checkpoints(exp) == []

    results = tmp_path / "results.json"
    rc = cli_main(["evaluate", "--exp", str(untrained_exp), "--feats", str(feats), "--out", str(results),
                   "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and f"feature store {feats} is damaged" in err and utt in err
    assert not results.exists()


def test_truncated_or_grown_feats_is_refused_at_open_naming_the_file_and_sizes(real_featstore, tmp_path, capsys):
    feats = _copy(real_featstore, tmp_path / "feats")
    npy = feats / "feats.npy"
    size = npy.stat().st_size
    assert size == _header_bytes(npy) + real_featstore.num_frames * 80 * 4
    with open(npy, "r+b") as f:
        f.truncate(size - 1000)  # a copy or a download that stopped early
    with pytest.raises(FeatureStoreError) as e:
        FeatureStore.open(feats, verify="off")
    assert f"{npy} is truncated: it holds {size - 1000} bytes, index.json needs {size} " in str(e.value)
    assert f"{real_featstore.num_frames} frames x 80 float32" in str(e.value) and "--overwrite" in str(e.value)
    rc, out, err = _validate(capsys, feats)
    assert rc == 2 and f"{feats}: cannot be used: {npy} is truncated" in out and f"{feats} (cannot be opened)" in err

    with open(npy, "r+b") as f:
        f.truncate(40)  # inside the .npy header
    with pytest.raises(FeatureStoreError, match=f"{npy} cannot be read .*corrupt"):
        FeatureStore.open(feats)
    with open(npy, "wb") as f:
        f.write((real_featstore.path / "feats.npy").read_bytes() + b"\0" * 8)
    with pytest.raises(FeatureStoreError, match=f"{npy} is longer than its array: it holds {size + 8} bytes"):
        FeatureStore.open(feats)


def test_store_without_checksums_opens_and_is_reported_unchecked(real_featstore, untrained_exp, tmp_path, capsys):
    feats = _copy(real_featstore, tmp_path / "feats")
    index = json.loads((feats / "index.json").read_text())
    del index["checksum"]  # as written before checksums existed
    for entry in index["utterances"].values():
        del entry["checksum"]
    (feats / "index.json").write_text(json.dumps(index))
    store = FeatureStore.open(feats, verify="full")
    assert store.checksum is None and not store.checkable and store.damaged() == []
    for utt in real_featstore.utterances:
        np.testing.assert_array_equal(store[utt], real_featstore[utt])

    rc, out, err = _validate(capsys, feats)
    assert rc == 0 and err == ""
    assert out == (f"{feats}: 40 utterances, {real_featstore.num_frames} frames "
                   f"({real_featstore.num_frames * 80 * 4 / 2**20:.1f} MB): no checksums recorded (written by an "
                   "older version): re-extract to enable checks; index and size of feats.npy OK\n")
    results = tmp_path / "results.json"
    assert cli_main(["evaluate", "--exp", str(untrained_exp), "--feats", str(feats), "--out", str(results),
                     "--device", "cpu", "--no-progress"]) == 0 and results.is_file()


def test_clean_store_validates_and_the_named_command_rebuilds_a_damaged_one(real_featstore, speech_files, tmp_path,
                                                                             capsys):
    data = clip_data_dir(tmp_path / "data", speech_files, per_voice=1)
    feats = tmp_path / "feats"
    assert extract(data, feats, progress=False).complete
    for store in (real_featstore, FeatureStore.open(feats)):  # write_featstore and extraction's packing
        rows = np.load(store.path / "feats.npy")
        assert store.index["checksum"] == "crc32"
        for utt in store.utterances:
            e = store.index["utterances"][utt]
            assert e["checksum"] == zlib.crc32(rows[e["offset"] : e["offset"] + e["frames"]].tobytes())
    rc, out, err = _validate(capsys, real_featstore.path, feats)
    assert rc == 0 and err == "" and out.count("every checksum matches") == 2 and "damaged" not in out

    utt = FeatureStore.open(feats).utterances[2]
    _flip_bytes(feats, utt)
    rc, out, err = _validate(capsys, real_featstore.path, feats)
    assert rc == 2 and f"{real_featstore.path}: 40 utterances" in out and f"{feats}: damaged: {utt}:" in out
    command = f"sqvae-speech extract {data.resolve()} {feats} --overwrite"
    assert command in out  # the data dir the store was extracted from
    assert cli_main(command.split()[1:] + ["--no-progress"]) == 0
    capsys.readouterr()
    assert _validate(capsys, feats)[0] == 0
