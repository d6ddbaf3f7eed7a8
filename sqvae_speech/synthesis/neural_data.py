"""The neural vocoder's training data (``sqvae-speech train-vocoder``, :mod:`.neural_train`).

Each training utterance becomes a :class:`Clip`: its pre-emphasized, peak-normalized audio,
its log-mel from the feature store, its F0 (WORLD at the feature hop, computed once in
worker processes and cached) and the pulse train of that F0; with ``train.decoded_from``
also the SQ-VAE's reconstruction of its mel. :func:`sample_batch` cuts random windows.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import FeatureConfig
from ..errors import SQVAEError
from ..fileio import atomic_path
from .neural import excitation

if TYPE_CHECKING:
    from .neural_train import VocoderTrainConfig


@dataclasses.dataclass
class Clip:
    """One training utterance: pre-emphasized audio ``[N]``, log-mel ``[n_mels, T]``, F0 and pulses."""

    utt: str
    audio: np.ndarray  # [(T - 1) * hop] float32
    mel: np.ndarray  # [n_mels, T] float32
    f0: np.ndarray  # [T] float32 Hz
    pulses: np.ndarray  # [(T - 1) * hop] float32
    decoded: np.ndarray | None = None  # [n_mels, T] the SQ-VAE's reconstruction of `mel` (train.decoded_from)


def _f0_job(job: tuple[str, str, float | None, float | None, dict[str, Any], str]) -> tuple[str, np.ndarray | None, str]:
    from ..data.audio import load_audio
    from ..errors import AudioError
    from .f0 import extract_f0

    utt, path, start, end, config, method = job
    cfg = FeatureConfig.from_dict(config)
    try:
        wav = load_audio(path, cfg.sample_rate, start, end)
    except AudioError as e:
        return utt, None, str(e)
    return utt, extract_f0(wav, cfg, method).astype(np.float32), ""


def _read_f0_cache(path: Path, utts: list[str], method: str) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["method"]) != method or list(z["utts"]) != utts:
                return None
            offsets, values = z["offsets"], z["f0"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # damaged (truncated: BadZipFile; empty: EOFError) or foreign: recomputed and rewritten
    return {u: values[offsets[i]: offsets[i + 1]] for i, u in enumerate(utts)}


def _tick(results: Any, bar: Any) -> Any:
    for r in results:
        bar.update(1)
        yield r


def load_clips(data_dir: str | Path, feats_dir: str | Path, tc: VocoderTrainConfig, cache: Path | None,
               nj: int = 1, progress: bool = True) -> tuple[list[Clip], FeatureConfig]:
    """The training utterances with their audio, features and F0 (F0 cached in ``cache``)."""
    from tqdm import tqdm

    from ..data.audio import load_audio, peak_normalize, preemphasis
    from ..data.datadir import read_datadir, utterance_audio
    from ..data.featstore import FeatureStore
    from .f0 import _evenly

    dd = read_datadir(data_dir)
    store = FeatureStore.open(feats_dir, verify="full")
    fc = store.config
    utts = sorted(u for s in dd.speakers for u in _evenly([x for x in dd.spk2utt[s] if x in store], tc.utts_per_speaker))
    if not utts:
        raise SQVAEError(f"no utterance of {data_dir} has features in {feats_dir}: extract them first "
                         f"(`sqvae-speech extract {data_dir} {feats_dir}`)")
    key = f"{tc.f0_method} sr={fc.sample_rate} hop={fc.hop_length}"  # F0 of other frames is recomputed
    f0s = _read_f0_cache(cache, utts, key) if cache is not None else None
    if f0s is None:
        jobs = [(u, *utterance_audio(dd, u), fc.to_dict(), tc.f0_method) for u in utts]
        f0s, failed = {}, {}
        bar = tqdm(total=len(jobs), unit="utt", desc=f"F0 ({tc.f0_method})", disable=None if progress else True)
        if nj > 1:
            from concurrent.futures import ProcessPoolExecutor

            from ..data.workers import exit_with, worker_context

            # exit_with: a SIGKILLed run takes its workers along instead of leaving them orphaned
            with ProcessPoolExecutor(max_workers=nj, mp_context=worker_context(), initializer=exit_with,
                                     initargs=(os.getpid(),)) as pool:
                results = list(_tick(pool.map(_f0_job, jobs, chunksize=4), bar))
        else:
            results = list(_tick(map(_f0_job, jobs), bar))
        for u, f0, err in results:
            if f0 is None:
                failed[u] = err
            else:
                f0s[u] = f0
        bar.close()
        if failed:
            first = next(iter(failed.items()))
            raise SQVAEError(f"{len(failed)} training utterance(s) of {data_dir} cannot be read, e.g. {first[0]}: "
                             f"{first[1]}; fix or remove them from the data dir")
        if cache is not None:
            offsets = np.cumsum([0] + [f0s[u].size for u in utts])
            with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, utts=np.array(utts), method=np.array(key), offsets=offsets,
                         f0=np.concatenate([f0s[u] for u in utts]))
    clips = []
    for u in utts:
        path, start, end = utterance_audio(dd, u)
        wav = preemphasis(peak_normalize(load_audio(path, fc.sample_rate, start, end), fc.peak), fc.preemph)
        mel = store[u]
        t = mel.shape[1]
        f0 = np.asarray(f0s[u], dtype=np.float32)
        if f0.size != t or 1 + wav.size // fc.hop_length != t:
            raise SQVAEError(f"{u}: {t} feature frames in {feats_dir} but its audio in {data_dir} gives "
                             f"{1 + wav.size // fc.hop_length}; re-extract the features of this data dir")
        n = (t - 1) * fc.hop_length
        clips.append(Clip(u, wav[:n].astype(np.float32), mel, f0, excitation(f0, fc)))
    if tc.decoded_share > 0 and tc.decoded_from:
        add_decoded(clips, tc.decoded_from, fc, dd.utt2spk)
    return clips, fc


def add_decoded(clips: Sequence[Clip], model_path: str, features: FeatureConfig, utt2spk: dict[str, str]) -> None:
    """Each clip's ``decoded``: the SQ-VAE ``model_path``'s reconstruction of its mel (decoded as
    its own speaker, placed on the clip's frames as the vocoders place it: offset 1, edges held)."""
    from ..checkpoint import load_model
    from .convert import Converter
    from .vocoders import align_frames

    model, cfg = load_model(model_path)[:2]
    if cfg.features != features:
        raise SQVAEError(f"train.decoded_from {model_path} was trained on other features than the vocoder's")
    conv = Converter(model, features, "griffinlim")
    for c in clips:
        spk = utt2spk[c.utt]
        if spk not in conv.speakers:
            raise SQVAEError(f"train.decoded_from {model_path} does not know speaker '{spk}' of {c.utt}; use a model "
                             "trained on this data")
        c.decoded = align_frames(conv.decode(c.mel, spk), c.mel.shape[1], 1).astype(np.float32)


def sample_batch(clips: Sequence[Clip], eligible: np.ndarray, batch_size: int, frames: int, hop: int,
                 rng: np.random.Generator, decoded_share: float = 0.0) -> tuple[torch.Tensor, ...]:
    """``batch_size`` random windows: mel ``[B, n_mels, S]``, F0 ``[B, S]``, audio and pulses
    ``[B, (S - 1) * hop]``, S = ``frames``; utterances drawn in proportion to their length.
    A window takes the clip's ``decoded`` mel with probability ``decoded_share``."""
    weights = np.array([clips[i].mel.shape[1] - frames + 1 for i in eligible], dtype=np.float64)
    ids = rng.choice(eligible, size=batch_size, p=weights / weights.sum())
    mels, f0s, ys, ps = [], [], [], []
    n = (frames - 1) * hop
    for i in ids:
        c = clips[i]
        t0 = int(rng.integers(0, c.mel.shape[1] - frames + 1))
        use_decoded = decoded_share > 0 and rng.random() < decoded_share and c.decoded is not None
        mels.append((c.decoded if use_decoded else c.mel)[:, t0: t0 + frames])
        f0s.append(c.f0[t0: t0 + frames])
        ys.append(c.audio[t0 * hop: t0 * hop + n])
        ps.append(c.pulses[t0 * hop: t0 * hop + n])
    return tuple(torch.from_numpy(np.stack(x)) for x in (mels, f0s, ys, ps))


