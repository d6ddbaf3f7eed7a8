"""``sqvae-speech export``: per-utterance features of a trained model, ZeroSpeech 2019 style.

Three kinds, all at the latent rate (50 Hz with 10 ms mel hops), deterministic:

- ``quantized``: the quantized vectors z_q (argmin code per frame), [T', D];
- ``indices``: the code indices, [T'];
- ``auxiliary``: the pre-quantization encoder means z (not the variance channels), [T', D].

Formats: ``zerospeech`` writes ``<name>.txt``, one frame per line, space-separated values
and nothing else (the ZeroSpeech 2019 submission format, which has no time column: its
evaluation derives times from the frame index); ``npy`` writes ``<name>.npy`` ([T', D]
float32, int64 [T'] for indices); ``npz`` writes ``<name>.npz`` with ``features`` and
``times``. Every export dir holds ``export.json`` with the settings, the utterance ->
name map, each file's duration and the time convention below, so ``sqvae-speech abx``
and ``sqvae-speech bitrate`` read it without further options.

Frame times. Mel frame t is centred at t * hop / sr (centred STFT). The encoder's first
conv (k3, no padding) centres its output j on mel frame j + 1; the k3 p1 conv keeps that;
the stride-2 conv (k4, p1) reads outputs 2i-1 .. 2i+2, i.e. mel frames 2i .. 2i+3 at its
centre, whose middle is 2i + 1.5; the k3 p1 convs after it keep the centre. So latent frame
i is centred at (2i + 1.5) * hop / sr = 15 ms + i * 20 ms. The decoder agrees: latent i
becomes output frames 2i, 2i+1, compared with mel frames 2i+1, 2i+2 (centre 2i + 1.5).
``export.json`` stores this as ``rate`` (frames/s) and ``time_offset`` (seconds):
time_i = time_offset + i / rate.

Utterances run in length-bucketed padded batches; the masked model makes that equal to
one at a time. Files are written atomically, so a rerun skips those already there
(resume; a killed run's partial ``.tmp-*`` files are removed); a different export into the
same dir is refused unless ``--overwrite``. Features holding NaN or inf are refused. One
run at a time writes an output dir: the export holds its lock (:mod:`sqvae_speech.locks`)
from before the model loads, and a second one stops at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import FeatureConfig
from ..errors import SQVAEError
from ..fileio import atomic_path, atomic_write_json
from ..locks import dir_lock

KINDS = ("quantized", "indices", "auxiliary")
FORMATS = {"zerospeech": ".txt", "npy": ".npy", "npz": ".npz"}
# What readers (bitrate, abx) also take: `sqvae-speech encode --format units` writes
# <name>.units, one line of code indices.
READ_FORMATS = {**FORMATS, "units": ".units"}
META = "export.json"
META_FORMAT = "sqvae-export"
# Text precision: 9 significant digits round-trip every float32 exactly, so equal codes
# print equally and the bitrate's symbol count is the same from .txt as from .npy.
TEXT_FMT = "%.9g"


class ExportError(SQVAEError):
    """An export (or an exported feature dir) is inconsistent or unreadable."""


def latent_time_convention(config: FeatureConfig) -> tuple[float, float]:
    """(rate in frames/s, time of frame 0 in s) of the encoder's output (module docstring)."""
    return config.sample_rate / (2.0 * config.hop_length), 1.5 * config.hop_length / config.sample_rate


def mel_time_convention(config: FeatureConfig) -> tuple[float, float]:
    """(rate, time of frame 0) of the log-mel frames themselves: frame t at t * hop / sr."""
    return config.sample_rate / float(config.hop_length), 0.0


def frame_times(n: int, rate: float, time_offset: float) -> np.ndarray:
    """[n] float64 centre times: time_offset + i / rate."""
    return time_offset + np.arange(n, dtype=np.float64) / rate


# -- reading --------------------------------------------------------------------------
def load_feature_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """One feature file -> (values [T, D] (a 1-D file gives D = 1), times [T] or None).

    ``.txt``: whitespace-separated values, one frame per line (ZeroSpeech 2019);
    ``.npy``: an array [T, D] or [T]; ``.npz``: ``features`` and optional ``times``;
    ``.units``: one line of integer code indices (``sqvae-speech encode --format units``).
    """
    path = Path(path)
    times = None
    try:
        if path.suffix == ".txt":
            values = np.loadtxt(path, dtype=np.float64, ndmin=2)
        elif path.suffix == ".units":
            values = np.array([int(t) for t in path.read_text(encoding="utf-8").split()], dtype=np.int64)
        elif path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "features" not in z:
                    raise ExportError(f"{path} has no 'features' array (it holds {', '.join(z.files)})")
                values = z["features"]
                times = np.asarray(z["times"], dtype=np.float64) if "times" in z else None
        else:
            raise ExportError(f"{path}: unknown feature file type '{path.suffix}' (use .txt, .npy, .npz or .units)")
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as e:
        raise ExportError(f"feature file {path} cannot be read ({e}); export it again") from None
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] == 0:
        raise ExportError(f"feature file {path} holds shape {values.shape}; expected [frames, dims] with frames > 0")
    if times is not None and times.shape != (values.shape[0],):
        raise ExportError(f"{path}: 'times' has shape {times.shape}, expected ({values.shape[0]},)")
    return values, times


def read_export_meta(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``export.json`` of a dir, or None when there is none."""
    import json

    path = Path(out_dir) / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} cannot be read ({e}); export again with --overwrite") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise ExportError(f"{path} is not an sqvae-speech export description")
    return meta


# -- writing --------------------------------------------------------------------------
def write_feature_file(path: Path, values: np.ndarray, times: np.ndarray, file_format: str) -> None:
    """Write one utterance atomically. values [T', D] or [T'] (indices)."""
    ext = FORMATS[file_format]
    with atomic_path(path, suffix=ext) as tmp:
        if file_format == "zerospeech":
            fmt = "%d" if values.dtype.kind in "iu" else TEXT_FMT
            with open(tmp, "w", encoding="utf-8") as f:
                np.savetxt(f, values if values.ndim == 2 else values[:, None], fmt=fmt, delimiter=" ")
        elif file_format == "npy":
            np.save(tmp, values)
        else:
            np.savez(tmp, features=values, times=times)


def read_names(path: str | os.PathLike) -> dict[str, str]:
    """``utt name`` lines -> {utt: name}. Names may hold '/' (sub-folders of the output)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"name map {path} does not exist")
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ExportError(f"{path} line {n}: expected 'utterance-id output-name', got '{line.strip()}'")
        if parts[0] in out:
            raise ExportError(f"{path} line {n}: utterance '{parts[0]}' is mapped twice")
        out[parts[0]] = parts[1]
    return out


def read_utt_list(path: str | os.PathLike) -> list[str]:
    """Utterance ids: the first column of each non-empty line (a Kaldi table or a plain list)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"utterance list {path} does not exist")
    return [ln.split()[0] for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _check_names(names: dict[str, str], source: str) -> None:
    seen: dict[str, str] = {}
    for utt, name in names.items():
        p = Path(name)
        if not name or p.is_absolute() or ".." in p.parts or any(c.isspace() for c in name):
            raise ExportError(f"{source}: output name {name!r} of '{utt}' must be a relative path without '..' or spaces")
        if name in seen:
            raise ExportError(f"{source}: utterances '{seen[name]}' and '{utt}' both map to output name '{name}'")
        seen[name] = utt


@dataclass
class ExportSummary:
    out_dir: Path
    written: int
    skipped_existing: int
    too_short: list[str] = field(default_factory=list)
    seconds: float = 0.0


def export_features(
    exp: str | os.PathLike,
    feats: str | os.PathLike,
    out_dir: str | os.PathLike,
    kind: str = "quantized",
    file_format: str = "zerospeech",
    utts: Sequence[str] | None = None,
    names: dict[str, str] | None = None,
    max_frames: int = 8000,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportSummary:
    """Encode ``utts`` of the feature store ``feats`` with the model of ``exp`` and write one
    file per utterance into ``out_dir`` (module docstring). Returns what was done."""
    t0 = time.time()
    if kind not in KINDS:
        raise ExportError(f"--kind must be one of {', '.join(KINDS)}, got '{kind}'")
    if file_format not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got '{file_format}'")
    with dir_lock(out_dir, "sqvae-speech export"):
        return _export(exp, feats, Path(out_dir), kind, file_format, utts, names, max_frames, device, overwrite,
                       progress, t0)


def _export(
    exp: str | os.PathLike, feats: str | os.PathLike, out_dir: Path, kind: str, file_format: str,
    utts: Sequence[str] | None, names: dict[str, str] | None, max_frames: int, device: str | None, overwrite: bool,
    progress: bool, t0: float,
) -> ExportSummary:
    from tqdm import tqdm

    from ..checkpoint import load_model
    from ..data.batching import MIN_FRAMES, Item, bucket_batches, collate
    from ..data.featstore import FeatureStore

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, step, ckpt = load_model(exp, map_location="cpu")
    model.eval().to(device)
    store = FeatureStore.open(feats, expect_config=cfg.features, expected_by=f"checkpoint {ckpt}")
    if utts is None:
        utts = sorted(names) if names else store.utterances
    utts = list(utts)
    missing = [u for u in utts if u not in store]
    if missing:
        raise ExportError(f"{len(missing)} utterance(s) are not in the feature store {store.path}: {', '.join(missing[:5])}")
    names = dict(names or {})
    unnamed = [u for u in utts if u not in names]
    names = {u: names.get(u, u) for u in utts}
    if len(unnamed) != len(utts) and unnamed:
        raise ExportError(f"the name map gives no output name to {len(unnamed)} utterance(s): {', '.join(unnamed[:5])}")
    _check_names(names, "the name map" if len(unnamed) < len(utts) else f"the utterance ids of {store.path}")
    too_short = [u for u in utts if store.frames(u) < MIN_FRAMES]
    todo_utts = [u for u in utts if store.frames(u) >= MIN_FRAMES]
    rate, offset = latent_time_convention(cfg.features)
    sec_per_frame = cfg.features.hop_length / cfg.features.sample_rate
    meta = {
        "format": META_FORMAT, "version": 1, "kind": kind, "file_format": file_format,
        "rate": rate, "time_offset": offset,
        "time_convention": "time_i = time_offset + i / rate: the centre of latent frame i, (2i + 1.5) mel hops",
        "checkpoint": str(Path(ckpt).resolve()), "step": step, "variant": cfg.model.variant,
        "features": str(Path(feats).resolve()), "names": {u: names[u] for u in todo_utts},
        # mel frames x hop: the audio length to within one hop (centred STFT: T = 1 + samples // hop)
        "durations": {names[u]: store.frames(u) * sec_per_frame for u in todo_utts},
        "too_short": too_short,
    }
    old = read_export_meta(out_dir)
    keys = ("kind", "file_format", "checkpoint", "step", "features", "names")
    if old is not None and not overwrite and any(old.get(k) != meta[k] for k in keys):
        diff = ", ".join(k for k in keys if old.get(k) != meta[k])
        raise ExportError(f"{out_dir} holds another export (different {diff}); choose another --out or pass --overwrite")
    ext = FORMATS[file_format]
    resume = old is not None and not overwrite
    todo = [u for u in todo_utts if not (resume and (out_dir / (names[u] + ext)).is_file())]
    for d in {(out_dir / (names[u] + ext)).parent for u in todo}:
        for stray in d.glob(".tmp-*") if d.is_dir() else ():
            stray.unlink(missing_ok=True)  # a killed writer's partial file (fileio's temporary names)
    atomic_write_json(out_dir / META, {**meta, "complete": False})
    items = [(u, store.frames(u) - store.frames(u) % 2) for u in todo]
    batches = bucket_batches([t for _, t in items], max_frames)
    with torch.no_grad(), tqdm(total=len(todo), desc=f"export {kind}", unit="utt", disable=not progress) as bar:
        for idx in batches:
            batch = collate([Item(store[items[i][0]][:, : items[i][1]], 0, items[i][0]) for i in idx])
            if not torch.isfinite(batch.mels).all():
                bad = [u for u, m in zip(batch.utts, batch.mels) if not torch.isfinite(m).all()]
                raise ExportError(f"features of {', '.join(bad)} in {store.path} contain NaN/inf; re-extract them "
                                  f"(files already written to {out_dir} are kept)")
            enc = model.encode(batch.mels.to(device), batch.lengths.to(device))
            values = {"quantized": enc.quantized, "indices": enc.indices, "auxiliary": enc.z}[kind].cpu()
            for b, utt in enumerate(batch.utts):
                n = int(enc.lengths[b])
                v = values[b, :n].numpy()
                v = v.astype(np.int64) if kind == "indices" else v.astype(np.float32)
                write_feature_file(out_dir / (names[utt] + ext), v, frame_times(n, rate, offset), file_format)
                bar.update(1)
    atomic_write_json(out_dir / META, {**meta, "complete": True})
    return ExportSummary(out_dir, len(todo), len(todo_utts) - len(todo), too_short, round(time.time() - t0, 2))

