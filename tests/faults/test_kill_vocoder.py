"""SIGKILL of ``sqvae-speech train-vocoder`` at random moments, then ``--resume``: every
rerun continues from the newest complete checkpoint, and the end result is the very same
vocoder as that of a run that was never killed.

The moments come from a seeded RNG, so a failure replays: while its two F0 workers analyse
the training audio (once they exist, plus 0-300 ms), part-way through the writing of the F0
cache, of a checkpoint and of the final ``vocoder.pt`` (at a random byte, through the fault
driver), and after a randomly chosen training step (observed in ``metrics.jsonl``) plus
0-50 ms, once before the first checkpoint.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sqvae_speech.checkpoint import list_checkpoints, load_checkpoint
from sqvae_speech.data.extract import extract
from sqvae_speech.synthesis.neural import load_vocoder

from .faultlib import spec
from .helpers import clip_data_dir, driver_command, driver_env, run_driver
from .test_kill import _check_visible_checkpoints, _logged_steps, _start_step
from .test_kill_parallel import _descendants, _wait_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")

STEPS, EVERY = 60, 5
LR, GAMMA, MILESTONES = 1e-3, 0.5, (20, 45)
CONFIG = {"vocoder": {"channels": 16, "layers": 2},
          "train": {"steps": STEPS, "batch_size": 2, "segment_frames": 40, "lr": LR, "milestones": list(MILESTONES),
                    "gamma": GAMMA, "checkpoint_every": EVERY, "keep_checkpoints": 2, "log_every": 1}}


@pytest.fixture(scope="module")
def vocoder_setup(speech_files, tmp_path_factory) -> tuple[Path, ...]:
    """A data dir of 8 real clips, its feature store and the tiny vocoder config."""
    root = tmp_path_factory.mktemp("kill_vocoder")
    data = clip_data_dir(root / "data", speech_files, per_voice=2)
    assert extract(data, root / "feats", progress=False).complete
    conf = root / "vocoder.yaml"
    conf.write_text(yaml.safe_dump(CONFIG))
    return data, root / "feats", conf


def _args(setup: tuple[Path, ...], exp: Path, resume: bool = True) -> tuple:
    data, feats, conf = setup
    return ("train-vocoder", "--config", conf, "--data", data, "--feats", feats, "--exp", exp, "--nj", "2", "--cpu",
            "--no-progress", *(["--resume"] if resume else []))


def test_train_vocoder_killed_at_random_moments_resumes_to_the_uninterrupted_result(vocoder_setup, tmp_path):
    exp = tmp_path / "exp"
    args = _args(vocoder_setup, exp)
    rng = random.Random(20250611)
    starts = []  # (newest checkpoint before the run, step the run said it starts from)

    def killed_by_fault(module: str, match: str, nth: int, size: int) -> subprocess.CompletedProcess:
        before = _check_visible_checkpoints(exp)
        res = run_driver(*args, faults=spec(module, match, nth, rng.randint(1, size - 1), "kill"))
        assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
        if "from step" in res.stderr:
            starts.append((before, _start_step(res.stderr)))
        return res

    # 1. Killed while the two workers analyse F0: they go with the run, nothing is cached.
    err = tmp_path / "stderr-f0.txt"
    with open(err, "w") as f:
        proc = subprocess.Popen(driver_command(*args), env=driver_env(), stderr=f, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len([p for p, pp in _descendants(proc.pid).items() if pp != proc.pid]) < 2:  # the forkserver's children
        assert proc.poll() is None, f"train-vocoder ended before its F0 workers started: {err.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "no F0 workers after 120 s"
        time.sleep(0.005)  # polling the process tree, not synchronizing
    time.sleep(rng.uniform(0.0, 0.3))
    tree = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert "from step" not in err.read_text()  # still analysing
    _wait_gone(sorted(tree), "after killing train-vocoder during the F0 analysis")
    assert not (exp / "f0.npz").exists() and list_checkpoints(exp) == []

    # 2. Killed part-way through writing the F0 cache: only its temporary file is there.
    killed_by_fault("sqvae_speech.synthesis.neural_data", "f0.npz", 1, 5000)
    assert not (exp / "f0.npz").exists() and [p for p in exp.iterdir() if p.name.startswith(".tmp-f0.npz")]
    assert list_checkpoints(exp) == []

    # 3. Killed after random steps: the first time before the first checkpoint (its logged
    #    steps are dropped by the rerun), then twice anywhere up to 20 steps before the end.
    for first in (True, False, False):
        before = _check_visible_checkpoints(exp)
        target = rng.randint(1, EVERY - 1) if first else rng.randint(before + 1, max(before + 1, STEPS - 20))
        err = tmp_path / f"stderr-{len(starts)}.txt"
        with open(err, "w") as f:
            proc = subprocess.Popen(driver_command(*args), env=driver_env(), stderr=f, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        # Once the run says where it starts, metrics.jsonl holds only its own steps.
        while proc.poll() is None and ("from step" not in err.read_text() or max(_logged_steps(exp), default=0) < target):
            assert time.monotonic() < deadline, f"step {target} not reached in 180 s: {err.read_text()[-2000:]}"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, f"training ended before the kill: {err.read_text()[-2000:]}"
        starts.append((before, _start_step(err.read_text())))
        assert _check_visible_checkpoints(exp) >= before
        assert (exp / "f0.npz").is_file()  # the F0 cache is written before training starts

    # 4. Killed part-way through writing the first or second checkpoint of a run.
    killed_by_fault("sqvae_speech.fileio", "ckpt-", rng.randint(1, 2), list_checkpoints(exp)[-1][1].stat().st_size)
    assert [p for p in (exp / "checkpoints").iterdir() if p.name.startswith(".tmp-ckpt-")]

    # 5. Killed part-way through writing vocoder.pt, after the last checkpoint.
    killed_by_fault("sqvae_speech.fileio", "vocoder.pt", 1, list_checkpoints(exp)[-1][1].stat().st_size // 4)
    assert _check_visible_checkpoints(exp) == STEPS and not (exp / "vocoder.pt").exists()
    assert [p for p in exp.iterdir() if p.name.startswith(".tmp-vocoder.pt")]

    # The rerun writes vocoder.pt (no step left to train) and removes the partial files.
    res = run_driver(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    starts.append((STEPS, _start_step(res.stderr)))
    assert all(expected == got for expected, got in starts), starts  # each run began at the newest checkpoint
    assert len(starts) == 6
    assert [s for s, _ in list_checkpoints(exp)] == [STEPS - EVERY, STEPS]
    assert not [p for p in exp.rglob(".tmp-*")]
    assert _logged_steps(exp) == list(range(1, STEPS + 1))  # every step once, none lost or repeated

    # The same vocoder, weight for weight, as a run that was never killed.
    ref = tmp_path / "reference"
    res = run_driver(*_args(vocoder_setup, ref, resume=False))
    assert res.returncode == 0, res.stderr[-3000:]
    model, reference = load_vocoder(exp), load_vocoder(ref)
    assert model.step == reference.step == STEPS
    final = load_checkpoint(exp / f"checkpoints/ckpt-{STEPS:08d}.pt")
    assert final["scheduler"]["last_epoch"] == STEPS
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(LR * GAMMA ** len(MILESTONES))
    for name, weights in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], weights), name
        assert torch.equal(final["model"][name], weights), name
    ours, theirs = ([ln.split('"seconds_per_step"')[0] for ln in (e / "metrics.jsonl").read_text().splitlines()]
                    for e in (exp, ref))
    assert ours == theirs  # the same losses and learning rate at every step
