"""``sqvae-speech abx``: ABX error rates of features against an item file.

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
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SQVAEError
from ..fileio import atomic_write_json, atomic_write_text
from .frames import DISTANCES, Frames
from .items import ItemSet, read_items
from .pairs import pair_distances
from .score import CONDITIONS, Labels, PairTable, needed_pairs, score_condition
from .sources import extract_tokens, open_features


def abx_from_tokens(items: ItemSet, tokens: list[np.ndarray], distance: str = "angular",
                    conditions: tuple[str, ...] = CONDITIONS, normalize: bool = True,
                    device: str | None = None, max_cells: int = 4_000_000, backend: str = "auto",
                    progress: bool = False) -> dict[str, Any]:
    """ABX of tokens already cut (tokens[i]: [n_i, D] frames of item i). Returns a dict with
    one entry per condition (error %, triplets, cells, phone pairs, per-phone-pair error)
    and the number of distinct token pairs whose DTW was computed."""
    for c in conditions:
        if c not in CONDITIONS:
            raise SQVAEError(f"unknown ABX condition '{c}'; choose from {', '.join(CONDITIONS)}")
    if len(tokens) != len(items):
        raise ValueError(f"{len(tokens)} tokens for {len(items)} items")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lab = Labels.of(items)
    pairs = needed_pairs(lab, tuple(conditions))
    frames = Frames(tokens, distance, device)
    dist = pair_distances(frames, pairs, lab.ctx, normalize, max_cells, backend, progress)
    table = PairTable(pairs, dist, len(items))
    out: dict[str, Any] = {"distance": distance, "normalize": normalize, "items": len(items),
                           "phones": len(lab.phones), "speakers": len(lab.speakers), "contexts": len(lab.contexts),
                           "pairs": len(pairs)}
    for c in conditions:
        s = score_condition(lab, table, c)
        out[c] = {"error": s.error, "triplets": s.triplets, "cells": s.cells, "phone_pairs": s.phone_pairs,
                  "by_phone_pair": s.by_phone_pair}
    return out


def abx(features: str | Path, items: str | Path, distance: str = "angular", conditions: tuple[str, ...] = CONDITIONS,
        normalize: bool = True, rate: float | None = None, time_offset: float | None = None,
        device: str | None = None, out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Read the item file and the features, score, optionally write JSON to ``out``."""
    t0 = time.time()
    item_set = read_items(items)
    source = open_features(features, rate, time_offset)
    tokens, single = extract_tokens(item_set, source)
    result = abx_from_tokens(item_set, tokens, distance, conditions, normalize, device, progress=progress)
    result = {"features": str(features), "source": source.description, "item_file": str(items),
              **result, "single_frame_tokens": single, "seconds": round(time.time() - t0, 2)}
    if out is not None:
        atomic_write_json(out, result)
    return result


def markdown_table(results: dict[str, dict[str, Any]], note: str | None = None) -> str:
    """One row per labelled result: error rates within and across speakers."""
    def cell(r: dict[str, Any], c: str) -> str:
        return "n/a" if c not in r or r[c]["error"] is None else f"{r[c]['error']:.2f}"

    first = next(iter(results.values()))
    title = (f"ABX error rate (%), by context, {first['distance']} distance, DTW"
             f"{' normalised by path length' if first['normalize'] else ''}; item file {first['item_file']} "
             f"({first['items']} items, {first['speakers']} speakers, {first['phones']} phones)")
    lines = [title, "",
             "| features | source | within speaker | across speaker |", "|---|---|---:|---:|"]
    lines += [f"| {label} | {r['source']} | {cell(r, 'within')} | {cell(r, 'across')} |" for label, r in results.items()]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


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
