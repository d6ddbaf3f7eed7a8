"""Writing a feature store: ``feats.npy`` and ``index.json`` (with each utterance's CRC-32)
staged beside the old store and swapped in by renames, so a failed write (a full disk, a
kill) leaves the old store complete. :func:`write_featstore` is re-exported by
:mod:`sqvae_speech.data.featstore`."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..config import FeatureConfig
from ..fileio import _fsync_dir, staged_path
from .featstore import CHECKSUM, FEATS, FORMAT, INDEX, VERSION, FeatureStore


def write_featstore(
    feat_dir: str | os.PathLike,
    items: Iterable[tuple[str, str, np.ndarray | Iterable[np.ndarray]]],
    config: FeatureConfig,
    num_frames: int | None = None,
    extra: dict[str, Any] | None = None,
    side_files: dict[str, str | None] | None = None,
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
    SIGBUS. ``extra`` adds keys to index.json. ``side_files`` (name -> text, None to remove
    the file) are text files of the store's directory replaced in the same swap.

    An existing store stays complete and readable until the new one is: every new file is
    written in full (and fsynced) as a temporary file beside it, then the old index.json
    is removed, the new files renamed over the old ones and the new index.json renamed in
    last. An error before the swap (a full disk: :class:`~sqvae_speech.errors.DiskFullError`
    naming the file; a kill) leaves the old store as it was and no temporary file; the
    swap itself writes no data, and a kill inside it leaves an incomplete store (no
    index.json), never a mixed one. The old and the new store need room side by side.

    Each utterance's CRC-32 is computed over the bytes as they are written (one pass over
    data already in memory, ~0.1 s per 320 MB) and recorded in its index entry.
    """
    feat_dir = Path(feat_dir)
    n_mels = config.n_mels
    if num_frames is None:
        items = sorted(items, key=lambda item: item[0])
        if any(not isinstance(f, np.ndarray) for _, _, f in items):
            raise ValueError("write_featstore: items given as blocks need num_frames")
        num_frames = sum(_rows(f).shape[0] for _, _, f in items)
    feat_dir.mkdir(parents=True, exist_ok=True)
    utterances: dict[str, dict[str, Any]] = {}
    staged: list[tuple[Path, Path]] = []  # (written temporary file, the file it replaces)
    try:
        with staged_path(feat_dir / FEATS, suffix=".npy") as tmp, open(tmp, "wb") as out:
            _write_array(out, items, n_mels, num_frames, utterances)
        staged.append((tmp, feat_dir / FEATS))
        index = {
            "format": FORMAT,
            "version": VERSION,
            "feature_config": config.to_dict(),
            "n_mels": n_mels,
            "num_frames": int(num_frames),
            "checksum": CHECKSUM,
            "utterances": dict(sorted(utterances.items())),
        }
        index.update(extra or {})
        removed = []
        for name, text in (side_files or {}).items():
            if text is None:
                removed.append(feat_dir / name)
                continue
            with staged_path(feat_dir / name) as tmp, open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            staged.append((tmp, feat_dir / name))
        with staged_path(feat_dir / INDEX) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(index, indent=2) + "\n")
        staged.append((tmp, feat_dir / INDEX))
        # The swap: renames and removals only, no data written; index.json leaves first, comes back last.
        (feat_dir / INDEX).unlink(missing_ok=True)
        for path in removed:
            path.unlink(missing_ok=True)
        for tmp, target in staged:
            os.replace(tmp, target)
        _fsync_dir(feat_dir)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)  # left only by an error before its rename
    return FeatureStore.open(feat_dir)


def _write_array(out: Any, items: Iterable[tuple[str, str, np.ndarray | Iterable[np.ndarray]]], n_mels: int,
                 num_frames: int, utterances: dict[str, dict[str, Any]]) -> None:
    """feats.npy (header, then each utterance's rows) to ``out``; the index entries into ``utterances``."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
              "shape": (int(num_frames), n_mels)}
    np.lib.format.write_array_header_1_0(out, header)
    offset = 0
    for utt, spk, feats in items:
        if utt in utterances:
            raise ValueError(f"utterance '{utt}' written twice to the feature store")
        frames, crc = 0, 0
        for block in [feats] if isinstance(feats, np.ndarray) else feats:
            rows = _rows(block)
            if rows.ndim != 2 or rows.shape[1] != n_mels:
                raise ValueError(f"features of '{utt}' have shape {np.shape(block)}, expected ({n_mels}, T>0)")
            if offset + frames + rows.shape[0] > num_frames:
                raise ValueError(f"more frames than num_frames={num_frames} at '{utt}'")
            data = np.ascontiguousarray(rows, dtype="<f4").data
            out.write(data)
            crc = zlib.crc32(data, crc)
            frames += rows.shape[0]
        if frames == 0:
            raise ValueError(f"features of '{utt}' have no frames, expected ({n_mels}, T>0)")
        utterances[utt] = {"offset": offset, "frames": frames, "speaker": spk, "checksum": crc}
        offset += frames
    if offset != num_frames:
        raise ValueError(f"items hold {offset} frames, num_frames said {num_frames}")


def _rows(feats: np.ndarray) -> np.ndarray:
    # A [n_mels, T] view of row-major [T, n_mels] data transposes back without a copy.
    return np.asarray(feats, dtype=np.float32).T
