import errno
import json
import os

import pytest
import torch

from sqvae_speech import fileio
from sqvae_speech.fileio import atomic_path, atomic_torch_save, atomic_write_json


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_failure_keeps_previous_file_and_cleans_temp(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"good": True})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"good": True}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"
    atomic_torch_save(target, {"w": torch.ones(3)})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as e:
        atomic_torch_save(target, {"w": torch.zeros(3)})
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_rename_is_the_commit_point(tmp_path, monkeypatch):
    target = tmp_path / "x.txt"
    seen = []
    real = os.replace
    monkeypatch.setattr(fileio.os, "replace", lambda a, b: (seen.append(os.path.exists(b)), real(a, b)))
    fileio.atomic_write_text(target, "v1")
    assert seen == [False] and target.read_text() == "v1"


def test_files_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "r.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
