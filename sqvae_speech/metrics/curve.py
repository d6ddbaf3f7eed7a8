"""A learning curve in the report (``sqvae-speech report --curve``): when the experiments are
checkpoints of one training run, every metric against the training step, as a table and
a figure (``steps.png``), so a user can see what more training buys.

The points come from the report's own numbers (``report.json``): the held-out dB^2 MSE and
codes used (``evaluate``), the reconstruction through the report's first vocoder (PESQ,
STOI, MCD), and the conversions' speaker similarity to their target and source and the
share closer to the target (``convert --similarity``). docs/METRICS.md defines each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SQVAEError
from ..fileio import atomic_path

# (key, column label, format)
COLUMNS = (("step", "step", "d"), ("mse_db2", "dB^2 MSE", ".2f"), ("used_codes", "codes used", "d"),
           ("pesq_wb", "PESQ (wb)", ".2f"), ("stoi", "STOI", ".3f"), ("mcd_db", "MCD (dB)", ".2f"),
           ("sim_target", "similarity to target", ".3f"), ("sim_source", "similarity to source", ".3f"),
           ("closer_share", "closer to target", ".2f"))


def check_curve(models: list[tuple[str, int]]) -> None:
    """SQVAEError unless the experiments, (variant, step) each, are two or more distinct
    steps of one model (one variant)."""
    variants = sorted({v for v, _ in models})
    steps = [s for _, s in models]
    if len(models) < 2 or len(variants) != 1 or len(set(steps)) != len(steps):
        raise SQVAEError("--curve draws the metrics of one training run against its step: pass two or more checkpoints "
                         f"of one run at different steps (got variants {', '.join(variants)} at steps "
                         f"{', '.join(map(str, steps))}); recipes/fishfillets/local/learning_curve.sh makes them")


def curve_points(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per experiment, sorted by step, with the keys of :data:`COLUMNS` (None where
    the report has no such number). Reconstruction metrics are those of the report's first
    vocoder."""
    vocoder = report["options"]["vocoders"][0] if report["options"]["vocoders"] else None
    points = []
    for e in sorted(report["experiments"], key=lambda e: e["step"]):
        res = e.get("results") or {}
        conv = e.get("conversion") or {}
        resyn = next((r["mean"] for r in report.get("resynthesis", [])
                      if r["model"] == e["name"] and r["vocoder"] == vocoder), {})
        points.append({"step": e["step"], "mse_db2": res.get("mse_db2"),
                       "used_codes": res.get("used_codes") if res.get("num_codes") else None,
                       **{k: resyn.get(k) for k in ("pesq_wb", "stoi", "mcd_db")},
                       **{k: conv.get(k) for k in ("sim_target", "sim_source", "closer_share")},
                       "vocoder": vocoder})
    return points


def curve_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The points as a table: header, rows (one per step)."""
    def fmt(v: Any, spec: str) -> str:
        return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)

    return [c[1] for c in COLUMNS], [[fmt(p[k], spec) for k, _, spec in COLUMNS] for p in curve_points(report)]


def plot_curve(report: dict[str, Any], path: str | Path) -> None:
    """Four panels against the step (log axis): dB^2 MSE; PESQ and STOI of the
    reconstruction; speaker similarity to target and to source; the share of conversions
    closer to the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    pts = curve_points(report)
    steps = np.array([p["step"] for p in pts], dtype=float)

    def series(key: str) -> np.ndarray:
        return np.array([np.nan if p[key] is None else p[key] for p in pts], dtype=float)

    vocoder = pts[0]["vocoder"] or "no vocoder"
    panels = (("held-out dB^2 MSE", [("mse_db2", "dB^2 MSE")]),
              (f"reconstruction through {vocoder}", [("pesq_wb", "PESQ (wb)"), ("stoi", "STOI")]),
              ("speaker similarity of the conversions", [("sim_target", "to target"), ("sim_source", "to source")]),
              ("conversions closer to the target", [("closer_share", "share")]))
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for ax, (title, keys) in zip(axes, panels):
        for key, label in keys:
            ys = series(key)
            if not np.isnan(ys).all():
                ax.plot(steps, ys, marker="o", lw=1.2, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_xscale("log")
        ax.set_xticks(steps, [f"{s / 1000:g}k" if s >= 1000 else f"{s:g}" for s in steps], fontsize=8, rotation=45)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    axes[3].set_ylim(0, 1.05)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
