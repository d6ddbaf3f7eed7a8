"""ABX scoring speed on a synthetic item set the size of the ZeroSpeech 2019 English test
(~13k triphone items), both conditions, angular distance, normalized DTW.

The set imitates real speech: speakers read utterances made of phones drawn with a
Zipf-like frequency (so some contexts are common and hold many tokens); each phone lasts
2-7 frames at 50 Hz (the model's latent rate); every triphone not at an utterance edge is
an item. Features: a vector per phone plus a per-speaker offset plus noise, 64 dims.

    python bench/bench_abx.py [--items 13000] [--dim 64] [--device cpu] [--json out.json]

Prints items/s (items scored per second of wall time, feature cutting to aggregation).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqvae_speech.zerospeech.abx import ItemSet, abx_from_tokens


def synthetic_set(n_items: int, n_speakers: int = 24, n_phones: int = 40, dim: int = 64, seed: int = 0):
    """(ItemSet, tokens) with about ``n_items`` triphone items."""
    rng = np.random.default_rng(seed)
    freq = 1.0 / np.arange(1, n_phones + 1) ** 0.8
    freq /= freq.sum()
    phone_vec = rng.normal(size=(n_phones, dim))
    spk_vec = 0.5 * rng.normal(size=(n_speakers, dim))
    files, onsets, offsets, phones, prevs, nexts, spks, tokens = [], [], [], [], [], [], [], []
    u = 0
    while len(files) < n_items:
        s = u % n_speakers
        seq = rng.choice(n_phones, size=int(rng.integers(12, 40)), p=freq)
        dur = rng.integers(2, 8, size=len(seq))
        frames = np.concatenate([phone_vec[p] + spk_vec[s] + 0.8 * rng.normal(size=(d, dim)) for p, d in zip(seq, dur)])
        ends = np.cumsum(dur)
        starts = ends - dur
        for k in range(1, len(seq) - 1):
            files.append(f"u{u:05d}")
            onsets.append(starts[k - 1] * 0.02)
            offsets.append(ends[k + 1] * 0.02)
            phones.append(f"p{seq[k]}")
            prevs.append(f"p{seq[k - 1]}")
            nexts.append(f"p{seq[k + 1]}")
            spks.append(f"s{s:02d}")
            tokens.append(frames[starts[k - 1] : ends[k + 1]])
        u += 1
    n = len(files)
    items = ItemSet("synthetic", files, np.array(onsets), np.array(offsets), phones, prevs, nexts, spks,
                    np.arange(2, n + 2))
    return items, tokens, u


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=13000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch threads (matmuls)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    items, tokens, utts = synthetic_set(args.items, dim=args.dim)
    abx_from_tokens(items.subset(np.arange(200)), tokens[:200], device=args.device)  # warm-up: numba compile / cache load
    t0 = time.perf_counter()
    r = abx_from_tokens(items, tokens, "angular", device=args.device)
    sec = time.perf_counter() - t0
    lens = np.array([len(t) for t in tokens])
    out = {
        "bench": "abx", "device": args.device, "items": len(items), "utterances": utts, "speakers": r["speakers"],
        "contexts": r["contexts"], "frames_per_token": round(float(lens.mean()), 1), "dim": args.dim,
        "pairs": r["pairs"], "triplets_within": r["within"]["triplets"], "triplets_across": r["across"]["triplets"],
        "seconds": round(sec, 2), "items_per_s": round(len(items) / sec, 1), "pairs_per_s": round(r["pairs"] / sec, 1),
        "error_within": round(r["within"]["error"], 2), "error_across": round(r["across"]["error"], 2),
    }
    print(f"ABX (within + across, angular, DTW) on {out['items']} synthetic items ({out['speakers']} speakers, "
          f"{out['contexts']} contexts, {out['frames_per_token']} frames/token, {args.dim} dims): "
          f"{out['pairs']} DTW pairs, {out['triplets_within'] + out['triplets_across']} triplets in {sec:.1f} s "
          f"-> {out['items_per_s']:.0f} items/s, {out['pairs_per_s']:.0f} pairs/s on {args.device}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
