"""`sqvae-speech abx`: ABX error rates of features against an item file.

    sqvae-speech abx --features DIR [DIR ...] --items FILE.item [--distance angular]
                     [--out abx.json] [--labels NAME ...] [--table abx.md] [--note TEXT]

DIR is a feature store (log-mel, 100 Hz), an export dir (``sqvae-speech export``) or a dir
of ``<file>.txt`` / ``.npy`` files (then ``--rate``). Prints the within- and
across-speaker error rates and writes them, with counts and per-phone-pair rates, to
``--out`` as JSON (one object, or one per label for several DIRs); ``--table`` writes a
Markdown table with one row per DIR.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import SQVAEError
from ..fileio import atomic_write_json, atomic_write_text
from ..zerospeech.abx.frames import DISTANCES
from ..zerospeech.abx.pipeline import abx, markdown_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, nargs="+",
                   help="feature store, export dir (export.json), or dir of <file>.txt/.npy/.npz; several: one row each")
    p.add_argument("--labels", nargs="+", help="a name per --features dir for the table (default: the paths)")
    p.add_argument("--table", help="write a Markdown table of the results here")
    p.add_argument("--note", help="a line printed under the table")
    p.add_argument("--items", required=True, help="item file: '#file onset offset #phone prev-phone next-phone speaker'")
    p.add_argument("--distance", choices=DISTANCES, default="angular",
                   help="frame distance: angular (arccos(cos)/pi, ZeroSpeech's cosine), euclidean, kl (symmetric)")
    p.add_argument("--conditions", default="within,across", help="comma-separated: within, across")
    p.add_argument("--no-normalize", action="store_true", help="sum of DTW costs instead of the mean along the path")
    p.add_argument("--rate", type=float, help="frames per second of plain .txt/.npy features (not needed for stores/exports)")
    p.add_argument("--time-offset", type=float,
                   help="centre time (s) of frame 0 of plain features (default half a frame: t_i = (i + 0.5) / rate)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    labels = args.labels or list(args.features)
    if len(labels) != len(args.features):
        raise SQVAEError(f"--labels gives {len(labels)} name(s) for {len(args.features)} --features dir(s)")
    results: dict[str, dict[str, Any]] = {}
    for label, feats in zip(labels, args.features):
        r = abx(feats, args.items, args.distance, conditions, not args.no_normalize, args.rate, args.time_offset,
                args.device, None, not args.no_progress)
        results[label] = r
        for c in conditions:
            s = r[c]
            err = "n/a (no triplets)" if s["error"] is None else f"{s['error']:.2f} %"
            print(f"{label}: ABX {c:6s} speaker ({r['distance']}): {err}  "
                  f"[{s['triplets']} triplets, {s['phone_pairs']} phone pairs]")
    if args.out:
        atomic_write_json(args.out, results[labels[0]] if len(labels) == 1 else results)
    if args.table:
        table = markdown_table(results, args.note)
        atomic_write_text(args.table, table)
        print(table, end="")
    return 0
