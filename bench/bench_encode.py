"""End-to-end encoding of audio files into code indices: the one-step ``sqvae-speech
encode`` against the three steps users had before it.

Audio: the first ``N_FILES`` (100) utterances, sorted by id, of the held-out set of the
embedded corpus (the data dir ``sqvae-speech prepare fishfillets`` writes), whole files
as shipped (Ogg Vorbis, mostly 22.05 kHz, some 44.1 kHz, mono and stereo). Models:
untrained, with the architecture of ``recipes/fishfillets/conf/demo.yaml`` (256 encoder
channels) and of ``recipes/conf/paper.yaml`` (768), variant IV, K = 512, D = 64, the
four main speakers; each is saved as a checkpoint in a scratch experiment dir (the
throughput does not depend on the weights). CPU, the benchmark context's threads.

- ours (one step): :func:`sqvae_speech.load_model` of the experiment dir, then
  :func:`sqvae_speech.inference.encode_files.encode_files` from the audio files to
  ``<utt>.npy`` int64 indices: decoding, resampling, features, encoder (length-sorted
  padded batches) and writing, as ``sqvae-speech encode --kind indices --format npy``
  runs it;
- reference (three steps): :func:`sqvae_speech.data.datadir.write_datadir` (wav.scp and
  utt2spk of the same files), :func:`sqvae_speech.data.extract.extract` with ``nj=1``
  into a feature store, :func:`sqvae_speech.zerospeech.export.export_features` of
  ``kind="indices"``, ``file_format="npy"`` (which loads the checkpoint itself).

Both sides write into fresh dirs at every call (a rerun into the same dir would skip
what is there), run once untimed first (page cache, imports, oneDNN kernels), then
alternate; the median of each is reported. Every call's output is compared afterwards:
both sides must give the same indices, dtype and length for every file, or the
benchmark fails (``AssertionError``). Figures per model: the time of the 100 files
(ratio = three-step time / one-step time) and the one-step throughput in seconds of
audio per wall second.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import Result, alternate, median, time_ratio

from sqvae_speech.checkpoint import save_checkpoint
from sqvae_speech.config import ExperimentConfig, load_yaml
from sqvae_speech.data.datadir import read_datadir, utterance_audio, write_datadir
from sqvae_speech.data.extract import extract
from sqvae_speech.inference.encode_files import encode_files
from sqvae_speech.inference.model import load_model
from sqvae_speech.models import SpeechSQVAE
from sqvae_speech.zerospeech.export import export_features

REPO = Path(__file__).resolve().parents[1]
N_FILES = 100
SPEAKERS = ("cs-m", "cs-v", "nl-m", "nl-v")
# name -> (config file whose ``model`` section is used, real-time target of the one-step path)
MODELS: dict[str, tuple[Path, float | None]] = {
    "demo": (REPO / "recipes/fishfillets/conf/demo.yaml", 100.0),
    "paper": (REPO / "recipes/conf/paper.yaml", None),
}
TARGET_RATIO = 1.5


def untrained_exp(conf: Path, exp: Path, seed: int = 0) -> ExperimentConfig:
    """An experiment dir holding one checkpoint of an untrained model with the ``model``
    section of ``conf`` and the four main speakers; returns its config."""
    torch.manual_seed(seed)
    cfg = ExperimentConfig.from_dict({"model": load_yaml(conf)["model"]}, where=str(conf))
    cfg = cfg.replace(model=cfg.model.replace(speakers=SPEAKERS))
    save_checkpoint(exp, 0, {"config": cfg.to_dict(), "model": SpeechSQVAE(cfg.model).state_dict()}, keep=1)
    return cfg


def held_out_files(data_dir: Path, n: int) -> tuple[dict[str, str], dict[str, str]]:
    """(utt -> audio path, utt -> speaker) of the first ``n`` utterances of ``data_dir``, sorted."""
    dd = read_datadir(data_dir, check_files=True)
    utts = sorted(dd.utterances)[:n]
    if dd.segments is not None:
        raise ValueError(f"{data_dir} has segments; the benchmark encodes whole files")
    wav = {u: utterance_audio(dd, u)[0] for u in utts}
    return wav, {u: dd.utt2spk[u] for u in utts}


def one_step(exp: Path, wav: dict[str, str], out: Path) -> float:
    """``sqvae-speech encode``: model loaded, files encoded to ``out``; returns the audio seconds."""
    summary = encode_files(load_model(exp, device="cpu"), wav, out, kind="indices", file_format="npy", progress=False)
    if summary.failed or len(summary.written) != len(wav):
        raise RuntimeError(f"encode wrote {len(summary.written)} of {len(wav)} files; failed: {summary.failed}")
    return summary.audio_seconds


def three_step(exp: Path, wav: dict[str, str], utt2spk: dict[str, str], out: Path) -> dict[str, float]:
    """Data dir, extraction (one process), export of indices into ``out / "export"``;
    returns each step's wall seconds."""
    steps = {}
    t0 = time.perf_counter()
    write_datadir(out / "data", wav, utt2spk)
    t1 = time.perf_counter()
    summary = extract(out / "data", out / "feats", nj=1, progress=False)
    t2 = time.perf_counter()
    if summary.failed:
        raise RuntimeError(f"extraction failed for {sorted(summary.failed)[:3]}")
    export_features(exp, out / "feats", out / "export", kind="indices", file_format="npy", device="cpu",
                    progress=False)
    t3 = time.perf_counter()
    steps["datadir"], steps["extract"], steps["export"] = t1 - t0, t2 - t1, t3 - t2
    return steps


def check_same_indices(names: list[str], ours: Path, reference: Path) -> None:
    """Every ``<name>.npy`` of ``ours`` equals the reference's (values, dtype, length)."""
    bad = []
    for n in names:
        a, b = np.load(ours / f"{n}.npy"), np.load(reference / f"{n}.npy")
        if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
            bad.append(f"{n} (ours {a.dtype} {a.shape}, reference {b.dtype} {b.shape})")
    if bad:
        raise AssertionError(f"one-step and three-step indices differ for {len(bad)} of {len(names)} files: "
                             f"{', '.join(bad[:5])}")


def run(ctx: Any, n_files: int = N_FILES, models: dict[str, tuple[Path, float | None]] | None = None) -> list[Result]:
    models = MODELS if models is None else models
    wav, utt2spk = held_out_files(ctx.data_dir / "test", n_files)
    names = sorted(wav)
    threads = torch.get_num_threads()
    torch.set_num_threads(ctx.threads)
    scratch = Path(tempfile.mkdtemp(prefix="encode-", dir=ctx.work))
    results = []
    try:
        for model_name, (conf, rt_target) in models.items():
            exp = scratch / f"exp-{model_name}"
            cfg = untrained_exp(conf, exp)
            calls = {"ours": 0, "reference": 0}
            audio: list[float] = []
            ref_steps: list[dict[str, float]] = []

            def ours(exp: Path = exp, calls: dict = calls, audio: list = audio) -> None:
                calls["ours"] += 1
                audio.append(one_step(exp, wav, scratch / f"{exp.name}-ours-{calls['ours']}"))

            def reference(exp: Path = exp, calls: dict = calls, ref_steps: list = ref_steps) -> None:
                calls["reference"] += 1
                ref_steps.append(three_step(exp, wav, utt2spk, scratch / f"{exp.name}-reference-{calls['reference']}"))

            times = alternate({"ours": ours, "reference": reference}, ctx.reps, warmup=1)
            for i in range(1, calls["ours"] + 1):  # warm-up included: every call's output is checked
                check_same_indices(names, scratch / f"{exp.name}-ours-{i}", scratch / f"{exp.name}-reference-{i}" / "export")
            for d in scratch.glob(f"{exp.name}-*"):
                shutil.rmtree(d, ignore_errors=True)
            seconds = audio[-1]
            o, r = median(times["ours"]), median(times["reference"])
            config = {
                "files": len(names), "audio_seconds": round(seconds, 2), "threads": ctx.threads, "reps": ctx.reps,
                "device": "cpu", "model": conf.name, "variant": cfg.model.variant,
                "encoder_channels": cfg.model.encoder.channels, "codes": cfg.model.quantizer.get("num_embeddings"),
                "embedding_dim": cfg.model.embedding_dim,
                "parameters": sum(p.numel() for p in SpeechSQVAE(cfg.model).parameters()),
                "ours_s_all": [round(t, 3) for t in times["ours"]],
                "reference_s_all": [round(t, 3) for t in times["reference"]],
                "reference_steps_s_median": {k: round(median([s[k] for s in ref_steps[1:]]), 3) for k in ref_steps[0]},
                "files_compared_identical": len(names) * calls["ours"],
            }
            res = [
                time_ratio(f"encode_vs_three_step_{model_name}", "s", o, r, TARGET_RATIO, config=config,
                           note=f"{len(names)} held-out files: load_model + encode_files (ours) vs write_datadir + "
                                "extract(nj=1) + export_features (reference); identical indices"),
                Result(f"encode_rtf_{model_name}", "x real time", round(seconds / o, 1), round(seconds / r, 1),
                       round(r / o, 2), "" if rt_target is None else f"ours >= {rt_target:g}x rt",
                       None if rt_target is None else seconds / o >= rt_target,
                       {"files": len(names), "audio_seconds": round(seconds, 2), "threads": ctx.threads},
                       note="seconds of audio per wall second, the whole call; reference: the three steps"),
            ]
            for x in res:
                ctx.log(x)
            results += res
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        torch.set_num_threads(threads)
    return results
