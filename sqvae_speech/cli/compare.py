"""``sqvae-speech compare EXP...``: one table of results.json files, and training curves.

Prints a Markdown table (variant, steps, dB^2 MSE, set perplexity, used codes) and with
``--out`` writes it to a file; ``--curves PNG`` plots batch perplexity, mean encoder
log-variance (the self-annealing trace) and training dB^2 MSE over steps from each
experiment's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..errors import SQVAEError
from ..fileio import atomic_path, atomic_write_text


def load_results(exp_dirs: list[str]) -> list[dict]:
    rows = []
    for d in exp_dirs:
        path = Path(d) / "results.json"
        if not path.is_file():
            raise SQVAEError(f"{path} does not exist: run `sqvae-speech evaluate --exp {d} --feats ...` first")
        r = json.loads(path.read_text(encoding="utf-8"))
        r["exp"] = str(d)
        rows.append(r)
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | exp | steps | dB^2 MSE | set perplexity | used codes | utterances |",
             "|---|---|---:|---:|---:|---:|---:|"]
    names = {"gaussian_1": "Gaussian SQ-VAE (I)", "gaussian_2": "Gaussian SQ-VAE (II)", "gaussian_3": "Gaussian SQ-VAE (III)",
             "gaussian_4": "Gaussian SQ-VAE (IV)", "vqvae_ema": "VQ-VAE w/ EMA"}
    for r in rows:
        lines.append(f"| {names.get(r['variant'], r['variant'])} | {Path(r['exp']).name} | {r['step']} | {r['mse_db2']:.2f} | "
                     f"{r['set_perplexity']:.1f} | {r['used_codes']}/{r['num_codes']} | {r['num_utterances']} |")
    return "\n".join(lines) + "\n"


def read_metrics(exp_dir: str | Path) -> list[dict]:
    path = Path(exp_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def plot_curves(exp_dirs: list[str], out: str | Path) -> None:
    """Batch perplexity, mean log-variance and training dB^2 MSE vs step, one line per experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("perplexity", "batch perplexity"), ("log_var_mean", "mean encoder log sigma^2"), ("mse_db2", "train dB^2 MSE")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    for d in exp_dirs:
        m = read_metrics(d)
        if not m:
            continue
        steps = [r["step"] for r in m]
        for ax, (key, _) in zip(axes, panels):
            ys = [float("nan") if r.get(key) is None else r[key] for r in m]
            if key == "log_var_mean" and all(math.isnan(y) for y in ys):
                continue  # the VQ-VAE has no variance
            ax.plot(steps, ys, label=Path(d).name)
    for ax, (key, title) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key == "mse_db2":
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
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
