"""Kaldi-style data directories: ``wav.scp``, ``utt2spk``, ``spk2utt``, ``segments``.

A data dir is a folder of small text tables, one ``<id> <value>`` line each:

- ``wav.scp``: ``<utterance-id> <audio path>``, or ``<recording-id> <audio path>`` when
  ``segments`` exists. Paths may hold spaces (the rest of the line is the path). We write
  absolute paths; a relative path is resolved against the data dir itself (not the
  current directory as in Kaldi), so a data dir and its audio can move together.
  Pipe commands (``sox ... |``) are rejected: convert the audio to files first.
- ``utt2spk``: ``<utterance-id> <speaker-id>``, exactly one speaker per utterance.
- ``spk2utt``: ``<speaker-id> <utterance-id> ...``, derived from ``utt2spk``; optional
  when reading (derived if absent), checked for consistency when present.
- ``segments`` (optional): ``<utterance-id> <recording-id> <start-s> <end-s>``.

As in Kaldi, ids are unique, hold no whitespace, and every file is sorted by id in
C-locale byte order (equal to Python ``str`` order for UTF-8 text). Problems raise
:class:`DataDirError` naming the file, line and fix.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from ..errors import DataDirError
from ..fileio import atomic_write_text

# A segment may end this far past the end of its recording (rounding of time stamps).
DURATION_TOLERANCE_S = 0.01
_MAX_REPORTED = 20
_SORT_HINT = "sort it in C-locale order (`LC_ALL=C sort -o FILE FILE`) or write it with sqvae_speech.data.datadir.write_datadir"


@dataclasses.dataclass
class DataDir:
    """A parsed data dir. ``wav_scp`` maps utterance ids (recording ids when
    ``segments`` is set) to absolute audio paths; ``segments`` maps utterance ids to
    ``(recording_id, start_s, end_s)``; ``spk2utt`` is derived from ``utt2spk``."""

    path: Path
    wav_scp: dict[str, str]
    utt2spk: dict[str, str]
    segments: dict[str, tuple[str, float, float]] | None = None
    spk2utt: dict[str, list[str]] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.spk2utt = _spk2utt(self.utt2spk)

    @property
    def utterances(self) -> list[str]:
        """Utterance ids, sorted."""
        return sorted(self.utt2spk)

    @property
    def speakers(self) -> list[str]:
        """Speaker ids, sorted."""
        return sorted(self.spk2utt)


def _spk2utt(utt2spk: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for utt in sorted(utt2spk):
        out.setdefault(utt2spk[utt], []).append(utt)
    return dict(sorted(out.items()))


def utterance_audio(dd: DataDir, utt: str) -> tuple[str, float | None, float | None]:
    """``(path, start_s, end_s)`` of an utterance; start and end are None without segments."""
    if utt not in dd.utt2spk:
        raise DataDirError(f"utterance '{utt}' is not in {dd.path / 'utt2spk'}")
    if dd.segments is None:
        return dd.wav_scp[utt], None, None
    rec, start, end = dd.segments[utt]
    return dd.wav_scp[rec], start, end


class _Problems:
    """Collects ``FILE line N: message`` problems so one run reports many at once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, file: Path, lineno: int | None, msg: str) -> None:
        where = f"{file} line {lineno}" if lineno is not None else str(file)
        self.items.append(f"{where}: {msg}")


def _read_table(file: Path, problems: _Problems, kind: str) -> list[tuple[int, str, str]]:
    """``(line number, id, rest of line)`` per line, checking ids are unique and sorted."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        problems.add(file, None, f"not UTF-8 text ({e}); ids and paths must be UTF-8")
        return []
    n_before = len(problems.items)
    rows: list[tuple[int, str, str]] = []
    first_seen: dict[str, int] = {}
    prev: tuple[int, str] | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            problems.add(file, lineno, "empty line; remove it")
            continue
        if line[0].isspace():
            problems.add(file, lineno, "line starts with whitespace; each line must start with the id")
            continue
        parts = line.split(None, 1)
        key = parts[0]
        rest = parts[1].strip() if len(parts) > 1 else ""
        if not rest:
            problems.add(file, lineno, f"{kind} '{key}' has nothing after it; expected '<{kind}> <value>'")
            continue
        if key in first_seen:
            problems.add(
                file, lineno, f"{kind} '{key}' listed twice (first on line {first_seen[key]}); keep one line per {kind}"
            )
            continue
        if prev is not None and key < prev[1]:
            problems.add(
                file, lineno, f"not sorted: '{key}' comes after '{prev[1]}' (line {prev[0]}); {_SORT_HINT}"
            )
        first_seen[key] = lineno
        prev = (lineno, key)
        rows.append((lineno, key, rest))
    if not rows and len(problems.items) == n_before:
        problems.add(file, None, "file is empty; a data dir needs at least one utterance")
    return rows


def _parse(path: Path, check_files: bool) -> tuple[DataDir | None, list[str], dict[str, float]]:
    """Parse and check a data dir: (DataDir or None, problems, durations of readable files)."""
    problems = _Problems()
    durations: dict[str, float] = {}
    if not path.is_dir():
        raise DataDirError(f"data dir {path} does not exist; create it with `sqvae-speech prepare`")
    for name in ("wav.scp", "utt2spk"):
        if not (path / name).is_file():
            raise DataDirError(f"data dir {path} has no {name}; a data dir needs wav.scp and utt2spk")
    seg_file = path / "segments"
    has_segments = seg_file.is_file()
    wav_kind = "recording id" if has_segments else "utterance id"

    wav_scp: dict[str, str] = {}
    wav_lines: dict[str, int] = {}
    wav_file = path / "wav.scp"
    for lineno, key, value in _read_table(wav_file, problems, wav_kind):
        if value.endswith("|"):
            problems.add(
                wav_file, lineno,
                f"'{key}' is a pipe command ('{value}'); pipes are not supported: convert the audio "
                "to files (e.g. with sox or ffmpeg) and list their paths",
            )
            continue
        full = os.path.abspath(os.path.join(path, value))
        if check_files and not os.path.isfile(full):
            problems.add(
                wav_file, lineno,
                f"audio file '{value}' of '{key}' does not exist (relative paths are resolved "
                f"against the data dir {path}); fix the path",
            )
        wav_scp[key] = full
        wav_lines[key] = lineno

    utt2spk: dict[str, str] = {}
    utt_lines: dict[str, int] = {}
    u2s_file = path / "utt2spk"
    for lineno, utt, rest in _read_table(u2s_file, problems, "utterance id"):
        utt_lines[utt] = lineno
        fields = rest.split()
        if len(fields) != 1:
            problems.add(
                u2s_file, lineno,
                f"expected '<utterance-id> <speaker-id>', got {len(fields) + 1} fields; "
                "ids cannot contain whitespace",
            )
            continue
        utt2spk[utt] = fields[0]

    segments: dict[str, tuple[str, float, float]] | None = None
    if has_segments:
        segments = {}
        seg_lines: dict[str, int] = {}
        for lineno, utt, rest in _read_table(seg_file, problems, "utterance id"):
            seg = _parse_segment(seg_file, lineno, utt, rest, wav_scp, problems)
            if seg is not None:
                segments[utt] = seg
                seg_lines[utt] = lineno
        utt_source, utt_source_lines, source_file = segments, seg_lines, seg_file
    else:
        utt_source, utt_source_lines, source_file = wav_scp, wav_lines, wav_file

    for utt in sorted(utt_source):
        if utt not in utt_lines:
            problems.add(
                source_file, utt_source_lines[utt],
                f"utterance '{utt}' has no speaker in {u2s_file}; add a line '{utt} <speaker-id>'",
            )
    for utt, lineno in utt_lines.items():
        if utt not in utt_source:
            problems.add(
                u2s_file, lineno,
                f"utterance '{utt}' has no audio in {source_file}; remove the line or add the utterance there",
            )
    utt2spk = {u: s for u, s in utt2spk.items() if u in utt_source}

    if (path / "spk2utt").is_file():
        _check_spk2utt(path / "spk2utt", utt2spk, problems)

    if check_files:
        durations = _durations_of(wav_scp)
    if segments is not None and check_files:
        for utt, (rec, _, end) in segments.items():
            dur = durations.get(rec)
            if dur is not None and end > dur + DURATION_TOLERANCE_S:
                problems.add(
                    seg_file, seg_lines[utt],
                    f"segment '{utt}' ends at {end:g} s but recording '{rec}' ({wav_scp[rec]}) lasts "
                    f"{dur:.3f} s; fix the end time",
                )
    if problems.items:
        return None, problems.items, durations
    return DataDir(path=path, wav_scp=wav_scp, utt2spk=utt2spk, segments=segments), [], durations


def _parse_segment(
    file: Path, lineno: int, utt: str, rest: str, wav_scp: dict[str, str], problems: _Problems
) -> tuple[str, float, float] | None:
    fields = rest.split()
    if len(fields) != 3:
        problems.add(
            file, lineno, f"expected '<utterance-id> <recording-id> <start> <end>', got {len(fields) + 1} fields"
        )
        return None
    rec = fields[0]
    try:
        start, end = float(fields[1]), float(fields[2])
    except ValueError:
        problems.add(file, lineno, f"start and end of '{utt}' must be numbers of seconds, got '{fields[1]}' '{fields[2]}'")
        return None
    if not (start >= 0):
        problems.add(file, lineno, f"segment '{utt}' starts at {fields[1]}; the start must be >= 0")
        return None
    if not (end > start):
        problems.add(file, lineno, f"segment '{utt}' ends at {fields[2]}, not after its start {fields[1]}; the end must be > start")
        return None
    if rec not in wav_scp:
        problems.add(file, lineno, f"recording '{rec}' of segment '{utt}' is not in wav.scp; add it there")
        return None
    return rec, start, end


def _check_spk2utt(file: Path, utt2spk: dict[str, str], problems: _Problems) -> None:
    expected = _spk2utt(utt2spk)
    seen: set[str] = set()
    hint = "regenerate spk2utt from utt2spk (utils/utt2spk_to_spk2utt.pl, or write_datadir)"
    for lineno, spk, rest in _read_table(file, problems, "speaker id"):
        seen.add(spk)
        listed = rest.split()
        if spk not in expected:
            problems.add(file, lineno, f"speaker '{spk}' has no utterance in utt2spk; {hint}")
        elif sorted(listed) != expected[spk]:
            missing = sorted(set(expected[spk]) - set(listed))
            extra = sorted(set(listed) - set(expected[spk]))
            detail = "; ".join(
                s for s in (
                    f"missing {', '.join(missing[:5])}" if missing else "",
                    f"not this speaker's in utt2spk: {', '.join(extra[:5])}" if extra else "",
                    "an utterance listed twice" if not missing and not extra else "",
                ) if s
            )
            problems.add(file, lineno, f"utterances of speaker '{spk}' disagree with utt2spk ({detail}); {hint}")
    for spk in expected:
        if spk not in seen:
            problems.add(file, None, f"speaker '{spk}' of utt2spk is missing; {hint}")


def _durations_of(wav_scp: dict[str, str]) -> dict[str, float]:
    """Seconds of each readable file (header only); unreadable files are left out here
    and reported per utterance by ``extract``."""
    import soundfile

    out: dict[str, float] = {}
    for key, p in wav_scp.items():
        try:
            info = soundfile.info(p)
        except (soundfile.LibsndfileError, RuntimeError, TypeError, OSError):
            info = None  # unreadable header: duration unknown
        if info is not None and info.samplerate > 0:
            out[key] = info.frames / info.samplerate
    return out


def _raise(path: Path, problems: list[str]) -> None:
    shown = problems[:_MAX_REPORTED]
    more = len(problems) - len(shown)
    head = f"data dir {path} has {len(problems)} problem(s):" if len(problems) > 1 else ""
    lines = ([head] if head else []) + shown + ([f"... and {more} more"] if more else [])
    raise DataDirError("\n  ".join(lines))


def read_datadir(path: str | os.PathLike, check_files: bool = True) -> DataDir:
    """Read and check a data dir; any problem raises :class:`DataDirError` listing them.

    ``check_files`` also checks that every audio file exists and that segments end
    within their recording (file headers read with soundfile).
    """
    dd, problems, _ = _parse(Path(path), check_files)
    if problems:
        _raise(Path(path), problems)
    assert dd is not None
    return dd


def validate_datadir(path: str | os.PathLike, check_files: bool = True, strict: bool = True) -> list[str]:
    """All problems of a data dir as ``FILE line N: message`` strings.

    With ``strict`` (default) problems raise :class:`DataDirError`, so a return means
    the dir is fine (an empty list); ``strict=False`` returns them instead.
    """
    _, problems, _ = _parse(Path(path), check_files)
    if problems and strict:
        _raise(Path(path), problems)
    return problems


def recording_durations(dd: DataDir) -> tuple[dict[str, float], list[str]]:
    """Seconds per wav.scp entry from file headers, and the paths that could not be read."""
    durations = _durations_of(dd.wav_scp)
    unreadable = [p for k, p in dd.wav_scp.items() if k not in durations]
    return durations, unreadable


def write_datadir(
    path: str | os.PathLike,
    wav_scp: dict[str, str],
    utt2spk: dict[str, str],
    segments: dict[str, tuple[str, float, float]] | None = None,
) -> DataDir:
    """Write ``wav.scp``, ``utt2spk``, ``spk2utt`` (and ``segments``) sorted, each atomically.

    Paths are written as given (pass absolute ones). Without ``segments`` a stale
    ``segments`` file in the dir is removed, since it would change what wav.scp means.
    """
    path = Path(path)
    where = f"write_datadir({path})"
    for table, kind in ((wav_scp, "wav.scp id"), (utt2spk, "utterance id")):
        for key in table:
            _check_id(key, kind, where)
    for utt, spk in utt2spk.items():
        _check_id(spk, f"speaker id of '{utt}'", where)
    for key, p in wav_scp.items():
        if not p or "\n" in p or p.strip() != p or p.endswith("|"):
            raise DataDirError(f"{where}: audio path {p!r} of '{key}' must be a plain file path (no pipes, newlines, edge spaces)")
    utts = set(segments) if segments is not None else set(wav_scp)
    if utts != set(utt2spk):
        missing = sorted(utts - set(utt2spk))[:5]
        extra = sorted(set(utt2spk) - utts)[:5]
        raise DataDirError(
            f"{where}: utt2spk must give one speaker to each utterance; without speaker: {missing}, "
            f"speaker but no audio: {extra}"
        )
    if segments is not None:
        for utt, (rec, start, end) in segments.items():
            _check_id(rec, f"recording id of '{utt}'", where)
            if rec not in wav_scp or not (0 <= start < end):
                raise DataDirError(f"{where}: segment '{utt}' ({rec}, {start}, {end}) needs a recording in wav_scp and 0 <= start < end")
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / "wav.scp", "".join(f"{k} {wav_scp[k]}\n" for k in sorted(wav_scp)))
    atomic_write_text(path / "utt2spk", "".join(f"{u} {utt2spk[u]}\n" for u in sorted(utt2spk)))
    spk2utt = _spk2utt(utt2spk)
    atomic_write_text(path / "spk2utt", "".join(f"{s} {' '.join(us)}\n" for s, us in spk2utt.items()))
    if segments is not None:
        # repr() of a float is its shortest exact decimal form: times round-trip.
        atomic_write_text(
            path / "segments",
            "".join(f"{u} {r} {float(s)!r} {float(e)!r}\n" for u, (r, s, e) in sorted(segments.items())),
        )
    else:
        (path / "segments").unlink(missing_ok=True)
    full = {k: os.path.abspath(os.path.join(path, p)) for k, p in wav_scp.items()}
    return DataDir(path=path, wav_scp=full, utt2spk=dict(utt2spk), segments=dict(segments) if segments is not None else None)


def _check_id(key: str, kind: str, where: str) -> None:
    if not isinstance(key, str) or not key or any(c.isspace() for c in key):
        raise DataDirError(f"{where}: {kind} {key!r} must be a non-empty string without whitespace")
