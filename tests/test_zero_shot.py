"""recipes/fishfillets/local/zero_shot.sh on the real corpus: the minor characters, voices a
tiny model (trained on the 4 main voices) never heard, are converted to the main voices
and scored against their own held-out clips, none of which is a source."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import tiny_experiment

from sqvae_speech.data.datadir import read_datadir
from sqvae_speech.train import train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "fishfillets"
MINOR = {"cs-b1", "cs-b2", "cs-c", "cs-hs", "cs-pap"}


def test_zero_shot_converts_unseen_voices(sound_dir: Path, real_featstore, tmp_path: Path) -> None:
    rec = tmp_path / "recipe"
    (rec / "conf").mkdir(parents=True)
    shutil.copy(RECIPE / "conf" / "features.yaml", rec / "conf")
    (rec / "download").symlink_to(sound_dir)
    (rec / "feats" / "train").mkdir(parents=True)
    stats = {s: {"mean_log_f0": 5.0, "std_log_f0": 0.2, "median_f0_hz": 150.0, "voiced_frames": 100, "frames": 200,
                 "utterances": 3} for s in ("cs-m", "cs-v", "nl-m", "nl-v")}
    (rec / "feats" / "train" / "f0_stats.json").write_text(json.dumps(
        {"format": "sqvae-f0-stats", "version": 1, "method": "harvest", "f0_floor": 50.0, "f0_ceil": 600.0,
         "sample_rate": 16000, "hop_length": 160, "data": "", "failed": {}, "speakers": stats}))
    train(tiny_experiment(steps=2), real_featstore.path, rec / "exp" / "tiny", progress=False)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    p = subprocess.run(["bash", str(RECIPE / "local" / "zero_shot.sh"), "--per-speaker", "1", "exp/tiny", "exp/zs",
                        "world"], cwd=rec, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    assert "20 items written to exp/zs (world)" in p.stdout and "closer to the target" in p.stdout
    # the sources: minor characters' training clips only; their references: the held-out clips
    zs = read_datadir(rec / "data_minor" / "zero_shot")
    assert set(zs.utt2spk.values()) == MINOR
    held_out = read_datadir(rec / "data_minor" / "test").utt2spk
    items = json.loads((rec / "exp" / "zs" / "conversion.json").read_text())["items"]
    scored = [it for it in items if not it["reconstruction"]]
    assert len(scored) == 20 and {it["source_speaker"] for it in scored} == MINOR
    assert {it["target"] for it in scored} == {"cs-m", "cs-v", "nl-m", "nl-v"}
    for it in scored:
        assert it["source"] in zs.utt2spk and it["source"] not in held_out
        assert set(it["similarity"]) >= {it["target"], it["source_speaker"]}
    assert (rec / "exp" / "zs" / "index.html").is_file()
    # without a vocoder file it says what to do
    bad = subprocess.run(["bash", str(RECIPE / "local" / "zero_shot.sh"), "exp/tiny", "exp/zs2", "exp/none.pt"],
                         cwd=rec, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "no vocoder file exp/none.pt" in bad.stderr
