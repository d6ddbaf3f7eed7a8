"""SIGKILL at random moments of training, feature extraction and export, then a rerun:
the work continues from what was complete, nothing partial is ever picked up, and only
the missing work is redone.

"Random moments" come from a seeded RNG, so a failure replays: a kill either lands after
a randomly chosen training step (observed in metrics.jsonl) plus a random few
milliseconds, or, through the fault driver, part-way through the writing of a randomly
chosen file (checkpoint, feature shard, packed store, export file), at a random byte.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_experiment

from sqvae_speech.checkpoint import list_checkpoints, load_checkpoint
from sqvae_speech.data.extract import extract
from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.errors import FeatureStoreError
from sqvae_speech.zerospeech.export import export_features, read_export_meta

from .faultlib import spec
from .helpers import (
    add_missing_file,
    clip_data_dir,
    driver_command,
    driver_env,
    run_driver,
    write_train_config,
)

STEPS = 80
LR, GAMMA, MILESTONES = 4e-4, 0.5, (12, 27)


def _logged_steps(exp: Path) -> list[int]:
    path = exp / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line)["step"])
        except ValueError:
            pass  # a line being written right now
    return out


def _check_visible_checkpoints(exp: Path) -> int:
    """Every checkpoint the toolkit would pick up loads completely; returns the newest step."""
    found = list_checkpoints(exp)
    for step, path in found:
        assert load_checkpoint(path)["step"] == step
    return found[-1][0] if found else 0


def _start_step(stderr: str) -> int:
    line = next(ln for ln in stderr.splitlines() if "from step" in ln)
    return int(line.split("from step")[1].split()[0])


def test_training_killed_at_random_moments_resumes_from_the_last_checkpoint(real_featstore, tmp_path):
    cfg = tiny_experiment(steps=STEPS, checkpoint_every=5, keep_checkpoints=2, log_every=1, lr=LR,
                          milestones=list(MILESTONES), gamma=GAMMA)
    conf = write_train_config(tmp_path / "tiny.yaml", cfg)
    exp = tmp_path / "exp"
    args = ("train", "--config", conf, "--feats", real_featstore.path, "--exp", exp, "--no-progress", "--resume")
    rng = random.Random(20240609)
    starts = []

    def kill_while_writing_a_checkpoint(nth: int, size: int) -> None:
        """SIGKILL part-way (a random byte) through the ``nth`` checkpoint this run writes."""
        before = _check_visible_checkpoints(exp)
        res = run_driver(*args, faults=spec("sqvae_speech.fileio", "ckpt-", nth, rng.randint(1, size - 1), "kill"))
        assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
        starts.append((before, _start_step(res.stderr)))
        partial = [p for p in (exp / "checkpoints").iterdir() if p.name.startswith(".tmp-ckpt-")]
        assert len(partial) == 1 and partial[0].stat().st_size < size  # the half-written file...
        assert _check_visible_checkpoints(exp) == before + 5 * (nth - 1)  # ...is never picked up

    # Killed while writing the very first checkpoint: steps 1-5 were logged, nothing is saved.
    kill_while_writing_a_checkpoint(1, 100_000)
    assert list_checkpoints(exp) == [] and max(_logged_steps(exp)) == 5

    # Two kills at random moments: after a random step has been logged, plus 0-50 ms.
    for _ in range(2):
        before = _check_visible_checkpoints(exp)
        target = rng.randint(before + 1, STEPS - 40)
        err = tmp_path / f"stderr-{len(starts)}.txt"
        with open(err, "w") as f:
            proc = subprocess.Popen(driver_command(*args), env=driver_env(), stderr=f, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        # Once the run says where it starts, metrics.jsonl holds only its own steps.
        while proc.poll() is None and ("from step" not in err.read_text() or max(_logged_steps(exp), default=0) < target):
            assert time.monotonic() < deadline, f"step {target} not reached in 180 s: {err.read_text()[-2000:]}"
            time.sleep(0.01)  # polling the log, not synchronizing
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, f"training ended before the kill: {err.read_text()[-2000:]}"
        starts.append((before, _start_step(err.read_text())))
        assert _check_visible_checkpoints(exp) >= before

    # Killed while writing the first or the second checkpoint of the run.
    kill_while_writing_a_checkpoint(rng.randint(1, 2), list_checkpoints(exp)[-1][1].stat().st_size)
    newest = _check_visible_checkpoints(exp)

    # The rerun continues from the newest complete checkpoint to the end.
    res = run_driver(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    starts.append((newest, _start_step(res.stderr)))
    assert all(expected == got for expected, got in starts), starts  # each run began at the newest checkpoint
    assert [s for s, _ in list_checkpoints(exp)] == [STEPS - 5, STEPS]
    assert not [p for p in (exp / "checkpoints").iterdir() if p.name.startswith(".tmp-")]

    # Step counter and schedules: as if never interrupted.
    final = load_checkpoint(exp / f"checkpoints/ckpt-{STEPS:08d}.pt")
    assert final["step"] == STEPS and final["scheduler"]["last_epoch"] == STEPS
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(LR * GAMMA ** len(MILESTONES))
    assert all(int(s["step"]) == STEPS for s in final["optimizer"]["state"].values())  # Adam's own counter
    logged = [json.loads(ln) for ln in (exp / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == list(range(1, STEPS + 1))  # every step once, none lost or repeated
    for m in logged:
        assert m["lr"] == pytest.approx(LR * GAMMA ** sum(m["step"] >= k for k in MILESTONES))
        assert m["temperature"] == pytest.approx(cfg.train.temperature(m["step"] - 1), abs=1e-6)


@pytest.fixture(scope="module")
def clips_and_reference(speech_files, tmp_path_factory) -> tuple[Path, FeatureStore]:
    """A data dir of 12 real clips plus a missing file, and its store from an uninterrupted run."""
    root = tmp_path_factory.mktemp("kill_extract")
    data = clip_data_dir(root / "data", speech_files, per_voice=3)
    add_missing_file(data, root)
    ref = extract(data, root / "reference", shard_size=3, progress=False)
    assert ref.complete and list(ref.failed) == ["zz-gone"] and ref.num_shards == 5
    return data, FeatureStore.open(root / "reference")


def _shards(feats: Path) -> dict[str, tuple[int, int, bytes]]:
    """name -> (inode, mtime, contents) of each complete shard."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in (feats / ".parts").glob("shard-*")}


def _assert_same_store(feats: Path, ref: FeatureStore) -> None:
    store = FeatureStore.open(feats, expect_config=ref.config)
    assert store.utterances == ref.utterances and store.utt2spk() == ref.utt2spk()
    for utt in ref.utterances:
        assert np.array_equal(store[utt], ref[utt]), utt
    assert (feats / "failed.txt").read_text() == (ref.path / "failed.txt").read_text()
    assert sorted(p.name for p in feats.iterdir()) == ["failed.txt", "feats.npy", "index.json"]


def test_extraction_killed_mid_shard_redoes_only_missing_shards(clips_and_reference, tmp_path):
    data, ref = clips_and_reference
    feats = tmp_path / "feats"
    rng = random.Random(7)
    args = ("extract", data, feats, "--no-progress")
    small_shards = "sqvae_speech.data.extract:SHARD_SIZE=3"
    for _ in range(2):  # killed twice, each time part-way through a random shard file
        kept = _shards(feats) if (feats / ".parts").is_dir() else {}
        fault = spec("sqvae_speech.data.shards", "shard-", rng.randint(1, 2), rng.randint(1, 60_000), "kill")
        res = run_driver(*args, faults=fault, test_set=small_shards)
        assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
        with pytest.raises(FeatureStoreError, match="incomplete"):
            FeatureStore.open(feats)
        now = _shards(feats)
        assert {k: now[k] for k in kept} == kept  # complete shards are never rewritten
        for name in now:
            with np.load(feats / ".parts" / name) as z:  # and every visible shard is whole
                assert z["feats"].shape == (int(z["lengths"].sum()), 80)
        assert [p for p in (feats / ".parts").iterdir() if p.name.startswith(".tmp-shard-")]  # the partial one
    done = sorted(int(name[6:11]) for name in _shards(feats))
    s = extract(data, feats, shard_size=3, progress=False)
    assert s.complete and s.shards_computed == sorted(set(range(5)) - set(done)) and s.shards_computed
    _assert_same_store(feats, ref)


def test_extraction_killed_while_packing_only_packs_on_rerun(clips_and_reference, tmp_path):
    data, ref = clips_and_reference
    feats = tmp_path / "feats"
    fault = spec("sqvae_speech.data.featstore_write", "feats.npy", 1, random.Random(11).randint(1, 400_000), "kill")
    res = run_driver("extract", data, feats, "--no-progress", faults=fault, test_set="sqvae_speech.data.extract:SHARD_SIZE=3")
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert not (feats / "index.json").exists() and len(_shards(feats)) == 5
    assert [p for p in feats.iterdir() if p.name.startswith(".tmp-feats.npy")]  # the partial store
    with pytest.raises(FeatureStoreError, match="incomplete"):
        FeatureStore.open(feats)
    s = extract(data, feats, shard_size=3, progress=False)
    assert s.complete and s.shards_computed == []  # nothing recomputed, only packed
    _assert_same_store(feats, ref)


def _exported(out: Path) -> list[Path]:
    return [p for p in out.glob("*.txt") if not p.name.startswith(".")] if out.is_dir() else []


def test_export_killed_mid_file_redoes_only_missing_files(untrained_exp, real_featstore, tmp_path):
    ref = tmp_path / "reference"
    export_features(untrained_exp, real_featstore.path, ref, device="cpu", progress=False)
    out = tmp_path / "out"
    args = ("export", "--exp", untrained_exp, "--feats", real_featstore.path, "--out", out, "--device", "cpu",
            "--no-progress")
    rng = random.Random(5)
    total = len(real_featstore)
    for _ in range(2):
        before = {p: p.stat().st_mtime_ns for p in _exported(out)}
        fault = spec("sqvae_speech.zerospeech.export", ".txt", rng.randint(2, 15), rng.randint(1, 400), "kill")
        res = run_driver(*args, faults=fault)
        assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
        assert read_export_meta(out)["complete"] is False
        assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished files are not rewritten
        assert [p for p in out.iterdir() if p.name.startswith(".tmp-")]  # the half-written file
    present = len(_exported(out))
    assert 0 < present < total
    s = export_features(untrained_exp, real_featstore.path, out, device="cpu", progress=False)
    assert (s.written, s.skipped_existing) == (total - present, present)
    assert read_export_meta(out)["complete"] is True
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())  # no stray temp files
    for p in ref.glob("*.txt"):
        assert (out / p.name).read_text() == p.read_text(), p.name
