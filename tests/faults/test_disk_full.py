"""A full disk (ENOSPC injected into the file being written, part-way through it) while
writing a checkpoint, a feature shard, the packed feature store, results or export files:
the previous good file is intact, no partial file is left, the command exits 2 with a
message saying what happened, and a rerun after freeing space finishes the job."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_experiment

from sqvae_speech import fileio
from sqvae_speech.checkpoint import list_checkpoints, load_checkpoint
from sqvae_speech.cli import main as cli_main
from sqvae_speech.data.extract import extract
from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.errors import DiskFullError, FeatureStoreError
from sqvae_speech.fileio import atomic_torch_save

from .faultlib import faulty_open
from .helpers import clip_data_dir, write_train_config


def _temp_files(d: Path) -> list[Path]:
    return [p for p in d.rglob(".tmp-*")]


def _disk_full(monkeypatch: pytest.MonkeyPatch, module: str, match: str, nth: int = 1, after: int = 1000) -> None:
    monkeypatch.setattr(f"sqvae_speech.{module}.open", faulty_open(match, nth, after, "enospc"), raising=False)


def test_disk_full_while_writing_a_checkpoint(real_featstore, tmp_path, monkeypatch, capsys):
    conf = write_train_config(tmp_path / "tiny.yaml", tiny_experiment(steps=6, checkpoint_every=2))
    exp = tmp_path / "exp"
    args = ["train", "--config", str(conf), "--feats", str(real_featstore.path), "--exp", str(exp), "--no-progress",
            "--resume"]
    _disk_full(monkeypatch, "fileio", "ckpt-00000004", after=5000)
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "disk full while writing" in err and "No space left on device" in err
    assert str(exp / "checkpoints/ckpt-00000004.pt") in err
    assert f"the newest complete checkpoint is {exp / 'checkpoints/ckpt-00000002.pt'}" in err and "--resume" in err
    assert [s for s, _ in list_checkpoints(exp)] == [2] and not _temp_files(exp)
    good = load_checkpoint(exp / "checkpoints/ckpt-00000002.pt")
    assert good["step"] == 2

    monkeypatch.undo()  # space was freed
    assert cli_main(args) == 0
    assert "from step 2 to 6" in capsys.readouterr().err
    assert [s for s, _ in list_checkpoints(exp)][-1] == 6


def test_disk_full_while_writing_a_feature_shard(speech_files, tmp_path, monkeypatch, capsys):
    data = clip_data_dir(tmp_path / "data", speech_files, per_voice=3)
    feats = tmp_path / "feats"
    monkeypatch.setattr("sqvae_speech.data.extract.SHARD_SIZE", 3)
    _disk_full(monkeypatch, "data.shards", "shard-", nth=3, after=20_000)
    assert cli_main(["extract", str(data), str(feats), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"disk full while writing {feats / '.parts/shard-00002.npz'}" in err
    assert "shards already written" in err and "will not be computed again" in err
    assert sorted(p.name for p in (feats / ".parts").glob("shard-*")) == ["shard-00000.npz", "shard-00001.npz"]
    assert not _temp_files(feats)
    with pytest.raises(FeatureStoreError, match="incomplete"):
        FeatureStore.open(feats)

    monkeypatch.setattr("sqvae_speech.data.shards.open", open)  # space was freed
    s = extract(data, feats, shard_size=3, progress=False)
    assert s.complete and s.shards_computed == [2, 3] and len(s.failed) == 0 and s.num_utterances == 12


def test_disk_full_while_packing_the_feature_store(speech_files, tmp_path, monkeypatch, capsys):
    data = clip_data_dir(tmp_path / "data", speech_files, per_voice=2)
    feats = tmp_path / "feats"
    _disk_full(monkeypatch, "data.featstore", "feats.npy", after=50_000)
    assert cli_main(["extract", str(data), str(feats), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"disk full while writing {feats / 'feats.npy'}" in err
    assert "shard(s)" in err and "the rerun only packs them" in err
    assert not (feats / "index.json").exists() and not _temp_files(feats)  # nothing looks complete
    assert len(list((feats / ".parts").glob("shard-*.npz"))) == 1  # the computed work is kept

    monkeypatch.undo()
    s = extract(data, feats, progress=False)
    assert s.complete and s.shards_computed == [] and s.num_utterances == 8


def test_disk_full_while_writing_results(untrained_exp, real_featstore, tmp_path, monkeypatch, capsys):
    out = tmp_path / "results.json"
    args = ["evaluate", "--exp", str(untrained_exp), "--feats", str(real_featstore.path), "--out", str(out),
            "--device", "cpu", "--no-progress"]
    assert cli_main(args) == 0
    before = out.read_bytes()
    json.loads(before)
    _disk_full(monkeypatch, "fileio", "results.json", after=30)
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"disk full while writing {out}" in err and "left as it was" in err
    assert out.read_bytes() == before and not _temp_files(tmp_path)


def test_disk_full_while_exporting(untrained_exp, real_featstore, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["export", "--exp", str(untrained_exp), "--feats", str(real_featstore.path), "--out", str(out),
            "--device", "cpu", "--no-progress"]
    _disk_full(monkeypatch, "zerospeech.export", ".txt", nth=9, after=100)
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "disk full while writing" in err and str(out) in err
    written = [p for p in out.glob("*.txt") if not p.name.startswith(".")]
    assert len(written) == 8 and not _temp_files(out)
    contents = {p: p.read_text() for p in written}

    monkeypatch.undo()
    assert cli_main(args) == 0
    assert f"{len(real_featstore) - 8} file(s) written, 8 already there" in capsys.readouterr().out
    assert all(p.read_text() == text for p, text in contents.items())


def test_disk_full_recognised_when_the_writer_loses_the_errno(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"
    atomic_torch_save(target, {"w": torch.ones(3)})

    def failing_save(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", failing_save)
    # With space left, the error is not taken for a full disk...
    with pytest.raises(RuntimeError, match="file write failed") as e:
        atomic_torch_save(target, {"w": torch.zeros(3)})
    assert not isinstance(e.value, DiskFullError)

    # ...with (almost) none left, it is.
    class Full:
        f_bavail, f_frsize = 3, 4096

    monkeypatch.setattr(fileio.os, "statvfs", lambda path: Full())
    with pytest.raises(DiskFullError, match=r"disk full while writing .*ckpt\.pt \(\[enforce fail") as e:
        atomic_torch_save(target, {"w": torch.zeros(3)})
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]
