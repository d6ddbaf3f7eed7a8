"""ABX item files (the ZeroSpeech / ABXpy format): parse, validate, write.

An item file is a header line and one row per token::

    #file onset offset #phone prev-phone next-phone speaker
    s01_0001 0.2925 0.4725 IH L NG s01

``file`` names a feature file (its stem: ``s01_0001.txt`` / ``.npy``, or an utterance of
a feature store), ``onset`` / ``offset`` are seconds within it, ``phone`` is the label
ABX discriminates, ``prev-phone`` / ``next-phone`` its context, ``speaker`` the talker.
In the ZeroSpeech sets a token spans the whole triphone (onset of the previous phone to
offset of the next one). Columns are separated by any whitespace; blank lines are
skipped. A malformed row raises :class:`ItemFileError` naming the file and line.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import SQVAEError
from ...fileio import atomic_write_text

HEADER = ("#file", "onset", "offset", "#phone", "prev-phone", "next-phone", "speaker")


class ItemFileError(SQVAEError):
    """An ABX item file is missing or malformed."""


@dataclass
class ItemSet:
    """The rows of an item file as parallel arrays (one entry per token).

    ``line`` keeps each row's line number in the file, for error messages.
    """

    path: str
    file: list[str]
    onset: np.ndarray  # [N] float64 seconds
    offset: np.ndarray  # [N] float64 seconds
    phone: list[str]
    prev: list[str]
    next: list[str]
    speaker: list[str]
    line: np.ndarray  # [N] int64

    def __len__(self) -> int:
        return len(self.file)

    def where(self, i: int) -> str:
        """``PATH line N`` of token ``i``."""
        return f"{self.path} line {int(self.line[i])}"

    def subset(self, index: np.ndarray | list[int]) -> ItemSet:
        """The tokens at ``index``, in that order (tests use it to shuffle rows)."""
        idx = np.asarray(index, dtype=np.int64)
        pick = lambda xs: [xs[i] for i in idx]
        return ItemSet(self.path, pick(self.file), self.onset[idx], self.offset[idx], pick(self.phone),
                       pick(self.prev), pick(self.next), pick(self.speaker), self.line[idx])


def read_items(path: str | os.PathLike) -> ItemSet:
    """Parse and check an item file. Every problem names ``PATH line N`` and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ItemFileError(f"item file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ItemFileError(f"item file {path} cannot be read as UTF-8 text ({e})") from None
    lines = text.splitlines()
    first = next((n for n, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        raise ItemFileError(f"item file {path} is empty")
    header = tuple(lines[first].split())
    if header != HEADER:
        raise ItemFileError(
            f"{path} line {first + 1}: the header must be '{' '.join(HEADER)}', got '{lines[first].strip()}'"
        )
    cols: tuple[list, ...] = ([], [], [], [], [], [], [], [])
    for n in range(first + 1, len(lines)):
        parts = lines[n].split()
        if not parts:
            continue
        where = f"{path} line {n + 1}"
        if len(parts) != len(HEADER):
            raise ItemFileError(f"{where}: expected {len(HEADER)} columns ({' '.join(HEADER)}), got {len(parts)}: '{lines[n].strip()}'")
        try:
            onset, offset = float(parts[1]), float(parts[2])
        except ValueError:
            raise ItemFileError(f"{where}: onset and offset must be numbers (seconds), got '{parts[1]}' '{parts[2]}'") from None
        if not (math.isfinite(onset) and math.isfinite(offset)) or onset < 0 or offset <= onset:
            raise ItemFileError(f"{where}: needs 0 <= onset < offset (seconds), got onset {parts[1]}, offset {parts[2]}")
        for k, value in enumerate((parts[0], onset, offset, parts[3], parts[4], parts[5], parts[6], n + 1)):
            cols[k].append(value)
    if not cols[0]:
        raise ItemFileError(f"item file {path} has a header but no items")
    return ItemSet(str(path), cols[0], np.array(cols[1], dtype=np.float64), np.array(cols[2], dtype=np.float64),
                   cols[3], cols[4], cols[5], cols[6], np.array(cols[7], dtype=np.int64))


def format_items(rows: list[tuple[str, float, float, str, str, str, str]]) -> str:
    """The text of an item file holding ``rows`` ``(file, onset, offset, phone, prev, next, speaker)``."""
    out = [" ".join(HEADER)]
    for file, onset, offset, phone, prev, nxt, spk in rows:
        for name, value in (("file", file), ("phone", phone), ("prev-phone", prev), ("next-phone", nxt), ("speaker", spk)):
            if not value or any(c.isspace() for c in value):
                raise ValueError(f"item {name} {value!r} must be a non-empty string without whitespace")
        out.append(f"{file} {onset:.4f} {offset:.4f} {phone} {prev} {nxt} {spk}")
    return "\n".join(out) + "\n"


def write_items(path: str | os.PathLike, rows: list[tuple[str, float, float, str, str, str, str]]) -> None:
    """Write an item file atomically (times with 0.1 ms resolution)."""
    atomic_write_text(path, format_items(rows))
