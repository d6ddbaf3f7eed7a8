"""``sqvae-speech report``: unit-quality and speech-quality metrics of several experiments
in one report (report.md, report.html, report.json and figures); see docs/METRICS.md."""

from __future__ import annotations

import argparse
import sys

from ..locks import dir_lock
from ..metrics.report import ReportOptions, make_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("exps", nargs="+", metavar="EXP", help="experiment dirs, each evaluated (results.json)")
    p.add_argument("--out", required=True, help="report dir: report.md, report.html, report.json, figures")
    p.add_argument("--data", required=True, help="held-out data dir: recordings for resynthesis and speaker similarity")
    p.add_argument("--feats", required=True, help="features of --data: speaker probe, code usage, resynthesis")
    p.add_argument("--phone-feats", help="features of a phone-labelled set (unit quality); needs --alignment")
    p.add_argument("--alignment", help="its phone alignment: 'utt start dur phone' lines or a Kaldi CTM")
    p.add_argument("--resynth-utts", type=int, default=12, help="held-out utterances scored for resynthesis (default 12)")
    p.add_argument("--vocoders", nargs="+", default=None, choices=["neural", "world", "griffinlim"],
                   help="vocoders for resynthesis (default: world and griffinlim, with neural first when "
                        "--vocoder-model is given)")
    p.add_argument("--vocoder-model", metavar="VOCODER.pt",
                   help="the neural vocoder (vocoder.pt of `sqvae-speech train-vocoder`) for --vocoders neural")
    p.add_argument("--gl-iters", type=int, default=100, help="Griffin-Lim iterations (default 100, as convert)")
    p.add_argument("--ref-per-speaker", type=int, default=10,
                   help="held-out recordings per speaker for its speaker embedding (default 10)")
    p.add_argument("--f0-stats", help="F0 statistics (sqvae-speech f0-stats): conversions' F0 against the target's median")
    p.add_argument("--seed", type=int, default=0, help="seed of the speaker probe")
    p.add_argument("--nj", type=int, default=2, help="worker processes for the signal metrics (default 2)")
    p.add_argument("--curve", action="store_true",
                   help="the EXPs are checkpoints of one run (one dir each): also tabulate and plot every metric "
                        "against the training step (steps.png)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ..errors import SQVAEError

    for name in ("resynth_utts", "gl_iters", "ref_per_speaker", "nj"):
        if getattr(args, name) < (0 if name == "resynth_utts" else 1):
            raise SQVAEError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    vocoders = args.vocoders or (["neural"] if args.vocoder_model else []) + ["world", "griffinlim"]
    if "neural" in vocoders and not args.vocoder_model:
        raise SQVAEError("--vocoders neural needs --vocoder-model, the vocoder.pt of `sqvae-speech train-vocoder`")
    opts = ReportOptions(args.data, args.feats, args.phone_feats, args.alignment, args.resynth_utts,
                         tuple(dict.fromkeys(vocoders)), args.gl_iters, args.ref_per_speaker, args.f0_stats,
                         args.seed, args.nj, not args.no_progress, args.vocoder_model, args.curve)
    with dir_lock(args.out, "sqvae-speech report"):
        r = make_report(args.exps, args.out, opts)
    print(f"report of {len(r['experiments'])} experiment(s) in {r['seconds']} s: {args.out}/report.html "
          f"(tables: {args.out}/report.md)", file=sys.stdout)
    return 0
