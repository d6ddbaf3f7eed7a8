"""Phone alignments: read them, check them against the audio, label frames with them.

An alignment file holds one phone segment per line, in either of two layouts, told
apart per line by the number of whitespace-separated columns:

- 4 columns, ``utt start dur phone``: start time and **duration** in seconds (e.g.
  ``awb_s001 0.253 0.027 dh``: /dh/ from 0.253 s to 0.280 s);
- 5 columns, Kaldi CTM ``utt channel start dur phone``: the same with a channel, which is
  ignored. ``sqvae-speech flite-abx-set`` writes this as ``phones.ctm``; Kaldi's
  ``ali-to-phones --ctm-output`` writes it from a forced alignment (phone ids there: map
  them to names with ``utils/int2sym.pl -f 5 phones.txt``).

Both give durations, never end times: the file ``alignments.txt`` of older versions of
``flite-abx-set`` (``utt start end phone``) is not read; rerun ``flite-abx-set`` for a
``phones.ctm``.

Blank lines and lines starting with ``#`` or ``;;`` are ignored. Times are seconds from
the start of the utterance's audio. Segments may leave gaps (CTMs from forced alignment
often skip silence); frames in a gap get no label (``-1``, see :func:`frame_labels`).
A segment covers the half-open interval ``[start, end)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SQVAEError

_WRITERS = ("`sqvae-speech flite-abx-set OUT` writes OUT/phones.ctm; a Kaldi forced alignment gives one with "
            "`ali-to-phones --ctm-output`")


class AlignmentError(SQVAEError):
    """An alignment file is missing, malformed, or does not fit the audio it should describe."""


@dataclass(frozen=True)
class Segment:
    """One phone from ``start`` to ``end`` (seconds, ``end >= start``)."""

    start: float
    end: float
    phone: str


def _parse_line(parts: list[str], where: str) -> tuple[str, Segment]:
    if len(parts) == 4:
        utt, a, b, phone = parts
    elif len(parts) == 5:
        utt, _channel, a, b, phone = parts
    else:
        raise AlignmentError(
            f"{where}: expected 4 columns 'utt start dur phone' or 5 (Kaldi CTM) 'utt channel start dur phone', "
            f"got {len(parts)}: '{' '.join(parts)}'")
    names = "start and dur"
    try:
        x, y = float(a), float(b)
    except ValueError:
        x = y = math.nan
    if not (math.isfinite(x) and math.isfinite(y)):
        raise AlignmentError(f"{where}: {names} must be numbers (seconds), got '{a}' '{b}'")
    if x < 0 or y < 0:
        raise AlignmentError(f"{where}: {names} must not be negative (seconds), got '{a}' '{b}'")
    return utt, Segment(x, x + y, phone)


def read_alignment(path: str | os.PathLike) -> dict[str, list[Segment]]:
    """Read an alignment file (module docstring): utterance id -> its segments sorted by start.

    Raises :class:`AlignmentError` naming ``path:line`` for a malformed line, or the file
    (and what writes one) when it is missing, unreadable or has no segment.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise AlignmentError(f"alignment file {path} {what}: {_WRITERS}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AlignmentError(f"alignment file {path} cannot be read as UTF-8 text ({e})") from None
    out: dict[str, list[Segment]] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";;")):
            continue
        utt, seg = _parse_line(stripped.split(), f"{path}:{n}")
        out.setdefault(utt, []).append(seg)
    if not out:
        raise AlignmentError(f"alignment file {path} holds no segment: {_WRITERS}")
    for segs in out.values():
        segs.sort(key=lambda s: (s.start, s.end))
    return out


def frame_labels(segments: Sequence[Segment], times: np.ndarray, phone_index: dict[str, int]) -> np.ndarray:
    """The phone index of every frame: int64 ``[T]`` for frame-centre ``times`` ``[T]`` (seconds).

    Frame ``t`` gets ``phone_index[phone]`` of the segment with ``start <= times[t] < end``
    (if segments overlap, the one that starts last), or ``-1`` where no segment covers it.
    A phone not yet in ``phone_index`` is added to it, with the next free index
    (``len(phone_index)``): **the dict is mutated**, so pass the same dict for every
    utterance to get one consistent phone inventory.
    """
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    out = np.full(times.shape, -1, dtype=np.int64)
    if not len(segments) or not len(times):
        return out
    segs = sorted(segments, key=lambda s: (s.start, s.end))
    starts = np.array([s.start for s in segs], dtype=np.float64)
    ends = np.array([s.end for s in segs], dtype=np.float64)
    ids = np.array([phone_index.setdefault(s.phone, len(phone_index)) for s in segs], dtype=np.int64)
    k = np.searchsorted(starts, times, side="right") - 1  # last segment starting at or before t
    ok = k >= 0
    ok[ok] = times[ok] < ends[k[ok]]
    out[ok] = ids[k[ok]]
    return out


def _name_some(names: Sequence[str], n: int = 5) -> str:
    """``3 utterances: a, b, c`` (at most ``n`` named, then ``...``)."""
    more = ", ..." if len(names) > n else ""
    return f"{len(names)} utterance{'s' if len(names) != 1 else ''}: {', '.join(names[:n])}{more}"


def check_coverage(alignment: dict[str, list[Segment]], durations: dict[str, float], path: str,
                   tolerance: float = 0.05) -> None:
    """Check that ``alignment`` (read from ``path``) fits utterances of ``durations`` (seconds).

    Raises :class:`AlignmentError` if an utterance of ``durations`` has no segment, or if
    a segment ends more than ``tolerance`` seconds after its utterance's audio (the
    alignment is of other audio). Utterances of the alignment that ``durations`` lacks are
    fine (an alignment may cover more than a feature set).
    """
    missing = [u for u in durations if not alignment.get(u)]
    if missing:
        raise AlignmentError(
            f"alignment {path} has no segment for {_name_some(missing)} "
            f"(of {len(durations)} in the feature set): the alignment must cover every utterance of the feature set "
            "(align them all, or evaluate on a feature set of the aligned utterances only)")
    late = []
    for utt, dur in durations.items():
        end = max(s.end for s in alignment[utt])
        if end > dur + tolerance:
            late.append(f"{utt} (last segment ends at {end:.3f} s, audio is {dur:.3f} s)")
    if late:
        raise AlignmentError(
            f"alignment {path} runs past the end of the audio by more than {tolerance} s for {_name_some(late, 3)}: "
            "it is an alignment of other audio (wrong file, or audio resampled/trimmed since); "
            "use the alignment made for these recordings")
