"""`sqvae-speech evaluate`: dB^2 MSE and codebook usage of a trained model on a feature store."""

from __future__ import annotations

import argparse
import sys

from ..evaluate import evaluate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp", required=True, help="experiment dir (newest checkpoint) or a checkpoint file")
    p.add_argument("--feats", required=True, help="feature store with the evaluation utterances")
    p.add_argument("--list", dest="eval_list", help="evaluation list: JSON [[utt, spk], ...] or 'utt spk' lines (default: every utterance, own speaker)")
    p.add_argument("--out", help="results file (default EXP/results.json; for a model file M.pt, M.results.json)")
    p.add_argument("--max-frames", type=int, default=8000, help="padded frames per batch")
    p.add_argument("--segment-frames", type=int, default=0, metavar="N",
                   help="evaluate each utterance in consecutive N-frame segments, each on its own (the tail shorter "
                        "than N left out), as training's crops are: the error at the training length (train.crop_frames) "
                        "against the whole-utterance error (default 0: whole utterances)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    r = evaluate(args.exp, args.feats, args.eval_list, args.out, args.max_frames, args.device, not args.no_progress,
                 args.segment_frames)
    print(f"{r.variant} step {r.step}: dB^2 MSE {r.mse_db2:.2f} | set perplexity {r.set_perplexity:.1f} | "
          f"used codes {r.used_codes}/{r.num_codes} | bitrate {r.bitrate:.1f} bits/s | {r.num_utterances} utterances, "
          f"{r.num_frames} frames" + (f" in {r.segment_frames}-frame segments" if r.segment_frames else ""),
          file=sys.stdout)
    return 0
