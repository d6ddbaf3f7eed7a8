"""The neural vocoder (:mod:`sqvae_speech.synthesis.neural`): its training step on CPU, and its
inference speed on one core next to Griffin-Lim and WORLD.

- ``vocoder_train_step``: time per training step (ms) of the CPU configuration (default
  :class:`~sqvae_speech.synthesis.neural.NeuralVocoderConfig`, batch 16 windows of 100
  frames as :class:`~sqvae_speech.synthesis.neural_train.VocoderTrainConfig`), the
  benchmark context's threads. Clips: ``TRAIN_UTTS_PER_SPEAKER`` evenly spaced training
  utterances per speaker of the embedded corpus, loaded by
  :func:`~sqvae_speech.synthesis.neural_data.load_clips` (audio, the feature store's
  log-mels, DIO F0: the step's cost does not depend on the F0 method, and DIO keeps the
  untimed loading short). One step is the body of ``train-vocoder``'s loop: drawing the
  windows (:func:`~sqvae_speech.synthesis.neural_data.sample_batch`) and the noise,
  forward, the multi-resolution STFT loss, backward, ``clip_grad_norm_``, Adam, the
  scheduler, the two ``float()`` reads of the loss terms; accelerate's wrappers, which on
  one CPU process only forward these calls, are left out. ``TRAIN_WARMUP`` untimed steps
  first, then the median of the timed ones. No reference, no target; steps per 10
  minutes are printed and kept in ``config``.
- ``vocoder_rtf_1core``: seconds of audio per wall second of
  :func:`~sqvae_speech.synthesis.vocoders.neural` (a randomly initialised default-config
  model: the speed does not depend on the weights), on ``N_UTTS`` held-out utterances
  (one per main speaker, :func:`~sqvae_speech.metrics.heldout.pick_utterances`), one
  thread: ``torch.set_num_threads(1)`` and BLAS / OpenMP pools held to one thread with
  ``threadpoolctl``, both restored afterwards. Included: excitation, network, STFT /
  inverse STFT, de-emphasis and peak limiting, i.e. the whole call from log-mel + F0 to
  the waveform. The reference column is Griffin-Lim (:func:`~sqvae_speech.synthesis.vocoders.griffinlim`,
  100 iterations, mel inversion included) on the same mels; the line
  ``vocoder_rtf_1core_vs_world`` puts WORLD synthesis (:func:`~sqvae_speech.synthesis.vocoders.world`:
  the envelope from the mel, ``pyworld.synthesize``, de-emphasis) in that column. Not
  timed on any side: the analysis of the recording (Harvest F0 + D4C aperiodicity,
  :func:`~sqvae_speech.synthesis.vocoders.world_analyze`), which gives WORLD its F0 and
  aperiodicity and the neural vocoder the same F0 (conversion computes it for either);
  its one-thread speed, measured once, is in ``config``. One untimed call of each on the
  first utterance, then the three alternate over all the utterances (neural, Griffin-Lim,
  WORLD, ...); medians. Target: neural >= 20x real time.
  Process CPU time per wall second of each side is in ``config`` (``cpu_per_wall``, ~1.0
  when the side really ran on one thread).

``--quick``: ``N_UTTS_QUICK`` (1) held-out utterance and ``TRAIN_STEPS_QUICK`` (3) timed
steps instead of ``N_UTTS`` (4, 11.6 s of speech) and ``TRAIN_STEPS`` (10); the repetitions
of the inference round are the driver's ``--reps``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import Result, alternate, median

from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.metrics.heldout import pick_utterances
from sqvae_speech.synthesis.convert import load_sources
from sqvae_speech.synthesis.neural import (
    MultiResolutionSTFTLoss,
    NeuralVocoder,
    NeuralVocoderConfig,
)
from sqvae_speech.synthesis.neural_data import Clip, load_clips, sample_batch
from sqvae_speech.synthesis.neural_train import VocoderTrainConfig
from sqvae_speech.synthesis.vocoders import griffinlim, neural, world, world_analyze

N_UTTS = 4
N_UTTS_QUICK = 1
GL_ITERS = 100
RT_TARGET = 20.0
TRAIN_UTTS_PER_SPEAKER = 4
TRAIN_F0_METHOD = "dio"
TRAIN_WARMUP = 2
TRAIN_STEPS = 10
TRAIN_STEPS_QUICK = 3


# ----------------------------------------------------------------------------- training step


def train_clips(data_dir: Path, feats_dir: Path, tc: VocoderTrainConfig) -> tuple[list[Clip], FeatureConfig]:
    """The training clips as ``train-vocoder`` loads them (no F0 cache)."""
    return load_clips(data_dir, feats_dir, tc, cache=None, nj=1, progress=False)


def train_step_function(clips: list[Clip], fc: FeatureConfig, vc: NeuralVocoderConfig,
                        tc: VocoderTrainConfig) -> tuple[Any, NeuralVocoder]:
    """A closure running one training step of ``train-vocoder`` (module docstring) per call, and its model."""
    eligible = np.flatnonzero([c.mel.shape[1] >= tc.segment_frames for c in clips])
    if eligible.size == 0:
        raise ValueError(f"no clip has {tc.segment_frames} frames")
    torch.manual_seed(tc.seed)
    model = NeuralVocoder(vc, fc).train()
    loss_fn = MultiResolutionSTFTLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(tc.milestones), gamma=tc.gamma)
    state = {"step": 0}

    def step() -> tuple[float, float]:
        rng = np.random.default_rng([tc.seed, state["step"], 0])
        mel, f0, y, pulses = sample_batch(clips, eligible, tc.batch_size, tc.segment_frames, fc.hop_length, rng,
                                          tc.decoded_share)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        noise = torch.randn(y.shape, generator=gen)
        out = model(mel, f0, pulses, noise)
        sc, mag = loss_fn(out.float(), y)
        loss = sc + mag
        if not torch.isfinite(loss):
            raise RuntimeError(f"vocoder loss not finite at bench step {state['step']}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        return float(sc.detach()), float(mag.detach())

    return step, model


def train_step_result(ctx: Any, vc: NeuralVocoderConfig, tc: VocoderTrainConfig, steps: int,
                      utts_per_speaker: int) -> Result:
    t0 = time.perf_counter()
    clips, fc = train_clips(ctx.data_dir / "train", ctx.train_feats,
                            tc.replace(utts_per_speaker=utts_per_speaker, f0_method=TRAIN_F0_METHOD))
    load_s = time.perf_counter() - t0
    step, model = train_step_function(clips, fc, vc, tc)
    times = alternate({"step": step}, steps, warmup=TRAIN_WARMUP)["step"]
    s = median(times)
    per_10_min = 600.0 / s
    config = {
        "threads": torch.get_num_threads(), "batch_size": tc.batch_size, "segment_frames": tc.segment_frames,
        "timed_steps": steps, "warmup_steps": TRAIN_WARMUP, "clips": len(clips),
        "clips_audio_s": round(sum(c.audio.size for c in clips) / fc.sample_rate, 1),
        "f0_method": TRAIN_F0_METHOD, "clip_loading_s": round(load_s, 2),
        "parameters": sum(p.numel() for p in model.parameters()), "vocoder": vc.to_dict(),
        "steps_per_10_min": round(per_10_min), "default_steps": tc.steps,
        "minutes_for_default_steps": round(tc.steps * s / 60, 1),
        "step_s_median": round(s, 4), "step_s_all": [round(t, 4) for t in times],
    }
    return Result("vocoder_train_step", "ms", round(s * 1e3, 1), None, None, config=config,
                  note=f"train-vocoder's step on CPU ({config['threads']} threads), default config, batch "
                       f"{tc.batch_size} x {tc.segment_frames} frames of real clips: {per_10_min:,.0f} steps "
                       f"per 10 minutes")


# ----------------------------------------------------------------------------- inference speed


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch and the BLAS / OpenMP pools held to one thread; restored on exit."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def heldout_inputs(ctx: Any, n_utts: int) -> tuple[list[str], FeatureConfig, dict[str, Any]]:
    """(utterances, their feature settings, utt -> Source with its mel and audio)."""
    store = FeatureStore.open(ctx.test_feats)
    utts = pick_utterances(store.utt2spk(), store.frames, n_utts)[:n_utts]  # one per speaker, at least
    if not utts:
        raise ValueError(f"no held-out utterance of {ctx.test_feats} has 100 frames")
    fc = store.config
    sources = load_sources(utts, fc, ctx.test_feats, ctx.data_dir / "test", need_audio=True)
    return utts, fc, sources


def rtf_results(ctx: Any, vc: NeuralVocoderConfig, n_utts: int, gl_iters: int, reps: int) -> list[Result]:
    utts, fc, sources = heldout_inputs(ctx, n_utts)
    mels = [sources[u].mel for u in utts]
    torch.manual_seed(0)
    model = NeuralVocoder(vc, fc).eval()
    samples: dict[str, int] = {}
    cpu: dict[str, list[float]] = {"neural": [], "griffinlim": [], "world": []}

    def timed(key: str, fn: Any) -> Any:
        def call() -> None:
            c0 = time.process_time()
            samples[key] = sum(y.size for y in fn(slice(None)))
            cpu[key].append(time.process_time() - c0)
        return call

    analyses = {}
    with one_thread():
        t0 = time.perf_counter()
        for u in utts:  # untimed in the figures: the recording's analysis, which both WORLD and the F0 use
            analyses[u] = world_analyze(sources[u].wav, fc, "harvest")
        analysis_s = time.perf_counter() - t0
        f0s = [analyses[u].f0 for u in utts]
        anas = [analyses[u] for u in utts]
        sides = {
            "neural": lambda s: neural(mels[s], f0s[s], model, fc),
            "griffinlim": lambda s: griffinlim(mels[s], fc, gl_iters),
            "world": lambda s: world(mels[s], anas[s], None, fc),
        }
        for side in sides.values():  # untimed, on the first utterance: imports, caches, first-call set-up
            side(slice(0, 1))
        times = alternate({k: timed(k, side) for k, side in sides.items()}, reps, warmup=0)
    wall = {k: median(v) for k, v in times.items()}
    audio = {k: samples[k] / fc.sample_rate for k in sides}
    rate = {k: audio[k] / wall[k] for k in sides}
    cpu_per_wall = {k: round(sum(cpu[k]) / sum(times[k]), 2) for k in sides}
    config = {
        "threads": 1, "utterances": len(utts), "audio_seconds": round(audio["neural"], 2), "reps": reps,
        "gl_iters": gl_iters, "f0": "WORLD Harvest of the recording (untimed)",
        "x_real_time": {k: round(v, 1) for k, v in rate.items()},
        "wall_s_median": {k: round(v, 4) for k, v in wall.items()},
        "wall_s_all": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "cpu_per_wall": cpu_per_wall,
        "neural_vs_griffinlim": round(rate["neural"] / rate["griffinlim"], 2),
        "neural_vs_world": round(rate["neural"] / rate["world"], 2),
        "world_analysis_x_real_time_untimed_once": round(audio["world"] / analysis_s, 1),
        "parameters": sum(p.numel() for p in model.parameters()), "vocoder": vc.to_dict(),
        "model": "randomly initialised (speed does not depend on the weights)",
    }
    return [
        Result("vocoder_rtf_1core", "x real time", round(rate["neural"], 1), round(rate["griffinlim"], 1),
               round(rate["neural"] / rate["griffinlim"], 2), f"ours >= {RT_TARGET:g}x rt", rate["neural"] >= RT_TARGET,
               config, note=f"vocoders.neural on {len(utts)} held-out utterances, one thread; reference column: "
                            f"Griffin-Lim ({gl_iters} iterations) on the same mels"),
        Result("vocoder_rtf_1core_vs_world", "x real time", round(rate["neural"], 1), round(rate["world"], 1),
               round(rate["neural"] / rate["world"], 2),
               config={"threads": 1, "utterances": len(utts), "audio_seconds": round(audio["world"], 2)},
               note="the same run; reference column: WORLD synthesis (envelope from the mel + pyworld.synthesize; "
                    "the analysis of the recording, Harvest F0 + D4C, is not timed on either side)"),
    ]


def run(ctx: Any, n_utts: int | None = None, gl_iters: int = GL_ITERS, train_steps: int | None = None,
        utts_per_speaker: int = TRAIN_UTTS_PER_SPEAKER, vocoder: NeuralVocoderConfig | None = None,
        train: VocoderTrainConfig | None = None) -> list[Result]:
    """Both figures; ``--quick`` takes fewer utterances and steps. The keyword arguments
    shrink the run for tests (defaults: the CPU configuration)."""
    quick = bool(getattr(getattr(ctx, "args", None), "quick", False))
    n_utts = n_utts or (N_UTTS_QUICK if quick else N_UTTS)
    train_steps = train_steps or (TRAIN_STEPS_QUICK if quick else TRAIN_STEPS)
    vc, tc = vocoder or NeuralVocoderConfig(), train or VocoderTrainConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(ctx.threads)
    results = []
    try:
        r = train_step_result(ctx, vc, tc, train_steps, utts_per_speaker)
        ctx.log(r)
        print(f"    {r.config['steps_per_10_min']:,} steps per 10 minutes; the default {tc.steps} steps in "
              f"{r.config['minutes_for_default_steps']} min", flush=True)
        results.append(r)
        for r in rtf_results(ctx, vc, n_utts, gl_iters, ctx.reps):
            ctx.log(r)
            results.append(r)
        print(f"    one thread: neural {results[1].ours}x, Griffin-Lim {results[1].reference}x, WORLD "
              f"{results[2].reference}x real time (neural/GL {results[1].ratio}x, neural/WORLD {results[2].ratio}x)",
              flush=True)
    finally:
        torch.set_num_threads(threads)
    return results
