"""The learning curve: recipes/fishfillets/local/learning_curve.sh scores the checkpoints
of a tiny run trained on real speech (evaluate, WORLD conversions with speaker
similarity; a 6-step model through a 12-step neural vocoder makes no speech to embed)
and `sqvae-speech report --curve` tabulates and plots them against the step; --curve
refuses experiments that are not one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_experiment
from report_setup import build_heldout

from sqvae_speech.cli import main
from sqvae_speech.evaluate import evaluate
from sqvae_speech.metrics.curve import curve_points
from sqvae_speech.train import train

SCRIPT = Path(__file__).resolve().parents[2] / "recipes" / "fishfillets" / "local" / "learning_curve.sh"


@pytest.fixture(scope="module")
def recipe(real_featstore, speech_files, tmp_path_factory) -> dict[str, Path]:
    """A recipe-like dir (data/test, feats/test, feats/train/f0_stats.json) and a run
    trained 6 steps keeping its checkpoints at steps 2, 4 and 6."""
    root = tmp_path_factory.mktemp("curve")
    build_heldout(root, speech_files)
    rec = root / "recipe"
    (rec / "data").mkdir(parents=True)
    (rec / "feats" / "train").mkdir(parents=True)
    (rec / "data" / "test").symlink_to(root / "data")
    (rec / "feats" / "test").symlink_to(root / "feats")
    (rec / "feats" / "train" / "f0_stats.json").symlink_to(root / "f0.json")
    run = rec / "exp" / "gaussian_4"
    train(tiny_experiment(steps=6, checkpoint_every=2), real_featstore.path, run, progress=False)
    return {"recipe": rec, "run": run}


def script(rec: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    opts = ["--per-speaker", "1", "--resynth-utts", "2"]  # 12 conversions and 2 utterances per step: quick
    return subprocess.run(["bash", str(SCRIPT), *opts, *args], cwd=rec, env=env, capture_output=True, text=True, timeout=600)


def test_learning_curve_script_scores_every_checkpoint(recipe: dict[str, Path]) -> None:
    rec = recipe["recipe"]
    p = script(rec, "exp/gaussian_4", "exp/curve", "world", "2", "6")
    assert p.returncode == 0, p.stderr
    assert [ln.split(":")[0] for ln in p.stdout.splitlines() if ln.startswith("step ")] == ["step 2", "step 6"]
    out = rec / "exp" / "curve"
    assert sorted(d.name for d in out.glob("step_*")) == ["step_2", "step_6"]
    # the step dirs hold the run's own checkpoint files (hard links), nothing trained anew
    assert (out / "step_2" / "checkpoints" / "ckpt-00000002.pt").samefile(recipe["run"] / "checkpoints" / "ckpt-00000002.pt")
    r = json.loads((out / "report" / "report.json").read_text())
    assert r["options"]["curve"] is True and r["options"]["vocoders"] == ["world"]
    pts = curve_points(r)
    assert [p["step"] for p in pts] == [2, 6]
    for p_, e in zip(pts, sorted(r["experiments"], key=lambda e: e["step"])):
        assert p_["mse_db2"] == e["results"]["mse_db2"] and e["results"]["step"] == p_["step"]
        # 1 source per voice, each to the 3 other voices (the reconstructions are not scored)
        assert e["conversion"]["vocoder"] == "world" and e["conversion"]["total"] == 12
        assert p_["closer_share"] == e["conversion"]["closer_share"] and 0 <= p_["closer_share"] <= 1
        assert 1.0 <= p_["pesq_wb"] <= 4.64 and 0 <= p_["stoi"] <= 1
    md = (out / "report" / "report.md").read_text()
    table = md.split("## Against training steps")[1].split("\n\n")[1].splitlines()
    assert table[0].startswith("| step | dB^2 MSE |") and [row.split(" | ")[0] for row in table[2:]] == ["| 2", "| 6"]
    assert f"| {pts[1]['mse_db2']:.2f} |" in table[3]
    assert (out / "report" / "steps.png").stat().st_size > 10_000
    assert "curves.png" not in md  # the step dirs carry no training log: no empty training-curve figure
    # a rerun scores nothing again and rewrites the report
    again = script(rec, "exp/gaussian_4", "exp/curve", "world", "2", "6")
    assert again.returncode == 0 and not [ln for ln in again.stdout.splitlines() if ln.startswith("step ")]


def test_learning_curve_script_names_a_missing_step(recipe: dict[str, Path]) -> None:
    p = script(recipe["recipe"], "exp/gaussian_4", "exp/curve_bad", "world", "3")
    assert p.returncode == 1 and "keeps no checkpoint at step 3" in p.stderr and "ckpt-00000004.pt" in p.stderr
    assert not (recipe["recipe"] / "exp" / "curve_bad").exists()


def test_curve_refuses_experiments_of_different_runs(recipe: dict[str, Path], real_featstore, tmp_path: Path,
                                                     capsys) -> None:
    rec = recipe["recipe"]
    other = tmp_path / "vqvae_ema"
    cfg = tiny_experiment(steps=2)
    train(cfg.replace(model=cfg.model.replace(variant="vqvae_ema")), real_featstore.path, other, progress=False)
    for exp in (recipe["run"], other):
        evaluate(exp, rec / "feats" / "test", progress=False)
    base = ["report", "--curve", "--out", str(tmp_path / "r"), "--data", str(rec / "data" / "test"),
            "--feats", str(rec / "feats" / "test"), "--resynth-utts", "0", "--no-progress"]
    assert main([*base, str(recipe["run"]), str(other)]) == 2
    assert "one training run" in capsys.readouterr().err
    assert main([*base, str(recipe["run"])]) == 2
    assert "two or more checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.json").exists()
