"""Codebook-size sweeps (the paper's Figure 5): set perplexity vs K, one line per model,
with the bound perplexity = K drawn dashed, and a Markdown table of the same numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import SQVAEError
from ..fileio import atomic_path

NAMES = {"gaussian_1": "Gaussian SQ-VAE (I)", "gaussian_2": "Gaussian SQ-VAE (II)", "gaussian_3": "Gaussian SQ-VAE (III)",
         "gaussian_4": "Gaussian SQ-VAE (IV)", "gaussian_fixed": "Gaussian SQ-VAE (fixed sigma^2)", "vmf": "vMF SQ-VAE",
         "vqvae_ema": "VQ-VAE w/ EMA", "vqvae_ema_reset": "VQ-VAE w/ EMA + reset", "vq_kmeans": "VQ (k-means, EMA)",
         "fsq": "FSQ", "vae": "VAE (continuous)"}


def load_sweep(exp_dirs: list[str], split: str = "test") -> list[dict]:
    """results_<split>.json of every experiment, sorted by (variant, K)."""
    rows = []
    for d in exp_dirs:
        path = Path(d) / f"results_{split}.json"
        if not path.is_file():
            raise SQVAEError(f"{path} does not exist: run `sqvae-speech vision evaluate --exp {d} --split {split}` first")
        r = json.loads(path.read_text(encoding="utf-8"))
        r["exp"] = str(d)
        rows.append(r)
    return sorted(rows, key=lambda r: (r["variant"], r["num_codes"]))


def _fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if v is None or math.isnan(v) else format(v * scale, spec)


def sweep_table(rows: list[dict]) -> str:
    """Markdown: set perplexity per model and K, then one line per experiment (n/a where a
    model has no codes: the continuous VAE)."""
    ks = sorted({r["num_codes"] for r in rows})
    variants = sorted({r["variant"] for r in rows}, key=lambda v: list(NAMES).index(v) if v in NAMES else 99)
    by = {(r["variant"], r["num_codes"]): r for r in rows}
    lines = ["| set perplexity (used codes) | " + " | ".join(f"K={k}" for k in ks) + " |",
             "|---|" + "---:|" * len(ks)]
    for v in variants:
        cells = [f"{_fmt(by[v, k]['set_perplexity'], '.1f')} ({by[v, k]['used_codes']})" if (v, k) in by else ""
                 for k in ks]
        lines.append(f"| {NAMES.get(v, v)} | " + " | ".join(cells) + " |")
    # quality columns only for what the rows measure: MSE (images), accuracy and mIoU (label maps)
    extra = [(name, key, spec, scale) for name, key, spec, scale in
             (("MSE x1e3", "mse", ".2f", 1e3), ("pixel acc.", "pixel_accuracy", ".4f", 1.0), ("mIoU", "miou", ".4f", 1.0))
             if any(r.get(key) is not None and not math.isnan(r[key]) for r in rows)]
    head = ["model", "K", "checkpoint step", "set perplexity", "used codes", "batch perplexity", *[e[0] for e in extra], "images"]
    lines += ["", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        cells = [NAMES.get(r["variant"], r["variant"]), str(r["num_codes"]), str(r["step"]), _fmt(r["set_perplexity"], ".1f"),
                 str(r["used_codes"]), _fmt(r["batch_perplexity"], ".1f"),
                 *[_fmt(r.get(key), spec, scale) for _, key, spec, scale in extra], str(r["num_images"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(rows: list[dict], out: str | Path, title: str = "") -> None:
    """Log-log plot of set perplexity vs K per model; the bound (perplexity = K) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    ks = sorted({r["num_codes"] for r in rows if r["num_codes"] > 0})
    ax.plot(ks, ks, "k--", lw=1, label="bound (K)")
    for v in sorted({r["variant"] for r in rows}):
        pts = sorted((r["num_codes"], r["set_perplexity"]) for r in rows
                     if r["variant"] == v and r["set_perplexity"] is not None and r["num_codes"] > 0)
        if not pts:  # no codes (VAE): nothing to plot
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=NAMES.get(v, v))
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
