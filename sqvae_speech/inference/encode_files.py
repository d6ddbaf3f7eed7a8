"""``sqvae-speech encode``: units or features of audio files, one output file per input.

Inputs are files, directories (searched recursively for :data:`AUDIO_SUFFIXES`) and
``--list`` files of ``name path`` lines (a Kaldi ``wav.scp`` without pipes). A file's
output name is its stem, a directory member's its path below the directory without the
suffix, a list entry's its name; whitespace becomes ``_``.

Formats: ``npy`` (``<name>.npy``: int64 ``[T']`` indices or float32 ``[T', D]``),
``zerospeech`` (``<name>.txt``, one frame per line) and ``units`` (``<name>.units``, one
line of code indices, ``--dedup`` collapsing repeats; ``OUT/units.txt`` gathers them as
``name<TAB>indices`` lines). ``OUT/export.json`` describes the dir as ``sqvae-speech
export`` does, so ``bitrate`` and ``abx`` read it.

Each file is encoded and written atomically as it comes, a long recording chunk by chunk
(bounded memory). A rerun skips outputs already written; another model, kind or format
in the same dir is refused unless ``--overwrite``. A bad file does not stop the run: it is
reported and listed in ``OUT/failed.txt`` (``name<TAB>path<TAB>reason``), and the command
exits 2 at the end. One run at a time writes an output dir (its lock,
:mod:`sqvae_speech.locks`): a second one stops at once.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AudioError, SQVAEError
from ..fileio import atomic_path, atomic_write_json, atomic_write_text
from ..locks import dir_lock
from ..zerospeech.export import META, META_FORMAT, TEXT_FMT, read_export_meta
from .model import Model
from .units import dedup, units_text

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".caf", ".w64")
KINDS = ("indices", "quantized", "auxiliary")
FORMATS = {"npy": ".npy", "zerospeech": ".txt", "units": ".units"}
FAILED = "failed.txt"
UNITS_FILE = "units.txt"
PREFETCH = 32  # files whose features are computed ahead of the encoder
WINDOW = 32  # files gathered, then sorted by length into batches (as export buckets a store)
BATCH_FRAMES = 8000  # padded mel frames per encoder batch (as export batches)
MAX_PENDING_WRITES = 64  # encoded files waiting for the writer thread


@dataclass
class EncodeSummary:
    out_dir: Path
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def real_time(self) -> float:
        """Seconds of audio encoded per second of wall clock."""
        return self.audio_seconds / max(self.wall_seconds, 1e-9)


def _name(text: str) -> str:
    return re.sub(r"\s+", "_", text.strip())


def collect_inputs(paths: Sequence[str | os.PathLike], lists: Sequence[str | os.PathLike] = ()) -> dict[str, str]:
    """Output name -> audio path for every input (module docstring). A missing path, an
    empty directory or two inputs with one name is an SQVAEError."""
    found: dict[str, str] = {}

    def add(name: str, path: Path, where: str) -> None:
        name = _name(name)
        if not name or name.startswith("/") or ".." in Path(name).parts:
            raise SQVAEError(f"{where}: output name {name!r} must be a relative path without '..'")
        if name in found and found[name] != str(path):
            raise SQVAEError(f"{found[name]} and {path} would both be written as '{name}'; rename one, or give "
                             "them names with --list")
        found[name] = str(path)

    for p in map(Path, paths):
        if p.is_dir():
            members = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            if not members:
                raise SQVAEError(f"{p} holds no audio file ({', '.join(AUDIO_SUFFIXES)})")
            for f in members:
                add(str(f.relative_to(p).with_suffix("")), f, str(p))
        elif p.exists():
            add(p.stem, p, str(p))
        else:
            raise SQVAEError(f"{p}: no such file or directory")
    for lst in map(Path, lists):
        if not lst.is_file():
            raise SQVAEError(f"--list {lst}: no such file")
        for n, line in enumerate(lst.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or parts[1].rstrip().endswith("|"):
                raise SQVAEError(f"{lst} line {n}: expected 'name path-to-audio' (commands ending in '|' are not "
                                 f"supported: convert to a file first), got '{line.strip()}'")
            path = Path(parts[1].strip())
            add(parts[0], path if path.is_absolute() else lst.parent / path, f"{lst} line {n}")
    if not found:
        raise SQVAEError("no input: give audio files, directories or --list")
    return found


def _write_values(path: Path, pieces: Iterable[np.ndarray], total: int, dim: int, kind: str, file_format: str,
                  dedup_units: bool) -> None:
    """Write consecutive ``pieces`` ([t] indices or [t, D] vectors; ``total`` frames in all)
    of one recording into ``path`` atomically, a piece at a time."""
    with atomic_path(path, suffix=path.suffix) as tmp, open(tmp, "wb") as f:
        if file_format == "units":
            last, sep = None, ""  # a run of one unit may span pieces: --dedup carries its value over
            for v in pieces:
                if dedup_units:
                    v = dedup(v)
                    v = v[1:] if last is not None and v.size and v[0] == last else v
                if v.size:
                    f.write((sep + units_text(v)).encode("utf-8"))
                    sep, last = " ", int(v[-1])
            f.write(b"\n")
        elif file_format == "npy":
            shape = (total,) if kind == "indices" else (total, dim)
            dtype = np.dtype("<i8") if kind == "indices" else np.dtype("<f4")
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
            f.writelines(np.ascontiguousarray(v, dtype=dtype).data for v in pieces)
        else:
            fmt = "%d" if kind == "indices" else TEXT_FMT
            for v in pieces:
                np.savetxt(f, v if v.ndim == 2 else v[:, None], fmt=fmt, delimiter=" ")


def _kind_values(units: Any, kind: str) -> np.ndarray:
    return {"indices": units.indices, "quantized": units.quantized, "auxiliary": units.z}[kind]


def _write_long(model: Model, audio: str, path: Path, kind: str, file_format: str, dedup_units: bool) -> float:
    """Encode one long recording into ``path`` chunk by chunk (only one chunk's features and
    values in memory). Returns the audio's seconds."""
    from .audio_input import check_length, mel_input

    with mel_input(audio, model.features) as inp:
        check_length(inp, model.features)
        total = (inp.frames - inp.frames % 2 - 2) // 2
        pieces = (_kind_values(u, kind) for u in model._encode_input(inp))
        _write_values(path, pieces, total, model.config.model.embedding_dim, kind, file_format, dedup_units)
        return inp.seconds


def encode_files(
    model: Model, inputs: dict[str, str], out_dir: str | os.PathLike, kind: str = "indices",
    file_format: str = "npy", dedup_units: bool = False, overwrite: bool = False, progress: bool = True,
) -> EncodeSummary:
    """Encode ``inputs`` (name -> path, :func:`collect_inputs`) into ``out_dir``, holding its lock."""
    t0 = time.perf_counter()
    with dir_lock(out_dir, "sqvae-speech encode"):
        summary = _encode(model, inputs, Path(out_dir), kind, file_format, dedup_units, overwrite, progress)
    summary.wall_seconds = time.perf_counter() - t0
    return summary


def _encode(model: Model, inputs: dict[str, str], out_dir: Path, kind: str, file_format: str, dedup_units: bool,
            overwrite: bool, progress: bool) -> EncodeSummary:
    from tqdm import tqdm

    from ..zerospeech.export import latent_time_convention

    if kind not in KINDS:
        raise SQVAEError(f"--kind must be one of {', '.join(KINDS)}, got '{kind}'")
    if file_format not in FORMATS:
        raise SQVAEError(f"--format must be one of {', '.join(FORMATS)}, got '{file_format}'")
    if file_format == "units" and kind != "indices":
        raise SQVAEError(f"--format units writes code indices; it cannot hold --kind {kind} (use npy or zerospeech)")
    if dedup_units and file_format != "units":
        raise SQVAEError("--dedup collapses repeated units: it goes with --format units")
    if kind == "indices" and model.num_codes == 0:
        raise SQVAEError(f"{model.config.model.variant} is continuous and emits no code indices: use --kind quantized or auxiliary")
    ext = FORMATS[file_format]
    rate, offset = latent_time_convention(model.features)
    meta: dict[str, Any] = {
        "format": META_FORMAT, "version": 1, "kind": kind, "file_format": file_format, "dedup": dedup_units,
        "rate": None if dedup_units else rate, "time_offset": None if dedup_units else offset,
        "time_convention": "time_i = time_offset + i / rate: the centre of latent frame i, (2i + 1.5) mel hops",
        "checkpoint": str(model.source), "step": model.step, "variant": model.config.model.variant,
        "features": "audio files (sqvae-speech encode)", "names": {}, "durations": {}, "too_short": [],
    }
    old = read_export_meta(out_dir)
    keys = ("kind", "file_format", "dedup", "checkpoint", "step")
    if old is not None and not overwrite and any(old.get(k) != meta[k] for k in keys):
        diff = ", ".join(k for k in keys if old.get(k) != meta[k])
        raise SQVAEError(f"{out_dir} holds another encoding (different {diff}); choose another --out or pass --overwrite")
    if old is not None and not overwrite:
        meta["names"], meta["durations"] = dict(old.get("names", {})), dict(old.get("durations", {}))
    summary = EncodeSummary(out_dir)
    todo = {n: p for n, p in inputs.items() if overwrite or old is None or not (out_dir / (n + ext)).is_file()}
    summary.skipped = [n for n in inputs if n not in todo]
    for d in {(out_dir / (n + ext)).parent for n in todo}:
        for stray in d.glob(".tmp-*") if d.is_dir() else ():
            stray.unlink(missing_ok=True)  # a killed writer's partial file
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / META, {**meta, "complete": False})
    for name in summary.skipped:  # written by an earlier run: described again (a killed run's export.json lacks them)
        meta["names"][inputs[name]] = name
        meta["durations"].setdefault(name, _seconds(inputs[name], model.features))
    with tqdm(total=len(todo), desc=f"encode {kind}", unit="file", disable=not progress) as bar:
        _Pipeline(model, out_dir, ext, kind, file_format, dedup_units, meta, summary, bar).run(todo)
    failed_text = "".join(f"{n}\t{inputs[n]}\t{' '.join(r.split())}\n" for n, r in sorted(summary.failed.items()))
    if failed_text or (out_dir / FAILED).exists():
        atomic_write_text(out_dir / FAILED, failed_text)
    if file_format == "units":
        _gather_units(out_dir, sorted(meta["durations"]))
    atomic_write_json(out_dir / META, {**meta, "complete": True})  # every file named in it is written
    return summary


def _seconds(path: str, config: Any) -> float:
    """Duration of a recording at the feature rate from its header, as encoding measures it
    (0 for a file that can no longer be read)."""
    from .audio_input import load_audio_header_seconds

    try:
        return load_audio_header_seconds(path, config)
    except AudioError:
        return 0.0


class _Pipeline:
    """The encoding loop of :func:`encode_files`, three stages at once: a thread reads and
    computes the features of the next files (:data:`PREFETCH` ahead), the main thread runs
    the encoder on windows of :data:`WINDOW` files cut into length-sorted padded batches of
    up to :data:`BATCH_FRAMES` mel frames (equal to one file at a time: the model is exact
    on padded batches), and a thread writes the
    outputs (atomic, fsync'd). Reading, the FFTs, the encoder and fsync release the GIL,
    so the stages overlap on several cores. Recordings longer than a minute go through
    the encoder chunk by chunk, on their own, in bounded memory."""

    def __init__(self, model: Model, out_dir: Path, ext: str, kind: str, file_format: str, dedup_units: bool,
                 meta: dict[str, Any], summary: EncodeSummary, bar: Any) -> None:
        self.model, self.out_dir, self.ext, self.kind = model, out_dir, ext, kind
        self.file_format, self.dedup_units, self.meta, self.summary, self.bar = file_format, dedup_units, meta, summary, bar
        self.batch: list[tuple[str, str, Any]] = []
        self.writes: deque[tuple[str, str, float, Future[None]]] = deque()

    def run(self, todo: dict[str, str]) -> None:
        from .audio_input import short_mel_input

        names = list(todo)
        cfg = self.model.features
        with ThreadPoolExecutor(1, thread_name_prefix="sqvae-features") as reader, \
                ThreadPoolExecutor(1, thread_name_prefix="sqvae-write") as self.writer:
            ahead: deque[tuple[str, Future[Any]]] = deque()
            for k in range(len(names)):
                while len(ahead) <= PREFETCH and k + len(ahead) < len(names):
                    nxt = names[k + len(ahead)]
                    ahead.append((nxt, reader.submit(short_mel_input, todo[nxt], cfg)))
                name, future = ahead.popleft()
                try:
                    inp = future.result()
                    if inp is None:  # a long recording: chunk by chunk, after what is queued
                        self.flush()
                        self.drain(0)
                        path = self.out_dir / (name + self.ext)
                        seconds = _write_long(self.model, todo[name], path, self.kind, self.file_format,
                                              self.dedup_units)
                        self.done(name, todo[name], seconds)
                        continue
                except AudioError as e:
                    self.fail(name, e)
                    continue
                self.batch.append((name, todo[name], inp))
                if len(self.batch) >= WINDOW:
                    self.flush()
                self.drain(MAX_PENDING_WRITES)
            self.flush()
            self.drain(0)

    def flush(self) -> None:
        """Encode the gathered files in length-sorted padded batches and queue their writes."""
        dim = self.model.config.model.embedding_dim
        for j, units in self.model.encode_mels([inp for _, _, inp in self.batch], BATCH_FRAMES):
            name, path, inp = self.batch[j]
            v = _kind_values(units, self.kind)
            future = self.writer.submit(_write_values, self.out_dir / (name + self.ext), [v], len(units), dim,
                                        self.kind, self.file_format, self.dedup_units)
            self.writes.append((name, path, inp.seconds, future))
        self.batch.clear()

    def drain(self, keep: int) -> None:
        """Wait for queued writes until at most ``keep`` are pending (a write error is raised here)."""
        while len(self.writes) > keep:
            name, path, seconds, future = self.writes.popleft()
            future.result()
            self.done(name, path, seconds)

    def done(self, name: str, path: str, seconds: float) -> None:
        self.meta["names"][path] = name
        self.meta["durations"][name] = seconds
        self.summary.written.append(name)
        self.summary.audio_seconds += seconds
        self.bar.update(1)

    def fail(self, name: str, e: Exception) -> None:
        self.summary.failed[name] = str(e)
        self.bar.write(f"encode: skipped: {e}")
        self.bar.update(1)


def _gather_units(out_dir: Path, names: Sequence[str]) -> None:
    """``OUT/units.txt``: ``name<TAB>indices`` for every ``.units`` file of the dir."""
    def lines() -> Iterator[str]:
        for n in names:
            p = out_dir / (n + FORMATS["units"])
            if p.is_file():
                yield f"{n}\t{p.read_text(encoding='utf-8').strip()}\n"

    atomic_write_text(out_dir / UNITS_FILE, "".join(lines()))
