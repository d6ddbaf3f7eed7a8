"""`sqvae-speech export`: codes or features in the ZeroSpeech 2019 layout or as .npy."""

from __future__ import annotations

import argparse
import sys

from ..zerospeech.export import (
    FORMATS,
    KINDS,
    export_features,
    read_names,
    read_utt_list,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp", required=True, help="experiment dir (newest checkpoint) or a checkpoint file")
    p.add_argument("--feats", required=True, help="feature store with the utterances to export")
    p.add_argument("--out", required=True, help="output dir (one file per utterance + export.json)")
    p.add_argument("--kind", choices=KINDS, default="quantized",
                   help="quantized z_q, code indices, or auxiliary (pre-quantization encoder means)")
    p.add_argument("--format", dest="file_format", choices=tuple(FORMATS), default="zerospeech",
                   help="zerospeech: <name>.txt, one frame per line; npy: <name>.npy; npz: features + times")
    p.add_argument("--utts", help="file listing the utterances to export (first column); default: all")
    p.add_argument("--names", help="file of 'utterance-id output-name' lines (e.g. ZeroSpeech file names)")
    p.add_argument("--max-frames", type=int, default=8000, help="padded mel frames per batch")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace a different export in --out")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    utts = read_utt_list(args.utts) if args.utts else None
    names = read_names(args.names) if args.names else None
    s = export_features(args.exp, args.feats, args.out, args.kind, args.file_format, utts, names,
                        args.max_frames, args.device, args.overwrite, not args.no_progress)
    print(f"export: {s.written} file(s) written, {s.skipped_existing} already there, into {s.out_dir} ({s.seconds:.1f} s)")
    if s.too_short:
        print(f"export: warning: {len(s.too_short)} utterance(s) shorter than 4 frames were left out: "
              f"{', '.join(s.too_short[:5])}", file=sys.stderr)
    return 0
