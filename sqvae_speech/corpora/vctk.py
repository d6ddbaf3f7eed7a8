"""CSTR VCTK Corpus (University of Edinburgh), versions 0.80 and 0.92: layout detection,
scanning, the train/test split, and Kaldi data dirs.

Layouts (``CORPUS`` is what ``--corpus-dir`` points at; it may also be the dir above
it, e.g. the folder the 0.80 archive unpacks into, ``VCTK-Corpus/``)::

    0.80   CORPUS/wav48/<spk>/<spk>_<nnn>.wav                  48 kHz, 16-bit wav
           CORPUS/txt/<spk>/<spk>_<nnn>.txt                    (not used)
    0.92   CORPUS/wav48_silence_trimmed/<spk>/<spk>_<nnn>_mic1.flac   48 kHz flac,
           CORPUS/wav48_silence_trimmed/<spk>/<spk>_<nnn>_mic2.flac   two microphones
           CORPUS/txt/<spk>/<spk>_<nnn>.txt                    (not used)

:func:`detect_layout` finds which one is there. Speakers are the ``<spk>`` dirs
(``p225`` ... ``p376``, and ``s5`` in 0.92); nothing counts on how many there are.
0.92 has two microphones (mic1: omni-directional DPA 4035, mic2: Sennheiser MKH 800);
``mic`` chooses one, and an utterance recorded only with the other one is skipped and
counted in the summary (0.92 lacks mic2 files for some speakers). Files that do not
follow the naming scheme are ignored and counted. Audio stays at 48 kHz on disk; feature
extraction resamples it to 16 kHz.

Utterance ids are ``<spk>_<nnn>`` in both versions and for both microphones, so the
split below picks the same utterances whichever version or microphone is used (as long
as the files exist).

Split (the paper publishes none), per speaker, deterministic and independent of
file-system order, version, microphone and the other options:

* ``heldout_speakers`` (default none) are left out of training entirely: all their
  utterances go to ``OUT/heldout``, for conversion from unseen source speakers.
* Every other speaker: order the utterances by the SHA-1 of their id; the test set
  (``OUT/test``, the dB^2 table) is the first ``n`` in that order that last at least
  :data:`TEST_MIN_SECONDS`, ``n = min(test_per_speaker, utterances // 5)``; the rest
  is ``OUT/train``. ``max_utts_per_speaker`` keeps only the first M training
  utterances in the same order (quick runs; the test set does not change).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import soundfile

from ..errors import CorpusError
from ..fileio import atomic_write_json
from . import common
from .common import hashed_split

VERSIONS: dict[str, str] = {"0.80": "wav48", "0.92": "wav48_silence_trimmed"}  # version -> audio dir
MICS: tuple[str, ...] = ("mic1", "mic2")
DEFAULT_TEST_PER_SPEAKER = 10
TEST_MAX_FRACTION = 5  # a test set holds at most 1/5 of a speaker's utterances
TEST_MIN_SECONDS = 0.5  # no VCTK sentence is this short; guards odd files only
MIN_CLIP_SECONDS = 0.1  # shorter files hold no speech: skipped
SPLITS: tuple[str, ...] = ("train", "test", "heldout")

_SPEAKER_RE = re.compile(r"[A-Za-z]+[0-9]+")

PUBLISHED = (
    "VCTK is published at the University of Edinburgh DataShare as 'CSTR VCTK Corpus': "
    "version 0.92 (VCTK-Corpus-0.92.zip) at https://datashare.ed.ac.uk/handle/10283/3443, "
    "version 0.80 (VCTK-Corpus.tar.gz) at https://datashare.ed.ac.uk/handle/10283/2651"
)
EXPECTED = (
    "expected the CSTR VCTK Corpus: version 0.80 with wav48/<spk>/<spk>_<nnn>.wav, or version 0.92 "
    "with wav48_silence_trimmed/<spk>/<spk>_<nnn>_mic1.flac (and _mic2.flac)"
)




@dataclasses.dataclass(frozen=True)
class Layout:
    """A detected corpus: ``root`` holds ``audio_dir`` (``wav48`` or ``wav48_silence_trimmed``)."""

    version: str
    root: Path

    @property
    def audio_dir(self) -> Path:
        return self.root / VERSIONS[self.version]


@dataclasses.dataclass(frozen=True)
class Utterance:
    utt_id: str
    speaker: str
    path: Path


@dataclasses.dataclass
class Scan:
    """What :func:`scan` found: chosen-microphone utterances by id, the ids that only exist
    with the other microphone, and the files that do not follow the naming scheme."""

    layout: Layout
    mic: str | None  # None for 0.80 (one microphone)
    utterances: dict[str, Utterance]
    missing_mic: list[str]
    ignored: list[str]

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.utterances.values()})

    def describe(self) -> str:
        mic = f", {self.mic}" if self.mic else ""
        line = (f"VCTK {self.layout.version} ({VERSIONS[self.layout.version]}{mic}) at {self.layout.root}: "
                f"{len(self.speakers)} speakers, {len(self.utterances)} utterances")
        if self.missing_mic:
            line += f"; {len(self.missing_mic)} utterance(s) without a {self.mic} file (skipped)"
        if self.ignored:
            line += f"; {len(self.ignored)} file(s) not named like VCTK (ignored)"
        return line


@dataclasses.dataclass
class SpeakerStats:
    """Utterance counts and hours of one speaker in each split."""

    speaker: str
    utts: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    hours: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(SPLITS, 0.0))


@dataclasses.dataclass
class PrepareSummary:
    """What :func:`prepare` wrote; also stored as ``<out_dir>/prepare.json``."""

    corpus_dir: str
    version: str
    mic: str | None
    out_dir: str
    options: dict[str, Any]
    speakers: list[SpeakerStats]
    skipped: dict[str, list[str]]  # reason -> utterance ids (or paths for ignored files)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table(self) -> str:
        """A per-speaker table of utterances and hours per split, a total row and the skips."""
        splits = [s for s in SPLITS if s != "heldout" or any(st.utts["heldout"] for st in self.speakers)]
        head = f"{'speaker':<8}" + "".join(f" {s + ' utts':>13} {s + ' h':>10}" for s in splits)
        lines = [head]
        total = SpeakerStats("total")
        for st in self.speakers:
            lines.append(f"{st.speaker:<8}" + "".join(f" {st.utts[s]:>13d} {st.hours[s]:>10.3f}" for s in splits))
            for s in splits:
                total.utts[s] += st.utts[s]
                total.hours[s] += st.hours[s]
        lines.append(f"{'total':<8}" + "".join(f" {total.utts[s]:>13d} {total.hours[s]:>10.3f}" for s in splits))
        for reason, items in self.skipped.items():
            if items:
                shown = ", ".join(items[:8]) + (" ..." if len(items) > 8 else "")
                lines.append(f"skipped ({reason}): {len(items)}: {shown}")
        return "\n".join(lines)


def detect_layout(corpus_dir: str | Path, version: str = "auto") -> Layout:
    """The VCTK version under ``corpus_dir`` (or one dir below it); ``version`` forces one.

    Raises :class:`CorpusError` naming the expected layout and where VCTK is published.
    """
    if version != "auto" and version not in VERSIONS:
        raise CorpusError(f"VCTK version '{version}' unknown; choose auto, {' or '.join(VERSIONS)}")
    path = Path(corpus_dir)
    if not path.is_dir():
        raise CorpusError(f"VCTK corpus dir {path} does not exist; {EXPECTED}. {PUBLISHED}")
    candidates = [path] + sorted(p for p in path.iterdir() if p.is_dir())
    for cand in candidates:
        found = [v for v, d in VERSIONS.items() if (cand / d).is_dir()]
        if not found:
            continue
        if version != "auto":
            if version in found:
                return Layout(version, cand)
            continue
        if len(found) > 1:
            raise CorpusError(f"{cand} holds both {' and '.join(VERSIONS[v] for v in found)}; "
                              "choose one with the version option (--vctk-version 0.80 or 0.92)")
        return Layout(found[0], cand)
    wanted = f" version {version} ({VERSIONS[version]}/)" if version != "auto" else ""
    raise CorpusError(f"{path} does not look like the VCTK corpus{wanted}: {EXPECTED}. {PUBLISHED}")


def scan(layout: Layout, mic: str = "mic1") -> Scan:
    """Utterances of the chosen microphone under ``layout.audio_dir``, sorted by id."""
    if mic not in MICS:
        raise CorpusError(f"--mic '{mic}' unknown; choose {' or '.join(MICS)}")
    if layout.version == "0.80" and mic != "mic1":
        raise CorpusError(f"--mic {mic} needs VCTK 0.92; {layout.root} is version 0.80, recorded with one "
                          "microphone (leave --mic at mic1)")
    utterances: dict[str, Utterance] = {}
    other_mic: set[str] = set()
    ignored: list[str] = []
    for spk_dir in sorted(p for p in layout.audio_dir.iterdir() if p.is_dir()):
        spk = spk_dir.name
        if not _SPEAKER_RE.fullmatch(spk):
            ignored.extend(str(f) for f in sorted(spk_dir.iterdir()))
            continue
        if layout.version == "0.80":
            name_re = re.compile(rf"{spk}_([0-9]+)\.wav")
        else:
            name_re = re.compile(rf"{spk}_([0-9]+)_(mic[12])\.flac")
        for f in sorted(spk_dir.iterdir()):
            m = name_re.fullmatch(f.name)
            if m is None or not f.is_file():
                ignored.append(str(f))
                continue
            utt = f"{spk}_{m.group(1)}"
            if layout.version == "0.92" and m.group(2) != mic:
                other_mic.add(utt)
                continue
            utterances[utt] = Utterance(utt, spk, f)
    if not utterances:
        what = f"<spk>_<nnn>_{mic}.flac" if layout.version == "0.92" else "<spk>_<nnn>.wav"
        raise CorpusError(f"no {what} files in the speaker dirs under {layout.audio_dir}; {EXPECTED}. {PUBLISHED}")
    check_sort_order(sorted({u.speaker for u in utterances.values()}))
    return Scan(layout=layout, mic=mic if layout.version == "0.92" else None,
                utterances=dict(sorted(utterances.items())),
                missing_mic=sorted(other_mic - set(utterances)), ignored=ignored)


def header_durations(paths: dict[str, Path], nj: int = 1, progress: bool = False) -> tuple[dict[str, float], list[str]]:
    """Seconds per key from the file headers (no decoding), read by ``nj`` threads; and the
    keys whose header cannot be read."""
    from tqdm import tqdm

    def info(p: Path) -> float | None:
        try:
            return float(soundfile.info(str(p)).duration)
        except (RuntimeError, TypeError, OSError):  # soundfile.LibsndfileError derives from RuntimeError
            return None

    keys = list(paths)
    with ThreadPoolExecutor(max_workers=max(1, nj)) as pool:
        results = list(tqdm(pool.map(info, (paths[k] for k in keys), chunksize=64), total=len(keys),
                            desc="reading headers", unit="file", disable=not progress))
    durations = {k: d for k, d in zip(keys, results) if d is not None}
    return durations, [k for k, d in zip(keys, results) if d is None]




def split_speaker(utt_ids: Sequence[str], durations: dict[str, float], test_per_speaker: int,
                  max_train: int = 0) -> tuple[list[str], list[str]]:
    """One speaker's utterances as (train, test), both sorted; rule in the module docstring."""
    return hashed_split(utt_ids, durations, test_per_speaker, TEST_MAX_FRACTION, TEST_MIN_SECONDS, max_train)


def prepare(
    corpus_dir: str | Path,
    out_dir: str | Path,
    version: str = "auto",
    mic: str = "mic1",
    test_per_speaker: int = DEFAULT_TEST_PER_SPEAKER,
    heldout_speakers: Sequence[str] = (),
    max_utts_per_speaker: int = 0,
    nj: int = 1,
    progress: bool = False,
) -> PrepareSummary:
    """Write ``out_dir/train``, ``out_dir/test`` (and ``out_dir/heldout`` when
    ``heldout_speakers`` are given) plus ``out_dir/prepare.json``; return the summary."""
    from ..data.datadir import write_datadir

    if test_per_speaker < 1:
        raise CorpusError(f"--test-per-speaker must be >= 1 (the test dir cannot be empty), got {test_per_speaker}")
    if max_utts_per_speaker < 0:
        raise CorpusError(f"--max-utts-per-speaker must be >= 0 (0 means all), got {max_utts_per_speaker}")
    found = scan(detect_layout(corpus_dir, version), mic)
    heldout = sorted(set(heldout_speakers))
    unknown = [s for s in heldout if s not in found.speakers]
    if unknown:
        raise CorpusError(f"--heldout-speakers {' '.join(unknown)}: not in {found.layout.audio_dir}; "
                          f"speakers there: {' '.join(found.speakers)}")
    if len(heldout) == len(found.speakers):
        raise CorpusError("--heldout-speakers names every speaker; at least one must remain for training")

    durations, unreadable = header_durations({u: x.path for u, x in found.utterances.items()}, nj, progress)
    too_short = sorted(u for u, d in durations.items() if d < MIN_CLIP_SECONDS)
    usable = {u: x for u, x in found.utterances.items() if u in durations and durations[u] >= MIN_CLIP_SECONDS}

    by_speaker: dict[str, list[str]] = {}
    for u, x in usable.items():
        by_speaker.setdefault(x.speaker, []).append(u)
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    stats = []
    for spk in sorted(by_speaker):
        st = SpeakerStats(spk)
        if spk in heldout:
            parts = {"heldout": sorted(by_speaker[spk])}
        else:
            train, test = split_speaker(by_speaker[spk], durations, test_per_speaker, max_utts_per_speaker)
            parts = {"train": train, "test": test}
        for name, utts in parts.items():
            splits[name].extend(utts)
            st.utts[name] = len(utts)
            st.hours[name] = sum(durations[u] for u in utts) / 3600
        stats.append(st)

    if not splits["test"]:
        raise CorpusError(f"no test utterances: a speaker gives one to the test set from {TEST_MAX_FRACTION} "
                          f"usable utterances on; {found.layout.audio_dir} has {len(usable)} usable utterances "
                          f"of {len(by_speaker)} speaker(s)")
    out = Path(out_dir)
    for name, utts in splits.items():
        if name == "heldout" and not heldout:
            continue
        write_datadir(out / name, wav_scp={u: str(usable[u].path) for u in utts},
                      utt2spk={u: usable[u].speaker for u in utts})
    summary = PrepareSummary(
        corpus_dir=str(found.layout.root), version=found.layout.version, mic=found.mic, out_dir=str(out),
        options={"test_per_speaker": test_per_speaker, "heldout_speakers": heldout,
                 "max_utts_per_speaker": max_utts_per_speaker, "test_min_seconds": TEST_MIN_SECONDS,
                 "min_clip_seconds": MIN_CLIP_SECONDS},
        speakers=stats,
        skipped={f"no {mic} file": found.missing_mic, "unreadable header": sorted(unreadable),
                 "too short": too_short, "not named like VCTK": found.ignored},
    )
    atomic_write_json(out / "prepare.json", summary.to_dict())
    return summary


def check_sort_order(speakers: list[str]) -> None:
    """Raise :class:`CorpusError` if sorted ``<spk>_...`` utterance ids would interleave
    speakers (also used by the ZeroSpeech 2019 preparation)."""
    common.check_sort_order(speakers, "speaker dirs", "rename one of them")
