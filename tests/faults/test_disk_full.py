"""A full disk (ENOSPC injected into the file being written, part-way through it) while
writing a checkpoint, a feature shard, the packed feature store, results or export files,
or while appending to metrics.jsonl or the TensorBoard events: the previous good file is
intact, no partial file (or partial record) is left, the command exits 2 with a message
saying what happened, and a rerun after freeing space finishes the job. ``extract
--overwrite`` keeps the old store readable throughout; a full stderr only loses output."""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_experiment
from tensorboard.compat.proto import event_pb2

from sqvae_speech import fileio
from sqvae_speech.checkpoint import list_checkpoints, load_checkpoint
from sqvae_speech.cli import main as cli_main
from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.extract import extract
from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.errors import DiskFullError, FeatureStoreError
from sqvae_speech.fileio import atomic_torch_save

from .faultlib import faulty_open
from .helpers import clip_data_dir, driver_command, driver_env, write_train_config


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
    _disk_full(monkeypatch, "data.featstore_write", "feats.npy", after=50_000)
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


def _train_args(real_featstore, tmp_path: Path, exp: Path, *extra: str) -> list[str]:
    conf = write_train_config(tmp_path / "tiny.yaml", tiny_experiment(steps=6, checkpoint_every=2))
    return ["train", "--config", str(conf), "--feats", str(real_featstore.path), "--exp", str(exp), *extra]


def _metric_steps(exp: Path) -> list[int]:
    """The step of every line of metrics.jsonl; each line must parse (no torn line)."""
    return [json.loads(line)["step"] for line in (exp / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _events(path: Path) -> list[event_pb2.Event]:
    """Every record of a TensorBoard event file; the file must end with a whole record."""
    data, pos, events = path.read_bytes(), 0, []
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        assert pos + 12 + length + 4 <= len(data), f"{path} ends with a torn record"
        events.append(event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length]))
        pos += 12 + length + 4
    return events


def _scalar_steps(events: list[event_pb2.Event], tag: str = "train/loss") -> list[int]:
    return [e.step for e in events if e.HasField("summary") and any(v.tag == tag for v in e.summary.value)]


def test_disk_full_while_appending_to_metrics_jsonl(real_featstore, tmp_path, monkeypatch, capsys):
    exp = tmp_path / "exp"
    args = _train_args(real_featstore, tmp_path, exp, "--no-progress", "--resume")
    _disk_full(monkeypatch, "fileio", "metrics.jsonl", nth=3, after=40)  # 40 bytes into step 3's line
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"disk full while appending to {exp / 'metrics.jsonl'} (No space left on device)" in err
    assert "the partial record was removed" in err and "training stopped at step 3" in err
    assert f"the newest complete checkpoint is {exp / 'checkpoints/ckpt-00000002.pt'} (--resume continues from it)" in err
    assert [s for s, _ in list_checkpoints(exp)] == [2] and not _temp_files(exp)
    assert load_checkpoint(exp / "checkpoints/ckpt-00000002.pt")["step"] == 2
    assert _metric_steps(exp) == [1, 2]  # the partial line was cut off: the file reads as before

    # A run killed while appending (no handler runs) leaves a torn last line: resume drops it too.
    with open(exp / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 3, "loss": -8')
    monkeypatch.undo()  # space was freed
    assert cli_main(args) == 0
    assert "from step 2 to 6" in capsys.readouterr().err
    assert _metric_steps(exp) == [1, 2, 3, 4, 5, 6]  # every step once


def test_disk_full_while_writing_tensorboard_events(real_featstore, tmp_path, monkeypatch, capsys):
    exp = tmp_path / "exp"
    args = _train_args(real_featstore, tmp_path, exp, "--no-progress", "--resume")
    # appends to the event file: its header, then one per logged step: the 4th is step 3's scalars
    _disk_full(monkeypatch, "fileio", "tfevents", nth=4, after=100)
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    [events] = (exp / "tensorboard").glob("events.out.tfevents.*")
    assert "Traceback" not in err and f"disk full while appending to {events} (No space left on device)" in err
    assert "training stopped at step 3" in err
    assert f"the newest complete checkpoint is {exp / 'checkpoints/ckpt-00000002.pt'} (--resume continues from it)" in err
    assert [s for s, _ in list_checkpoints(exp)] == [2] and not _temp_files(exp)
    assert _scalar_steps(_events(events)) == [1, 2]  # whole records only: the partial one was cut off

    monkeypatch.undo()  # space was freed
    assert cli_main(args) == 0
    first, second = sorted((exp / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.name.split(".")[-1])
    assert first == events and _scalar_steps(_events(first)) == [1, 2]
    new = _events(second)
    assert new[0].file_version == "brain.Event:2"
    assert new[1].session_log.status == event_pb2.SessionLog.START and new[1].step == 3  # TensorBoard purges >= 3
    assert _scalar_steps(new) == [3, 4, 5, 6] and _metric_steps(exp) == [1, 2, 3, 4, 5, 6]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(exp / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]


def test_disk_full_while_extract_overwrite_rebuilds_the_store(speech_files, tmp_path, monkeypatch, capsys):
    data = clip_data_dir(tmp_path / "data", speech_files, per_voice=2)
    feats = tmp_path / "feats"
    extract(data, feats, shard_size=3, progress=False)  # the old store (fmin 50)
    before = {p.name: p.read_bytes() for p in feats.iterdir()}
    old = FeatureStore.open(feats)
    old_rows = {u: old[u] for u in old.utterances}
    new_cfg = FeatureConfig().replace(fmin=0.0)
    conf = tmp_path / "features.yaml"
    conf.write_text("fmin: 0.0\n")
    args = ["extract", str(data), str(feats), "--overwrite", "--config", str(conf), "--no-progress"]
    monkeypatch.setattr("sqvae_speech.data.extract.SHARD_SIZE", 3)

    def old_store_intact() -> None:
        assert {p.name: p.read_bytes() for p in feats.iterdir() if p.name != ".parts"} == before
        store = FeatureStore.open(feats, verify="full")
        assert store.config == FeatureConfig() and store.utterances == list(old_rows)
        assert all(np.array_equal(store[u], rows) for u, rows in old_rows.items())

    kept = f"the complete store already in {feats} is left as it was and stays readable until the rebuild is complete"
    # full while computing the new shards
    _disk_full(monkeypatch, "data.shards", "shard-", nth=2, after=20_000)
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"disk full while writing {feats / '.parts/shard-00001.npz'}" in err
    assert kept in err and "the same command with --overwrite continues the rebuild" in err
    old_store_intact()
    assert sorted(p.name for p in (feats / ".parts").glob("shard-*")) == ["shard-00000.npz"] and not _temp_files(feats)

    # full while packing the new feats.npy beside the old one (the rerun computed only the missing shards)
    monkeypatch.setattr("sqvae_speech.data.shards.open", open)
    _disk_full(monkeypatch, "data.featstore_write", "feats.npy", after=50_000)
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"disk full while writing {feats / 'feats.npy'}" in err
    assert "the rerun only packs them" in err and kept in err
    old_store_intact()
    assert len(list((feats / ".parts").glob("shard-*"))) == 3 and not _temp_files(feats)

    monkeypatch.setattr("sqvae_speech.data.featstore_write.open", open)  # space was freed
    s = extract(data, feats, new_cfg, overwrite=True, shard_size=3, progress=False)
    assert s.complete and s.shards_computed == [] and s.num_utterances == 8
    new = FeatureStore.open(feats, verify="full")
    assert new.config == new_cfg and not (feats / ".parts").exists() and not _temp_files(feats)
    assert (feats / "feats.npy").read_bytes() != before["feats.npy"]


class _FullThenFreed(io.StringIO):
    """A stderr on a disk that is full for its first ``full_writes`` writes, then has room."""

    def __init__(self, full_writes: int) -> None:
        super().__init__()
        self.full_writes = full_writes

    def write(self, text: str) -> int:
        if self.full_writes:
            self.full_writes -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(text)


def test_full_stderr_drops_output_and_training_carries_on(real_featstore, tmp_path, monkeypatch):
    # stderr redirected to a file on a full disk (/dev/full: every write fails with ENOSPC), progress bar on
    exp = tmp_path / "exp"
    with open("/dev/full", "w") as full:
        r = subprocess.run(driver_command(*_train_args(real_featstore, tmp_path, exp)),
                           env={**driver_env(), "SQVAE_NO_PROGRESS": "0"}, stdout=subprocess.PIPE, stderr=full,
                           text=True, timeout=120, check=False)
    assert r.returncode == 0
    assert [s for s, _ in list_checkpoints(exp)][-1] == 6 and _metric_steps(exp) == [1, 2, 3, 4, 5, 6]

    # full for the first two messages, then freed: the run says once what was lost
    stderr = _FullThenFreed(full_writes=4)  # print() writes the text, then the newline
    monkeypatch.setattr(sys, "stderr", stderr)
    assert cli_main(_train_args(real_featstore, tmp_path, tmp_path / "exp2", "--no-progress")) == 0
    out = stderr.getvalue()
    assert "[train] gaussian" not in out and "from step 0 to 6" not in out and "[train] done: step 6" in out
    assert out.count("write(s) to stderr failed") == 1
    assert "[train] 4 write(s) to stderr failed (No space left on device) and were dropped; training carried on" in out
