"""What the report measures on held-out real speech: units, a speaker probe, resynthesis
and conversion quality. Each function takes loaded models and opened data; the report
(:mod:`.report`) chooses the data and writes the results.

- :func:`encode_store`: the units of every utterance of a feature store;
- :func:`unit_metrics`: codes against phone labels (:mod:`.units`, :mod:`.alignment`);
- :func:`probe_metrics`: the speaker probe on z and z_q (:mod:`.probe`);
- :func:`resynthesis_quality`: each vocoder alone on the recording's log-mel, and each
  model's reconstruction (decoded as the utterance's own speaker) through each vocoder,
  scored against the recording (:mod:`.signal`);
- :func:`conversion_quality`: the conversions of ``sqvae-speech convert`` scored by
  speaker similarity to the target and to the source (:mod:`.speaker`) and by their F0
  register.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SQVAEError

METRICS = ("mcd_db", "f0_rmse_cents", "vuv_error", "pesq_wb", "stoi")


def _progress(progress: bool, total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="utt", disable=None if progress else True, leave=False)


def encode_store(model: Any, store: Any, utts: Sequence[str] | None = None) -> dict[str, Any]:
    """``utt -> Units`` (indices ``[T']``, z and z_q ``[T', D]``, times ``[T']`` in seconds)
    of the utterances of a feature store, encoded in length-bucketed batches."""
    from ..inference.audio_input import MelInput

    utts = list(utts if utts is not None else store.utt2spk())
    cfg = model.features
    inputs = []
    for u in utts:
        mel = np.asarray(store[u], dtype=np.float32)
        inputs.append(MelInput(u, mel.shape[1], (mel.shape[1] - 1) * cfg.hop_length, mel, sample_rate=cfg.sample_rate))
    out: dict[str, Any] = {}
    for j, units in model.encode_mels(inputs):
        out[utts[j]] = units
    return out


# ----------------------------------------------------------------------------- units


def unit_metrics(model: Any, store: Any, alignment: dict[str, list[Any]], alignment_path: str) -> Any | None:
    """:class:`~.units.UnitQuality` of ``model``'s codes on the utterances of ``store``,
    labelled by ``alignment``; None for a model without codes (the continuous VAE)."""
    from .alignment import check_coverage, frame_labels
    from .units import unit_quality

    if model.num_codes == 0:
        return None
    cfg = model.features
    durations = {u: (store.frames(u) - 1) * cfg.hop_length / cfg.sample_rate for u in store.utt2spk()}
    check_coverage(alignment, durations, alignment_path)
    units = encode_store(model, store)
    phone_index: dict[str, int] = {}
    for segs in alignment.values():  # a fixed phone order: the first appearance in the file
        for s in segs:
            phone_index.setdefault(s.phone, len(phone_index))
    utts = sorted(units)
    labels = [frame_labels(alignment[u], units[u].times, phone_index) for u in utts]
    return unit_quality([units[u].indices for u in utts], labels, model.num_codes, list(phone_index), 1.0 / model.rate)


# ----------------------------------------------------------------------------- probe


def probe_metrics(units: dict[str, Any], utt2spk: dict[str, str], seed: int = 0) -> dict[str, Any]:
    """Speaker probe accuracy from z and from z_q of held-out utterances (:func:`.probe.speaker_probe`)."""
    from .probe import speaker_probe

    utts = sorted(units)
    spk = [utt2spk[u] for u in utts]
    out: dict[str, Any] = {}
    for name, attr in (("z", "z"), ("z_q", "quantized")):
        out[name] = speaker_probe([getattr(units[u], attr) for u in utts], spk, utts, seed=seed).to_dict()
    return out


def code_counts(units: dict[str, Any], num_codes: int) -> np.ndarray:
    """``[K]`` int64: how often each code is used over ``units``."""
    idx = np.concatenate([u.indices for u in units.values()]) if units else np.zeros(0, np.int64)
    return np.bincount(idx[idx >= 0], minlength=num_codes)[:num_codes].astype(np.int64)


# ----------------------------------------------------------------------------- resynthesis


def pick_utterances(utt2spk: dict[str, str], frames: Callable[[str], int], n: int, min_frames: int = 100,
                    speakers: Sequence[str] | None = None) -> list[str]:
    """About ``n`` utterances spread evenly over the speakers (those in ``speakers`` when
    given) and, within a speaker, evenly over its sorted ids; each of at least ``min_frames``."""
    by_spk: dict[str, list[str]] = {}
    for u in sorted(utt2spk):
        if (speakers is None or utt2spk[u] in speakers) and frames(u) >= min_frames:
            by_spk.setdefault(utt2spk[u], []).append(u)
    if not by_spk:
        return []
    per = max(1, -(-n // len(by_spk)))
    out = []
    for spk in sorted(by_spk):
        us = by_spk[spk]
        out += [us[int(i)] for i in np.unique(np.linspace(0, len(us) - 1, min(per, len(us))).round().astype(int))]
    return out


def _mean(rows: list[dict[str, float]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for m in METRICS:
        vals = [r[m] for r in rows if r.get(m) is not None and np.isfinite(r[m])]
        out[m] = float(np.mean(vals)) if vals else None
    return out


def pool_map(fn: Callable[[Any], Any], jobs: Sequence[Any], nj: int) -> Any:
    """``map(fn, jobs)`` in ``nj`` worker processes (forkserver: the parent holds torch
    threads), or in this process for ``nj`` 1; results in order."""
    if nj <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    import os
    from concurrent.futures import ProcessPoolExecutor

    from ..data.workers import exit_with, worker_context

    # exit_with: a SIGKILLed report takes its workers along instead of leaving them orphaned
    with ProcessPoolExecutor(max_workers=min(nj, len(jobs)), mp_context=worker_context(), initializer=exit_with,
                             initargs=(os.getpid(),)) as pool:
        yield from pool.map(fn, jobs)


_NEURAL: dict[str, Any] = {}  # vocoder file -> model, loaded once per worker process


def _neural_vocoder(path: str) -> Any:
    if path not in _NEURAL:
        import multiprocessing

        import torch

        from ..synthesis.neural import load_vocoder

        if multiprocessing.parent_process() is not None:
            torch.set_num_threads(1)  # a worker of the pool: the pool provides the parallelism
        _NEURAL[path] = load_vocoder(path)
    return _NEURAL[path]


def _score_utterance(job: tuple[Any, ...]) -> dict[tuple[str | None, str], dict[str, float]]:
    """Every system's scores on one utterance (runs in a worker process)."""
    from ..synthesis.f0 import extract_f0
    from ..synthesis.vocoders import (
        align_frames,
        griffinlim,
        neural,
        world,
        world_analyze,
    )
    from .signal import Reference, speech_quality

    wav, mel, decoded, vocoders, config, f0_method, gl_iters, vocoder_model = job
    sr = config.sample_rate
    ana = world_analyze(wav, config, f0_method) if "world" in vocoders else None
    f0 = ana.f0 if ana is not None else (extract_f0(wav, config, f0_method) if "neural" in vocoders else None)
    ref = Reference.of(wav, sr, f0=f0 if f0 is not None and f0_method == "harvest" else None)
    out = {}
    for name, m, offset in [(None, mel, 0), *((n, d, 1) for n, d in decoded.items())]:
        for voc in vocoders:
            if voc == "world":
                y = world([m], [ana], None, config, offset=offset)[0]
            elif voc == "neural":
                y = neural([m], [f0], _neural_vocoder(vocoder_model), config, offset=offset)[0]
            else:
                y = griffinlim([align_frames(m, mel.shape[1], offset)], config, gl_iters)[0]
            out[name, voc] = speech_quality(ref, y, sr)
    return out


def resynthesis_quality(sources: dict[str, Any], models: dict[str, Any], vocoders: Sequence[str], config: Any,
                        f0_method: str = "harvest", gl_iters: int = 100, nj: int = 1,
                        progress: bool = True, vocoder_model: str | None = None) -> list[dict[str, Any]]:
    """Quality of each vocoder alone and of each model's reconstruction through each vocoder.

    Args:
        sources: ``utt -> Source`` (:func:`sqvae_speech.synthesis.convert.load_sources`, with audio).
        models: ``name -> Model``; each reconstructs an utterance as its own speaker.
        vocoders: ``"neural"``, ``"world"`` and / or ``"griffinlim"``.
        nj: worker processes (utterances are scored in parallel).
        vocoder_model: the neural vocoder file (needed for ``"neural"``); checked here, loaded in each worker.

    Returns:
        one row per system: ``{"system", "model", "vocoder", "utterances", "mean": {metric: value},
        "per_utterance": {utt: {metric: value}}}`` with the metrics of :func:`.signal.speech_quality`.
    """
    from ..synthesis.convert import Converter

    if "neural" in vocoders:
        if vocoder_model is None:
            raise SQVAEError("resynthesis with the neural vocoder needs its file (--vocoder-model)")
        from ..synthesis.neural import load_vocoder

        if load_vocoder(vocoder_model).features != config:
            raise SQVAEError(f"the neural vocoder {vocoder_model} was trained on other feature settings than {config}")
        vocoder_model = str(Path(vocoder_model).resolve())
    decoders = {name: Converter(m.net, config, "griffinlim") for name, m in models.items()}
    jobs = [(src.wav, src.mel, {n: d.decode(src.mel, src.speaker) for n, d in decoders.items()}, tuple(vocoders),
             config, f0_method, gl_iters, vocoder_model) for src in sources.values()]
    scores: dict[str, dict[tuple[str | None, str], dict[str, float]]] = {}
    bar = _progress(progress, len(jobs), "resynthesis")
    for u, res in zip(sources, pool_map(_score_utterance, jobs, nj)):
        scores[u] = res
        bar.update(1)
    bar.close()
    rows: list[dict[str, Any]] = []
    for name, voc in [(None, v) for v in vocoders] + [(n, v) for n in models for v in vocoders]:
        per = {u: scores[u][name, voc] for u in sources}
        label = f"{voc} (vocoder only)" if name is None else f"{name} through {voc}"
        rows.append({"system": label, "model": name, "vocoder": voc, "utterances": len(per),
                     "mean": _mean(list(per.values())), "per_utterance": per})
    return rows


# ----------------------------------------------------------------------------- conversion


def median_f0(wav: np.ndarray, sample_rate: int, feature_rate: int = 16000) -> float | None:
    """Median F0 in Hz over the voiced frames of ``wav [N]`` (WORLD Harvest, as conversion
    uses), or None when no frame is voiced."""
    from ..config import FeatureConfig
    from ..data.audio import resample
    from ..synthesis.f0 import extract_f0

    x = resample(np.asarray(wav, np.float32), sample_rate, feature_rate) if sample_rate != feature_rate else wav
    f0 = extract_f0(np.asarray(x, np.float64), FeatureConfig(sample_rate=feature_rate))
    voiced = f0[f0 > 0]
    return float(np.median(voiced)) if voiced.size else None


class ReferenceVoices:
    """Resemblyzer embeddings of each speaker's held-out recordings (at most
    ``per_speaker`` of them, evenly over the sorted ids), computed once and shared."""

    def __init__(self, data_dir: str | Path, sample_rate: int, per_speaker: int = 10, device: str = "cpu") -> None:
        from ..data.datadir import read_datadir
        from .speaker import SpeakerEncoder

        self.data_dir = str(data_dir)
        self.dd = read_datadir(data_dir)
        self.sample_rate, self.per_speaker = sample_rate, per_speaker
        self.encoder = SpeakerEncoder(device)
        self._emb: dict[str, np.ndarray] = {}

    def utterances(self, speaker: str) -> list[str]:
        us = sorted(u for u, s in self.dd.utt2spk.items() if s == speaker)
        if len(us) > self.per_speaker:
            us = [us[int(i)] for i in np.linspace(0, len(us) - 1, self.per_speaker).round().astype(int)]
        return us

    def embedding(self, utt: str) -> np.ndarray:
        if utt not in self._emb:
            from ..data.audio import load_audio
            from ..data.datadir import utterance_audio

            path, start, end = utterance_audio(self.dd, utt)
            self._emb[utt] = self.encoder.embed(load_audio(path, self.sample_rate, start, end), self.sample_rate, name=utt)
        return self._emb[utt]

    def centroid(self, speaker: str, exclude: str | None = None) -> np.ndarray:
        """The speaker's mean embedding over its held-out recordings other than ``exclude``."""
        from .speaker import centroid

        us = [u for u in self.utterances(speaker) if u != exclude]
        if not us:
            raise SQVAEError(f"speaker '{speaker}' has no held-out recording in {self.data_dir} (other than the "
                             "converted source itself) to compare conversions with: pass a --data dir that holds "
                             "recordings of every target and source speaker")
        return centroid([self.embedding(u) for u in us])


def _median_f0_job(job: tuple[str, int]) -> float | None:
    import soundfile

    wav, sr = soundfile.read(job[0], dtype="float32")
    return median_f0(wav, sr, job[1])


def conversion_quality(conv_dir: str | Path, refs: ReferenceVoices, f0_medians: dict[str, float] | None = None,
                       nj: int = 1, progress: bool = True) -> dict[str, Any]:
    """Scores of the conversions listed in ``conv_dir/conversion.json`` (reconstructions and
    silent sources left out).

    Returns ``{"items": [{name, source, source_speaker, target, sim_target, sim_source, closer,
    semitones_from_target}], "sim_target", "sim_source", "closer", "total", "closer_share",
    "mean_abs_semitones", "within_1_semitone"}``; the F0 figures need ``f0_medians``
    (speaker -> median F0 in Hz), and compare each conversion's median F0 with the target's.
    """
    import soundfile

    from ..synthesis.f0 import semitones
    from .speaker import cosine

    conv_dir = Path(conv_dir)
    manifest = conv_dir / "conversion.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SQVAEError(f"cannot read {manifest} ({e}): run `sqvae-speech convert` for this experiment first") from None
    items = [it for it in data.get("items", []) if not it.get("reconstruction") and not it.get("silent_source")
             and it.get("source_speaker")]  # a file source has no speaker to compare with
    medians: list[float | None] = [None] * len(items)
    if f0_medians:
        jobs = [(str(conv_dir / it["wav"]), refs.sample_rate) for it in items]
        medians = list(pool_map(_median_f0_job, jobs, nj))
    rows = []
    bar = _progress(progress, len(items), "speaker similarity")
    for it, f0 in zip(items, medians):
        wav, sr = soundfile.read(conv_dir / it["wav"], dtype="float32")
        emb = refs.encoder.embed(wav, sr, name=str(conv_dir / it["wav"]))
        st = cosine(emb, refs.centroid(it["target"], exclude=it["source"]))
        ss = cosine(emb, refs.centroid(it["source_speaker"], exclude=it["source"]))
        row = {k: it[k] for k in ("name", "source", "source_speaker", "target")}
        row.update(sim_target=st, sim_source=ss, closer=bool(st > ss), semitones_from_target=None)
        if f0_medians and it["target"] in f0_medians and f0 is not None:
            row["semitones_from_target"] = semitones(f0, f0_medians[it["target"]])
        rows.append(row)
        bar.update(1)
    bar.close()
    if not rows:
        raise SQVAEError(f"{manifest} lists no conversion to another speaker: convert with several --speakers")
    semis = [abs(r["semitones_from_target"]) for r in rows if r["semitones_from_target"] is not None]
    closer = sum(r["closer"] for r in rows)
    return {"dir": str(conv_dir), "vocoder": data.get("vocoder"), "items": rows, "total": len(rows), "closer": closer,
            "closer_share": closer / len(rows), "sim_target": float(np.mean([r["sim_target"] for r in rows])),
            "sim_source": float(np.mean([r["sim_source"] for r in rows])),
            "mean_abs_semitones": float(np.mean(semis)) if semis else None,
            "within_1_semitone": float(np.mean([s <= 1.0 for s in semis])) if semis else None}
