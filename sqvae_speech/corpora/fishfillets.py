"""Fish Fillets NG voice tracks (Debian ``fillets-ng-data-cs`` / ``-nl``, GPL-2): the
embedded speech corpus, scanned into clips and written as Kaldi data dirs.

Layout of the sound dir (``<download>/root/usr/share/games/fillets-ng/sound``)::

    <level>/<lang>/<name>.ogg            lang: cs (Czech, mono) or nl (Dutch, stereo)
    share/<set>/<lang>/<name>.ogg        lines said in any level: borejokes (when the
                                         player idles), blackjokes (when a fish dies),
                                         border (leaving the room); <set> is the level

File names (stem ``<name>``), parsed by :func:`parse_name` into a speaker code and a word:

* ``<abbr>-<code>-<word>`` (most clips, e.g. ``let-m-divna``): the code is the 2nd
  field; the word is the rest and may itself hold dashes (``rand-2-3-0`` -> code ``2``,
  word ``3-0``).
* ``<code>-<word>`` or ``<word>-<code>`` (a few levels: hanoi, hole, linux, nowall,
  rush, fdto, gods, ...): if either field is a main code (``m``/``v``) it is the code
  (``m-bude``, ``agenti-m``); otherwise the 1st field is (``b1-voda1``: god 1).
* no dash (``help1``, ``bar_v_fotka``): no speaker code (``""``); never admitted.

Speaker id: ``f"{lang}-{code}"``. The main voices are the two fish, ``m`` (small fish)
and ``v`` (big fish), in each language: :data:`MAIN_SPEAKERS`. Minor characters
(``--include-minor``): a code admitted by :func:`minor_speakers` needs at least
:data:`MINOR_MIN_CLIPS` clips in its language and must not be numeric (digit codes name
different characters in different levels, e.g. the vikings ``dr-1``/``d1-1``, and in
the nl key/electromagnet levels they are event counters, ``rd-4-0``) nor ``x`` (a
catch-all for one-off objects: a disk, a map, a ghost...). On this corpus that admits
cs-b1, cs-b2 (the two gods playing battleships), cs-c (the counting voice of the
ending), cs-hs (the announcer of city/pavement/music) and cs-pap (the parrot).

Clips shorter than :data:`MIN_CLIP_SECONDS` hold no audio (two nl files are empty) and
are skipped.

Held-out test set, per speaker (deterministic, independent of file-system order and of
which other speakers are prepared): order the speaker's clips by the SHA-1 of their
utterance id; the test set is the first ``n`` clips in that order that last at least
:data:`TEST_MIN_SECONDS`, where ``n = min(test_per_speaker, clips // 5)`` (a test set
never takes more than a fifth of a speaker). Default ``test_per_speaker`` = 30, i.e.
30 clips (~2 minutes) for each main voice. Training gets the rest; ``max_train`` (the
recipe's ``--max-utts-per-speaker``) keeps only the first ``max_train`` training clips
in hash order, for quick runs: the test set does not change with it, so a quick run
is evaluated on the same clips as a full one.

Utterance ids are ``f"{speaker}_{level}_{word}"`` with every character outside
``[A-Za-z0-9-]`` turned into ``-``: the speaker prefix makes sorted utterance ids group
by speaker in sorted speaker order, as Kaldi requires.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import soundfile

from ..errors import AudioError, CorpusError
from ..fileio import atomic_write_json
from .common import check_sort_order, hashed_split

LANGS: tuple[str, ...] = ("cs", "nl")
MAIN_CODES: tuple[str, ...] = ("m", "v")
MAIN_SPEAKERS: tuple[str, ...] = ("cs-m", "cs-v", "nl-m", "nl-v")
SHARED_DIR = "share"
MINOR_MIN_CLIPS = 20
MINOR_EXCLUDED_CODES: tuple[str, ...] = ("x",)
MIN_CLIP_SECONDS = 0.1
TEST_MIN_SECONDS = 1.0
TEST_MAX_FRACTION = 5  # a test set holds at most 1/5 of a speaker's clips
DEFAULT_TEST_PER_SPEAKER = 30

FETCH_HINT = (
    "fetch it with `bash recipes/fishfillets/local/download.sh DIR` (or `make corpus`) and pass "
    "DIR/root/usr/share/games/fillets-ng/sound, or DIR itself (its .done file names the sound dir)"
)




@dataclasses.dataclass(frozen=True)
class Clip:
    """One voice clip. ``level`` is the level dir (or the ``share/<set>`` set name)."""

    path: Path
    level: str
    lang: str
    code: str
    word: str

    @property
    def speaker(self) -> str:
        return f"{self.lang}-{self.code}"

    @property
    def utt_id(self) -> str:
        return f"{_sanitize(self.speaker)}_{_sanitize(self.level)}_{_sanitize(self.word)}"


@dataclasses.dataclass
class SpeakerStats:
    """Utterance counts and hours of one speaker in the train and test splits."""

    speaker: str
    train_utts: int = 0
    train_hours: float = 0.0
    test_utts: int = 0
    test_hours: float = 0.0


@dataclasses.dataclass
class PrepareSummary:
    """What :func:`prepare` wrote; also stored as ``<out_dir>/prepare.json``."""

    sound_dir: str
    out_dir: str
    options: dict[str, Any]
    speakers: list[SpeakerStats]
    skipped: list[str]  # utterance ids of clips too short to hold audio

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table(self) -> str:
        """A per-speaker table of utterances and hours, with a total row."""
        rows = [(s.speaker, s.train_utts, s.train_hours, s.test_utts, s.test_hours) for s in self.speakers]
        total = ("total", sum(r[1] for r in rows), sum(r[2] for r in rows),
                 sum(r[3] for r in rows), sum(r[4] for r in rows))
        lines = [f"{'speaker':<10} {'train utts':>10} {'train h':>8} {'test utts':>10} {'test h':>8}"]
        for r in rows + [total]:
            lines.append(f"{r[0]:<10} {r[1]:>10d} {r[2]:>8.3f} {r[3]:>10d} {r[4]:>8.3f}")
        if self.skipped:
            lines.append(f"skipped (no audio): {', '.join(self.skipped)}")
        return "\n".join(lines)


def _sanitize(text: str) -> str:
    return re.sub("[^A-Za-z0-9-]", "-", text)


def parse_name(stem: str) -> tuple[str, str]:
    """Split a clip's file stem into ``(speaker code, word)``; see the module docstring."""
    parts = stem.split("-")
    if len(parts) >= 3:
        return parts[1], "-".join(parts[2:])
    if len(parts) == 2:
        first, second = parts
        if first in MAIN_CODES:
            return first, second
        if second in MAIN_CODES:
            return second, first
        return first, second
    return "", stem


def resolve_sound_dir(path: str | Path) -> Path:
    """The sound dir itself, or the one named by ``path/.done`` (a download dir); absolute,
    so the data dirs' wav.scp stays valid from any working directory."""
    path = Path(path).absolute()
    done = path / ".done"
    if done.is_file():
        named = Path(done.read_text(encoding="utf-8").strip())
        if not named.is_dir():
            raise CorpusError(f"{done} names the sound dir {named}, which does not exist; "
                              f"remove {path} and fetch the corpus again: {FETCH_HINT}")
        return named
    return path


def scan(sound_dir: str | Path) -> list[Clip]:
    """All clips under ``sound_dir`` (or a download dir), sorted by path.

    Raises :class:`CorpusError` if the dir is missing or holds no
    ``<level>/<cs|nl>/*.ogg`` clips.
    """
    root = resolve_sound_dir(sound_dir)
    if not root.is_dir():
        raise CorpusError(f"sound dir {root} does not exist; {FETCH_HINT}")
    clips = []
    for path in sorted(root.glob("*/*/*.ogg")) + sorted(root.glob(f"{SHARED_DIR}/*/*/*.ogg")):
        rel = path.relative_to(root).parts
        if rel[0] == SHARED_DIR:
            if len(rel) != 4:
                continue
            level, lang = rel[1], rel[2]
        else:
            level, lang = rel[0], rel[1]
        if lang not in LANGS:
            continue
        code, word = parse_name(path.stem)
        clips.append(Clip(path=path, level=level, lang=lang, code=code, word=word))
    if not clips:
        raise CorpusError(
            f"{root} does not look like the Fish Fillets NG sound dir: expected "
            f"<level>/<cs|nl>/<abbr>-<speaker>-<word>.ogg files under it; {FETCH_HINT}"
        )
    return sorted(clips, key=lambda c: str(c.path))


def minor_speakers(clips: Iterable[Clip]) -> list[str]:
    """Speaker ids of the minor characters admitted by the rule in the module docstring."""
    counts = Counter(c.speaker for c in clips if c.code)
    out = []
    for spk, n in counts.items():
        code = spk.split("-", 1)[1]
        if (spk not in MAIN_SPEAKERS and n >= MINOR_MIN_CLIPS and code.isalnum()
                and not code.isdigit() and code not in MINOR_EXCLUDED_CODES):
            out.append(spk)
    return sorted(out)


def clip_duration(path: Path) -> float:
    """Duration in seconds from the file header (no decoding)."""
    try:
        return float(soundfile.info(str(path)).duration)
    except RuntimeError as e:  # soundfile.LibsndfileError derives from it
        raise AudioError(f"cannot read {path}: {e}; the corpus looks damaged, fetch it again: {FETCH_HINT}") from e




def split_speaker(
    utt_ids: Sequence[str], durations: dict[str, float], test_per_speaker: int, max_train: int = 0
) -> tuple[list[str], list[str]]:
    """Split one speaker's utterances into (train, test), both sorted; rule in the module
    docstring. ``max_train`` 0 keeps all training utterances."""
    return hashed_split(utt_ids, durations, test_per_speaker, TEST_MAX_FRACTION, TEST_MIN_SECONDS, max_train)


def prepare(
    sound_dir: str | Path,
    out_dir: str | Path,
    speakers: Sequence[str] = MAIN_SPEAKERS,
    include_minor: bool = False,
    test_per_speaker: int = DEFAULT_TEST_PER_SPEAKER,
    max_utts_per_speaker: int = 0,
) -> PrepareSummary:
    """Write ``out_dir/train`` and ``out_dir/test`` (wav.scp, utt2spk, spk2utt) and
    ``out_dir/prepare.json``; return the summary.

    ``speakers``: speaker ids to admit; ``include_minor`` adds :func:`minor_speakers`.
    ``max_utts_per_speaker`` caps training utterances per speaker (0: all).
    """
    from ..data.datadir import write_datadir

    if test_per_speaker < 1:
        raise CorpusError(f"--test-per-speaker must be >= 1 (a data dir cannot be empty), got {test_per_speaker}")
    if max_utts_per_speaker < 0:
        raise CorpusError(f"--max-utts-per-speaker must be >= 0 (0 means all), got {max_utts_per_speaker}")
    root = resolve_sound_dir(sound_dir)
    clips = scan(root)
    present = sorted({c.speaker for c in clips if c.code})
    wanted = set(speakers) | (set(minor_speakers(clips)) if include_minor else set())
    missing = sorted(wanted - set(present))
    if missing:
        raise CorpusError(f"speaker(s) {', '.join(missing)} not found in {root}; "
                          f"speakers there: {', '.join(present)}")

    by_speaker: dict[str, dict[str, Clip]] = defaultdict(dict)
    for clip in clips:
        if clip.speaker not in wanted:
            continue
        seen = by_speaker[clip.speaker].get(clip.utt_id)
        if seen is not None:
            raise CorpusError(f"{clip.path} and {seen.path} both map to utterance id {clip.utt_id}; "
                              "the corpus has an unexpected layout (rename one of them)")
        by_speaker[clip.speaker][clip.utt_id] = clip
    _check_sort_order(sorted(wanted))

    durations: dict[str, float] = {}
    skipped: list[str] = []
    for spk in sorted(by_speaker):
        for utt, clip in list(by_speaker[spk].items()):
            durations[utt] = clip_duration(clip.path)
            if durations[utt] < MIN_CLIP_SECONDS:
                skipped.append(utt)
                del by_speaker[spk][utt]

    splits: dict[str, dict[str, str]] = {"train": {}, "test": {}}  # split -> utt -> spk
    stats = []
    for spk in sorted(by_speaker):
        train, test = split_speaker(list(by_speaker[spk]), durations, test_per_speaker, max_utts_per_speaker)
        splits["train"].update((u, spk) for u in train)
        splits["test"].update((u, spk) for u in test)
        stats.append(SpeakerStats(
            speaker=spk,
            train_utts=len(train), train_hours=sum(durations[u] for u in train) / 3600,
            test_utts=len(test), test_hours=sum(durations[u] for u in test) / 3600,
        ))

    out = Path(out_dir)
    clip_of = {u: c for spk_clips in by_speaker.values() for u, c in spk_clips.items()}
    for name, utt2spk in splits.items():
        utts = sorted(utt2spk)
        write_datadir(out / name,
                      wav_scp={u: str(clip_of[u].path) for u in utts},
                      utt2spk={u: utt2spk[u] for u in utts})
    summary = PrepareSummary(
        sound_dir=str(root), out_dir=str(out),
        options={"speakers": sorted(wanted), "include_minor": include_minor,
                 "test_per_speaker": test_per_speaker, "max_utts_per_speaker": max_utts_per_speaker,
                 "test_min_seconds": TEST_MIN_SECONDS, "min_clip_seconds": MIN_CLIP_SECONDS},
        speakers=stats, skipped=sorted(skipped),
    )
    atomic_write_json(out / "prepare.json", summary.to_dict())
    return summary


def _check_sort_order(speakers: list[str]) -> None:
    check_sort_order(speakers, "speaker ids", "prepare them in separate runs")
