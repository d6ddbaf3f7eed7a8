"""Codebook-size sweeps (the paper's Figure 5): set perplexity vs K, one line per model,
with the bound perplexity = K drawn dashed, and a Markdown table of the same numbers.

Runs of one model and K that differ by their seed (``train.seed``; ``run.sh --seeds``) are
one point: the table gives the mean +- sample standard deviation over the seeds and their
number, the plot the mean with +- std error bars. One run per point renders as before.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from ..config import load_yaml
from ..errors import SQVAEError
from ..fileio import atomic_path

NAMES = {"gaussian_1": "Gaussian SQ-VAE (I)", "gaussian_2": "Gaussian SQ-VAE (II)", "gaussian_3": "Gaussian SQ-VAE (III)",
         "gaussian_4": "Gaussian SQ-VAE (IV)", "gaussian_fixed": "Gaussian SQ-VAE (fixed sigma^2)", "vmf": "vMF SQ-VAE",
         "vqvae_ema": "VQ-VAE w/ EMA", "vqvae_ema_reset": "VQ-VAE w/ EMA + reset", "vq_kmeans": "VQ (k-means, EMA)",
         "fsq": "FSQ", "vae": "VAE (continuous)"}


def _seed_of(exp: Path, result: dict) -> int | None:
    """The run's train.seed: from its results (written since evaluate records it), else
    from EXP/config.yaml; None when neither says."""
    if result.get("seed") is not None:
        return int(result["seed"])
    conf = exp / "config.yaml"
    if conf.is_file():
        seed = load_yaml(conf).get("train", {}).get("seed")
        if seed is not None:
            return int(seed)
    return None


def _order(r: dict) -> tuple:
    return r["variant"], r["num_codes"], -1 if r.get("seed") is None else r["seed"], r.get("exp", "")


def load_sweep(exp_dirs: list[str], split: str = "test") -> list[dict]:
    """results_<split>.json of every experiment (with ``exp``, its dir, and ``seed``),
    sorted by (variant, K, seed)."""
    rows = []
    for d in exp_dirs:
        path = Path(d) / f"results_{split}.json"
        if not path.is_file():
            raise SQVAEError(f"{path} does not exist: run `sqvae-speech vision evaluate --exp {d} --split {split}` first")
        r = json.loads(path.read_text(encoding="utf-8"))
        r["exp"] = str(d)
        r["seed"] = _seed_of(Path(d), r)
        rows.append(r)
    return sorted(rows, key=_order)


@dataclasses.dataclass
class SweepPoint:
    """The runs of one model at one codebook size, one per seed."""

    variant: str
    num_codes: int
    rows: list[dict]

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def seeds(self) -> list[int | None]:
        return [r.get("seed") for r in self.rows]

    def stat(self, key: str) -> tuple[float, float]:
        """Mean and sample standard deviation (0 for one run) of a metric over the seeds;
        NaN where a run lacks it (n/a, e.g. the VAE's perplexity)."""
        vals = np.array([math.nan if r.get(key) is None else float(r[key]) for r in self.rows], dtype=np.float64)
        return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0


def group_sweep(rows: list[dict]) -> list[SweepPoint]:
    """Rows -> one point per (variant, K), sorted by them, each point's runs by seed. Two runs
    of one variant, K and seed (e.g. two configs of one model) cannot be averaged: an error."""
    points: dict[tuple[str, int], SweepPoint] = {}
    for r in sorted(rows, key=_order):
        key = (r["variant"], r["num_codes"])
        p = points.setdefault(key, SweepPoint(*key, []))
        twin = next((o for o in p.rows if r.get("seed") is not None and o.get("seed") == r.get("seed")), None)
        if twin is not None:
            raise SQVAEError(f"{twin['exp']} and {r['exp']} are both {r['variant']} with K={r['num_codes']} and seed "
                             f"{r['seed']}: a point of the sweep averages seeds, so plot other setups separately")
        p.rows.append(r)
    return list(points.values())


def _cell(mean: float, std: float, n: int, spec: str, scale: float = 1.0) -> str:
    """``mean`` alone for one run, ``mean +- std`` over several; n/a for NaN."""
    if math.isnan(mean):
        return "n/a"
    return format(mean * scale, spec) + (f" +- {format(std * scale, spec)}" if n > 1 else "")


def _span(values: list[int]) -> str:
    """``2000``, or ``1562-2000`` where the seeds differ (best checkpoint steps, images)."""
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def overlaps_best(points: list[SweepPoint], key: str = "set_perplexity") -> list[bool]:
    """For points of one K: does each one's mean +- std interval overlap that of the point
    with the highest mean (not itself)?"""
    finite = [p for p in points if not math.isnan(p.stat(key)[0])]
    if not finite:
        return [False] * len(points)
    best = max(finite, key=lambda p: p.stat(key)[0])
    bm, bs = best.stat(key)
    return [p is not best and not math.isnan(p.stat(key)[0]) and abs(p.stat(key)[0] - bm) <= p.stat(key)[1] + bs
            for p in points]


def sweep_table(rows: list[dict]) -> str:
    """Markdown: set perplexity per model and K, then one line per model and K (n/a where a
    model has no codes: the continuous VAE). Over several seeds each number is the mean +-
    sample standard deviation, with a column of the seeds, and ``~`` marks a set perplexity
    whose interval overlaps that of the K's best model."""
    points = group_sweep(rows)
    multi = any(p.n > 1 for p in points)
    ks = sorted({p.num_codes for p in points})
    variants = sorted({p.variant for p in points}, key=lambda v: list(NAMES).index(v) if v in NAMES else 99)
    by = {(p.variant, p.num_codes): p for p in points}
    ties: dict[tuple[str, int], bool] = {}
    if multi:
        for k in ks:
            at_k = [by[v, k] for v in variants if (v, k) in by]
            ties |= {(p.variant, k): t for p, t in zip(at_k, overlaps_best(at_k))}
    lines = ["| set perplexity (used codes) | " + " | ".join(f"K={k}" for k in ks) + " |",
             "|---|" + "---:|" * len(ks)]
    for v in variants:
        cells = []
        for k in ks:
            p = by.get((v, k))
            cells.append("" if p is None else f"{_cell(*p.stat('set_perplexity'), p.n, '.1f')}"
                         f"{' ~' if ties.get((v, k)) else ''} ({_cell(*p.stat('used_codes'), p.n, '.0f')})")
        lines.append(f"| {NAMES.get(v, v)} | " + " | ".join(cells) + " |")
    # quality columns only for what the rows measure: MSE (images), accuracy and mIoU (label maps)
    extra = [(name, key, spec, scale) for name, key, spec, scale in
             (("MSE x1e3", "mse", ".2f", 1e3), ("pixel acc.", "pixel_accuracy", ".4f", 1.0), ("mIoU", "miou", ".4f", 1.0))
             if any(r.get(key) is not None and not math.isnan(r[key]) for r in rows)]
    head = ["model", "K", *(["seeds"] if multi else []), "checkpoint step", "set perplexity", "used codes",
            "batch perplexity", *[e[0] for e in extra], "images"]
    lines += ["", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for p in points:
        seeds = [f"{p.n} ({', '.join('?' if s is None else str(s) for s in p.seeds)})"] if multi else []
        cells = [NAMES.get(p.variant, p.variant), str(p.num_codes), *seeds, _span([r["step"] for r in p.rows]),
                 *[_cell(*p.stat(key), p.n, spec) for key, spec in
                   (("set_perplexity", ".1f"), ("used_codes", ".0f"), ("batch_perplexity", ".1f"))],
                 *[_cell(*p.stat(key), p.n, spec, scale) for _, key, spec, scale in extra],
                 _span([r["num_images"] for r in p.rows])]
        lines.append("| " + " | ".join(cells) + " |")
    if multi:
        note = "mean +- sample standard deviation over the seeds (checkpoint step and images: their range)"
        if any(ties.values()):
            note += ("; ~: the interval overlaps that of the highest set perplexity at this K (not told apart by "
                     "these seeds)")
        lines += ["", note]
    return "\n".join(lines) + "\n"


def plot_sweep(rows: list[dict], out: str | Path, title: str = "") -> None:
    """Log-log plot of set perplexity vs K per model, the mean over seeds with +- std error
    bars where a point has several; the bound (perplexity = K) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    points = group_sweep(rows)
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    ks = sorted({p.num_codes for p in points if p.num_codes > 0})
    ax.plot(ks, ks, "k--", lw=1, label="bound (K)")
    for v in sorted({p.variant for p in points}):
        pts = sorted((p.num_codes, *p.stat("set_perplexity"), p.n) for p in points
                     if p.variant == v and p.num_codes > 0 and not math.isnan(p.stat("set_perplexity")[0]))
        if not pts:  # no codes (VAE): nothing to plot
            continue
        x, mean, std, n = (list(c) for c in zip(*pts))
        if max(n) == 1:
            ax.plot(x, mean, "o-", label=NAMES.get(v, v))
            continue
        # a perplexity is at least 1: the lower bar stops there (and stays positive on the log axis)
        low = [min(s, m - 1.0) for m, s in zip(mean, std)]
        seeds = str(n[0]) if min(n) == max(n) else f"{min(n)}-{max(n)}"
        ax.errorbar(x, mean, yerr=[low, std], fmt="o-", capsize=3, label=f"{NAMES.get(v, v)} ({seeds} seeds)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers (16, 32, ...) instead of 2^4, 2^5
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("codebook size K")
    ax.set_ylabel("perplexity (whole test set)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
