"""``sqvae-speech validate-store FEATS [FEATS ...]``: check feature stores for corruption.

Opens each store (the index is well formed, ``feats.npy`` holds exactly the array and the
bytes the index says: a truncated file is named with both sizes), then reads every
utterance and compares its CRC-32 with the one recorded in ``index.json`` when the store
was written (:mod:`sqvae_speech.data.featstore`). Prints one line per damaged utterance
(name, frames, checksum found vs recorded) and a summary line per store.

Exit 0 when every store is intact, and also for a store written before checksums existed:
it is reported as ``no checksums recorded (written by an older version): re-extract to
enable checks`` (nothing is known to be wrong with it). Exit 2 (one error line) when any
store is damaged or cannot be opened; the others are still checked.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..data.featstore import FEATS, FeatureStore, rebuild_hint
from ..errors import FeatureStoreError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("feats", metavar="FEATS", nargs="+", help="feature store directories (from `sqvae-speech extract`)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    bad: list[str] = []
    for feats in args.feats:
        try:
            store = FeatureStore.open(feats, verify="off")
        except FeatureStoreError as e:
            print(f"{feats}: cannot be used: {e}")
            bad.append(f"{feats} (cannot be opened)")
            continue
        mb = store.num_frames * store.n_mels * 4 / 2**20
        head = f"{feats}: {len(store)} utterances, {store.num_frames} frames ({mb:.1f} MB)"
        if not store.checkable:
            what = ("no checksums recorded (written by an older version)" if store.checksum is None else
                    f"checksums of algorithm '{store.checksum}', which this version cannot check")
            print(f"{head}: {what}: re-extract to enable checks; index and size of {FEATS} OK")
            continue
        t0 = time.perf_counter()
        damaged = store.damaged(progress=args.progress, desc=f"validate {feats}")
        seconds = time.perf_counter() - t0
        for d in damaged:
            print(f"{feats}: damaged: {d.describe()}")
        if damaged:
            print(f"{head}: {len(damaged)} damaged, checked in {seconds:.1f} s; {rebuild_hint(store.path, store.index)}")
            bad.append(f"{feats} ({len(damaged)} damaged utterance(s): "
                       f"{', '.join(d.utt for d in damaged[:5])}{', ...' if len(damaged) > 5 else ''})")
        else:
            print(f"{head}: every checksum matches, checked in {seconds:.1f} s: OK")
    sys.stdout.flush()
    if bad:
        raise FeatureStoreError(f"{len(bad)} of {len(args.feats)} feature store(s) damaged: {'; '.join(bad)}; "
                                "the lines above say what is wrong with each and how to rebuild it")
    return 0
