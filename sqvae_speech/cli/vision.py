"""``sqvae-speech vision train | evaluate | sweep-plot``: the image experiments
(the library is :mod:`sqvae_speech.vision`).

::

    sqvae-speech vision train --dataset fashion_mnist --variant gaussian_1 --exp exp/g1 \\
        --data-root DIR/fashion-mnist --set model.quantizer.num_embeddings=64 --max-steps 3000
    sqvae-speech vision evaluate --exp exp/g1 --split test      # exp/g1/results_test.json + PNG grid
    sqvae-speech vision sweep-plot exp/sweep/* --out perplexity.png --table RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import sys

import torch


def _threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train an image SQ-VAE / VQ-VAE",
                       description="Train an image model; defaults are the paper's settings for the data set.")
    t.add_argument("--config", help="YAML config (sections data/model/train) on top of the data set's paper defaults")
    t.add_argument("--dataset", help="mnist | fashion_mnist | mnist5k | cifar10 | celeba | celebamask_hq "
                                     "(default: the config's data.name, else fashion_mnist)")
    t.add_argument("--variant", help="quantizer: gaussian_1..gaussian_4, vmf, vqvae_ema (the paper's), or any other "
                                     "registry name (gaussian_fixed, vqvae_ema_reset, vq_kmeans, fsq, vae)")
    t.add_argument("--exp", required=True, help="experiment dir (config, checkpoints, metrics, best.pt)")
    t.add_argument("--data-root", help="folder of the data set (default: $SQVAE_VISION_DATA/<data set folder>)")
    t.add_argument("--epochs", type=int, help="overrides train.epochs")
    t.add_argument("--max-steps", type=int, help="overrides train.max_steps (0: whole epochs)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. model.quantizer.num_embeddings=64")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --exp")
    t.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N")
    t.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("evaluate", help="MSE / accuracy + mIoU and codebook usage on a split",
                       description="Evaluate with deterministic quantization; writes EXP/results_<split>.json "
                                   "and EXP/reconstructions_<split>.png.")
    e.add_argument("--exp", required=True, nargs="+", help="experiment dirs or checkpoint files (one process for all)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--checkpoint", default="best", choices=["best", "latest"],
                   help="which checkpoint of an experiment dir (best: lowest validation loss)")
    e.add_argument("--data-root", help="folder of the data set (default: the one the model was trained on)")
    e.add_argument("--limit", type=int, help="evaluate only the first N images of the split")
    e.add_argument("--out", help="results file (default EXP/results_<split>.json)")
    e.add_argument("--no-grid", action="store_true", help="do not write the reconstruction PNG")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    e.add_argument("--threads", type=int, help="CPU threads for torch")
    e.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("sweep-plot", help="codebook perplexity vs K (the paper's Figure 5) and a table",
                       description="Read EXP/results_<split>.json of each experiment; plot set perplexity vs "
                                   "codebook size K (log-log, the bound K dashed) and write a Markdown table. Runs "
                                   "of one variant and K with different seeds (train.seed) are one point: mean +- "
                                   "sample std over the seeds in the table, error bars in the plot.")
    s.add_argument("exps", nargs="+", help="experiment dirs, evaluated (several seeds of a variant and K: averaged)")
    s.add_argument("--split", default="test")
    s.add_argument("--out", required=True, help="PNG to write")
    s.add_argument("--table", help="Markdown file to write the table to (it is printed either way)")
    s.add_argument("--title", default="", help="plot title")


def run(args: argparse.Namespace) -> int:
    progress = not getattr(args, "no_progress", False) and os.environ.get("SQVAE_NO_PROGRESS") != "1"
    if args.action == "train":
        from ..vision.config import resolve_config
        from ..vision.train import train

        _threads(args.threads)
        overrides = list(args.set)
        if args.data_root:
            overrides.append(f"data.root={args.data_root}")
        if args.epochs is not None:
            overrides.append(f"train.epochs={args.epochs}")
        if args.max_steps is not None:
            overrides.append(f"train.max_steps={args.max_steps}")
        cfg = resolve_config(args.config, overrides, dataset=args.dataset, variant=args.variant)
        summary = train(cfg, args.exp, resume=args.resume, device=args.device, progress=progress)
        print(f"[vision train] done: step {summary['step']}, best validation loss {summary['best_val_loss']:.2f}, "
              f"checkpoint {summary['checkpoint']}", file=sys.stderr)
        return 0
    if args.action == "evaluate":
        from ..errors import ConfigError
        from ..vision.evaluate import describe_result, evaluate

        _threads(args.threads)
        if args.out and len(args.exp) > 1:
            raise ConfigError("--out names one results file: give one --exp with it")
        for exp in args.exp:
            r = evaluate(exp, split=args.split, which=args.checkpoint, device=args.device, data_root=args.data_root,
                         out=args.out, grid=not args.no_grid, progress=progress, limit=args.limit)
            print(describe_result(r), flush=True)
        return 0
    from ..fileio import atomic_write_text
    from ..vision.sweep import load_sweep, plot_sweep, sweep_table

    rows = load_sweep(args.exps, args.split)
    table = sweep_table(rows)
    print(table, end="")
    if args.table:
        atomic_write_text(args.table, table)
    plot_sweep(rows, args.out, title=args.title)
    return 0
