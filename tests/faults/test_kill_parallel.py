"""SIGKILL of ``extract --nj 2`` and ``--nj 4`` at random moments, workers and parent alike,
then a rerun: the store is byte for byte that of an unkilled run.

A killed worker stops the run with a clear error (exit 2), never a hang or a traceback; a
killed parent takes its forkserver and workers with it (they would otherwise compute on,
orphaned, and write shards beside the rerun). The moments come from a seeded RNG: once a
random number of shards exists, plus a random few milliseconds; and part-way through the
packed ``feats.npy``, at a random byte (fault driver).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.errors import FeatureStoreError

from .faultlib import spec
from .helpers import (
    add_missing_file,
    clip_data_dir,
    driver_command,
    driver_env,
    run_driver,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")

ONE_PER_SHARD = "sqvae_speech.data.extract:SHARD_SIZE=1"  # 33 shards: many moments to be killed at
STORE_FILES = ("failed.txt", "feats.npy", "index.json")


@pytest.fixture(scope="module")
def clips_and_reference(speech_files, tmp_path_factory) -> tuple[Path, Path]:
    """A data dir of 32 real clips plus a missing file, and its store from an unkilled ``--nj 2`` run."""
    root = tmp_path_factory.mktemp("kill_parallel")
    data = clip_data_dir(root / "data", speech_files, per_voice=8)
    add_missing_file(data, root)
    res = run_driver("extract", data, root / "reference", "--nj", "2", "--skip-bad", "--no-progress",
                     test_set=ONE_PER_SHARD)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in (root / "reference").iterdir()) == list(STORE_FILES)
    return data, root / "reference"


def _live(pid: int) -> bool:
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:4]
    except OSError:
        return False


def _descendants(pid: int) -> dict[int, int]:
    """pid -> parent pid of every live process below ``pid``."""
    parent = {}
    for p in Path("/proc").iterdir():
        try:
            parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            pass
    out, todo = {}, [pid]
    while todo:
        above = todo.pop()
        below = [c for c, pp in parent.items() if pp == above and _live(c)]
        out.update(dict.fromkeys(below, above))
        todo += below
    return out


def _shards(feats: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (feats / ".parts").glob("shard-*")} if (feats / ".parts").is_dir() else {}


def _check_incomplete(feats: Path, kept: dict[str, bytes]) -> dict[str, bytes]:
    """Nothing reads as complete, no visible shard is partial, earlier shards are untouched."""
    assert not (feats / "index.json").exists()
    with pytest.raises(FeatureStoreError, match="incomplete"):
        FeatureStore.open(feats)
    now = _shards(feats)
    assert {k: now[k] for k in kept} == kept  # complete shards are never rewritten
    for name in now:
        with np.load(feats / ".parts" / name) as z:
            assert z["feats"].shape == (int(z["lengths"].sum()), 80), name
    return now


def _wait_gone(pids: list[int], what: str) -> None:
    deadline = time.monotonic() + 10
    while any(_live(p) for p in pids):
        if time.monotonic() > deadline:
            left = [p for p in pids if _live(p)]
            for p in left:
                os.kill(p, signal.SIGKILL)  # not to leave them running after the test
            pytest.fail(f"{what}: processes {left} still alive after 10 s")
        time.sleep(0.02)


@pytest.mark.parametrize("nj", [2, 4])
def test_parallel_extraction_killed_at_random_moments_reruns_to_the_same_store(clips_and_reference, nj, tmp_path):
    data, ref = clips_and_reference
    feats = tmp_path / "feats"
    args = ("extract", data, feats, "--nj", str(nj), "--skip-bad", "--no-progress")
    rng = random.Random(8100 + nj)
    kept: dict[str, bytes] = {}
    for victim in ("worker", "parent", "worker", "parent"):
        # shards on disk before the kill: at most 12 of the 33, so that the run is still busy
        # when the kill lands (4 workers finish a shard every ~15 ms between two polls)
        target = min(len(kept) + rng.randint(1, 4), 12)
        err = tmp_path / "stderr.txt"
        with open(err, "w") as f:
            proc = subprocess.Popen(driver_command(*args), env=driver_env(test_set=ONE_PER_SHARD), stderr=f,
                                    stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:  # polling the process tree and the shard files, not synchronizing
            assert proc.poll() is None, f"extract ended before the kill: {err.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{target} shards not reached in 60 s"
            tree = _descendants(proc.pid)
            workers = [p for p, pp in tree.items() if pp != proc.pid]  # the forkserver's children
            if len(workers) == nj and len(_shards(feats)) >= target:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        tree = _descendants(proc.pid)
        if victim == "worker":
            workers = sorted(p for p, pp in tree.items() if pp != proc.pid)
            assert workers, f"the run's workers were gone before the kill ({len(_shards(feats))} shards on disk)"
            os.kill(rng.choice(workers), signal.SIGKILL)
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                pytest.fail("extract hangs after one of its workers was killed")
            assert rc == 2, err.read_text()[-2000:]
            assert "error: a worker process died while computing feature shards" in err.read_text()
            assert "Traceback" not in err.read_text()
        else:
            proc.send_signal(signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
        # a killed parent takes its forkserver and workers with it: none computes on, orphaned
        _wait_gone(sorted(tree), f"after killing the {victim}")
        kept = _check_incomplete(feats, kept)
        time.sleep(0.2)
        assert _shards(feats) == kept  # nothing writes shards any more

    # Killed while packing: in the parent, part-way through feats.npy, at a random byte.
    fault = spec("sqvae_speech.data.featstore_write", "feats.npy", 1, rng.randint(1, 400_000), "kill")
    res = run_driver(*args, faults=fault, test_set=ONE_PER_SHARD, timeout=60)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert len(_check_incomplete(feats, kept)) == 33
    assert [p for p in feats.iterdir() if p.name.startswith(".tmp-feats.npy")]  # the partial store

    res = run_driver(*args, test_set=ONE_PER_SHARD, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in feats.iterdir()) == list(STORE_FILES)  # no .parts, no temporary file
    for name in STORE_FILES:
        assert (feats / name).read_bytes() == (ref / name).read_bytes(), name
    assert len(FeatureStore.open(feats, verify="full")) == 32  # every checksum holds
