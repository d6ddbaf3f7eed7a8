"""Where ABX tokens come from, and which frames make a token.

A source maps an item's ``file`` column to a feature matrix [T, D] with one centre time
per frame:

- a feature store (``index.json``): log-mel frames, frame t at t * hop / sr (100 Hz);
- an export dir (``export.json``, :mod:`sqvae_speech.zerospeech.export`): the rate and time offset
  it records (latent frame i at 15 ms + 20 i ms);
- any other dir of ``<file>.txt`` / ``.npy`` / ``.npz``: ``.npz`` files may carry
  ``times``; otherwise ``rate`` is required and frame i is at ``time_offset + i / rate``,
  ``time_offset`` defaulting to half a frame (the ABXpy convention t_i = dt/2 + i dt).

Frame selection: a token is the frames whose centre time lies in [onset, offset]
(closed, 1 us tolerance for times written with finite precision). A token shorter than
one frame period can select nothing; it then takes the single frame nearest to its
midpoint (counted as ``single_frame`` in the results) rather than being dropped, so every
item of the file is scored. An item that starts or ends more than one frame period past
the file's last frame, or names a file the source lacks, is an error naming the line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import SQVAEError
from ..export import (
    READ_FORMATS,
    ExportError,
    frame_times,
    load_feature_file,
    mel_time_convention,
    read_export_meta,
)
from .items import ItemSet

TIME_TOLERANCE = 1e-6


class FeatureSource:
    """Feature matrices by name. Subclasses implement :meth:`load`."""

    description = ""

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(values [T, D], centre times [T] seconds), or None when there is no such file."""
        raise NotImplementedError


class StoreSource(FeatureSource):
    """A packed log-mel feature store read directly."""

    def __init__(self, path: Path) -> None:
        from ...data.featstore import FeatureStore

        self.store = FeatureStore.open(path)
        self.rate, self.time_offset = mel_time_convention(self.store.config)
        self.description = f"feature store {path} ({self.rate:g} Hz log-mel)"

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        if name not in self.store:
            return None
        values = self.store[name].T  # [T, n_mels]
        return values, frame_times(values.shape[0], self.rate, self.time_offset)


class DirSource(FeatureSource):
    """``<name><ext>`` files; times from ``.npz`` or from (rate, time_offset)."""

    def __init__(self, path: Path, exts: tuple[str, ...], rate: float | None, time_offset: float | None, what: str) -> None:
        self.path, self.exts, self.rate = path, exts, rate
        self.time_offset = time_offset if time_offset is not None else (0.5 / rate if rate else None)
        self.description = what

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        for ext in self.exts:
            f = self.path / (name + ext)
            if f.is_file():
                values, times = load_feature_file(f)
                if times is None:
                    if self.rate is None:
                        raise SQVAEError(f"{f} carries no frame times: pass --rate (frames per second) "
                                         "and, if frame 0 is not centred at half a frame, --time-offset")
                    times = frame_times(values.shape[0], self.rate, self.time_offset)
                return values, times
        return None


def open_features(path: str | os.PathLike, rate: float | None = None, time_offset: float | None = None) -> FeatureSource:
    """A feature store, an export dir or a plain dir of feature files (module docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise SQVAEError(f"features {path} is not a directory (a feature store, an export dir, or a dir of .txt/.npy files)")
    if (path / "index.json").is_file():
        if rate is not None or time_offset is not None:
            raise SQVAEError(f"{path} is a feature store: its frame times come from its feature config; drop --rate/--time-offset")
        return StoreSource(path)
    meta = read_export_meta(path)
    if meta is not None:
        if rate is not None or time_offset is not None:
            raise SQVAEError(f"{path} is an export dir: its frame times come from export.json; drop --rate/--time-offset")
        if not meta.get("complete", False):
            raise ExportError(f"the export in {path} is incomplete (interrupted?): run the same `sqvae-speech export` again to finish it")
        if meta.get("rate") is None:
            raise ExportError(f"{path} holds units with repeats collapsed (--dedup): they have no frame times, which "
                              "ABX needs; encode again without --dedup")
        ext = READ_FORMATS[meta["file_format"]]
        return DirSource(path, (ext,), float(meta["rate"]), float(meta["time_offset"]),
                         f"export dir {path} ({meta['kind']}, {float(meta['rate']):g} Hz)")
    if rate is not None and rate <= 0:
        raise SQVAEError(f"--rate must be > 0, got {rate}")
    what = f"feature dir {path}" + (f" ({rate:g} Hz)" if rate else "")
    return DirSource(path, (".txt", ".npy", ".npz"), rate, time_offset, what)


def extract_tokens(items: ItemSet, source: FeatureSource) -> tuple[list[np.ndarray], int]:
    """Frames of every token: (list of float64 [n_i, D] arrays in item order, number of
    tokens that fell back to a single frame)."""
    tokens: list[np.ndarray | None] = [None] * len(items)
    by_file: dict[str, list[int]] = {}
    for i, f in enumerate(items.file):
        by_file.setdefault(f, []).append(i)
    dim: tuple[int, str] | None = None
    single = 0
    for f, idx in by_file.items():
        loaded = source.load(f)
        if loaded is None:
            raise SQVAEError(f"{items.where(idx[0])}: file '{f}' is not in the {source.description}; "
                             "extract or export features for every file the item file names")
        values, times = loaded
        if not np.isfinite(values).all():
            raise SQVAEError(f"features of '{f}' in the {source.description} hold NaN or inf values")
        if dim is None:
            dim = (values.shape[1], f)
        elif values.shape[1] != dim[0]:
            raise SQVAEError(f"features of '{f}' have {values.shape[1]} dims but those of '{dim[1]}' have {dim[0]}")
        rate = getattr(source, "rate", None) or 100.0
        period = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / rate
        end = times[-1] + period + TIME_TOLERANCE
        values = values.astype(np.float64, copy=False)
        for i in idx:
            on, off = items.onset[i], items.offset[i]
            if off > end or on > times[-1] + TIME_TOLERANCE:
                raise SQVAEError(
                    f"{items.where(i)}: token {on:g}-{off:g} s ends past file '{f}', whose last frame is centred at "
                    f"{times[-1]:.3f} s ({len(times)} frames); check the item times and the features' rate"
                )
            sel = np.flatnonzero((times >= on - TIME_TOLERANCE) & (times <= off + TIME_TOLERANCE))
            if sel.size == 0:
                sel = np.array([int(np.argmin(np.abs(times - 0.5 * (on + off))))])
                single += 1
            tokens[i] = values[sel[0] : sel[-1] + 1]
    return tokens, single  # type: ignore[return-value]

