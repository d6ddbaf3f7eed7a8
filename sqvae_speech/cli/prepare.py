"""``sqvae-speech prepare CORPUS ...``: write Kaldi-style train/test data dirs for a corpus.

Each corpus is a sub-command with its own arguments: an entry of :data:`CORPORA`, a
triple of ``(add_arguments, run, help)``. The corpora that users bring (vctk,
zerospeech2019) also take ``--check``: check the layout and print what is there.

Every data dir written is checked as ``sqvae-speech validate-data`` does. Then the corpus,
its resolved path and the options that shape the data are recorded in
``OUT_DIR/.prepare.json`` (:data:`RECORD`; written last, so it also marks a finished
run). A rerun with the same ones does nothing; a rerun with other ones is an error
naming the difference and what to remove, so that data made differently is never
reused by accident. Options that do not change the data (``--nj``, ``--no-progress``)
are not recorded.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..corpora import fishfillets, vctk, zerospeech2019
from ..errors import SQVAEError
from ..fileio import atomic_write_json

RECORD = ".prepare.json"  # in OUT_DIR: what the data dirs were prepared from


def prepared_already(out_dir: str | Path, record: dict[str, Any]) -> bool:
    """True when ``out_dir`` was prepared with ``record`` (the caller skips the work);
    False when nothing is recorded there; an :class:`SQVAEError` when something else is."""
    path = Path(out_dir) / RECORD
    if not path.is_file():
        return False
    redo = f"remove {out_dir}/ (and what was made from it, e.g. a recipe's feats/) to prepare it again"
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SQVAEError(f"{path} cannot be read ({e}); {redo}") from None
    if not isinstance(old, dict):
        raise SQVAEError(f"{path} does not hold a JSON object; {redo}")
    new = json.loads(json.dumps(record))  # as it would read back
    if old == new:
        print(f"{path}: {out_dir} is already prepared with these options: skipping (remove {out_dir}/ to redo it)")
        return True
    changes = [f"{key} {json.dumps(old.get(key))} -> {json.dumps(new.get(key))}"
               for key in dict.fromkeys([*new, *old]) if old.get(key) != new.get(key)]
    raise SQVAEError(f"{out_dir} was prepared with other options than these ({'; '.join(changes)}), as recorded in "
                     f"{path}; {redo}, or rerun with the recorded options")


def finish(out_dir: str | Path, sets: Sequence[str], record: dict[str, Any]) -> None:
    """Check each written data dir (as ``validate-data``), then write the record."""
    from . import validate_data

    for name in sets:
        validate_data.run(argparse.Namespace(data_dir=str(Path(out_dir) / name), check_files=True))
    atomic_write_json(Path(out_dir) / RECORD, record)


def _resolved(path: str | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _fishfillets_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sound_dir", metavar="SOUND_DIR",
                        help="the .../fillets-ng/sound dir, or a download dir made by "
                             "recipes/fishfillets/local/download.sh (its .done file names the sound dir)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="writes OUT_DIR/train, OUT_DIR/test, OUT_DIR/prepare.json and OUT_DIR/.prepare.json")
    parser.add_argument("--include-minor", nargs="?", const="true", default="false", choices=("true", "false"),
                        help="also admit the minor characters (see sqvae_speech.corpora.fishfillets); "
                             "--include-minor alone means true (default false)")
    parser.add_argument("--test-per-speaker", type=int, default=fishfillets.DEFAULT_TEST_PER_SPEAKER, metavar="N",
                        help=f"held-out clips per speaker, each >= {fishfillets.TEST_MIN_SECONDS:.0f} s, "
                             "at most a fifth of the speaker (default %(default)s)")
    parser.add_argument("--max-utts-per-speaker", type=int, default=0, metavar="M",
                        help="keep at most M training clips per speaker, for quick runs; the test set "
                             "is unchanged (default 0: all)")


def _fishfillets_run(args: argparse.Namespace) -> int:
    include_minor = args.include_minor == "true"
    record = {"corpus": "fishfillets", "corpus_dir": _resolved(args.sound_dir), "include_minor": include_minor,
              "test_per_speaker": args.test_per_speaker, "max_utts_per_speaker": args.max_utts_per_speaker}
    if prepared_already(args.out_dir, record):
        return 0
    summary = fishfillets.prepare(
        args.sound_dir, args.out_dir,
        include_minor=include_minor,
        test_per_speaker=args.test_per_speaker,
        max_utts_per_speaker=args.max_utts_per_speaker,
    )
    print(f"Fish Fillets NG from {summary.sound_dir} -> {args.out_dir}/{{train,test}}")
    print(summary.table())
    finish(args.out_dir, ["train", "test"], record)
    return 0


def _user_corpus_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", nargs="?",
                        help=f"writes {what}, OUT_DIR/prepare.json and OUT_DIR/.prepare.json (not needed with --check)")
    parser.add_argument("--check", action="store_true",
                        help="only check the corpus layout and print what is there; write nothing")
    parser.add_argument("--nj", type=int, default=1, help="threads reading audio file headers (default 1)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _need_out_dir(args: argparse.Namespace) -> str:
    if args.out_dir is None:
        raise SQVAEError(f"prepare {args.corpus}: OUT_DIR is required unless --check is given")
    return str(args.out_dir)


def _vctk_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus_dir", metavar="CORPUS_DIR",
                        help="the VCTK dir holding wav48/ (0.80) or wav48_silence_trimmed/ (0.92), or the dir above it")
    _user_corpus_arguments(parser, "OUT_DIR/train, OUT_DIR/test (OUT_DIR/heldout with --heldout-speakers)")
    parser.add_argument("--vctk-version", choices=["auto", *vctk.VERSIONS], default="auto",
                        help="corpus version (default: detected from the layout)")
    parser.add_argument("--mic", choices=list(vctk.MICS), default="mic1",
                        help="0.92 only: microphone to use; utterances without it are skipped (default %(default)s)")
    parser.add_argument("--test-per-speaker", type=int, default=vctk.DEFAULT_TEST_PER_SPEAKER, metavar="N",
                        help="held-out utterances per training speaker for the dB^2 table, at most a fifth "
                             "of the speaker (default %(default)s)")
    parser.add_argument("--heldout-speakers", nargs="*", default=[], metavar="SPK",
                        help="speakers left out of training entirely (written to OUT_DIR/heldout)")
    parser.add_argument("--max-utts-per-speaker", type=int, default=0, metavar="M",
                        help="keep at most M training utterances per speaker, for quick runs; the test set "
                             "is unchanged (default 0: all)")


def _vctk_run(args: argparse.Namespace) -> int:
    if args.check:
        found = vctk.scan(vctk.detect_layout(args.corpus_dir, args.vctk_version), args.mic)
        print(found.describe())
        return 0
    out_dir = _need_out_dir(args)
    heldout = [s for item in args.heldout_speakers for s in item.replace(",", " ").split()]
    record = {"corpus": "vctk", "corpus_dir": _resolved(args.corpus_dir), "vctk_version": args.vctk_version,
              "mic": args.mic, "test_per_speaker": args.test_per_speaker, "heldout_speakers": heldout,
              "max_utts_per_speaker": args.max_utts_per_speaker}
    if prepared_already(out_dir, record):
        return 0
    summary = vctk.prepare(
        args.corpus_dir, out_dir, version=args.vctk_version, mic=args.mic,
        test_per_speaker=args.test_per_speaker, heldout_speakers=heldout,
        max_utts_per_speaker=args.max_utts_per_speaker, nj=args.nj, progress=args.progress,
    )
    mic = f", {summary.mic}" if summary.mic else ""
    print(f"VCTK {summary.version}{mic} from {summary.corpus_dir} -> {out_dir}")
    print(summary.table())
    finish(out_dir, ["train", "test", "heldout"] if heldout else ["train", "test"], record)
    return 0


def _zerospeech2019_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus_dir", metavar="CORPUS_DIR", help="the dir holding english/ (or english/ itself)")
    _user_corpus_arguments(parser, "OUT_DIR/{train,eval,test}, OUT_DIR/eval_list.txt")
    parser.add_argument("--eval-list", metavar="JSON",
                        help="dB^2 evaluation list, [[\"english/train/parallel/voice/V001_...\", \"V001\"], ...] "
                             "(e.g. zerospeech2019_english_mse_evaluation.json); default: all of "
                             "english/train/parallel/voice")
    parser.add_argument("--max-utts-per-speaker", type=int, default=0, metavar="M",
                        help="keep at most M training utterances per speaker, for quick runs (default 0: all)")


def _zerospeech2019_run(args: argparse.Namespace) -> int:
    if args.check:
        print(zerospeech2019.describe(args.corpus_dir))
        if args.eval_list:
            root = zerospeech2019.resolve_root(args.corpus_dir)
            items = zerospeech2019.map_eval_list(zerospeech2019.read_eval_list(args.eval_list), root,
                                                 f"evaluation list {args.eval_list}")
            print(f"  evaluation list {args.eval_list}: {len(items)} files, all present")
        return 0
    out_dir = _need_out_dir(args)
    record = {"corpus": "zerospeech2019", "corpus_dir": _resolved(args.corpus_dir),
              "eval_list": _resolved(args.eval_list), "max_utts_per_speaker": args.max_utts_per_speaker}
    if prepared_already(out_dir, record):
        return 0
    summary = zerospeech2019.prepare(args.corpus_dir, out_dir, eval_list=args.eval_list,
                                     max_utts_per_speaker=args.max_utts_per_speaker, nj=args.nj,
                                     progress=args.progress)
    print(f"ZeroSpeech 2019 English from {summary.corpus_dir} -> {out_dir}/{{train,eval,test}}")
    print(summary.table())
    finish(out_dir, ["train", "eval", "test"], record)
    return 0


CORPORA: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "fishfillets": (_fishfillets_arguments, _fishfillets_run,
                    "Fish Fillets NG voice packs (cs, nl): the embedded corpus"),
    "vctk": (_vctk_arguments, _vctk_run, "CSTR VCTK Corpus, versions 0.80 and 0.92"),
    "zerospeech2019": (_zerospeech2019_arguments, _zerospeech2019_run,
                       "ZeroSpeech 2019 English (train unit+voice, the paper's dB^2 list, test)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    for name, (add, _, help_text) in CORPORA.items():
        add(sub.add_parser(name, help=help_text, description=help_text))


def run(args: argparse.Namespace) -> int:
    return CORPORA[args.corpus][1](args)
