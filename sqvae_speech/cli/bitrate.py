"""``sqvae-speech bitrate DIR``: ZeroSpeech 2019 bitrate of a dir of exported features.

DIR: an export dir (``sqvae-speech export``; its export.json gives every file's duration)
or any dir of ``<name>.txt`` / ``.npy`` / ``.npz`` files. Durations (``--durations``):

- a ZeroSpeech-style list of ``name seconds`` lines: exactly the files it names count;
- a Kaldi data dir: audio (or segment) durations of its utterances;
- a feature store: frames x hop of each utterance;
- ``--rate R``: each file's frame count / R;
- nothing: the durations in DIR/export.json.

Names in a data dir or feature store are utterance ids, mapped to file names through
export.json when DIR has one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import SQVAEError
from ..zerospeech.bitrate import entropy_bits, read_durations, symbol_counts
from ..zerospeech.export import READ_FORMATS, load_feature_file, read_export_meta


def _feature_files(path: Path) -> dict[str, Path]:
    meta = read_export_meta(path)
    if meta is not None:
        if not meta.get("complete", False):
            raise SQVAEError(f"the export in {path} is incomplete: run the same `sqvae-speech export` again to finish it")
        ext = READ_FORMATS[meta["file_format"]]
        return {name: path / (name + ext) for name in meta["names"].values()}
    exts = tuple(READ_FORMATS.values())
    files = {str(f.relative_to(path).with_suffix("")): f for f in sorted(path.rglob("*")) if f.suffix in exts and f.is_file()}
    if not files:
        raise SQVAEError(f"no .txt/.npy/.npz/.units feature files in {path}")
    return files


def _durations(path: Path, source: str | None, rate: float | None, names: list[str]) -> dict[str, float] | None:
    """Durations by file name, or None for 'frames / rate'."""
    meta = read_export_meta(path)
    utt_of = {name: utt for utt, name in (meta or {}).get("names", {}).items()}
    if rate is not None:
        if rate <= 0:
            raise SQVAEError(f"--rate must be > 0, got {rate}")
        return None
    if source is None:
        if meta is None:
            raise SQVAEError(f"{path} has no export.json: pass --durations (a 'name seconds' list, a data dir or a "
                             "feature store) or --rate")
        return {k: float(v) for k, v in meta["durations"].items()}
    src = Path(source)
    if src.is_file():
        return read_durations(src)
    if (src / "index.json").is_file():
        from ..data.featstore import FeatureStore

        store = FeatureStore.open(src)
        hop = store.config.hop_length / store.config.sample_rate
        by_utt = {u: store.frames(u) * hop for u in store.utterances}
    elif (src / "wav.scp").is_file():
        from ..data.datadir import read_datadir, recording_durations

        dd = read_datadir(src)
        rec, bad = recording_durations(dd)
        if bad:
            raise SQVAEError(f"cannot read the audio headers of {len(bad)} file(s) of {src}: {', '.join(bad[:3])}")
        if dd.segments is None:
            by_utt = rec
        else:
            by_utt = {u: e - s for u, (_, s, e) in dd.segments.items()}
    else:
        raise SQVAEError(f"--durations {src}: not a file, a feature store (index.json) or a data dir (wav.scp)")
    return {n: by_utt[utt_of.get(n, n)] for n in names if utt_of.get(n, n) in by_utt}


def bitrate_of_dir(path: str | Path, durations: str | None = None, rate: float | None = None) -> dict:
    """Bitrate and its parts for the feature files of ``path`` (module docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise SQVAEError(f"{path} is not a directory of feature files")
    files = _feature_files(path)
    durs = _durations(path, durations, rate, list(files))
    if durs is not None:
        from_list = durations is not None and Path(durations).is_file()
        names = sorted(durs) if from_list else sorted(files)
        missing = [n for n in names if n not in files] if from_list else [n for n in names if n not in durs]
        if missing:
            what = f"no feature file in {path}" if from_list else "no duration"
            raise SQVAEError(f"{len(missing)} file(s) have {what}: {', '.join(missing[:5])}")
    else:
        names = sorted(files)
    feats = [load_feature_file(files[n])[0] for n in names]
    total = sum(len(f) / rate for f in feats) if durs is None else sum(durs[n] for n in names)
    counts, n_frames = symbol_counts(feats)
    h = entropy_bits(counts)
    return {"dir": str(path), "files": len(names), "frames": n_frames, "duration_s": total, "symbols": len(counts),
            "entropy_bits": h, "bitrate": n_frames / total * h if total > 0 else 0.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="export dir or dir of <name>.txt/.npy/.npz feature files")
    p.add_argument("--durations", help="'name seconds' list, Kaldi data dir, or feature store (default: DIR/export.json)")
    p.add_argument("--rate", type=float, help="take durations as frames / RATE instead")
    p.add_argument("--json", help="write the figures here as JSON")


def run(args: argparse.Namespace) -> int:
    r = bitrate_of_dir(args.dir, args.durations, args.rate)
    print(f"bitrate {r['bitrate']:.2f} bits/s  ({r['files']} files, {r['frames']} frames, {r['duration_s']:.1f} s, "
          f"{r['symbols']} symbols, entropy {r['entropy_bits']:.3f} bits)")
    if args.json:
        from ..fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps(r, indent=2) + "\n")
    return 0
