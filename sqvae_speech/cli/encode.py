"""`sqvae-speech encode`: units or features of any audio files, straight from a trained model.

See :mod:`sqvae_speech.inference.encode_files` for names, formats, resuming and failures.
"""

from __future__ import annotations

import argparse

from ..errors import SQVAEError
from ..inference.encode_files import (
    FAILED,
    FORMATS,
    KINDS,
    UNITS_FILE,
    collect_inputs,
    encode_files,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", metavar="FILE|DIR",
                   help="audio files, or directories searched recursively for audio files")
    p.add_argument("--model", required=True,
                   help="model file (sqvae-speech package), experiment dir (newest checkpoint) or checkpoint")
    p.add_argument("--list", dest="lists", action="append", default=[], metavar="WAV_SCP",
                   help="file of 'name path' lines (a Kaldi wav.scp without pipes); repeatable")
    p.add_argument("--out", required=True, help="output dir: one file per input, export.json, failed.txt")
    p.add_argument("--kind", choices=KINDS, default="indices",
                   help="indices: code indices (default); quantized: z_q vectors; auxiliary: encoder means z")
    p.add_argument("--format", dest="file_format", choices=tuple(FORMATS), default="npy",
                   help=f"npy: <name>.npy (default); zerospeech: <name>.txt, one frame per line; units: <name>.units, "
                        f"one line of indices, gathered in OUT/{UNITS_FILE}")
    p.add_argument("--dedup", action="store_true", help="--format units: collapse runs of a repeated unit")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--overwrite", action="store_true", help="re-encode everything, replacing another encoding in --out")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ..inference.model import load_model

    inputs = collect_inputs(args.inputs, args.lists)  # checked before the model loads
    if args.kind != "indices" and args.file_format == "units":
        raise SQVAEError(f"--format units writes code indices; it cannot hold --kind {args.kind}")
    model = load_model(args.model, device=args.device)
    s = encode_files(model, inputs, args.out, args.kind, args.file_format, args.dedup, args.overwrite,
                     not args.no_progress)
    print(f"encode: {len(s.written)} file(s) written ({s.audio_seconds:.1f} s of audio in {s.wall_seconds:.1f} s, "
          f"{s.real_time:.0f}x real time), {len(s.skipped)} already there, {len(s.failed)} failed, into {s.out_dir}")
    if s.failed:
        raise SQVAEError(f"{len(s.failed)} of {len(inputs)} file(s) could not be encoded; they are listed with the "
                         f"reason in {s.out_dir / FAILED}")
    return 0
