"""``sqvae-speech train-vocoder``: train the neural vocoder on a recipe's audio and features.

See :mod:`sqvae_speech.synthesis.neural_train` (data, resuming) and
:mod:`sqvae_speech.synthesis.neural` (the model). Writes ``EXP/vocoder.pt`` at the end,
for ``convert`` / ``synthesize`` / ``report`` with ``--vocoder neural --vocoder-model EXP/vocoder.pt``.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML with sections vocoder/train (e.g. recipes/conf/vocoder_cpu.yaml); "
                   "default: the CPU settings")
    p.add_argument("--data", required=True, help="data dir of the training audio (wav.scp, utt2spk)")
    p.add_argument("--feats", required=True, help="feature store of the same utterances (made by `extract`)")
    p.add_argument("--exp", required=True, help="output dir (config, F0 cache, checkpoints, logs, vocoder.pt)")
    p.add_argument("--decoded-from", metavar="MODEL",
                   help="an SQ-VAE (experiment dir, checkpoint or model file) trained on this data: train.decoded_share "
                        "of the windows take its reconstruction of the recording's mel (sets train.decoded_from)")
    p.add_argument("--steps", type=int, help="total training steps (overrides train.steps)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --exp")
    p.add_argument("--nj", type=int, default=1, help="worker processes for the F0 analysis (default 1)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..errors import SQVAEError
    from ..synthesis.neural_train import resolve_vocoder_config, train_vocoder

    if args.nj < 1:
        raise SQVAEError(f"--nj must be >= 1, got {args.nj}")
    overrides = list(args.set) + ([f"train.steps={args.steps}"] if args.steps is not None else [])
    if args.decoded_from:
        overrides.append(f"train.decoded_from={args.decoded_from}")
    cfg = resolve_vocoder_config(args.config, overrides)
    progress = not args.no_progress and os.environ.get("SQVAE_NO_PROGRESS") != "1"
    train_vocoder(cfg, args.data, args.feats, args.exp, resume=args.resume, nj=args.nj, cpu=args.cpu, progress=progress)
    return 0
