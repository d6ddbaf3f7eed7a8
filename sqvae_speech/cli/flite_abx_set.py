"""``sqvae-speech flite-abx-set OUT_DIR``: a phone-labelled English ABX set from flite voices.

Writes OUT_DIR/wav/, OUT_DIR/data (a Kaldi data dir for ``sqvae-speech extract``),
OUT_DIR/abx.item (for ``sqvae-speech abx``), alignments and texts; see
:mod:`sqvae_speech.zerospeech.flite`. Needs flite: ``bash tools/fetch_flite.sh tools/flite``.
"""

from __future__ import annotations

import argparse

from ..errors import SQVAEError
from ..zerospeech.flite import VOICES, make_flite_abx_set, read_sentences


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", metavar="OUT_DIR", help="where to write wav/, data/, abx.item")
    p.add_argument("--flite-dir", help="dir made by tools/fetch_flite.sh (default: $SQVAE_FLITE or tools/flite)")
    p.add_argument("--voices", default=",".join(VOICES), help="comma-separated flite voices (one speaker each)")
    p.add_argument("--sentences", help="text file, one sentence per line (default: the package's list)")
    p.add_argument("--num-sentences", type=int, default=0, help="use only the first N sentences (quick runs); 0: all")
    p.add_argument("--jobs", type=int, default=2, help="flite processes at once")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    sentences = read_sentences(args.sentences)
    if args.num_sentences < 0:
        raise SQVAEError(f"--num-sentences must be >= 0, got {args.num_sentences}")
    if args.num_sentences:
        sentences = sentences[: args.num_sentences]
    s = make_flite_abx_set(args.out_dir, args.flite_dir, voices, sentences, jobs=args.jobs, progress=not args.no_progress)
    print(f"flite ABX set in {s.out_dir}: {s.utterances} utterances ({s.seconds_of_audio / 60:.1f} min), "
          f"{s.items} items in {s.out_dir / 'abx.item'}")
    return 0
