"""A packed feature store: one memory-mapped array per data set plus an index.

Layout of a store directory::

    feats.npy    float32 [total_frames, n_mels]; each utterance is one contiguous block
    index.json   {"format": "sqvae-featstore", "version": 1, "feature_config": {...},
                  "n_mels": 80, "num_frames": N,
                  "utterances": {utt: {"offset": o, "frames": T, "speaker": spk}}}

Frames are rows so an utterance is a contiguous slice; readers get it back as
(n_mels, T). ``index.json`` is written last and atomically: its presence marks a
complete store, so a killed writer never leaves something that looks finished.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import FeatureConfig
from ..errors import ConfigError, FeatureStoreError
from ..fileio import atomic_path, atomic_write_json

FORMAT = "sqvae-featstore"
VERSION = 1
FEATS = "feats.npy"
INDEX = "index.json"


def _extract_hint(feat_dir: Path) -> str:
    return f"run `sqvae-speech extract DATA_DIR {feat_dir}` to (re)build it"


class FeatureStore:
    """Read-only access to a store. Picklable: the memmap is dropped when pickled and
    reopened lazily in each process (DataLoader workers)."""

    def __init__(self, feat_dir: Path, index: dict[str, Any]) -> None:
        self.path = feat_dir
        self._index = index
        self._utts: dict[str, dict[str, Any]] = index["utterances"]
        self.utterances: list[str] = sorted(self._utts)
        self.speakers: list[str] = sorted({u["speaker"] for u in self._utts.values()})
        self.config: FeatureConfig = FeatureConfig.from_dict(index["feature_config"])
        self.n_mels: int = int(index["n_mels"])
        self.num_frames: int = int(index["num_frames"])
        self._feats: np.ndarray | None = None

    @classmethod
    def open(
        cls, feat_dir: str | os.PathLike, expect_config: FeatureConfig | None = None, expected_by: str | None = None
    ) -> FeatureStore:
        """Open a complete store; ``expect_config`` must equal the config it was built with.

        ``expected_by`` names who expects those settings (e.g. ``"checkpoint EXP/ckpt.pt"``)
        in the error raised when they differ.
        """
        feat_dir = Path(feat_dir)
        index_file = feat_dir / INDEX
        if not index_file.is_file():
            if feat_dir.is_dir() and any(feat_dir.iterdir()):
                raise FeatureStoreError(
                    f"feature store {feat_dir} is incomplete (no {INDEX}; extraction was interrupted "
                    f"or failed); {_extract_hint(feat_dir)}"
                )
            raise FeatureStoreError(f"no feature store at {feat_dir}; {_extract_hint(feat_dir)}")
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FeatureStoreError(f"{index_file} cannot be read ({e}); {_extract_hint(feat_dir)}") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise FeatureStoreError(f"{index_file} is not a sqvae-speech feature store index; {_extract_hint(feat_dir)}")
        if index.get("version") != VERSION:
            raise FeatureStoreError(
                f"{index_file} has store version {index.get('version')}, this sqvae-speech reads version "
                f"{VERSION}; {_extract_hint(feat_dir)}"
            )
        try:
            stored = FeatureConfig.from_dict(index["feature_config"])
        except (ConfigError, KeyError, TypeError) as e:
            raise FeatureStoreError(f"{index_file}: bad feature_config ({e}); {_extract_hint(feat_dir)}") from None
        if expect_config is not None and stored != expect_config:
            diff = config_diff(stored, expect_config)
            by = f" by {expected_by}" if expected_by else ""
            raise FeatureStoreError(
                f"feature store {feat_dir} was extracted with other feature settings than expected{by}: {diff}; "
                f"extract again with the expected settings into another directory (or with --overwrite)"
            )
        store = cls(feat_dir, index)
        store._check_array()
        return store

    def _check_array(self) -> None:
        arr = self._array
        if arr.shape != (self.num_frames, self.n_mels) or arr.dtype != np.float32:
            raise FeatureStoreError(
                f"{self.path / FEATS} holds {arr.dtype} {tuple(arr.shape)}, index.json says float32 "
                f"({self.num_frames}, {self.n_mels}); the store is corrupt, {_extract_hint(self.path)}"
            )

    @property
    def _array(self) -> np.ndarray:
        if self._feats is None:
            feats = self.path / FEATS
            if not feats.is_file():
                raise FeatureStoreError(f"{feats} is missing; {_extract_hint(self.path)}")
            # np.memmap cannot map an empty array; an empty store is read normally.
            mode = "r" if self.num_frames > 0 else None
            try:
                self._feats = np.load(feats, mmap_mode=mode, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise FeatureStoreError(f"{feats} cannot be read ({e}); {_extract_hint(self.path)}") from None
        return self._feats

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_feats"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.utterances)

    def __contains__(self, utt: object) -> bool:
        return utt in self._utts

    def _entry(self, utt: str) -> dict[str, Any]:
        try:
            return self._utts[utt]
        except KeyError:
            raise FeatureStoreError(f"utterance '{utt}' is not in feature store {self.path}") from None

    def speaker(self, utt: str) -> str:
        return self._entry(utt)["speaker"]

    def frames(self, utt: str) -> int:
        return int(self._entry(utt)["frames"])

    def __getitem__(self, utt: str) -> np.ndarray:
        """Features of one utterance: a writable float32 copy, [n_mels, T]."""
        e = self._entry(utt)
        return np.ascontiguousarray(self._array[e["offset"] : e["offset"] + e["frames"]].T)

    def segment(self, utt: str, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` of one utterance, [n_mels, stop - start], reading only those."""
        e = self._entry(utt)
        if not 0 <= start <= stop <= e["frames"]:
            raise IndexError(f"frames {start}:{stop} outside utterance '{utt}' of {e['frames']} frames")
        o = e["offset"]
        return np.ascontiguousarray(self._array[o + start : o + stop].T)

    def utt2spk(self) -> dict[str, str]:
        return {u: self._utts[u]["speaker"] for u in self.utterances}

    @property
    def index(self) -> dict[str, Any]:
        """The parsed index.json (extra keys a writer added included)."""
        return self._index


def config_diff(stored: FeatureConfig, expected: FeatureConfig) -> str:
    """``key: store X, expected Y`` for each differing setting."""
    a, b = stored.to_dict(), expected.to_dict()
    return "; ".join(f"{k}: store {a.get(k)!r}, expected {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def write_featstore(
    feat_dir: str | os.PathLike,
    items: Iterable[tuple[str, str, np.ndarray | Iterable[np.ndarray]]],
    config: FeatureConfig,
    num_frames: int | None = None,
    extra: dict[str, Any] | None = None,
) -> FeatureStore:
    """Write a store from ``(utt, speaker, feats)`` items, ``feats`` being ``[n_mels, T]``
    or, for an utterance too long to hold at once, an iterable of consecutive
    ``[n_mels, T_i]`` blocks (then ``num_frames`` must be given).

    Blocks are packed in the order given (streamed items) or sorted by utterance id
    (when ``num_frames`` is None and the items are collected first); readers only
    rely on the index, but sorted packing keeps a data set's reads local.

    ``num_frames`` (the sum of T) lets items stream without being held in memory: the
    array is written front to back with plain writes (no memory map), so memory stays at
    one block whatever the store's size, and a full disk is an error (ENOSPC), not a
    SIGBUS. ``extra`` adds keys to index.json. Any existing index.json is removed first, so
    an interrupted rewrite leaves an incomplete store, never a mixed one.
    """
    feat_dir = Path(feat_dir)
    n_mels = config.n_mels
    if num_frames is None:
        items = sorted(items, key=lambda item: item[0])
        if any(not isinstance(f, np.ndarray) for _, _, f in items):
            raise ValueError("write_featstore: items given as blocks need num_frames")
        num_frames = sum(_rows(f).shape[0] for _, _, f in items)
    feat_dir.mkdir(parents=True, exist_ok=True)
    (feat_dir / INDEX).unlink(missing_ok=True)
    utterances: dict[str, dict[str, Any]] = {}
    with atomic_path(feat_dir / FEATS, suffix=".npy") as tmp, open(tmp, "wb") as out:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
                  "shape": (int(num_frames), n_mels)}
        np.lib.format.write_array_header_1_0(out, header)
        offset = 0
        for utt, spk, feats in items:
            if utt in utterances:
                raise ValueError(f"utterance '{utt}' written twice to the feature store")
            frames = 0
            for block in [feats] if isinstance(feats, np.ndarray) else feats:
                rows = _rows(block)
                if rows.ndim != 2 or rows.shape[1] != n_mels:
                    raise ValueError(f"features of '{utt}' have shape {np.shape(block)}, expected ({n_mels}, T>0)")
                if offset + frames + rows.shape[0] > num_frames:
                    raise ValueError(f"more frames than num_frames={num_frames} at '{utt}'")
                out.write(np.ascontiguousarray(rows, dtype="<f4").data)
                frames += rows.shape[0]
            if frames == 0:
                raise ValueError(f"features of '{utt}' have no frames, expected ({n_mels}, T>0)")
            utterances[utt] = {"offset": offset, "frames": frames, "speaker": spk}
            offset += frames
        if offset != num_frames:
            raise ValueError(f"items hold {offset} frames, num_frames said {num_frames}")
    index = {
        "format": FORMAT,
        "version": VERSION,
        "feature_config": config.to_dict(),
        "n_mels": n_mels,
        "num_frames": int(num_frames),
        "utterances": dict(sorted(utterances.items())),
    }
    index.update(extra or {})
    atomic_write_json(feat_dir / INDEX, index)
    return FeatureStore.open(feat_dir)


def _rows(feats: np.ndarray) -> np.ndarray:
    # A [n_mels, T] view of row-major [T, n_mels] data transposes back without a copy.
    return np.asarray(feats, dtype=np.float32).T
