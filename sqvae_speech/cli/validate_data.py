"""``sqvae-speech validate-data DATA_DIR``: check a Kaldi-style data dir.

Checks ids (unique, sorted, no whitespace), speakers (one per utterance, spk2utt
consistent), audio paths (exist, no pipes) and segments (0 <= start < end <= file
duration). Prints counts and ``OK``; a problem raises :class:`DataDirError` (exit 2)
listing each one as ``FILE line N: message``.
"""

from __future__ import annotations

import argparse

from ..data.datadir import read_datadir, recording_durations


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", metavar="DATA_DIR", help="data dir with wav.scp and utt2spk")
    parser.add_argument(
        "--no-check-files", dest="check_files", action="store_false",
        help="skip checking that audio files exist (and segment ends against file durations)",
    )


def run(args: argparse.Namespace) -> int:
    dd = read_datadir(args.data_dir, check_files=args.check_files)
    line = f"{args.data_dir}: {len(dd.utt2spk)} utterances, {len(dd.spk2utt)} speakers"
    if args.check_files:
        durations, unreadable = recording_durations(dd)
        if dd.segments is not None:
            seconds = sum(end - start for _, start, end in dd.segments.values())
        else:
            seconds = sum(durations.values())
        line += f", {seconds / 3600:.2f} h of audio"
        if dd.segments is not None:
            line += f" in {len(dd.wav_scp)} recordings"
        print(line)
        if unreadable:
            shown = ", ".join(unreadable[:5]) + (" ..." if len(unreadable) > 5 else "")
            print(
                f"warning: {len(unreadable)} audio file(s) have no readable header ({shown}); "
                "`sqvae-speech extract` will list their utterances in failed.txt"
            )
    else:
        print(line)
    print("OK")
    return 0
