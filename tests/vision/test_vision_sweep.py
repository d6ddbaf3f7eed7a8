"""sweep-plot over seeds on synthetic results files (no training): runs of one variant and
K are one point, mean +- sample std, error bars; one run per point renders as before."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from sqvae_speech.cli import main as cli_main
from sqvae_speech.errors import SQVAEError
from sqvae_speech.vision.sweep import group_sweep, load_sweep, plot_sweep, sweep_table

# (variant, K, seed) -> set perplexity, used codes, MSE, best step
RUNS = {
    ("gaussian_1", 16, 0): (14.0, 16, 0.0110, 4000), ("gaussian_1", 16, 1): (15.0, 16, 0.0100, 4000),
    ("gaussian_1", 16, 2): (13.0, 15, 0.0120, 3124),
    ("vqvae_ema", 16, 0): (4.0, 5, 0.0090, 4000), ("vqvae_ema", 16, 1): (6.0, 7, 0.0095, 4000),
    ("vqvae_ema", 16, 2): (5.0, 6, 0.0100, 4000),
    ("gaussian_1", 32, 0): (29.0, 32, 0.0094, 4000),  # a point with one seed left
}


def write_run(root: Path, variant: str, k: int, seed: int | None, ppl: float, used: int, mse: float, step: int,
              seed_in: str = "results") -> Path:
    """An evaluated run dir: results_test.json as `vision evaluate` writes it, with the seed
    in the results, only in config.yaml (results of older evaluations), or nowhere."""
    exp = root / (f"{variant}_K{k}" + ("" if seed is None else f"_seed{seed}"))
    exp.mkdir(parents=True)
    res = {"dataset": "fashion_mnist", "split": "test", "variant": variant, "num_codes": k, "embedding_dim": 64,
           "step": step, "num_images": 10000, "loss": -1000.0, "batch_perplexity": ppl * 0.9, "set_perplexity": ppl,
           "used_codes": used, "mse": mse, "sse_per_image": mse * 784, "pixel_accuracy": None, "miou": None,
           "per_class_iou": [], "checkpoint": str(exp / "best.pt"), "seconds": 1.0}
    if seed_in == "results":
        res["seed"] = seed
    elif seed_in == "config":
        (exp / "config.yaml").write_text(f"train:\n  seed: {seed}\n  max_steps: 4000\n")
    (exp / "results_test.json").write_text(json.dumps(res))
    return exp


def make_sweep(root: Path) -> list[str]:
    # the VQ-VAE runs carry their seed only in config.yaml, as results written before evaluate recorded it
    return [str(write_run(root, v, k, s, *vals, seed_in="config" if v == "vqvae_ema" else "results"))
            for (v, k, s), vals in RUNS.items()]


def test_grouping_mean_and_sample_std_over_seeds(tmp_path: Path) -> None:
    rows = load_sweep(make_sweep(tmp_path))
    assert [(r["variant"], r["num_codes"], r["seed"]) for r in rows] == sorted(RUNS)
    points = {(p.variant, p.num_codes): p for p in group_sweep(rows)}
    assert set(points) == {("gaussian_1", 16), ("gaussian_1", 32), ("vqvae_ema", 16)}
    g16, vq16, g32 = points["gaussian_1", 16], points["vqvae_ema", 16], points["gaussian_1", 32]
    assert g16.n == 3 and g16.seeds == [0, 1, 2] and vq16.seeds == [0, 1, 2] and g32.seeds == [0]
    for p in (g16, vq16):
        for i, key in enumerate(("set_perplexity", "used_codes", "mse")):
            vals = [RUNS[p.variant, 16, s][i] for s in (0, 1, 2)]
            assert p.stat(key) == pytest.approx((statistics.mean(vals), statistics.stdev(vals)))  # sample std
    assert g16.stat("set_perplexity") == pytest.approx((14.0, 1.0)) and g32.stat("set_perplexity") == (29.0, 0.0)

    table = sweep_table(rows)
    lines = table.splitlines()
    # the grid: mean +- std (used codes too); K=16's two models are far apart, so no ~
    assert "| Gaussian SQ-VAE (I) | 14.0 +- 1.0 (16 +- 1) | 29.0 (32) |" in lines
    assert "| VQ-VAE w/ EMA | 5.0 +- 1.0 (6 +- 1) |  |" in lines
    # one line per model and K: the seeds, the range of best steps, mean +- std of every metric
    assert "| model | K | seeds | checkpoint step | set perplexity | used codes | batch perplexity | MSE x1e3 | images |" in lines
    assert "| Gaussian SQ-VAE (I) | 16 | 3 (0, 1, 2) | 3124-4000 | 14.0 +- 1.0 | 16 +- 1 | 12.6 +- 0.9 | 11.00 +- 1.00 | 10000 |" in lines
    assert "| VQ-VAE w/ EMA | 16 | 3 (0, 1, 2) | 4000 | 5.0 +- 1.0 | 6 +- 1 | 4.5 +- 0.9 | 9.50 +- 0.50 | 10000 |" in lines
    assert "| Gaussian SQ-VAE (I) | 32 | 1 (0) | 4000 | 29.0 | 32 | 26.1 | 9.40 | 10000 |" in lines
    assert lines[-1].startswith("mean +- sample standard deviation over the seeds") and "~" not in table
    # rows in any order group the same way
    assert sweep_table(rows[::-1]) == table


def test_overlapping_intervals_are_marked(tmp_path: Path) -> None:
    exps = [str(write_run(tmp_path, v, 64, s, ppl, 60, 0.01, 4000))
            for v, vals in (("gaussian_1", (50.0, 54.0)), ("vq_kmeans", (47.0, 51.0)), ("vqvae_ema", (10.0, 12.0)))
            for s, ppl in enumerate(vals)]
    table = sweep_table(load_sweep(exps))
    grid = table.split("\n\n")[0]
    assert "~: the interval overlaps that of the highest set perplexity at this K" in table
    # best: 52.0 +- 2.8; k-means 49.0 +- 2.8 overlaps it, the VQ-VAE (11.0 +- 1.4) does not
    assert "| Gaussian SQ-VAE (I) | 52.0 +- 2.8 (60 +- 0) |" in grid
    assert "| VQ (k-means, EMA) | 49.0 +- 2.8 ~ (60 +- 0) |" in grid
    assert "| VQ-VAE w/ EMA | 11.0 +- 1.4 (60 +- 0) |" in grid


def test_single_seed_renders_as_before(tmp_path: Path) -> None:
    exps = [str(write_run(tmp_path, v, k, None, ppl, used, 0.0105, 4000, seed_in="none"))
            for v, k, ppl, used in (("gaussian_1", 16, 14.7, 16), ("vqvae_ema", 16, 4.4, 5), ("gaussian_1", 32, 29.1, 32))]
    rows = load_sweep(exps)
    assert [r["seed"] for r in rows] == [None, None, None]  # no seed anywhere: still one run per point
    assert sweep_table(rows) == (
        "| set perplexity (used codes) | K=16 | K=32 |\n|---|---:|---:|\n"
        "| Gaussian SQ-VAE (I) | 14.7 (16) | 29.1 (32) |\n| VQ-VAE w/ EMA | 4.4 (5) |  |\n\n"
        "| model | K | checkpoint step | set perplexity | used codes | batch perplexity | MSE x1e3 | images |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        "| Gaussian SQ-VAE (I) | 16 | 4000 | 14.7 | 16 | 13.2 | 10.50 | 10000 |\n"
        "| Gaussian SQ-VAE (I) | 32 | 4000 | 29.1 | 32 | 26.2 | 10.50 | 10000 |\n"
        "| VQ-VAE w/ EMA | 16 | 4000 | 4.4 | 5 | 4.0 | 10.50 | 10000 |\n")


def test_same_seed_twice_is_an_error(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "vqvae_ema", 16, 0, 4.0, 5, 0.01, 4000)
    b = write_run(tmp_path / "b", "vqvae_ema", 16, 0, 9.0, 9, 0.01, 4000, seed_in="config")
    with pytest.raises(SQVAEError, match="seed 0: a point of the sweep averages seeds"):
        sweep_table(load_sweep([str(a), str(b)]))


def test_cli_plot_with_error_bars_and_table(tmp_path: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    exps = make_sweep(tmp_path / "exp")
    import matplotlib.axes

    drawn: list[tuple] = []
    errorbar = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, *args, **kwargs):
        drawn.append((list(x), list(y), kwargs.get("yerr"), kwargs.get("label")))
        return errorbar(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    png, table = tmp_path / "ppl.png", tmp_path / "RESULTS.md"
    assert cli_main(["vision", "sweep-plot", *exps, "--out", str(png), "--table", str(table), "--title", "t"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = table.read_text()
    assert "3 (0, 1, 2)" in text and text in capsys.readouterr().out
    # one error-bar line per model: the means, +- std (the lower bar stops at perplexity 1)
    by_label = {label: (x, y, yerr) for x, y, yerr, label in drawn}
    assert set(by_label) == {"Gaussian SQ-VAE (I) (1-3 seeds)", "VQ-VAE w/ EMA (3 seeds)"}
    x, y, yerr = by_label["Gaussian SQ-VAE (I) (1-3 seeds)"]
    assert x == [16, 32] and y == pytest.approx([14.0, 29.0]) and yerr == [pytest.approx([1.0, 0.0])] * 2
    assert by_label["VQ-VAE w/ EMA (3 seeds)"][2] == [pytest.approx([1.0])] * 2

    # one seed per point: plain lines, no error bars (the plot of before)
    drawn.clear()
    plot_sweep(load_sweep([e for e in exps if e.endswith("_seed0")]), tmp_path / "one.png")
    assert drawn == [] and (tmp_path / "one.png").stat().st_size > 10_000
