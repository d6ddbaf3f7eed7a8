"""``sqvae-speech f0-stats DATA_DIR OUT.json``: per-speaker log-F0 statistics.

Runs WORLD's F0 estimator on every utterance of a data dir (the training data) and writes
each speaker's log-F0 mean and standard deviation and median F0 over voiced frames (see
:mod:`sqvae_speech.synthesis.f0`). ``sqvae-speech convert --vocoder world`` maps F0 with them.
Unreadable clips are left out and listed in the file; a speaker with no voiced frame is
written with null statistics and a warning (it cannot be a conversion target).
"""

from __future__ import annotations

import argparse
import sys
import time

from ..synthesis.f0 import (
    F0_CEIL,
    F0_FLOOR,
    F0_METHODS,
    compute_f0_stats,
    write_f0_stats,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", metavar="DATA_DIR", help="Kaldi-style data dir (wav.scp, utt2spk); the training data")
    parser.add_argument("out", metavar="OUT.json", help="statistics file to write")
    parser.add_argument("--nj", type=int, default=1, help="parallel worker processes (default 1)")
    parser.add_argument("--f0-method", choices=F0_METHODS, default="harvest",
                        help="WORLD F0 estimator: harvest (default, ~5x real time per core) or dio (+stonemask, "
                             "~25x faster, more voicing and octave errors)")
    parser.add_argument("--f0-floor", type=float, default=F0_FLOOR, help=f"lowest F0 in Hz (default {F0_FLOOR:g})")
    parser.add_argument("--f0-ceil", type=float, default=F0_CEIL, help=f"highest F0 in Hz (default {F0_CEIL:g})")
    parser.add_argument("--max-utts-per-speaker", type=int, default=0,
                        help="use this many evenly spaced clips per speaker (0: all, default)")
    parser.add_argument("--config", help="YAML with feature settings (sample rate and hop; default: the protocol's)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..config import load_feature_config

    t0 = time.time()
    stats = compute_f0_stats(args.data_dir, nj=args.nj, method=args.f0_method, config=load_feature_config(args.config),
                             f0_floor=args.f0_floor, f0_ceil=args.f0_ceil, progress=args.progress,
                             max_utts_per_speaker=args.max_utts_per_speaker)
    write_f0_stats(args.out, stats)
    print(f"{'speaker':<10} {'utts':>5} {'voiced':>7} {'median F0':>10} {'mean log F0':>12} {'std':>6}")
    for spk, s in stats.speakers.items():
        if s.has_voice:
            print(f"{spk:<10} {s.utterances:>5} {s.voiced_frames / max(s.frames, 1):>7.0%} {s.median_f0_hz:>8.1f} Hz "
                  f"{s.mean_log_f0:>12.3f} {s.std_log_f0:>6.3f}")
        else:
            print(f"{spk:<10} {s.utterances:>5} {'0%':>7} {'-':>10} {'-':>12} {'-':>6}")
            print(f"warning: speaker '{spk}' has no voiced frame in {args.data_dir}; it cannot be a conversion target",
                  file=sys.stderr)
    if stats.failed:
        print(f"warning: {len(stats.failed)} unreadable utterance(s) left out (listed under 'failed' in {args.out})",
              file=sys.stderr)
    print(f"{args.out}: {len(stats.speakers)} speakers in {time.time() - t0:.1f} s ({args.f0_method})")
    return 0
