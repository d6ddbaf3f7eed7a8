"""ABX scoring of whole feature sets: tokens from features, pair distances, scores per condition
(:func:`abx`), and the Markdown table of several runs. ``sqvae-speech abx`` is :mod:`sqvae_speech.cli.abx`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import SQVAEError
from ...fileio import atomic_write_json
from ...textsafe import md_text
from .frames import Frames
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
    lines += [f"| {md_text(label)} | {md_text(r['source'])} | {cell(r, 'within')} | {cell(r, 'across')} |"
              for label, r in results.items()]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"

