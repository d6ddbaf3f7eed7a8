"""Conversion lists: the rows ``source target_speaker output_name`` of
``sqvae-speech convert`` (:mod:`sqvae_speech.synthesis.convert` converts them).

- :class:`ConversionItem`: one row; :func:`read_conversion_list` and
  :func:`write_conversion_list` read and write a list file;
- :func:`choose_speakers`: the source and target speakers of a list built from data dirs
  (``--make-list``), :func:`make_conversion_list`: their utterances;
- :func:`merge_datadirs`: several data dirs read as one (:class:`CombinedDataDir`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from ..data.datadir import DataDir
from ..errors import SQVAEError
from ..fileio import atomic_write_text

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# The manifest a conversion run writes next to its outputs: no output may take its name.
MANIFEST = "conversion.json"


@dataclasses.dataclass(frozen=True)
class ConversionItem:
    source: str  # utterance id or audio path
    target: str  # target speaker
    name: str  # output file stem


def make_conversion_list(
    data_dir: str | Path | DataDir | Sequence[str | Path], per_speaker: int = 2, min_seconds: float = 1.5,
    speakers: Sequence[str] | None = None, targets: Sequence[str] | None = None,
) -> list[ConversionItem]:
    """Every chosen source utterance converted to every target speaker (its own included).

    Sources: the first ``per_speaker`` sorted utterance ids of each speaker (``speakers``,
    default all of the data dir) lasting at least ``min_seconds``; a speaker with fewer
    such utterances is filled up with its longest other ones. ``targets`` defaults to the
    source speakers. Names are ``<utt>__to__<target>``, each character outside letters, digits
    and ``. _ + -`` as ``_`` (an id or speaker may hold ``/``, ``..`` or markup; a name is
    a plain file stem), made unique with ``-2``, ``-3``... ``data_dir`` may also be several
    data dirs (taken together, see :func:`merge_datadirs`) or a :class:`DataDir`.
    """
    from ..data.datadir import recording_durations

    if per_speaker < 1:
        raise SQVAEError(f"--per-speaker must be >= 1, got {per_speaker}")
    dd = data_dir if isinstance(data_dir, DataDir) else merge_datadirs(data_dir)
    speakers = list(speakers) if speakers else dd.speakers
    unknown = [s for s in speakers if s not in dd.spk2utt]
    if unknown:
        raise SQVAEError(f"speaker(s) {', '.join(unknown)} not in {_dir_names(dd)} (speakers: {', '.join(dd.speakers)})")
    rec_seconds, _ = recording_durations(dd)
    seconds = {u: (dd.segments[u][2] - dd.segments[u][1]) if dd.segments else rec_seconds.get(u, 0.0)
               for u in dd.utterances}
    sources = []
    for spk in speakers:
        utts = dd.spk2utt[spk]
        chosen = [u for u in utts if seconds[u] >= min_seconds][:per_speaker]
        # too few long enough: fill up with the longest of the rest (a small test set
        # should still give a page, not an error)
        rest = sorted((u for u in utts if u not in chosen), key=lambda u: (-seconds[u], u))
        chosen = sorted(chosen + rest[: per_speaker - len(chosen)])
        sources += [(u, spk) for u in chosen]
    targets = list(targets) if targets is not None else speakers
    items, used = [], {MANIFEST.split(".")[0]}
    for u, _ in sources:
        for t in targets:
            base = output_name(f"{u}__to__{t}")
            name, k = base, 1
            while name in used:
                k += 1
                name = f"{base}-{k}"
            used.add(name)
            items.append(ConversionItem(u, t, name))
    return items


def output_name(text: str) -> str:
    """``text`` as a plain file stem (:data:`_NAME`): each other character as ``_``, a
    leading ``. _ + -`` dropped."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text).lstrip("._+-") or "item"


def check_output_names(items: Sequence[ConversionItem], where: str) -> None:
    """Each output name a plain file stem (letters, digits, ``. _ + -``, not starting with
    a punctuation mark), used once and not the manifest's: an SQVAEError naming the row
    otherwise. Nothing is then written outside the output dir."""
    seen: dict[str, int] = {}
    for n, it in enumerate(items, 1):
        if not isinstance(it.name, str) or not _NAME.match(it.name) or it.name == MANIFEST.split(".")[0]:
            raise SQVAEError(f"{where} row {n}: output name {it.name!r} must be a plain file stem (letters, digits, "
                             f". _ + -, starting with a letter or digit; not '{MANIFEST.split('.')[0]}'): it names "
                             "files in the output dir")
        if it.name in seen:
            raise SQVAEError(f"{where} row {n}: output name '{it.name}' already used by row {seen[it.name]}")
        seen[it.name] = n


def merge_datadirs(data_dirs: str | Path | Sequence[str | Path]) -> DataDir:
    """One or more data dirs read as one (like Kaldi's combine_data.sh, in memory).

    An utterance in two of them, a recording id naming two different files, or a mix of
    dirs with and without ``segments`` is an error. One dir is returned as it is read;
    several as a :class:`CombinedDataDir`.
    """
    from ..data.datadir import read_datadir

    paths = [Path(data_dirs)] if isinstance(data_dirs, (str, Path)) else [Path(p) for p in data_dirs]
    if not paths:
        raise SQVAEError("no data dir given")
    dds = [read_datadir(p) for p in paths]
    if len(dds) == 1:
        return dds[0]
    names = ", ".join(str(p) for p in paths)
    if len({dd.segments is None for dd in dds}) > 1:
        raise SQVAEError(f"data dirs {names}: some have segments and some do not; they cannot be taken together")
    wav_scp: dict[str, str] = {}
    utt2spk: dict[str, str] = {}
    segments: dict[str, tuple[str, float, float]] | None = None if dds[0].segments is None else {}
    for dd in dds:
        twice = sorted(set(dd.utt2spk) & set(utt2spk))
        if twice:
            raise SQVAEError(f"utterance(s) {', '.join(twice[:3])} are in more than one of the data dirs {names}")
        clash = sorted(k for k, p in dd.wav_scp.items() if wav_scp.get(k, p) != p)
        if clash:
            raise SQVAEError(f"recording id(s) {', '.join(clash[:3])} name different files in the data dirs {names}")
        wav_scp.update(dd.wav_scp)
        utt2spk.update(dd.utt2spk)
        if segments is not None and dd.segments is not None:
            segments.update(dd.segments)
    return CombinedDataDir(path=paths[0], wav_scp=wav_scp, utt2spk=utt2spk, segments=segments, parts=tuple(dds))


@dataclasses.dataclass
class CombinedDataDir(DataDir):
    """Several data dirs read as one (:func:`merge_datadirs`); ``path`` is the first one's."""

    parts: tuple[DataDir, ...] = ()


def _parts(dd: DataDir) -> tuple[DataDir, ...]:
    return dd.parts if isinstance(dd, CombinedDataDir) else (dd,)


def _dir_names(dd: DataDir) -> str:
    return ", ".join(str(part.path) for part in _parts(dd))


def choose_speakers(
    dd: DataDir, known: Sequence[str], speakers: Sequence[str] | None = None, num_speakers: int = 0,
    targets: Sequence[str] | None = None, num_targets: int = 0, target_sources: bool = False,
) -> tuple[list[str], list[str]]:
    """The (source speakers, target speakers) of a conversion list over the data dir(s) ``dd``.

    ``known``: the speakers the model was trained on (the only possible targets).

    Sources: ``speakers`` if given; else the first ``num_speakers`` speakers (sorted ids)
    of the first data dir of ``dd`` (see :func:`merge_datadirs`); else, unless
    ``target_sources``, every speaker of ``dd`` the model knows (all of them if it knows
    none: speech of unseen speakers converted to given targets). With ``target_sources``
    each target that has utterances in ``dd`` is a source too (after the others; its
    conversion to itself is a reconstruction, a reference for the listener).

    Targets: ``targets`` if given; else the first ``num_targets`` of ``known``; else the
    sources the model knows. A target the model does not know is an error, and so is an
    empty choice.
    """
    if num_speakers < 0 or num_targets < 0:
        raise SQVAEError(f"--num-speakers and --num-targets must be >= 0, got {num_speakers} and {num_targets}")
    where = _dir_names(dd)
    if speakers:
        sources = list(dict.fromkeys(speakers))
    elif num_speakers > 0:
        sources = _parts(dd)[0].speakers[:num_speakers]
    elif not target_sources:
        sources = [s for s in dd.speakers if s in known] or dd.speakers
    else:
        sources = []
    missing = [s for s in sources if s not in dd.spk2utt]
    if missing:
        raise SQVAEError(f"source speaker(s) {', '.join(missing)} not in {where} (speakers: {', '.join(dd.speakers)})")
    if targets:
        chosen = list(dict.fromkeys(targets))
    elif num_targets > 0:
        chosen = sorted(known)[:num_targets]
    else:
        chosen = [s for s in sources if s in known]
    for t in chosen:
        if t not in known:
            raise SQVAEError(f"target speaker '{t}' is unknown to the model; known speakers: {', '.join(known)} "
                             "(the decoder needs a training speaker's embedding: a speaker the model never heard "
                             "can be a source, not a target)")
    if not chosen:
        raise SQVAEError(f"no target speaker: none of the source speakers ({', '.join(sources) or 'none'}) is known "
                         f"to the model; name targets among {', '.join(known)} (--targets, --num-targets)")
    if target_sources:
        sources += [t for t in chosen if t in dd.spk2utt and t not in sources]
    if not sources:
        raise SQVAEError(f"no source speaker: none of the targets ({', '.join(chosen)}) has an utterance in {where}, "
                         "and no other speaker was asked for (--speakers, --num-speakers)")
    return sources, chosen


def read_conversion_list(path: str | Path) -> list[ConversionItem]:
    """Rows ``source target_speaker output_name``; blank lines and ``#`` comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise SQVAEError(f"conversion list {path} does not exist")
    items, seen = [], {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise SQVAEError(f"{path} line {n}: expected 'source target_speaker output_name', got {line.strip()!r}")
        src, tgt, name = parts
        if not _NAME.match(name) or name == MANIFEST.split(".")[0]:
            raise SQVAEError(f"{path} line {n}: output name '{name}' must be a plain file stem (letters, digits, . _ + -)")
        if name in seen:
            raise SQVAEError(f"{path} line {n}: output name '{name}' already used on line {seen[name]}")
        seen[name] = n
        items.append(ConversionItem(src, tgt, name))
    if not items:
        raise SQVAEError(f"conversion list {path} has no rows")
    return items


def write_conversion_list(path: str | Path, items: Sequence[ConversionItem]) -> None:
    atomic_write_text(path, "".join(f"{it.source} {it.target} {it.name}\n" for it in items))
