"""Feature shards of :mod:`sqvae_speech.data.extract`: the unit of work of a worker process.

A shard is a run of consecutive sorted utterances. :func:`compute_shard` reads their audio,
computes their log-mel features and writes them, with the utterances that failed and why,
atomically to one ``.npz`` file (:func:`shard_path`): ``feats`` [sum T, n_mels] float32
(utterances back to back), ``lengths`` [U], ``utts`` [U], ``seconds`` [U], ``failed_utts``
[F], ``failed_reasons`` [F], ``clipped_utts`` [C], ``clipped_fractions`` [C] (extracted
utterances with at least :data:`~sqvae_speech.data.audio.CLIPPED_FRACTION` of their samples at
full scale; shards written before clipping was counted lack these two, read as none).
:func:`shard_totals` sums what the shards written so far hold and
:func:`read_shards` reads their features back, utterance by utterance and a block at a time,
for packing into the feature store.

Recordings longer than :data:`~sqvae_speech.data.longaudio.STREAM_MIN_SECONDS` are read and
computed block by block (:mod:`sqvae_speech.data.longaudio`), and shards are written and read
in blocks, so memory stays bounded whatever the length of a recording.

Shard files are opened with the builtin ``open`` looked up in this module (the fault tests
replace it here to inject a full disk or a kill part-way through a shard).
"""

from __future__ import annotations

import os
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import FeatureConfig
from ..errors import AudioError, FeatureStoreError
from ..fileio import atomic_path

if TYPE_CHECKING:
    from .audio import ClipCount

# Frames per block when packing shards into the store (10 MB at 80 mels).
PACK_BLOCK_ROWS = 32768

Item = tuple[str, str, float | None, float | None]  # (utt, path, start_s, end_s)


def shard_path(parts: Path, k: int) -> Path:
    return parts / f"shard-{k:05d}.npz"


def compute_shard(
    shard: int, out: str, items: list[Item], config: dict[str, Any], batch_size: int, device: str,
    max_clipped: float | None = None,
) -> dict[str, Any]:
    """Features of one shard, written atomically to ``out`` (.npz) as feats
    [sum T, n_mels] float32 (utterances back to back), lengths [U], utts [U],
    seconds [U], failed_utts [F], failed_reasons [F], clipped_utts [C],
    clipped_fractions [C]. Returns small stats.

    The samples at full scale are counted as the audio is read
    (:class:`~sqvae_speech.data.audio.ClipCount`); an utterance with more than
    ``max_clipped`` of its samples there fails, one with at least
    :data:`~sqvae_speech.data.audio.CLIPPED_FRACTION` is extracted and listed as clipped.

    Recordings longer than :data:`~sqvae_speech.data.longaudio.STREAM_MIN_SECONDS` are read and
    computed block by block (:mod:`sqvae_speech.data.longaudio`) into scratch files next to
    ``out`` and copied into the shard in blocks: memory stays bounded however long they are.
    """
    from .audio import SILENCE_THRESHOLD, ClipCount, is_silent, load_audio
    from .longaudio import STREAM_MIN_SECONDS, LongLogmel, logmel_long, signal_peak

    cpu0 = time.process_time()
    cfg = FeatureConfig.from_dict(config)
    max_samples = int(STREAM_MIN_SECONDS * cfg.sample_rate)
    failed: dict[str, str] = {}
    clipped: dict[str, float] = {}
    utts, wavs = [], []
    long: dict[str, LongLogmel] = {}
    scratch: list[Path] = []
    try:
        for utt, path, start, end in items:
            clip = ClipCount()
            try:
                wav = load_audio(path, cfg.sample_rate, start, end, max_samples=max_samples, clip=clip)
                if wav is None:  # a long recording: streamed
                    peak = signal_peak(path, cfg, start, end, clip=clip)
                    if peak[0] < SILENCE_THRESHOLD:
                        failed[utt] = f"{path}: silent audio (peak {peak[0]:.1e}), nothing to learn from"
                        continue
                    if _too_clipped(utt, path, clip, max_clipped, failed, clipped):
                        continue
                    fd, tmp = tempfile.mkstemp(prefix=".tmp-long-", suffix=".f32", dir=Path(out).parent)
                    os.close(fd)
                    scratch.append(Path(tmp))
                    long[utt] = logmel_long(path, tmp, cfg, start, end, peak=peak)
                    continue
            except AudioError as e:
                failed[utt] = str(e)
                continue
            if is_silent(wav):
                failed[utt] = f"{path}: silent audio (peak {float(np.abs(wav).max(initial=0.0)):.1e}), nothing to learn from"
                continue
            if _too_clipped(utt, path, clip, max_clipped, failed, clipped):
                continue
            utts.append(utt)
            wavs.append(wav)
        computed = dict(zip(utts, zip(wavs, _features(utts, wavs, cfg, batch_size, device, failed))))
        kept: list[tuple[str, np.ndarray | LongLogmel, float]] = []
        for utt, _, _, _ in items:
            if utt in long:
                lm = long[utt]
                if not np.isfinite(lm.db_max):
                    failed[utt] = f"features of {lm.frames} frames hold NaN/inf"
                    continue
                kept.append((utt, lm, lm.samples / cfg.sample_rate))
            elif utt in computed:
                wav, feats = computed[utt]
                if feats is None:
                    continue
                if feats.shape[0] != cfg.n_mels or feats.shape[1] == 0 or not np.isfinite(feats).all():
                    failed[utt] = f"features of shape {tuple(feats.shape)} are empty or hold NaN/inf"
                    continue
                kept.append((utt, feats, len(wav) / cfg.sample_rate))
        write_shard(Path(out), kept, failed, cfg.n_mels, {u: f for u, f in clipped.items() if u not in failed})
    finally:
        for p in scratch:
            p.unlink(missing_ok=True)
    seconds = sum(s for _, _, s in kept)
    return {"shard": shard, "seconds": seconds, "cpu_seconds": time.process_time() - cpu0}


def _too_clipped(utt: str, path: str, clip: ClipCount, max_clipped: float | None, failed: dict[str, str],
                 clipped: dict[str, float]) -> bool:
    """Fail ``utt`` when more than ``max_clipped`` of its samples are at full scale (True);
    otherwise note it in ``clipped`` when it is clipped."""
    from .audio import CLIPPED_FRACTION

    frac = clip.fraction
    if max_clipped is not None and frac > max_clipped:
        failed[utt] = (f"{path}: clipped: {clip.clipped} of {clip.samples} samples ({100 * frac:.3g} %) at full scale, "
                       f"more than --max-clipped {max_clipped:g} allows")
        return True
    if frac >= CLIPPED_FRACTION:
        clipped[utt] = frac
    return False


def _features(
    utts: list[str], wavs: list[np.ndarray], cfg: FeatureConfig, batch_size: int, device: str, failed: dict[str, str]
) -> list[np.ndarray | None]:
    """[n_mels, T] per wav, or None for one whose features raise (recorded in ``failed``)."""
    from .features import logmel, logmel_many

    def one(i: int) -> np.ndarray | None:
        try:
            if batch_size == 0:
                return logmel(wavs[i], cfg.sample_rate, cfg)
            return logmel_many([wavs[i]], cfg, device, batch_size=1)[0]
        except (AudioError, ValueError) as e:
            failed[utts[i]] = f"features failed: {e}"
            return None

    if batch_size > 1 and wavs:
        try:
            return list(logmel_many(wavs, cfg, device, batch_size=batch_size))
        except (AudioError, ValueError):
            pass  # one utterance spoils its batch: redo one by one to find it
    return [one(i) for i in range(len(wavs))]


def write_shard(out: Path, kept: list[tuple[str, Any, float]], failed: dict[str, str], n_mels: int,
                clipped: dict[str, float] | None = None) -> None:
    """Write a shard .npz (the layout of ``np.savez``) with ``feats`` streamed in blocks,
    so a long recording's features never sit in memory whole."""
    from .longaudio import LongLogmel

    lengths = [f.frames if isinstance(f, LongLogmel) else f.shape[1] for _, f, _ in kept]
    bad = sorted(failed)
    clipped = clipped or {}
    arrays = {
        "lengths": np.array(lengths, dtype=np.int64),
        "utts": np.array([u for u, _, _ in kept], dtype=str),
        "seconds": np.array([s for _, _, s in kept], dtype=np.float64),
        "failed_utts": np.array(bad, dtype=str),
        "failed_reasons": np.array([" ".join(failed[u].split()) for u in bad], dtype=str),
        "clipped_utts": np.array(sorted(clipped), dtype=str),
        "clipped_fractions": np.array([clipped[u] for u in sorted(clipped)], dtype=np.float64),
    }
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
              "shape": (sum(lengths), n_mels)}
    with atomic_path(out, suffix=".npz") as tmp, open(tmp, "wb") as f, \
            zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("feats.npy", "w", force_zip64=True) as entry:
            np.lib.format.write_array_header_1_0(entry, header)
            for _, feats, _ in kept:
                for block in feats.blocks() if isinstance(feats, LongLogmel) else [feats]:
                    entry.write(np.ascontiguousarray(block.T, dtype="<f4").data)
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, arr, allow_pickle=False)


def shard_totals(parts: Path, n: int) -> tuple[dict[str, str], dict[str, float], float, int]:
    """Failures, clipped utterances (fraction of samples at full scale), audio seconds and
    frames over the shards that exist."""
    failed: dict[str, str] = {}
    clipped: dict[str, float] = {}
    seconds, frames = 0.0, 0
    for k in range(n):
        if shard_path(parts, k).is_file():
            with np.load(shard_path(parts, k), allow_pickle=False) as z:
                failed.update(zip(z["failed_utts"].tolist(), z["failed_reasons"].tolist()))
                if "clipped_utts" in z.files:
                    clipped.update(zip(z["clipped_utts"].tolist(), z["clipped_fractions"].tolist()))
                seconds += float(z["seconds"].sum())
                frames += int(z["lengths"].sum())
    return failed, clipped, seconds, frames


def read_shards(parts: Path, n: int, n_mels: int) -> Iterator[tuple[str, Iterator[np.ndarray]]]:
    """Per utterance of shards ``0 .. n-1`` in order, its id and its features as
    :func:`shard_rows` gives them. Shards are consecutive runs of the sorted utterances:
    reading them in order keeps the utterances sorted."""
    for k in range(n):
        shard = shard_path(parts, k)
        with np.load(shard, allow_pickle=False) as z:
            utts, lengths = z["utts"].tolist(), z["lengths"].tolist()
        yield from zip(utts, shard_rows(shard, n_mels, lengths))


def shard_rows(shard: Path, n_mels: int, lengths: list[int]) -> Iterator[Iterator[np.ndarray]]:
    """Per utterance of a shard, its features as consecutive ``[n_mels, t]`` blocks read
    from the .npz in pieces of at most :data:`PACK_BLOCK_ROWS` frames. Each utterance's
    blocks must be consumed before the next is asked for."""
    def rows(entry: Any, length: int) -> Iterator[np.ndarray]:
        left = length
        while left:
            k = min(left, PACK_BLOCK_ROWS)
            data = entry.read(k * n_mels * 4)
            if len(data) != k * n_mels * 4:
                raise FeatureStoreError(f"shard {shard} is corrupt (its features end early); delete it and rerun")
            yield np.frombuffer(data, dtype="<f4").reshape(k, n_mels).T
            left -= k

    with zipfile.ZipFile(shard) as zf, zf.open("feats.npy") as entry:
        version = np.lib.format.read_magic(entry)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(entry)
        if shape != (sum(lengths), n_mels) or fortran or dtype != np.dtype("<f4"):
            raise FeatureStoreError(f"shard {shard} holds {dtype} {shape}, expected float32 ({sum(lengths)}, {n_mels}); "
                                    "delete it and rerun")
        for length in lengths:
            yield rows(entry, length)
