"""Helpers of the fault-injection suite: data dirs of real speech, training configs, and
``sqvae-speech`` run in a subprocess with faults injected (``fault_driver.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

from sqvae_speech.config import ExperimentConfig, dump_yaml
from sqvae_speech.data.datadir import write_datadir

DRIVER = Path(__file__).resolve().parent / "fault_driver.py"


def clip_data_dir(out: Path, speech_files: dict[str, list[Path]], per_voice: int = 3) -> Path:
    """A data dir of ``per_voice`` real clips of each main voice (utterance ids sorted by voice)."""
    wav_scp, utt2spk = {}, {}
    for voice, files in sorted(speech_files.items()):
        for i, path in enumerate(files[:per_voice]):
            wav_scp[f"{voice}-{i}"] = str(path)
            utt2spk[f"{voice}-{i}"] = voice
    write_datadir(out, wav_scp, utt2spk)
    return out


def add_missing_file(data: Path, root: Path) -> None:
    """Append utterance ``zz-gone`` (speaker ``zz``), whose audio file does not exist, to the
    data dir ``data`` (its spk2utt removed: extract derives it)."""
    for name in ("wav.scp", "utt2spk"):
        extra = "zz-gone " + (str(root / "gone.wav") if name == "wav.scp" else "zz")
        (data / name).write_text((data / name).read_text() + extra + "\n")
    (data / "spk2utt").unlink()


def write_train_config(path: Path, cfg: ExperimentConfig) -> Path:
    """The config as YAML without its ``features`` section (train takes those from the store)."""
    data = yaml.safe_load(dump_yaml(cfg))
    del data["features"]
    path.write_text(yaml.safe_dump(data))
    return path


def driver_command(*args: str) -> list[str]:
    """``sqvae-speech ARGS`` through the fault driver (faults from $SQVAE_FAULTS)."""
    return [sys.executable, str(DRIVER), *map(str, args)]


def driver_env(faults: str = "", test_set: str = "") -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "SQVAE_FAULTS": faults, "SQVAE_TEST_SET": test_set,
            "SQVAE_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}


def run_driver(*args: str, faults: str = "", test_set: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``sqvae-speech ARGS`` in a subprocess with faults injected; returns the result."""
    return subprocess.run(driver_command(*args), env=driver_env(faults, test_set), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, check=False)
