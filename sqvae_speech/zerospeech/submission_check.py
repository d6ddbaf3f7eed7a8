"""Checks of a ZeroSpeech 2019 submission, as the challenge's own validator makes them.

:func:`validate_submission` takes a submission dir or zip and returns its problems (an
empty list: valid); :func:`check_submission` raises :class:`SubmissionError` naming them.
Each :class:`Problem` has a ``code`` naming its kind. The rules are re-implemented from
the validator's source (``bootphon/zerospeech2020``, now ``zerospeech/zerospeech2020``),
each from the file named:

- layout (``validation/utils.py`` ``validate_directory``, ``validation/submission_2019.py``):
  the top level holds ``metadata.yaml`` and ``english/``, may hold ``surprise/`` and
  ``code/``, and nothing else (extra-entry, missing-entry); ``auxiliary_embedding1``/``2``
  are in every language or in none, and ``auxiliary_embedding2`` needs
  ``auxiliary_embedding1`` (auxiliary-mismatch);
- metadata (``validation/utils.py`` ``validate_yaml``; the fields of
  ``validation/submission_2019.py`` and, for ``author``, ``affiliation`` and ``open
  source``, ``validation/submission_2020.py``): YAML with tabs read as spaces, a non-empty
  mapping (metadata-unreadable) with every field of :data:`METADATA_FIELDS`
  (metadata-missing-field) and no other (metadata-forbidden-field), no empty value
  (metadata-empty-field), each of its type (metadata-type), ``abx distance`` one of
  :data:`ABX_DISTANCES` (metadata-value); ``auxiliaryN description`` is required when
  ``auxiliary_embeddingN`` exists, allowed otherwise;
- code (``validation/utils.py`` ``validate_code``): open source needs a non-empty
  ``code/``; closed source tolerates only an empty one (code);
- file set (``validation/submission_2019.py`` ``_check_exists``, with the lists of
  ``share/2019/english``): ``english/test`` holds ``<file>.txt`` for every
  ``english/test/<file>.wav`` of the corpus and ``<voice>_<id>.wav`` for every line
  ``test/<spk>_<id>.wav <voice>`` of its ``english/synthesis.txt``; each auxiliary dir
  holds every ``<file>.txt`` (missing-file). The lists are read from the corpus given,
  not from a shipped copy (the test sets of the 2019 and 2020 releases differ); without
  a corpus this check is skipped and every ``.txt`` / ``.wav`` found is checked;
- frames (``read_2019_features.py``): UTF-8 text, one frame per line, values separated
  by single spaces, blank lines skipped, not empty, every value a number (frame-format);
  every line of a file as wide as its first (frame-width) and every file of a dir as
  wide as the others (dimension-mismatch). Stricter than the reference, which only
  prints these errors: they are errors here, and NaN or inf is refused too;
- audio (``validation/submission_2019.py`` ``_check_wavs``): each synthesized ``.wav``
  opens as a wav file (Python's ``wave``) and lasts more than 0 s (bad-wav).

Unlike the reference, every problem is collected (it stops at the first metadata or
layout error). The ZeroSpeech 2020 edition nests this layout under ``2019/``, with
``author``, ``affiliation`` and ``open source`` in a top-level ``metadata.yaml``, and
needs the surprise language, which this toolkit has no corpus for: ``require_surprise``
asks for ``surprise/``, whose frames and audio are then checked but not its file set.
"""

from __future__ import annotations

import os
import re
import tempfile
import wave
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..corpora import zerospeech2019 as zs
from ..errors import SQVAEError

SYNTHESIS_LIST = "english/synthesis.txt"
LANGUAGES = ("english", "surprise")
AUXILIARY = ("auxiliary_embedding1", "auxiliary_embedding2")
TOP_LEVEL = ("metadata.yaml", "english", "surprise", "code")
ABX_DISTANCES = ("dtw_cosine", "dtw_kl", "levenshtein")
# field -> type (None: any non-empty value); the 2019 fields plus the top-level ones
METADATA_FIELDS: dict[str, type | None] = {
    "author": str, "affiliation": str, "open source": bool, "abx distance": str, "system description": str,
    "hyperparameters": None, "using parallel train": bool, "using external data": bool,
}
AUX_DESCRIPTIONS = {"auxiliary_embedding1": "auxiliary1 description", "auxiliary_embedding2": "auxiliary2 description"}
MAX_SHOWN = 20


class SubmissionError(SQVAEError):
    """A submission cannot be written, or is not valid (the message names each problem)."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def unsafe_entry(name: str) -> str | None:
    """Why the zip entry ``name`` could land outside the folder it is unpacked into (or
    is no plain name), or None: an absolute or drive path, a ``..`` part, a backslash (a
    separator on Windows) or a control character."""
    if not name or name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "an absolute path"
    if ".." in name.split("/"):
        return "a '..' part"
    if "\\" in name:
        return "a backslash"
    if re.search(r"[\x00-\x1f\x7f]", name):
        return "a control character"
    return None


class Problem(NamedTuple):
    """One thing wrong with a submission. ``code`` names the kind: missing-entry,
    extra-entry, auxiliary-mismatch, metadata-unreadable, metadata-missing-field,
    metadata-forbidden-field, metadata-empty-field, metadata-type, metadata-value, code,
    missing-file, frame-format, frame-width, dimension-mismatch, bad-wav, not-a-submission,
    unsafe-entry."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class SynthesisItem:
    source: Path  # the corpus' english/test/<spk>_<id>.wav
    voice: str  # V001 or V002
    output: str  # <voice>_<id>.wav


# -- the corpus' lists ----------------------------------------------------------------
def corpus_test_names(corpus_dir: str | os.PathLike) -> list[str]:
    """``<spk>_<id>`` of every ``english/test/<spk>_<id>.wav`` of the corpus."""
    return [u.utt_id for u in zs.scan_dir(zs.resolve_root(corpus_dir) / zs.TEST_DIR)[0]]


def read_synthesis_list(corpus_dir: str | os.PathLike) -> list[SynthesisItem]:
    """The dataset's ``english/synthesis.txt``: ``test/<spk>_<id>.wav <voice>`` lines, each
    asking for ``english/test/<voice>_<id>.wav`` in the submission."""
    root = zs.resolve_root(corpus_dir)
    path = root / SYNTHESIS_LIST
    if not path.is_file():
        raise SubmissionError(f"{path} not found: the synthesis list ships with the ZeroSpeech 2019 dataset "
                              f"(lines 'test/<spk>_<id>.wav V001'). {zs.PUBLISHED}")
    items: dict[str, SynthesisItem] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        parsed = zs.parse_name(parts[0]) if len(parts) == 2 and parts[0].startswith("test/") else None
        voice = parts[1] if len(parts) == 2 else ""
        if parsed is None or zs.parse_name(f"{voice}_0") is None:
            raise SubmissionError(f"{path} line {n}: expected 'test/<spk>_<id>.wav <voice>', got '{line.strip()}'")
        output = f"{voice}_{parsed[1].split('_', 1)[1]}.wav"
        if output in items:
            raise SubmissionError(f"{path} line {n}: a second line asks for {output}")
        source = root / "english" / parts[0]
        if not source.is_file():
            raise SubmissionError(f"{path} line {n}: {source} does not exist (an incomplete download?)")
        items[output] = SynthesisItem(source, voice, output)
    if not items:
        raise SubmissionError(f"{path} lists no file")
    return list(items.values())


# -- validation -----------------------------------------------------------------------
def validate_submission(path: str | os.PathLike, corpus_dir: str | os.PathLike | None = None,
                        require_surprise: bool = False) -> list[Problem]:
    """Problems of a submission dir or zip (module docstring; an empty list: valid).
    ``corpus_dir`` gives the expected file set of ``english/``; None skips that check."""
    path = Path(path)
    if path.is_dir():
        return _validate_tree(path, corpus_dir, require_surprise)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return [Problem("not-a-submission", f"{path} is neither a directory nor a zip file")]
    with tempfile.TemporaryDirectory(prefix="sqvae-submission-") as tmp:
        try:
            with zipfile.ZipFile(path) as z:
                unsafe = [f"{n!r} ({why})" for n in z.namelist() if (why := unsafe_entry(n))]
                if unsafe:  # never unpacked
                    return [Problem("unsafe-entry", f"{path} has entries that would unpack outside its folder or "
                                                    f"are no plain names: {', '.join(unsafe[:5])}")]
                z.extractall(tmp)
        except (zipfile.BadZipFile, OSError) as e:
            return [Problem("not-a-submission", f"{path} cannot be unpacked ({e})")]
        return _validate_tree(Path(tmp), corpus_dir, require_surprise)


def check_submission(path: str | os.PathLike, corpus_dir: str | os.PathLike | None = None,
                     require_surprise: bool = False) -> None:
    """:func:`validate_submission`, raising :class:`SubmissionError` naming the problems."""
    problems = validate_submission(path, corpus_dir, require_surprise)
    if problems:
        raise SubmissionError(describe_problems(path, problems), problems)


def describe_problems(path: str | os.PathLike, problems: Sequence[Problem]) -> str:
    shown = "\n  ".join(str(p) for p in problems[:MAX_SHOWN])
    more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    return f"{path} is not a valid ZeroSpeech 2019 submission: {len(problems)} problem(s):\n  {shown}{more}"


def _validate_tree(root: Path, corpus_dir: Any, require_surprise: bool) -> list[Problem]:
    problems: list[Problem] = []
    entries = set(os.listdir(root))
    extra = sorted(entries - set(TOP_LEVEL))
    if extra:
        nested = len(entries) == 1 and (root / extra[0] / "metadata.yaml").is_file()
        hint = f" (zip the contents of {extra[0]}/, not the dir itself)" if nested else ""
        problems.append(Problem("extra-entry", f"the top level holds {', '.join(extra)}; only "
                                               f"{', '.join(TOP_LEVEL)} are allowed{hint}"))
    languages = [lang for lang in LANGUAGES if (root / lang).is_dir()]
    aux = {}
    for name in AUXILIARY:
        present = [lang for lang in languages if (root / lang / name).is_dir()]
        if present and len(present) != len(languages):
            problems.append(Problem("auxiliary-mismatch", f"{name} is in {', '.join(present)} but not in every language"))
        aux[name] = bool(present)
    if aux[AUXILIARY[1]] and not aux[AUXILIARY[0]]:
        problems.append(Problem("auxiliary-mismatch", f"{AUXILIARY[1]} without {AUXILIARY[0]}"))
    meta, meta_problems = _check_metadata(root / "metadata.yaml", aux)
    problems += meta_problems
    open_source = meta.get("open source")  # code/ is checked only against a valid declaration
    required = ["metadata.yaml", "english"] + ["surprise"] * require_surprise + ["code"] * (open_source is True)
    for name in required:
        if name not in entries:
            problems.append(Problem("missing-entry", f"{name} is missing from the top level"))
        elif (name == "metadata.yaml") == (root / name).is_dir():
            problems.append(Problem("missing-entry", f"{name} at the top level is a "
                                                     f"{'dir' if name == 'metadata.yaml' else 'file'}"))
    code = root / "code"
    if open_source is True and code.is_dir() and not os.listdir(code):
        problems.append(Problem("code", "the submission is declared open source but code/ is empty"))
    if open_source is False and code.is_dir() and os.listdir(code):
        problems.append(Problem("code", "the submission is declared closed source but code/ is not empty"))
    for lang in languages:
        dirs = ["test"] + [a for a in AUXILIARY if aux[a]]
        names, wavs = None, None
        if lang == "english" and corpus_dir is not None:
            names, wavs = corpus_test_names(corpus_dir), [it.output for it in read_synthesis_list(corpus_dir)]
        for d in dirs:
            directory = root / lang / d
            if not directory.is_dir():
                problems.append(Problem("missing-entry", f"{lang}/{d} is missing"))
                continue
            if names is not None:
                want = [f"{n}.txt" for n in names] + (wavs if d == "test" else [])
                have = set(os.listdir(directory))
                problems += [Problem("missing-file", f"{lang}/{d}/{f} is missing") for f in want if f not in have]
            txts = [f"{n}.txt" for n in names] if names is not None else sorted(
                p.name for p in directory.glob("*.txt"))
            problems += _check_frames(directory, txts, f"{lang}/{d}")
            if d == "test":
                found = wavs if wavs is not None else sorted(p.name for p in directory.glob("*.wav"))
                problems += _check_wavs(directory, found, f"{lang}/{d}")
    return problems


def _check_metadata(path: Path, aux: dict[str, bool]) -> tuple[dict[Any, Any], list[Problem]]:
    import yaml

    if not path.is_file():
        return {}, []  # named by the top-level check
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8").replace("\t", " "))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        return {}, [Problem("metadata-unreadable", f"metadata.yaml is not valid YAML ({e})")]
    if not data or not isinstance(data, dict):
        return {}, [Problem("metadata-unreadable", "metadata.yaml must be a non-empty mapping of fields")]
    required = dict(METADATA_FIELDS)
    optional: dict[str, type | None] = {}
    for d, key in AUX_DESCRIPTIONS.items():
        (required if aux.get(d) else optional)[key] = str
    problems = []
    missing = [k for k in required if k not in data]
    if missing:
        problems.append(Problem("metadata-missing-field", f"metadata.yaml lacks {', '.join(map(repr, missing))}"))
    forbidden = [str(k) for k in data if k not in required and k not in optional]
    if forbidden:
        problems.append(Problem("metadata-forbidden-field", f"metadata.yaml has unknown field(s) "
                                                            f"{', '.join(map(repr, forbidden))}"))
    kinds = {**required, **optional}
    for key, value in data.items():
        if key not in kinds:
            continue
        if value is None:
            problems.append(Problem("metadata-empty-field", f"metadata.yaml field '{key}' is empty"))
        elif kinds[key] is not None and not isinstance(value, kinds[key]):  # type: ignore[arg-type]
            want = "true or false" if kinds[key] is bool else "text"
            problems.append(Problem("metadata-type", f"metadata.yaml field '{key}' must be {want}, got {value!r}"))
    if isinstance(data.get("abx distance"), str) and data["abx distance"] not in ABX_DISTANCES:
        problems.append(Problem("metadata-value", f"metadata.yaml field 'abx distance' must be one of "
                                                  f"{', '.join(ABX_DISTANCES)}, got {data['abx distance']!r}"))
    return data, problems


def _check_frames(directory: Path, files: list[str], where: str) -> list[Problem]:
    """The frame format of the ``files`` of ``directory`` that exist, and one width for all."""
    problems: list[Problem] = []
    width_of: tuple[str, int] | None = None
    for name in files:
        path = directory / name
        if not path.is_file():
            continue  # a missing file is reported by the file-set check
        width, problem = frame_width(path, f"{where}/{name}")
        if problem is not None:
            problems.append(problem)
        elif width_of is None:
            width_of = (name, width)
        elif width != width_of[1]:
            problems.append(Problem("dimension-mismatch", f"{where}/{name} has {width} values per frame, "
                                                          f"{where}/{width_of[0]} {width_of[1]}"))
    return problems


def frame_width(path: Path, label: str) -> tuple[int, Problem | None]:
    """(values per frame, None) of a well-formed feature text file, else (0, its problem)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return 0, Problem("frame-format", f"{label} is not UTF-8 text")
    except OSError as e:
        return 0, Problem("frame-format", f"{label} cannot be read ({e.strerror or e})")
    lines: list[tuple[int, str]] = []
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if line in ("", " "):
            continue
        if lines and line.count(" ") != lines[0][1].count(" "):
            return 0, Problem("frame-width", f"{label} line {n} has {line.count(' ') + 1} values, line "
                                             f"{lines[0][0]} {lines[0][1].count(' ') + 1}")
        lines.append((n, line))
    if not lines:
        return 0, Problem("frame-format", f"{label} is empty")
    tokens = " ".join(line for _, line in lines).split(" ")
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:  # find the culprit (Python's float() is the reference's parser)
        for n, line in lines:
            for token in line.split(" "):
                try:
                    float(token)
                except ValueError:
                    return 0, Problem("frame-format", f"{label} line {n}: {token!r} is not a number (values are "
                                                      "separated by single spaces)")
        values = np.array([float(t) for t in tokens])
    if not np.isfinite(values).all():
        n = lines[int(np.flatnonzero(~np.isfinite(values))[0]) // (lines[0][1].count(" ") + 1)][0]
        return 0, Problem("frame-format", f"{label} line {n} holds NaN or inf")
    return lines[0][1].count(" ") + 1, None


def _check_wavs(directory: Path, files: list[str], where: str) -> list[Problem]:
    problems = []
    for name in files:
        path = directory / name
        if not path.is_file():
            continue
        try:
            with wave.open(str(path), "rb") as w:
                if w.getframerate() <= 0 or w.getnframes() <= 0:
                    problems.append(Problem("bad-wav", f"{where}/{name} is empty"))
        except (wave.Error, EOFError) as e:
            problems.append(Problem("bad-wav", f"{where}/{name} cannot be read as a wav file ({e})"))
    return problems
