"""`sqvae-speech train`: train a speech SQ-VAE or a baseline (accelerate: CPU, one or many GPUs)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..checkpoint import latest_checkpoint
from ..locks import is_main_process
from ..quantizers.registry import QUANTIZERS
from ..train import experiment_lock, lossy_stderr, resolve_config, train, trim_metrics


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (sections features/model/train); defaults are the paper's")
    p.add_argument("--feats", required=True, help="feature store of the training set (made by `extract`)")
    p.add_argument("--exp", required=True, help="experiment dir (config, checkpoints, logs)")
    p.add_argument("--variant", help="the quantizer, a registry name (overrides model.variant): "
                   + ", ".join(f"{n} ({s.summary})" for n, s in QUANTIZERS.items()))
    p.add_argument("--steps", type=int, help="total training steps (overrides train.steps)")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="autocast (overrides train.mixed_precision)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --exp")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    overrides = list(args.set)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.mixed_precision:
        overrides.append(f"train.mixed_precision={args.mixed_precision}")
    cfg = resolve_config(args.config, overrides, args.variant, args.feats)
    # A full stderr (a log file on a full disk) drops output, it does not stop the run.
    with lossy_stderr(), experiment_lock(args.exp):  # the trimming below writes EXP too; train() takes it again
        if args.resume and is_main_process():  # one rank rewrites metrics.jsonl, not all of them
            latest = latest_checkpoint(args.exp)
            trim_metrics(Path(args.exp), int(latest.stem.split("-")[1]) if latest is not None else 0)
        summary = train(cfg, args.feats, args.exp, resume=args.resume, cpu=args.cpu,
                        progress=not args.no_progress and os.environ.get("SQVAE_NO_PROGRESS") != "1")
        if summary["main"]:
            print(f"[train] done: step {summary['step']}, checkpoint {summary['checkpoint']}", file=sys.stderr)
    return 0
