"""``sqvae-speech train-vocoder``: train the neural vocoder (:mod:`.neural`) on a recipe's own
audio and features.

Data: ``utts_per_speaker`` evenly spaced utterances per speaker of the data dir (all with
0), their log-mels from the feature store (the same frames the SQ-VAE sees) and their F0
(WORLD Harvest at the feature hop, as conversion uses; computed once with ``--nj``
workers and cached in ``EXP/f0.npz``). Each step takes ``batch_size`` random windows of
``segment_frames`` frames and the matching ``(segment_frames - 1) * hop`` samples of the
pre-emphasized, peak-normalized recording.

Resumable like ``train``: checkpoints every ``checkpoint_every`` steps under
``EXP/checkpoints`` (model, optimizer, scheduler), ``--resume`` continues from the newest.
The windows and the noise of step ``s`` are drawn from generators seeded with
``(seed, s, rank)``, so a run killed and resumed sees the same batches as one that was
never stopped. At the end ``EXP/vocoder.pt`` is written: weights, configs and step, for
``--vocoder neural --vocoder-model EXP/vocoder.pt``. accelerate provides the device, DDP
and mixed precision (``accelerate launch -m sqvae_speech.cli train-vocoder ...``).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import (
    checkpoint_to_resume,
    load_scheduler_state,
    resume_hint,
    save_checkpoint,
    scheduler_state,
)
from ..config import (
    ConfigBase,
    ConfigError,
    _check,
    apply_overrides,
    dump_yaml,
    load_yaml,
)
from ..errors import DiskFullError, SQVAEError
from ..fileio import atomic_write_text
from ..locks import dir_lock, is_main_process
from ..trainlog import log_metrics, lossy_stderr, open_event_log, trim_metrics
from .neural import (
    MultiResolutionSTFTLoss,
    NeuralVocoder,
    NeuralVocoderConfig,
    save_vocoder,
)
from .neural_data import load_clips, sample_batch

KIND = "vocoder"  # checkpoints carry kind="vocoder"; the SQ-VAE loaders refuse them by it


@dataclasses.dataclass(frozen=True)
class VocoderTrainConfig(ConfigBase):
    """Training settings (YAML section ``train``)."""

    steps: int = 2000
    batch_size: int = 16
    segment_frames: int = 100  # 1 s windows
    lr: float = 1.0e-3
    milestones: tuple[int, ...] = ()  # steps where the learning rate is multiplied by gamma
    gamma: float = 0.5
    grad_clip: float = 10.0
    seed: int = 0
    utts_per_speaker: int = 50  # evenly spaced training utterances per speaker; 0: all
    f0_method: str = "harvest"
    # Fine-tuning on the SQ-VAE's own output (HiFi-GAN's and bshall/ZeroSpeech's practice):
    # with `decoded_from` (an experiment dir, checkpoint or model file; --decoded-from) this
    # share of the windows takes the mel that model reconstructs from the recording instead
    # of the recording's own; the target stays the recording. Without it: real mels only.
    decoded_from: str = ""
    decoded_share: float = 0.0
    mixed_precision: str = "no"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50

    def validate(self) -> None:
        _check(self.steps > 0 and self.batch_size > 0, "train.steps and train.batch_size must be positive")
        _check(self.segment_frames >= 8, "train.segment_frames must be at least 8")
        _check(self.lr > 0 and self.grad_clip > 0, "train.lr and train.grad_clip must be positive")
        _check(self.utts_per_speaker >= 0, "train.utts_per_speaker must be >= 0")
        _check(self.f0_method in ("harvest", "dio"), "train.f0_method must be harvest or dio")
        _check(0.0 <= self.decoded_share <= 1.0, "train.decoded_share must be in [0, 1]")
        _check(self.mixed_precision in ("no", "fp16", "bf16"), "train.mixed_precision must be no, fp16 or bf16")
        _check(self.checkpoint_every > 0 and self.keep_checkpoints > 0 and self.log_every > 0,
               "train.checkpoint_every, keep_checkpoints and log_every must be positive")


@dataclasses.dataclass(frozen=True)
class VocoderExperimentConfig(ConfigBase):
    vocoder: NeuralVocoderConfig = dataclasses.field(default_factory=NeuralVocoderConfig)
    train: VocoderTrainConfig = dataclasses.field(default_factory=VocoderTrainConfig)

    def validate(self) -> None:
        self.vocoder.validate()
        self.train.validate()


def resolve_vocoder_config(path: str | None, overrides: Sequence[str] = ()) -> VocoderExperimentConfig:
    """YAML (sections ``vocoder`` and ``train``) plus ``section.key=value`` overrides."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides))
    cfg = VocoderExperimentConfig.from_dict(data, where=path or "")
    cfg.validate()
    return cfg


# ----------------------------------------------------------------------------- training


def train_vocoder(cfg: VocoderExperimentConfig, data_dir: str | Path, feats_dir: str | Path, exp_dir: str | Path,
                  resume: bool = False, nj: int = 1, cpu: bool = False, progress: bool = True,
                  stop_after: int | None = None) -> dict[str, Any]:
    """Train (or, with ``resume``, continue) the neural vocoder in ``exp_dir``; returns a summary.

    ``stop_after``: stop after that many steps of this call (tests); the vocoder file is
    written only when ``cfg.train.steps`` is reached.
    """
    exp_dir = Path(exp_dir)
    with lossy_stderr(), dir_lock(exp_dir, "sqvae-speech train-vocoder", main_only=True):
        return _train(cfg, data_dir, feats_dir, exp_dir, resume, nj, cpu, progress, stop_after)


def _train(cfg: VocoderExperimentConfig, data_dir: str | Path, feats_dir: str | Path, exp_dir: Path, resume: bool,
           nj: int, cpu: bool, progress: bool, stop_after: int | None) -> dict[str, Any]:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from tqdm import tqdm

    tc = cfg.train
    start_step = 0
    latest, ckpt = checkpoint_to_resume(exp_dir, resume, KIND, ": train the vocoder into its own --exp dir")
    if ckpt is not None:
        if ckpt["config"]["vocoder"] != cfg.vocoder.to_dict():
            raise ConfigError(f"the vocoder settings differ from those of {latest}; resume with the original "
                              "config or train into a new --exp directory")
        start_step = int(ckpt["step"])
    exp_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():  # the lock holder (the other ranks write nothing here before the F0 cache)
        # what a killed run logged after its last checkpoint, or before its first one, is dropped
        trim_metrics(exp_dir, start_step)
        # and the files it was writing (f0.npz, vocoder.pt, config.yaml ...) are removed
        for stale in exp_dir.glob(".tmp-*"):
            stale.unlink(missing_ok=True)
    clips, fc = load_clips(data_dir, feats_dir, tc, exp_dir / "f0.npz", nj, progress)
    eligible = np.flatnonzero([c.mel.shape[1] >= tc.segment_frames for c in clips])
    if eligible.size == 0:
        raise SQVAEError(f"no training utterance of {data_dir} has {tc.segment_frames} frames; lower "
                         "train.segment_frames")

    if ckpt is not None and ckpt["config"].get("features") != fc.to_dict():
        raise ConfigError(f"{feats_dir} holds features of other settings than those {latest} was trained on; "
                          "resume on the same features or train into a new --exp directory")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # alone: a second run in this process may change settings
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, cpu=cpu or not torch.cuda.is_available())
    main, rank = accelerator.is_main_process, accelerator.process_index
    torch.manual_seed(tc.seed)
    model = NeuralVocoder(cfg.vocoder, fc)
    loss_fn = MultiResolutionSTFTLoss().to(accelerator.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(tc.milestones), gamma=tc.gamma)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        load_scheduler_state(scheduler, ckpt["scheduler"])
    model, optimizer = accelerator.prepare(model, optimizer)
    if main:
        atomic_write_text(exp_dir / "config.yaml", dump_yaml(cfg))
        params = sum(p.numel() for p in model.parameters())
        print(f"[train-vocoder] {params / 1e6:.2f} M parameters, {len(clips)} utterances "
              f"({sum(c.audio.size for c in clips) / fc.sample_rate / 60:.1f} min) from {data_dir}, device "
              f"{accelerator.device}, from step {start_step} to {tc.steps}; " + (
                  f"{tc.decoded_share:.0%} of the windows decoded by {tc.decoded_from}"
                  if tc.decoded_from and tc.decoded_share > 0 else "recorded mels only"), file=sys.stderr)
    end_step = tc.steps if stop_after is None else min(tc.steps, start_step + stop_after)
    step, last_ckpt = start_step, latest
    writer = open_event_log(exp_dir, start_step) if main else None
    bar = tqdm(total=tc.steps, initial=start_step, disable=not (main and progress), desc="train-vocoder",
               unit="step", dynamic_ncols=True, mininterval=1.0)

    def checkpoint() -> None:
        nonlocal last_ckpt
        accelerator.wait_for_everyone()
        if main:
            last_ckpt = save_checkpoint(exp_dir, step, {
                "kind": KIND, "config": {**cfg.to_dict(), "features": fc.to_dict()},
                "model": accelerator.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler_state(scheduler)}, keep=tc.keep_checkpoints)

    sums, count, t0 = np.zeros(2), 0, time.time()
    model.train()
    try:
        while step < end_step:
            rng = np.random.default_rng([tc.seed, step, rank])
            mel, f0, y, pulses = (x.to(accelerator.device) for x in
                                  sample_batch(clips, eligible, tc.batch_size, tc.segment_frames, fc.hop_length, rng,
                                               tc.decoded_share))
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            noise = torch.randn(y.shape, generator=gen).to(accelerator.device)
            with accelerator.autocast():
                out = model(mel, f0, pulses, noise)
            sc, mag = loss_fn(out.float(), y)
            loss = sc + mag
            if not torch.isfinite(loss):
                raise SQVAEError(f"the vocoder loss is not finite at step {step}; {resume_hint(last_ckpt)} "
                                 "with a lower train.lr")
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            sums += (float(sc.detach()), float(mag.detach()))
            count += 1
            bar.update(1)
            if step % tc.log_every == 0 or step == end_step:
                stats = {"loss": float(sums.sum() / count), "spectral_convergence": float(sums[0] / count),
                         "log_magnitude_l1": float(sums[1] / count), "lr": scheduler.get_last_lr()[0],
                         "seconds_per_step": (time.time() - t0) / count}
                sums, count, t0 = np.zeros(2), 0, time.time()
                if main:
                    try:
                        log_metrics(exp_dir, writer, step, stats)
                    except DiskFullError as e:
                        raise DiskFullError(f"{e}; training stopped at step {step}: {resume_hint(last_ckpt)}",
                                            e.errno or errno.ENOSPC) from e
                    bar.set_postfix(loss=f"{stats['loss']:.3f}")
            if step % tc.checkpoint_every == 0 and step < end_step:
                checkpoint()
        checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        raise
    finally:
        bar.close()
    out_file = None
    if main and step >= tc.steps:
        out_file = save_vocoder(exp_dir / "vocoder.pt", accelerator.unwrap_model(model), step, tc.to_dict())
        print(f"[train-vocoder] done: step {step}, {out_file}", file=sys.stderr)
    accelerator.wait_for_everyone()
    return {"step": step, "checkpoint": str(last_ckpt) if last_ckpt else None,
            "vocoder": str(out_file) if out_file else None, "main": main}
