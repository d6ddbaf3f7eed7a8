"""``sqvae-speech prepare CORPUS ...``: write Kaldi-style train/test data dirs for a corpus.

Each corpus is a sub-command with its own arguments, so more corpora (vctk,
zerospeech2019) are added as more entries of :data:`CORPORA`, each a pair of
``(add_arguments, run)`` functions.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..corpora import fishfillets


def _fishfillets_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sound_dir", metavar="SOUND_DIR",
                        help="the .../fillets-ng/sound dir, or a download dir made by "
                             "recipes/fishfillets/local/download.sh (its .done file names the sound dir)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="writes OUT_DIR/train, OUT_DIR/test and OUT_DIR/prepare.json")
    parser.add_argument("--include-minor", action="store_true",
                        help="also admit the minor characters (see sqvae_speech.corpora.fishfillets)")
    parser.add_argument("--test-per-speaker", type=int, default=fishfillets.DEFAULT_TEST_PER_SPEAKER, metavar="N",
                        help=f"held-out clips per speaker, each >= {fishfillets.TEST_MIN_SECONDS:.0f} s, "
                             "at most a fifth of the speaker (default %(default)s)")
    parser.add_argument("--max-utts-per-speaker", type=int, default=0, metavar="M",
                        help="keep at most M training clips per speaker, for quick runs; the test set "
                             "is unchanged (default 0: all)")


def _fishfillets_run(args: argparse.Namespace) -> int:
    summary = fishfillets.prepare(
        args.sound_dir, args.out_dir,
        include_minor=args.include_minor,
        test_per_speaker=args.test_per_speaker,
        max_utts_per_speaker=args.max_utts_per_speaker,
    )
    print(f"Fish Fillets NG from {summary.sound_dir} -> {args.out_dir}/{{train,test}}")
    print(summary.table())
    return 0


CORPORA: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "fishfillets": (_fishfillets_arguments, _fishfillets_run,
                    "Fish Fillets NG voice packs (cs, nl): the embedded corpus"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    for name, (add, _, help_text) in CORPORA.items():
        add(sub.add_parser(name, help=help_text, description=help_text))


def run(args: argparse.Namespace) -> int:
    return CORPORA[args.corpus][1](args)
