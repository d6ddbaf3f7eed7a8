"""`sqvae-speech submission`: complete, pack and validate a ZeroSpeech 2019 submission.

See :mod:`sqvae_speech.zerospeech.submission` (what is written) and
:mod:`sqvae_speech.zerospeech.submission_check` (the validator's rules). A submission
that is not valid ends with exit status 2 and one line per problem.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..errors import SQVAEError
from ..zerospeech.submission import (
    Metadata,
    SubmissionError,
    check_submission,
    write_submission,
)
from ..zerospeech.submission_check import ABX_DISTANCES, describe_problems


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus-dir",
                   help="the ZeroSpeech 2019 dataset (the dir holding english/): its english/test and "
                        "english/synthesis.txt give the files a submission must hold (required, except with "
                        "--validate-only, which without it checks the layout, metadata and formats but not the "
                        "file set)")
    p.add_argument("--exp", help="experiment dir (newest checkpoint) or checkpoint: the model of the submission")
    p.add_argument("--out", help="the submission dir, holding the exports english/test and "
                                 "english/auxiliary_embedding1 (sqvae-speech export)")
    p.add_argument("--zip", help="the archive to write (default: OUT.zip, e.g. exp/gaussian_4/submission.zip)")
    p.add_argument("--no-zip", action="store_true", help="write no archive; validate OUT itself")
    p.add_argument("--validate-only", metavar="PATH", help="only check the submission dir or zip PATH")
    p.add_argument("--require-surprise", action="store_true",
                   help="also require surprise/ (the official archive holds it; this toolkit has no surprise corpus)")
    g = p.add_argument_group("synthesis (english/test/<voice>_<id>.wav for english/synthesis.txt)")
    g.add_argument("--vocoder", choices=("world", "griffinlim", "neural"), default="world",
                   help="world (default), griffinlim, or neural (needs --vocoder-model)")
    g.add_argument("--vocoder-model", metavar="VOCODER.pt", help="neural: vocoder.pt of `sqvae-speech train-vocoder`")
    g.add_argument("--f0-stats", help="WORLD: log-F0 statistics of V001 and V002 (stage 5 of the recipe writes "
                                      "feats/train/f0_stats.json); default: those packaged with the model")
    g.add_argument("--f0-norm", choices=("utterance", "speaker"), default="utterance",
                   help="WORLD: map each source's F0 from its own log-F0 statistics (default) or its speaker's")
    g.add_argument("--gl-iters", type=int, default=100, help="Griffin-Lim iterations")
    g.add_argument("--device", help="cpu (default) or cuda")
    m = p.add_argument_group("metadata.yaml")
    m.add_argument("--author", default="anonymous", help="'author' (default: anonymous)")
    m.add_argument("--affiliation", default="unaffiliated", help="'affiliation' (default: unaffiliated)")
    m.add_argument("--closed-source", action="store_true",
                   help="'open source: false' and no code statement (default: open source, with code/README.md)")
    m.add_argument("--abx-distance", choices=ABX_DISTANCES, default="dtw_cosine",
                   help="'abx distance' for the evaluation of the embeddings (default: dtw_cosine)")
    m.add_argument("--system-description", help="'system description' (default: written from the model's config)")
    m.add_argument("--auxiliary1-description",
                   help="'auxiliary1 description' (default: says that the auxiliary files hold z)")
    m.add_argument("--using-parallel-train", action="store_true",
                   help="'using parallel train: true' (the recipe does not train on english/train/parallel)")
    m.add_argument("--using-external-data", action="store_true", help="'using external data: true'")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.validate_only:
        check_submission(args.validate_only, args.corpus_dir, args.require_surprise)
        unchecked = "" if args.corpus_dir else " (file set not checked: no --corpus-dir)"
        print(f"submission: {args.validate_only} is a valid ZeroSpeech 2019 submission{unchecked}")
        return 0
    if not args.exp or not args.out or not args.corpus_dir:
        raise SQVAEError("--exp, --out and --corpus-dir are needed to write a submission (or --validate-only PATH "
                         "to check one)")
    zip_path = None if args.no_zip else Path(args.zip or f"{Path(args.out)}.zip")
    meta = Metadata(args.author, args.affiliation, not args.closed_source, args.abx_distance,
                    args.system_description, args.auxiliary1_description, args.using_parallel_train,
                    args.using_external_data)
    s = write_submission(args.exp, args.corpus_dir, args.out, zip_path, meta, args.vocoder, args.f0_stats,
                         args.f0_norm, args.gl_iters, args.device, not args.no_progress, _command(args),
                         args.vocoder_model)
    print(f"submission: {s.synthesized} file(s) synthesized ({args.vocoder}), {s.skipped_existing} already there; "
          f"{s.encoded} test file(s) the export lacked encoded; metadata.yaml"
          f"{', code/README.md' if meta.open_source else ''} written in {s.out_dir} ({s.seconds:.1f} s)")
    if (meta.author, meta.affiliation) == (Metadata.author, Metadata.affiliation):
        print("submission: note: author and affiliation are the defaults; pass --author and --affiliation")
    checked = s.zip_path or s.out_dir
    if s.problems:
        raise SubmissionError(describe_problems(checked, s.problems), s.problems)
    print(f"submission: {checked} is a valid ZeroSpeech 2019 submission")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command line that makes this submission (for the code statement)."""
    words = ["sqvae-speech", "submission", "--exp", args.exp, "--corpus-dir", args.corpus_dir, "--out", args.out,
             "--vocoder", args.vocoder]
    if args.vocoder == "neural":
        words += ["--vocoder-model", str(args.vocoder_model)]
    if args.vocoder in ("world", "neural"):
        words += ["--f0-norm", args.f0_norm] + (["--f0-stats", args.f0_stats] if args.f0_stats else [])
    return shlex.join(words)
