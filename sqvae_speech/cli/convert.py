"""`sqvae-speech convert`: resynthesis and voice conversion with a vocoder, and the listening page."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..synthesis.convert import (
    F0_NORMS,
    make_conversion_list,
    read_conversion_list,
    run_conversion,
    write_conversion_list,
)
from ..synthesis.vocoders import VOCODERS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp", required=True, help="experiment dir (newest checkpoint) or a checkpoint file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--list", dest="conv_list", help="rows 'source target_speaker output_name' (source: utterance id or audio path)")
    src.add_argument("--make-list", metavar="DATA_DIR",
                     help="convert the first --per-speaker utterances of each speaker of DATA_DIR to every speaker "
                          "(written to OUT/list.txt); DATA_DIR is also --data unless given")
    p.add_argument("--per-speaker", type=int, default=2, help="--make-list: source utterances per speaker (default 2)")
    p.add_argument("--min-seconds", type=float, default=1.5, help="--make-list: shortest source in seconds (default 1.5)")
    p.add_argument("--speakers", help="--make-list: comma-separated speakers (default: every speaker the data dir and the model share)")
    p.add_argument("--targets", help="--make-list: comma-separated target speakers, each a training speaker of the model "
                                     "(default: those of --speakers the model knows)")
    p.add_argument("--vocoder", choices=VOCODERS, default="world", help="world (default) or griffinlim")
    p.add_argument("--out", required=True, help="output dir: <name>.wav, <name>.png, conversion.json, index.html")
    p.add_argument("--feats", help="feature store holding the source utterances")
    p.add_argument("--data", help="data dir holding the source utterances' audio (WORLD needs it)")
    p.add_argument("--f0-stats", help="per-speaker F0 statistics (sqvae-speech f0-stats); needed by WORLD conversions")
    p.add_argument("--f0-method", choices=("harvest", "dio"),
                   help="F0 estimator for WORLD (default: the one --f0-stats used, else harvest)")
    p.add_argument("--f0-norm", choices=F0_NORMS, default="speaker",
                   help="WORLD F0 mapping: by the source speaker's log-F0 statistics (default; keeps each line's "
                        "register) or by the source utterance's own (every output at the target's median)")
    p.add_argument("--gl-iters", type=int, default=100, help="Griffin-Lim iterations (default 100)")
    p.add_argument("--seed", type=int, default=0, help="Griffin-Lim initial phase seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model
    from ..data.datadir import read_datadir

    data = args.data
    if args.conv_list:
        items, where = read_conversion_list(args.conv_list), str(args.conv_list)
    else:
        known = load_model(args.exp)[0].config.speakers
        wanted = args.speakers.split(",") if args.speakers else [s for s in read_datadir(args.make_list).speakers
                                                                  if s in known]
        # an explicit target the model does not know is an error (run_conversion names it)
        targets = args.targets.split(",") if args.targets else [s for s in wanted if s in known]
        items = make_conversion_list(args.make_list, args.per_speaker, args.min_seconds, wanted, targets)
        data, where = data or args.make_list, f"--make-list {args.make_list}"
    manifest = run_conversion(args.exp, items, args.out, args.vocoder, args.feats, data, args.f0_stats, args.f0_method,
                              args.gl_iters, args.seed, args.device, args.progress, where=where,
                              f0_norm=args.f0_norm)
    if args.make_list:
        write_conversion_list(Path(args.out) / "list.txt", items)  # what was converted, for --list next time
    recon = [m["mse_db2"] for m in manifest if "mse_db2" in m]
    extra = f"; reconstructions: mean dB^2 MSE {np.mean(recon):.1f}" if recon else ""
    print(f"{len(manifest)} items written to {args.out} ({args.vocoder}){extra}; listen: {Path(args.out) / 'index.html'}")
    return 0
