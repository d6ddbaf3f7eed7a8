"""`sqvae-speech compare`: runs that differ only by seed become one row, mean +- std."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from sqvae_speech.cli import main as cli_main
from sqvae_speech.cli.compare import (
    group_results,
    load_results,
    markdown_table,
    overlaps_best,
)


def _exp(root: Path, name: str, variant: str, seed: int, mse: float, ppl: float, used: int, steps: int = 100,
         k: int = 16) -> str:
    d = root / name
    d.mkdir(parents=True)
    conf = {"model": {"variant": variant, "quantizer": {"num_embeddings": 16}, "speakers": ["a", "b"]},
            "train": {"steps": steps, "seed": seed}}
    (d / "config.yaml").write_text(yaml.safe_dump(conf))
    (d / "results.json").write_text(json.dumps({
        "variant": variant, "step": steps, "seed": seed, "mse_db2": mse, "set_perplexity": ppl, "used_codes": used,
        "bitrate": 50 * math.log2(ppl),
        "num_codes": k, "num_utterances": 3, "num_frames": 300, "data": "feats/test"}))
    return str(d)


def test_seeds_are_grouped_with_mean_and_sample_std(tmp_path):
    exps = [_exp(tmp_path, f"gaussian_4_s{s}", "gaussian_4", s, m, p, u)
            for s, m, p, u in ((0, 70.0, 10.0, 12), (1, 72.0, 12.0, 14), (2, 74.0, 14.0, 16))]
    exps += [_exp(tmp_path, f"vqvae_ema_s{s}", "vqvae_ema", s, m, 3.0, 4) for s, m in ((0, 90.0), (1, 80.0))]
    groups = group_results(load_results(exps))
    assert [g.name for g in groups] == ["Gaussian SQ-VAE (IV)", "VQ-VAE w/ EMA"]
    assert groups[0].seeds == [0, 1, 2] and groups[1].seeds == [0, 1]
    mean, std = groups[0].stats["mse_db2"]
    assert mean == pytest.approx(72.0) and std == pytest.approx(2.0)  # ddof=1
    assert groups[1].stats["mse_db2"] == pytest.approx((85.0, 7.0710678))
    # 72 +- 2 vs 85 +- 7.07: 13 > 9.07, the intervals do not overlap
    assert overlaps_best(groups, "mse_db2", lower_is_better=True) == [False, False]
    table = markdown_table(load_results(exps))
    assert ("| Gaussian SQ-VAE (IV) | 3 (0, 1, 2) | 100 | **72.00 +- 2.00** | **12.0 +- 2.0** | **14 +- 2** / 16 | "
            "178.6 +- 12.1 |") in table
    assert "| VQ-VAE w/ EMA | 2 (0, 1) | 100 | 85.00 +- 7.07 | 3.0 +- 0.0 | 4 +- 0 / 16 | 79.2 +- 0.0 |" in table


def test_overlapping_intervals_are_marked(tmp_path):
    exps = [_exp(tmp_path, f"a{s}", "gaussian_4", s, m, 10.0, 10) for s, m in ((0, 70.0), (1, 74.0))]
    exps += [_exp(tmp_path, f"b{s}", "gaussian_1", s, m, 10.0, 10) for s, m in ((0, 73.0), (1, 77.0))]
    groups = group_results(load_results(exps))
    assert overlaps_best(groups, "mse_db2", lower_is_better=True) == [False, True]
    assert "75.00 +- 2.83 ~" in markdown_table(load_results(exps))


def test_other_settings_are_not_averaged_together(tmp_path):
    a = _exp(tmp_path, "short", "gaussian_4", 0, 70.0, 10.0, 10, steps=100)
    b = _exp(tmp_path, "long", "gaussian_4", 1, 60.0, 10.0, 10, steps=200)
    groups = group_results(load_results([a, b]))
    assert len(groups) == 2 and [g.name for g in groups] == ["Gaussian SQ-VAE (IV) [short]", "Gaussian SQ-VAE (IV) [long]"]


def test_missing_results_names_the_file_and_the_fix(tmp_path, capsys):
    (tmp_path / "exp").mkdir()
    assert cli_main(["compare", str(tmp_path / "exp")]) == 2
    err = capsys.readouterr().err
    assert "results.json does not exist" in err and "sqvae-speech evaluate" in err


def test_a_collapsed_codebook_is_named_under_the_table(tmp_path):
    exps = [_exp(tmp_path, "g", "gaussian_4", 0, 70.0, 10.0, 40, k=512), _exp(tmp_path, "v", "vqvae_ema", 0, 90.0, 2.0, 2, k=512)]
    table = markdown_table(load_results(exps))
    assert "VQ-VAE w/ EMA: codebook collapse, 2 of 512 codes used on this set" in table
    assert "Gaussian SQ-VAE (IV): codebook collapse" not in table


def test_results_without_a_bitrate_show_n_a(tmp_path):
    d = _exp(tmp_path, "old", "gaussian_4", 0, 70.0, 10.0, 12)
    r = json.loads((Path(d) / "results.json").read_text())
    del r["bitrate"]
    (Path(d) / "results.json").write_text(json.dumps(r))
    assert markdown_table(load_results([d])).splitlines()[2].endswith("| n/a |")


def test_hostile_run_names_stay_text_in_the_table(tmp_path):
    """A run dir named with markup, a table bar or a link is shown as text, in its own cell."""
    d = _exp(tmp_path, "<img src=x onerror=alert(1)>|[x](javascript:y)", "gaussian_4", 0, 70.0, 10.0, 12)
    row = markdown_table(load_results([d])).splitlines()[2]
    assert "<img" not in row and "&lt;img src=x onerror=alert(1)&gt;" in row
    assert "\\|" in row and "\\[x\\](javascript:y)" in row
    assert row.replace("\\|", "").count("|") == 8  # 7 cells, none split by the name
