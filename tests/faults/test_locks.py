"""Concurrent runs (docs/RELIABILITY.md): a command that would write a directory another
run is writing stops at once, exit 2, naming that run (pid, host, start time, command);
the lock of a killed run is taken over; the ranks of one multi-process training do not
lock each other out. The other run is ``lock_holder.py``, a process that holds the lock
exactly as a running command does (``sqvae_speech.locks``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, tiny_experiment

from sqvae_speech.cli import main as cli_main
from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.errors import LockedError
from sqvae_speech.locks import LOCK_NAME, dir_lock, is_main_process, read_lock
from sqvae_speech.train import experiment_lock

from .helpers import clip_data_dir, driver_env, write_train_config

HOLDER = Path(__file__).resolve().parent / "lock_holder.py"


@contextlib.contextmanager
def _holding(directory: Path, command: str, **env: str) -> Iterator[subprocess.Popen]:
    """Another process holding ``directory``'s lock as ``command`` until the block ends."""
    proc = subprocess.Popen([sys.executable, str(HOLDER), str(directory), command], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**driver_env(), **env}, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()  # the holder releases the lock as a finishing run does
        proc.wait(timeout=60)
        proc.stdout.close()


def _refused(args: list, holder: subprocess.Popen, directory: Path, command: str, capsys) -> str:
    """The command exits 2 with one line naming the holder; returns that line."""
    rc = cli_main([str(a) for a in args])
    _, err = capsys.readouterr()
    info = read_lock(directory)
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"sqvae-speech {args[0]}: error: {directory} is in use by another run: pid {holder.pid} on "
                          f"host {socket.gethostname()}, started {info['started']}, {command} ("), err
    assert f"wait until it has finished or stop it (kill {holder.pid} on {socket.gethostname()})" in err
    return err


def test_second_extract_into_one_feat_dir_stops_at_once(speech_files, tmp_path, capsys):
    data = clip_data_dir(tmp_path / "data", speech_files, per_voice=1)
    feats = tmp_path / "feats"
    with _holding(feats, "sqvae-speech extract") as holder:
        info = json.loads((feats / LOCK_NAME).read_text())  # the holder's details, written after locking
        assert (info["pid"], info["host"], info["command"]) == (holder.pid, socket.gethostname(), "sqvae-speech extract")
        assert info["started"] and "lock_holder.py" in info["argv"]
        _refused(["extract", data, feats, "--no-progress"], holder, feats, "sqvae-speech extract", capsys)
        assert os.listdir(feats) == [LOCK_NAME]  # nothing computed, nothing written
    assert not feats.exists()  # the holder made the dir for its lock and removed both when done
    assert cli_main(["extract", str(data), str(feats), "--no-progress"]) == 0
    assert sorted(os.listdir(feats)) == ["feats.npy", "index.json"]  # no lock left by a finished run
    assert len(FeatureStore.open(feats)) == 4


def test_second_train_on_one_experiment_stops_at_once(real_featstore, tmp_path, capsys):
    conf = write_train_config(tmp_path / "c.yaml", tiny_experiment(steps=2))
    exp = tmp_path / "exp"
    exp.mkdir()
    metrics = '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n'
    (exp / "metrics.jsonl").write_text(metrics)  # a running training's log
    train = ["train", "--config", conf, "--feats", real_featstore.path, "--exp", exp, "--no-progress"]
    with _holding(exp, "sqvae-speech train") as holder:
        _refused(train, holder, exp, "sqvae-speech train", capsys)
        _refused([*train, "--resume"], holder, exp, "sqvae-speech train", capsys)
        # --resume trims metrics.jsonl to the last checkpoint (none: all of it) only under the lock
        assert sorted(os.listdir(exp)) == [LOCK_NAME, "metrics.jsonl"]
        assert (exp / "metrics.jsonl").read_text() == metrics
    assert sorted(os.listdir(exp)) == ["metrics.jsonl"]


def test_export_into_a_locked_output_dir_stops_at_once(untrained_exp, real_featstore, tmp_path, capsys):
    out = tmp_path / "out"
    with _holding(out, "sqvae-speech export") as holder:
        _refused(["export", "--exp", untrained_exp, "--feats", real_featstore.path, "--out", out, "--no-progress"],
                 holder, out, "sqvae-speech export", capsys)
        assert os.listdir(out) == [LOCK_NAME]


def test_encode_into_a_locked_output_dir_stops_at_once(untrained_exp, speech_files, tmp_path, capsys):
    out = tmp_path / "units"
    with _holding(out, "sqvae-speech encode") as holder:
        _refused(["encode", "--model", untrained_exp, speech_files["cs-m"][0], "--out", out, "--no-progress"],
                 holder, out, "sqvae-speech encode", capsys)
        assert os.listdir(out) == [LOCK_NAME]


def test_evaluate_locks_the_directory_of_its_results(untrained_exp, real_featstore, tmp_path, capsys):
    exp = tmp_path / "exp"
    shutil.copytree(untrained_exp, exp)
    (exp / "results.json").unlink(missing_ok=True)
    evaluate = ["evaluate", "--exp", exp, "--feats", real_featstore.path, "--no-progress"]
    with _holding(exp, "sqvae-speech train") as holder:
        # EXP/results.json of a training experiment: refused before the model loads
        _refused(evaluate, holder, exp, "sqvae-speech train", capsys)
        assert not (exp / "results.json").exists()
        # --out elsewhere evaluates the running training's checkpoint anyway
        assert cli_main([str(a) for a in [*evaluate, "--out", tmp_path / "res/results.json"]]) == 0
        assert json.loads((tmp_path / "res/results.json").read_text())["step"] == 7
        assert not (tmp_path / "res" / LOCK_NAME).exists()
    # an experiment that is not training is evaluated as always
    assert cli_main([str(a) for a in evaluate]) == 0
    assert sorted(p.name for p in exp.iterdir()) == ["checkpoints", "results.json"]


def test_lock_of_a_killed_run_is_taken_over(speech_files, tmp_path, capsys):
    data = clip_data_dir(tmp_path / "data", speech_files, per_voice=1)
    feats = tmp_path / "feats"
    with _holding(feats, "sqvae-speech extract") as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert read_lock(feats)["pid"] == holder.pid  # its lock file stays, with the dead run's details
    rc = cli_main(["extract", str(data), str(feats), "--no-progress"])
    assert rc == 0, capsys.readouterr().err  # taken over: flock locks die with their process
    assert sorted(os.listdir(feats)) == ["feats.npy", "index.json"]
    assert len(FeatureStore.open(feats)) == 4


def test_only_the_main_process_of_a_multi_process_training_locks(tmp_path, monkeypatch):
    exp = tmp_path / "exp"
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK",
                "MV2_COMM_WORLD_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert is_main_process()
    # rank 0 of `accelerate launch --num_processes 2` (torchrun's variables) holds it ...
    with _holding(exp, "sqvae-speech train", RANK="0", LOCAL_RANK="0", WORLD_SIZE="2") as holder:
        # ... and rank 1 of the same job trains on without taking it
        for env in ({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}, {"PMI_RANK": "1", "PMI_SIZE": "2"},
                    {"OMPI_COMM_WORLD_RANK": "3"}):
            with monkeypatch.context() as m:
                for k, v in env.items():
                    m.setenv(k, v)
                assert not is_main_process()
                with experiment_lock(exp) as lock:
                    assert lock is None
        # the main process of another job (or a plain run) is refused
        monkeypatch.setenv("RANK", "0")
        assert is_main_process()
        with pytest.raises(LockedError, match=f"pid {holder.pid} on host"), experiment_lock(exp):
            pass
        monkeypatch.setenv("RANK", "1")
        with pytest.raises(LockedError), dir_lock(exp, "sqvae-speech extract"):  # only train's lock is per rank
            pass
