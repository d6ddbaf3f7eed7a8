"""A packed feature store: one memory-mapped array per data set plus an index.

Layout of a store directory::

    feats.npy    float32 [total_frames, n_mels]; each utterance is one contiguous block
    index.json   {"format": "sqvae-featstore", "version": 1, "feature_config": {...},
                  "n_mels": 80, "num_frames": N, "checksum": "crc32",
                  "utterances": {utt: {"offset": o, "frames": T, "speaker": spk,
                                       "checksum": c}}}

Frames are rows so an utterance is a contiguous slice; readers get it back as
(n_mels, T). ``index.json`` is written last and atomically: its presence marks a
complete store, so a killed writer never leaves something that looks finished.

Rewriting a store (``extract --overwrite``) keeps the old one readable until the new one
is complete: the new ``feats.npy`` and ``index.json`` are written in full beside it as
temporary files, then swapped in by renames only (old index removed, new array renamed
over the old one, new index renamed in), which need no space; a full disk or a kill
before the swap leaves the old store as it was.

Corruption. Each utterance's ``checksum`` is the CRC-32 (``zlib.crc32``) of its rows as
stored in ``feats.npy`` (little-endian float32, frame after frame), computed while the
store is written (extraction packs through :func:`write_featstore` too). Opening a store
always checks what costs nothing: the index is well formed and ``feats.npy`` holds exactly
the array and the number of bytes the index says (a truncated file is named with both
sizes). Checksums are checked by reading the features (CRC-32 runs at several GB/s, so
the time is the time to read the file):

- ``verify="lazy"`` (the default): each utterance the first time this process reads it
  (``store[utt]``, :meth:`FeatureStore.segment`); a damaged one raises
  :class:`DamagedStoreError` naming it, the others still read;
- ``verify="full"``: every utterance at open (``train`` and ``evaluate`` do this; about
  0.1 s per 320 MB from the page cache, the read itself from disk);
- ``verify="off"``: none.

Stores written before checksums existed have none (no ``checksum`` key): they open and
read as before, unchecked; ``sqvae-speech validate-store`` says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import FeatureConfig
from ..errors import ConfigError, FeatureStoreError

FORMAT = "sqvae-featstore"
VERSION = 1
FEATS = "feats.npy"
INDEX = "index.json"
CHECKSUM = "crc32"  # the algorithm index.json records; the one this version computes and checks
VERIFY_MODES = ("off", "lazy", "full")
_READ_CHUNK = 8 * 2**20  # checksums read feats.npy through one buffer of this size, not the memory map
_DTYPE = np.dtype("<f4")


def _extract_hint(feat_dir: Path) -> str:
    return f"run `sqvae-speech extract DATA_DIR {feat_dir}` to (re)build it"


def rebuild_hint(feat_dir: Path, index: dict[str, Any] | None = None) -> str:
    """How to rebuild a complete store that is damaged: ``extract`` keeps a complete store
    unless told ``--overwrite``."""
    index = index or {}
    extraction = index.get("extraction")
    data_dir = extraction.get("data_dir") if isinstance(extraction, dict) else None
    hint = f"re-extract it: `sqvae-speech extract {data_dir if isinstance(data_dir, str) else 'DATA_DIR'} {feat_dir} --overwrite`"
    try:
        custom = FeatureConfig.from_dict(index["feature_config"]) != FeatureConfig()
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError):
        custom = False
    if custom:
        hint += " with a --config holding the feature settings recorded in its index.json (feature_config)"
    return hint


@dataclasses.dataclass(frozen=True)
class Damaged:
    """An utterance whose rows in ``feats.npy`` no longer have the checksum recorded for them."""

    utt: str
    offset: int  # first row in feats.npy
    frames: int
    expected: int  # checksum recorded in index.json
    found: int  # checksum of the rows as read now

    def describe(self) -> str:
        return (f"{self.utt}: {self.frames} frames (rows {self.offset}-{self.offset + self.frames - 1} of {FEATS}), "
                f"checksum {self.found:08x}, index.json records {self.expected:08x}")


class DamagedStoreError(FeatureStoreError):
    """Utterances of a store do not match their recorded checksums; ``damaged`` lists them."""

    def __init__(self, message: str, damaged: Sequence[Damaged]) -> None:
        super().__init__(message)
        self.damaged = list(damaged)


class FeatureStore:
    """Read-only access to a store. Picklable: the memmap is dropped when pickled and
    reopened lazily in each process (DataLoader workers); the utterances already verified
    travel along."""

    def __init__(self, feat_dir: Path, index: dict[str, Any], verify: str = "lazy") -> None:
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
        self.path = feat_dir
        self._index = index
        self._utts: dict[str, dict[str, Any]] = index["utterances"]
        self.utterances: list[str] = sorted(self._utts)
        self.speakers: list[str] = sorted({u["speaker"] for u in self._utts.values()})
        self.config: FeatureConfig = FeatureConfig.from_dict(index["feature_config"])
        self.n_mels: int = int(index["n_mels"])
        self.num_frames: int = int(index["num_frames"])
        self.verify = verify
        self._feats: np.ndarray | None = None
        self._data_offset: int | None = None  # bytes of the .npy header
        self._verified: set[str] = set()

    @classmethod
    def open(
        cls, feat_dir: str | os.PathLike, expect_config: FeatureConfig | None = None, expected_by: str | None = None,
        verify: str = "lazy", progress: bool = False,
    ) -> FeatureStore:
        """Open a complete store; ``expect_config`` must equal the config it was built with.

        ``expected_by`` names who expects those settings (e.g. ``"checkpoint EXP/ckpt.pt"``)
        in the error raised when they differ. ``verify`` says when utterance checksums are
        checked (module docstring): ``"lazy"`` on first read, ``"full"`` all now (raising
        :class:`DamagedStoreError` naming the damaged ones; ``progress`` shows a bar),
        ``"off"`` never. The index and the size of ``feats.npy`` are always checked.
        """
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
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
            raise FeatureStoreError(f"{index_file} cannot be read ({e}); {rebuild_hint(feat_dir)}") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise FeatureStoreError(f"{index_file} is not a sqvae-speech feature store index; {rebuild_hint(feat_dir)}")
        if index.get("version") != VERSION:
            raise FeatureStoreError(
                f"{index_file} has store version {index.get('version')}, this sqvae-speech reads version "
                f"{VERSION}; {rebuild_hint(feat_dir)}"
            )
        try:
            stored = FeatureConfig.from_dict(index["feature_config"])
        except (ConfigError, KeyError, TypeError) as e:
            raise FeatureStoreError(f"{index_file}: bad feature_config ({e}); {rebuild_hint(feat_dir, index)}") from None
        if expect_config is not None and stored != expect_config:
            diff = config_diff(stored, expect_config)
            by = f" by {expected_by}" if expected_by else ""
            raise FeatureStoreError(
                f"feature store {feat_dir} was extracted with other feature settings than expected{by}: {diff}; "
                f"extract again with the expected settings into another directory (or with --overwrite)"
            )
        _check_index(index, index_file)
        store = cls(feat_dir, index, verify)
        store._check_array()
        if verify == "full":
            store.check(progress=progress)
        return store

    # ------------------------------------------------------------------ checksums

    @property
    def checksum(self) -> str | None:
        """The checksum algorithm recorded in index.json; None for a store written before
        checksums existed."""
        algorithm = self._index.get("checksum")
        return algorithm if isinstance(algorithm, str) else None

    @property
    def checkable(self) -> bool:
        """Whether this version can check the store's checksums (it has them, of an algorithm it knows)."""
        return self.checksum == CHECKSUM

    def damaged(self, utts: Iterable[str] | None = None, progress: bool = False,
                desc: str | None = None) -> list[Damaged]:
        """Read every utterance of ``utts`` (default: all) and return those whose rows no
        longer match their recorded checksums (in file order). Empty for a store without
        checksums (see :attr:`checkable`). Reads through one 8 MiB buffer: memory stays flat
        whatever the store's size."""
        if not self.checkable:
            return []
        names = self.utterances if utts is None else list(utts)
        entries = sorted(((u, self._entry(u)) for u in names), key=lambda ue: ue[1]["offset"])
        from tqdm import tqdm

        row = self.n_mels * _DTYPE.itemsize
        found: list[Damaged] = []
        with tqdm(total=sum(e["frames"] for _, e in entries) * row, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=desc or f"verify {self.path}", disable=None if progress else True) as bar:
            for (utt, e), crc in zip(entries, self._checksums([e for _, e in entries], bar.update)):
                if crc != e["checksum"]:
                    found.append(Damaged(utt, e["offset"], e["frames"], e["checksum"], crc))
                else:
                    self._verified.add(utt)
        return found

    def check(self, utts: Iterable[str] | None = None, progress: bool = False) -> None:
        """:meth:`damaged`, raising :class:`DamagedStoreError` naming them when there are any."""
        bad = self.damaged(utts, progress)
        if bad:
            raise self._damaged_error(bad)

    def _damaged_error(self, bad: Sequence[Damaged]) -> DamagedStoreError:
        shown = "; ".join(d.describe() for d in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        return DamagedStoreError(
            f"feature store {self.path} is damaged: {len(bad)} of its {len(self)} utterance(s) no longer match the "
            f"checksums recorded when it was written ({shown}); {self.path / FEATS} changed after it was written "
            f"(a disk or copy error); {rebuild_hint(self.path, self._index)} "
            f"(`sqvae-speech validate-store {self.path}` lists every damaged utterance)",
            bad,
        )

    def _checksums(self, entries: Sequence[dict[str, Any]], advance: Any = None) -> Iterator[int]:
        """CRC-32 of each entry's rows, read with plain reads (not the memory map, whose
        pages would stay resident)."""
        self._array  # noqa: B018 -- the header's size (and the file's) checked
        row = self.n_mels * _DTYPE.itemsize
        feats = self.path / FEATS
        buf = memoryview(bytearray(min(_READ_CHUNK, max((e["frames"] for e in entries), default=0) * row)))
        with open(feats, "rb", buffering=0) as f:
            for e in entries:
                f.seek(self._data_offset + e["offset"] * row)
                left, crc = e["frames"] * row, 0
                while left:
                    n = f.readinto(buf[: min(left, len(buf))])
                    if not n:
                        raise FeatureStoreError(f"{feats} ended early while reading it (was it truncated since it "
                                                f"was opened?); {rebuild_hint(self.path, self._index)}")
                    crc = zlib.crc32(buf[:n], crc)
                    left -= n
                    if advance is not None:
                        advance(n)
                yield crc

    def _verify_once(self, utt: str, e: dict[str, Any]) -> None:
        """The lazy check: an utterance's checksum the first time this process reads it."""
        if self.verify == "off" or utt in self._verified or not self.checkable:
            return
        crc = next(self._checksums([e]))
        if crc != e["checksum"]:
            raise self._damaged_error([Damaged(utt, e["offset"], e["frames"], e["checksum"], crc)])
        self._verified.add(utt)

    # ------------------------------------------------------------------ the array

    def _check_array(self) -> None:
        self._array  # noqa: B018 -- opening it checks header, shape, dtype and size

    @property
    def _array(self) -> np.ndarray:
        if self._feats is None:
            feats = self.path / FEATS
            if not feats.is_file():
                raise FeatureStoreError(f"{feats} is missing; {rebuild_hint(self.path, self._index)}")
            self._data_offset = self._check_file(feats)
            # np.memmap cannot map an empty array; an empty store is read normally.
            mode = "r" if self.num_frames > 0 else None
            try:
                self._feats = np.load(feats, mmap_mode=mode, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise FeatureStoreError(f"{feats} cannot be read ({e}); {rebuild_hint(self.path, self._index)}") from None
        return self._feats

    def _check_file(self, feats: Path) -> int:
        """Header, shape, dtype and byte size of feats.npy against the index; returns the
        header's size. A file shorter (or longer) than the index says is named with both sizes."""
        corrupt = f"the store is corrupt, {rebuild_hint(self.path, self._index)}"
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        try:
            with open(feats, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version not in readers:
                    raise ValueError(f".npy format version {version[0]}.{version[1]}")
                shape, fortran, dtype = readers[version](f)
                header = f.tell()
                size = os.fstat(f.fileno()).st_size
        except (OSError, ValueError) as e:
            raise FeatureStoreError(f"{feats} cannot be read ({e}); {corrupt}") from None
        if tuple(shape) != (self.num_frames, self.n_mels) or dtype != _DTYPE or (fortran and self.num_frames > 1):
            raise FeatureStoreError(
                f"{feats} holds {dtype} {tuple(shape)}, index.json says float32 "
                f"({self.num_frames}, {self.n_mels}); {corrupt}"
            )
        expected = header + self.num_frames * self.n_mels * _DTYPE.itemsize
        if size != expected:
            what = "is truncated" if size < expected else "is longer than its array"
            raise FeatureStoreError(
                f"{feats} {what}: it holds {size} bytes, index.json needs {expected} ({header} header bytes + "
                f"{self.num_frames} frames x {self.n_mels} float32); {corrupt}"
            )
        return header

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
        self._verify_once(utt, e)
        return np.ascontiguousarray(self._array[e["offset"] : e["offset"] + e["frames"]].T)

    def segment(self, utt: str, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` of one utterance, [n_mels, stop - start], reading only those
        (and, the first time, the whole utterance for its checksum with ``verify="lazy"``)."""
        e = self._entry(utt)
        if not 0 <= start <= stop <= e["frames"]:
            raise IndexError(f"frames {start}:{stop} outside utterance '{utt}' of {e['frames']} frames")
        self._verify_once(utt, e)
        o = e["offset"]
        return np.ascontiguousarray(self._array[o + start : o + stop].T)

    def utt2spk(self) -> dict[str, str]:
        return {u: self._utts[u]["speaker"] for u in self.utterances}

    @property
    def index(self) -> dict[str, Any]:
        """The parsed index.json (extra keys a writer added included)."""
        return self._index


def _check_index(index: dict[str, Any], index_file: Path) -> None:
    """Every entry lies inside the array and carries what readers use (a checksum too when
    the index records an algorithm), so a damaged index.json is named, not a traceback."""
    feat_dir = index_file.parent
    try:
        num_frames, n_mels, utts = index["num_frames"], index["n_mels"], index["utterances"]
        if not (isinstance(num_frames, int) and num_frames >= 0 and isinstance(n_mels, int) and n_mels > 0
                and isinstance(utts, dict)):
            raise ValueError("num_frames, n_mels or utterances")
    except (KeyError, ValueError) as e:
        raise FeatureStoreError(f"{index_file} is malformed ({e} missing or invalid); the store is corrupt, "
                                f"{rebuild_hint(feat_dir, index)}") from None
    checked = index.get("checksum") == CHECKSUM
    for utt, e in utts.items():
        ok = isinstance(e, dict) and isinstance(e.get("speaker"), str)
        if ok:
            o, t, c = e.get("offset"), e.get("frames"), e.get("checksum")
            ok = (isinstance(o, int) and isinstance(t, int) and 0 <= o and 0 <= t and o + t <= num_frames
                  and (not checked or (isinstance(c, int) and 0 <= c < 2**32)))
        if not ok:
            raise FeatureStoreError(
                f"{index_file}: the entry of utterance '{utt}' is malformed or lies outside the {num_frames} frames "
                f"of {FEATS} ({e!r}); the store is corrupt, {rebuild_hint(feat_dir, index)}"
            )


def config_diff(stored: FeatureConfig, expected: FeatureConfig) -> str:
    """``key: store X, expected Y`` for each differing setting."""
    a, b = stored.to_dict(), expected.to_dict()
    return "; ".join(f"{k}: store {a.get(k)!r}, expected {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


# The writer lives in its own module; importing it here keeps ``featstore.write_featstore``.
from .featstore_write import write_featstore

__all__ = ["DamagedStoreError", "FeatureStore", "config_diff", "write_featstore"]
