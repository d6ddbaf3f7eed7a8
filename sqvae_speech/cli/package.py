"""`sqvae-speech package EXP OUT.pt`: one shareable model file and its model card.

See :mod:`sqvae_speech.modelfile` for what the file holds.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("exp", help="experiment dir (its newest checkpoint) or a checkpoint file")
    p.add_argument("out", help="model file to write (suffix .pt); the model card goes beside it as .md")
    p.add_argument("--f0-stats", help="F0 statistics to embed (sqvae-speech f0-stats), for WORLD conversion")
    p.add_argument("--results", help="results.json of sqvae-speech evaluate (default: EXP/results.json if of the same step)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..modelfile import write_model_file

    meta = write_model_file(args.exp, args.out, args.f0_stats, args.results)
    out = Path(args.out)
    size = out.stat().st_size / 2**20
    metrics = meta.get("metrics")
    scored = f", dB^2 MSE {metrics['mse_db2']:.2f}" if metrics else ", not evaluated"
    f0 = "with F0 statistics" if meta.get("f0_stats") else "without F0 statistics (WORLD conversion needs --f0-stats)"
    print(f"package: {out} ({size:.1f} MB; {meta['config']['model']['variant']} at step {meta['step']}{scored}; "
          f"{len(meta['speakers'])} speakers, {f0}); model card {out.with_suffix('.md')}")
    return 0
