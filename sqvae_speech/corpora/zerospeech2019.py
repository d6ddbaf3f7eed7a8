"""ZeroSpeech 2019 ("TTS without T"), English dataset: layout check, the paper's training
set and dB^2 evaluation list, and Kaldi data dirs.

Layout (``CORPUS`` is what ``--corpus-dir`` points at, the dir holding ``english/``, or
``english/`` itself); all audio is 16 kHz mono wav named ``<spk>_<id>.wav``, the speaker
being the file-name prefix (``S015_0361841101.wav`` is speaker S015)::

    CORPUS/english/train/unit/S015_0361841101.wav        100 speakers ("unit discovery")
    CORPUS/english/train/voice/V001_0001866840.wav       the two target voices V001, V002
    CORPUS/english/train/parallel/source/<spk>_<id>.wav  (not used here)
    CORPUS/english/train/parallel/voice/V001_0000000047.wav
    CORPUS/english/test/<spk>_<id>.wav                   the test set (export, ABX)

Data dirs written by :func:`prepare` (speaker ids come from the file names, never from a
fixed list; the real corpus gives 102 training speakers):

* ``train``: ``english/train/unit`` + ``english/train/voice``, the paper's training set
  (``max_utts_per_speaker`` keeps the first M per speaker in SHA-1 order of the ids,
  for quick runs).
* ``eval``: the utterances of the paper's dB^2 list
  (``zerospeech2019_english_mse_evaluation.json``: 190 items of
  ``english/train/parallel/voice``, V001 x92 and V002 x98, each ``[path without .wav,
  speaker]``), or all of ``english/train/parallel/voice`` without a list; plus
  ``eval_list.txt`` (``utt spk`` lines in list order) for ``sqvae-speech evaluate --list``.
  Every list speaker must be a training speaker (each utterance is decoded as its own
  speaker); a listed file missing from the corpus is an error naming it.
* ``test``: ``english/test``.

Utterance ids are the file stems (``V001_0000000047``), which start with the speaker.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from ..errors import CorpusError
from ..fileio import atomic_write_json, atomic_write_text
from .common import hash_key
from .vctk import check_sort_order, header_durations

TRAIN_DIRS: tuple[str, ...] = ("english/train/unit", "english/train/voice")
EVAL_DIR = "english/train/parallel/voice"
SOURCE_DIR = "english/train/parallel/source"
TEST_DIR = "english/test"
MIN_CLIP_SECONDS = 0.1  # shorter files hold no speech

_NAME_RE = re.compile(r"(?P<spk>[A-Za-z]+[0-9]+)_(?P<rest>[A-Za-z0-9_-]+)")

PUBLISHED = ("ZeroSpeech 2019 is published at the ZeroSpeech challenge website, https://www.zerospeech.com "
             "(ZeroSpeech 2019 'TTS without T', the English dataset)")
EXPECTED = ("expected the ZeroSpeech 2019 English dataset: english/train/unit/<spk>_<id>.wav, "
            "english/train/voice/V001_<id>.wav and V002_<id>.wav, english/train/parallel/voice/, english/test/")




@dataclasses.dataclass(frozen=True)
class Utterance:
    utt_id: str
    speaker: str
    path: Path


def parse_name(path: str | Path) -> tuple[str, str] | None:
    """``(speaker, utterance id)`` of ``<spk>_<id>.wav`` (or a path without ``.wav``); None
    when the name does not follow the scheme."""
    stem = Path(path).name
    stem = stem.removesuffix(".wav")
    m = _NAME_RE.fullmatch(stem)
    return (m.group("spk"), stem) if m else None


def resolve_root(corpus_dir: str | Path) -> Path:
    """The dir holding ``english/`` (``corpus_dir`` itself, or its parent when it is
    ``english/``); a missing or incomplete corpus raises :class:`CorpusError`."""
    path = Path(corpus_dir)
    if not path.is_dir():
        raise CorpusError(f"ZeroSpeech 2019 corpus dir {path} does not exist; {EXPECTED}. {PUBLISHED}")
    root = path.parent if path.name == "english" and not (path / "english").is_dir() else path
    missing = [d for d in (*TRAIN_DIRS, TEST_DIR) if not (root / d).is_dir()]
    if missing:
        raise CorpusError(f"{path} does not look like ZeroSpeech 2019: {', '.join(missing)} not found under "
                          f"{root}; {EXPECTED}. {PUBLISHED}")
    return root


def scan_dir(directory: Path) -> tuple[list[Utterance], list[str]]:
    """``<spk>_<id>.wav`` files of one dir, sorted by id, and the other files (ignored)."""
    utts, ignored = [], []
    for f in sorted(directory.iterdir()):
        parsed = parse_name(f.name) if f.suffix == ".wav" and f.is_file() else None
        if parsed is None:
            ignored.append(str(f))
        else:
            utts.append(Utterance(parsed[1], parsed[0], f))
    return sorted(utts, key=lambda u: u.utt_id), ignored


def describe(corpus_dir: str | Path) -> str:
    """One line per part of the corpus: speakers and files found (no audio is read)."""
    root = resolve_root(corpus_dir)
    lines = [f"ZeroSpeech 2019 English at {root}:"]
    for d in (*TRAIN_DIRS, SOURCE_DIR, EVAL_DIR, TEST_DIR):
        if not (root / d).is_dir():
            lines.append(f"  {d}: missing")
            continue
        utts, ignored = scan_dir(root / d)
        extra = f", {len(ignored)} other file(s) ignored" if ignored else ""
        lines.append(f"  {d}: {len({u.speaker for u in utts})} speakers, {len(utts)} files{extra}")
    return "\n".join(lines)


def read_eval_list(path: str | Path) -> list[tuple[str, str]]:
    """``(corpus-relative path without .wav, speaker)`` pairs of a JSON list such as
    ``zerospeech2019_english_mse_evaluation.json``."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"evaluation list {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CorpusError(f"evaluation list {path} is not valid JSON: {e}") from None
    if not isinstance(data, list) or not data:
        raise CorpusError(f"evaluation list {path} must be a non-empty JSON list of [path, speaker] pairs")
    pairs = []
    for i, row in enumerate(data):
        if not (isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) for x in row)):
            raise CorpusError(f"evaluation list {path} item {i}: expected [path, speaker], got {row!r}")
        pairs.append((row[0], row[1]))
    return pairs


def map_eval_list(pairs: list[tuple[str, str]], root: Path, source: str = "evaluation list") -> list[Utterance]:
    """The corpus files of ``pairs`` (``english/...`` paths without ``.wav``): utterance id
    = file stem. A path leaving the corpus (absolute or with ``..``), a speaker that
    disagrees with the file name, a repeated utterance or a missing file raises
    :class:`CorpusError` (all missing files are named at once)."""
    out: list[Utterance] = []
    seen: dict[str, int] = {}
    missing = []
    for i, (rel, spk) in enumerate(pairs):
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise CorpusError(f"{source} item {i}: '{rel}' points outside the corpus at {root}; entries must be "
                              "corpus-relative paths such as english/test/S002_0379")
        parsed = parse_name(rel)
        if parsed is None:
            raise CorpusError(f"{source} item {i}: '{rel}' is not named <speaker>_<id>")
        if parsed[0] != spk:
            raise CorpusError(f"{source} item {i}: '{rel}' is listed as speaker {spk} but its name says {parsed[0]}")
        if parsed[1] in seen:
            raise CorpusError(f"{source} items {seen[parsed[1]]} and {i} both name utterance {parsed[1]}")
        seen[parsed[1]] = i
        path = root / (rel if rel.endswith(".wav") else rel + ".wav")
        if not path.is_file():
            missing.append(str(path))
        out.append(Utterance(parsed[1], spk, path))
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise CorpusError(f"{len(missing)} file(s) of the {source} are missing from the corpus at {root} "
                          f"(an incomplete download?):\n  {shown}\n{PUBLISHED}")
    return out




@dataclasses.dataclass
class PrepareSummary:
    """What :func:`prepare` wrote; also stored as ``<out_dir>/prepare.json``."""

    corpus_dir: str
    out_dir: str
    options: dict[str, Any]
    train: dict[str, tuple[int, float]]  # speaker -> (utterances, hours)
    eval: dict[str, int]  # speaker -> utterances
    test: tuple[int, float]  # (utterances, hours)
    skipped: dict[str, list[str]]  # reason -> utterance ids or paths

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table(self) -> str:
        lines = [f"{'speaker':<8} {'train utts':>10} {'train h':>8} {'eval utts':>10}"]
        for spk in sorted(set(self.train) | set(self.eval)):
            n, h = self.train.get(spk, (0, 0.0))
            lines.append(f"{spk:<8} {n:>10d} {h:>8.3f} {self.eval.get(spk, 0):>10d}")
        lines.append(f"{'total':<8} {sum(n for n, _ in self.train.values()):>10d} "
                     f"{sum(h for _, h in self.train.values()):>8.3f} {sum(self.eval.values()):>10d}")
        lines.append(f"{len(self.train)} training speakers; test: {self.test[0]} utterances, {self.test[1]:.3f} h")
        for reason, items in self.skipped.items():
            if items:
                shown = ", ".join(items[:8]) + (" ..." if len(items) > 8 else "")
                lines.append(f"skipped ({reason}): {len(items)}: {shown}")
        return "\n".join(lines)


def prepare(corpus_dir: str | Path, out_dir: str | Path, eval_list: str | Path | None = None,
            max_utts_per_speaker: int = 0, nj: int = 1, progress: bool = False) -> PrepareSummary:
    """Write ``out_dir/{train,eval,test}``, ``out_dir/eval_list.txt`` and
    ``out_dir/prepare.json`` (see the module docstring); return the summary."""
    from ..data.datadir import write_datadir

    if max_utts_per_speaker < 0:
        raise CorpusError(f"--max-utts-per-speaker must be >= 0 (0 means all), got {max_utts_per_speaker}")
    root = resolve_root(corpus_dir)
    ignored: list[str] = []
    train: dict[str, Utterance] = {}
    for d in TRAIN_DIRS:
        utts, skipped = scan_dir(root / d)
        ignored += skipped
        for u in utts:
            if u.utt_id in train:
                raise CorpusError(f"{u.path} and {train[u.utt_id].path} have the same name; remove one")
            train[u.utt_id] = u
    if not train:
        raise CorpusError(f"no <spk>_<id>.wav files under {root / TRAIN_DIRS[0]} or {root / TRAIN_DIRS[1]}; "
                          f"{EXPECTED}. {PUBLISHED}")
    if eval_list is not None:
        evals = map_eval_list(read_eval_list(eval_list), root, f"evaluation list {eval_list}")
    else:
        evals, skipped = scan_dir(root / EVAL_DIR) if (root / EVAL_DIR).is_dir() else ([], [])
        ignored += skipped
        if not evals:
            raise CorpusError(f"no evaluation files under {root / EVAL_DIR}; {EXPECTED}. {PUBLISHED}")
    tests, skipped = scan_dir(root / TEST_DIR)
    ignored += skipped
    if not tests:
        raise CorpusError(f"no <spk>_<id>.wav files under {root / TEST_DIR}; {EXPECTED}. {PUBLISHED}")

    check_sort_order(sorted({u.speaker for u in train.values()} | {u.speaker for u in tests}))

    paths = {f"train:{k}": u.path for k, u in train.items()}
    paths.update({f"eval:{u.utt_id}": u.path for u in evals})
    paths.update({f"test:{u.utt_id}": u.path for u in tests})
    durations, unreadable = header_durations(paths, nj, progress)
    bad = {k for k in paths if durations.get(k, 0.0) < MIN_CLIP_SECONDS}
    bad_eval = sorted(str(paths[k]) for k in bad if k.startswith("eval:"))
    if bad_eval:
        # A dB^2 figure over fewer utterances than the list would not be comparable.
        raise CorpusError(f"evaluation file(s) unreadable or empty: {', '.join(bad_eval[:10])}; "
                          f"download the corpus again. {PUBLISHED}")

    by_speaker: dict[str, list[str]] = {}
    for k, u in train.items():
        if f"train:{k}" not in bad:
            by_speaker.setdefault(u.speaker, []).append(k)
    untrained = sorted({u.speaker for u in evals} - set(by_speaker))
    if untrained:
        raise CorpusError(f"evaluation speaker(s) {', '.join(untrained)} have no (readable) training audio under "
                          f"{root / TRAIN_DIRS[1]}; each evaluation utterance is decoded as its own speaker, "
                          "so that speaker must be trained")
    kept: list[str] = []
    for utts in by_speaker.values():
        ordered = sorted(utts, key=hash_key)
        kept += ordered[:max_utts_per_speaker] if max_utts_per_speaker > 0 else ordered
    kept.sort()
    good_tests = [u for u in tests if f"test:{u.utt_id}" not in bad]
    if not good_tests:
        raise CorpusError(f"no readable test file under {root / TEST_DIR}; download the corpus again. {PUBLISHED}")

    out = Path(out_dir)
    write_datadir(out / "train", wav_scp={k: str(train[k].path) for k in kept},
                  utt2spk={k: train[k].speaker for k in kept})
    write_datadir(out / "eval", wav_scp={u.utt_id: str(u.path) for u in evals},
                  utt2spk={u.utt_id: u.speaker for u in evals})
    write_datadir(out / "test", wav_scp={u.utt_id: str(u.path) for u in good_tests},
                  utt2spk={u.utt_id: u.speaker for u in good_tests})
    atomic_write_text(out / "eval_list.txt", "".join(f"{u.utt_id} {u.speaker}\n" for u in evals))

    train_stats: dict[str, tuple[int, float]] = {}
    for k in kept:
        n, h = train_stats.get(train[k].speaker, (0, 0.0))
        train_stats[train[k].speaker] = (n + 1, h + durations[f"train:{k}"] / 3600)
    eval_stats: dict[str, int] = {}
    for u in evals:
        eval_stats[u.speaker] = eval_stats.get(u.speaker, 0) + 1
    summary = PrepareSummary(
        corpus_dir=str(root), out_dir=str(out),
        options={"eval_list": str(eval_list) if eval_list is not None else None,
                 "max_utts_per_speaker": max_utts_per_speaker, "min_clip_seconds": MIN_CLIP_SECONDS},
        train=dict(sorted(train_stats.items())), eval=dict(sorted(eval_stats.items())),
        test=(len(good_tests), sum(durations[f"test:{u.utt_id}"] for u in good_tests) / 3600),
        skipped={"unreadable header": sorted(k.split(":", 1)[1] for k in unreadable),
                 "too short": sorted(k.split(":", 1)[1] for k in bad - set(unreadable)),
                 "not named <spk>_<id>.wav": ignored},
    )
    atomic_write_json(out / "prepare.json", summary.to_dict())
    return summary
