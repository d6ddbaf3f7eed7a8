"""``sqvae-speech compare EXP...``: one table of results.json files, and training curves.

Prints a Markdown table (model, seeds, steps, dB^2 MSE, set perplexity, used codes; runs
that differ only by their seed are one row, mean +- std) and with
``--out`` writes it to a file; ``--curves PNG`` plots batch perplexity, mean encoder
log-variance (the self-annealing trace) and training dB^2 MSE over steps from each
experiment's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from ..config import load_yaml
from ..errors import SQVAEError
from ..fileio import atomic_path, atomic_write_text
from ..textsafe import md_text, mpl_text


def load_results(exp_dirs: list[str]) -> list[dict]:
    """Each experiment's results.json, with ``exp`` (the dir) and ``setup`` (its resolved
    config.yaml less the seed and the speaker list: runs that differ only by seed share it)."""
    rows = []
    for d in exp_dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise SQVAEError(f"{path} does not exist: run `sqvae-speech evaluate --exp {d} --feats ...` first")
        r = json.loads(path.read_text(encoding="utf-8"))
        r["exp"] = str(d)
        r["setup"] = _setup_key(Path(d), r)
        rows.append(r)
    return rows


def _setup_key(exp: Path, result: dict) -> str:
    conf = exp / "config.yaml"
    if not conf.is_file():  # a checkpoint evaluated outside an experiment dir
        return f"{result['variant']}@{exp}"
    data = load_yaml(conf)
    data.get("train", {}).pop("seed", None)
    data.get("model", {}).pop("speakers", None)
    return json.dumps({"data": result.get("data", ""), "step": result["step"], "config": data}, sort_keys=True)


MODEL_NAMES = {
    "gaussian_1": "Gaussian SQ-VAE (I)", "gaussian_2": "Gaussian SQ-VAE (II)", "gaussian_3": "Gaussian SQ-VAE (III)",
    "gaussian_4": "Gaussian SQ-VAE (IV)", "gaussian_fixed": "SQ with fixed sigma^2", "vqvae_ema": "VQ-VAE w/ EMA",
    "vqvae_ema_reset": "VQ-VAE w/ EMA + reset", "vq_kmeans": "VQ, k-means init + dead-code replacement",
    "fsq": "FSQ", "vae": "Gaussian VAE (continuous)", "vmf": "vMF SQ-VAE",
}


@dataclasses.dataclass
class Group:
    """Runs of one setup over seeds: mean and sample standard deviation of each metric."""

    name: str
    exps: list[str]
    seeds: list[int]
    step: int
    num_codes: int
    stats: dict[str, tuple[float, float]]  # metric -> (mean, std); std 0 for one run


METRICS = ("mse_db2", "set_perplexity", "used_codes", "bitrate")


def group_results(rows: list[dict]) -> list[Group]:
    """Rows with the same setup (all but the seed) -> one group each, in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["setup"], []).append(r)
    out = []
    names_seen: dict[str, int] = {}
    for runs in groups.values():
        first = runs[0]
        name = MODEL_NAMES.get(first["variant"], first["variant"])
        names_seen[name] = names_seen.get(name, 0) + 1
        stats = {}
        for m in METRICS:
            # results.json written before the bitrate existed has none: NaN, shown as n/a
            vals = np.array([float(r[m]) if r.get(m) is not None else math.nan for r in runs], dtype=np.float64)
            stats[m] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
        out.append(Group(name, [r["exp"] for r in runs], [r.get("seed", -1) for r in runs], first["step"],
                         first["num_codes"], stats))
    # Two setups of one model (e.g. other quantizer arguments) are told apart by their dirs.
    for g in out:
        if names_seen[g.name] > 1:
            g.name = f"{g.name} [{Path(g.exps[0]).name}]"
    return out


def overlaps_best(groups: list[Group], metric: str, lower_is_better: bool) -> list[bool]:
    """For each group: does its mean +- std interval overlap the best group's interval?"""
    finite = [g for g in groups if math.isfinite(g.stats[metric][0])]
    if not finite:
        return [False] * len(groups)
    pick = min if lower_is_better else max
    best = pick(finite, key=lambda g: g.stats[metric][0])
    bm, bs = best.stats[metric]
    return [g is not best and math.isfinite(g.stats[metric][0])
            and abs(g.stats[metric][0] - bm) <= g.stats[metric][1] + bs for g in groups]


def _cell(mean: float, std: float, n: int, fmt: str, bold: bool, tie: bool) -> str:
    if not math.isfinite(mean):
        return "n/a"
    text = format(mean, fmt) + (f" +- {format(std, fmt)}" if n > 1 else "")
    return (f"**{text}**" if bold else text) + (" ~" if tie else "")


def markdown_table(rows: list[dict]) -> str:
    """One row per setup: mean +- std over its seeds. Bold: the best mean; ``~``: the
    interval overlaps the best one's, so the two are not told apart by these seeds."""
    groups = group_results(rows)
    lines = ["| model | runs (seeds) | steps | dB^2 MSE | set perplexity | used codes | bitrate (bits/s) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    ranked = ("mse_db2", "set_perplexity", "used_codes")  # the bitrate is reported, not ranked
    marks = {m: overlaps_best(groups, m, m == "mse_db2") for m in ranked}
    best = {}
    for m in ranked:
        finite = [g.stats[m][0] for g in groups if math.isfinite(g.stats[m][0])]
        best[m] = (min if m == "mse_db2" else max)(finite) if finite else math.nan
    for i, g in enumerate(groups):
        n = len(g.exps)
        seeds = ", ".join(str(s) for s in g.seeds)
        where = Path(g.exps[0]).name if n == 1 else f"{n} ({seeds})"
        cells = [_cell(*g.stats[m], n, fmt, len(groups) > 1 and g.stats[m][0] == best[m], marks[m][i])
                 for m, fmt in (("mse_db2", ".2f"), ("set_perplexity", ".1f"), ("used_codes", ".0f"))]
        codes = f"{cells[2]} / {g.num_codes}" if g.num_codes else "n/a (continuous)"
        rate = _cell(*g.stats["bitrate"], n, ".1f", False, False)
        lines.append(f"| {md_text(g.name)} | {md_text(where)} | {g.step} | {cells[0]} | {cells[1]} | {codes} | {rate} |")
    notes = []
    if any(len(g.exps) > 1 for g in groups):
        notes.append("mean +- sample standard deviation over seeds; **bold**: best mean; ~: interval overlaps the "
                     "best one's (not distinguishable with these seeds)")
    for g in groups:
        used = g.stats["used_codes"][0]
        if g.num_codes and used <= COLLAPSED * g.num_codes:
            notes.append(f"{md_text(g.name)}: codebook collapse, {used:.0f} of {g.num_codes} codes used on this set; its error "
                         "is that of a much smaller codebook, not of a working quantizer of this size")
    return "\n".join(lines) + "\n" + "".join(f"\n{n}\n" for n in notes)


# A quantizer that uses at most this share of its codes on a whole set has collapsed.
COLLAPSED = 0.05


def read_metrics(exp_dir: str | Path) -> list[dict]:
    path = Path(exp_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _curve_groups(exp_dirs: list[str]) -> list[tuple[str, list[str]]]:
    """(label, runs) per setup, as the table groups them; each dir alone without results."""
    try:
        return [(g.name, g.exps) for g in group_results(load_results(exp_dirs))]
    except SQVAEError:
        return [(Path(d).name, [d]) for d in exp_dirs]


def _mean_curve(runs: list[str], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps logged by every run, and the mean, min and max of ``key`` over the runs there."""
    series = []
    for d in runs:
        m = read_metrics(d)
        series.append({r["step"]: (math.nan if r.get(key) is None else float(r[key])) for r in m})
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    values = np.array([[s[t] for t in steps] for s in series], dtype=np.float64).reshape(len(series), len(steps))
    return np.array(steps), values.mean(0), values.min(0), values.max(0)


def plot_curves(exp_dirs: list[str], out: str | Path) -> None:
    """Batch perplexity, mean log-variance and training dB^2 MSE vs step: one line per
    setup (the mean over its seeds, the band from the lowest to the highest seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("perplexity", "batch perplexity"), ("log_var_mean", "mean encoder log sigma^2"), ("mse_db2", "train dB^2 MSE")]
    groups = _curve_groups(exp_dirs)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2 + 0.22 * ((len(groups) + 2) // 3)))
    colors = plt.get_cmap("tab20" if len(groups) > 10 else "tab10")
    for i, (label, runs) in enumerate(groups):
        for ax, (key, _) in zip(axes, panels):
            steps, mean, low, high = _mean_curve(runs, key)
            if not len(steps) or np.isnan(mean).all():
                continue  # no variance (VQ, FSQ) or no metrics
            color = colors(i % colors.N)
            ax.plot(steps, mean, color=color, label=mpl_text(label) if key == "mse_db2" else None, lw=1.2)
            if len(runs) > 1:
                ax.fill_between(steps, low, high, color=color, alpha=0.15, lw=0)
    for ax, (key, title) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key == "mse_db2":
            ax.set_yscale("log")
    fig.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.045 * ((len(groups) + 2) // 3), 1, 1))
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("exps", nargs="+", help="experiment dirs holding results.json")
    p.add_argument("--out", help="write the Markdown table here too")
    p.add_argument("--curves", help="write training curves (PNG) here")


def run(args: argparse.Namespace) -> int:
    table = markdown_table(load_results(args.exps))
    print(table, end="")
    if args.out:
        atomic_write_text(args.out, table)
    if args.curves:
        plot_curves(args.exps, args.curves)
        print(f"curves: {args.curves}")
    return 0
