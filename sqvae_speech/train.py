"""``sqvae-speech train``: train a speech SQ-VAE (variants I-IV) or the VQ-VAE baseline.

One code path for one CPU, one GPU and many GPUs / nodes: device placement, mixed
precision and DDP come from accelerate (``accelerate launch -m sqvae_speech.cli train
...`` or ``accelerate launch $(which sqvae-speech) train ...``).

Experiment dir: ``config.yaml`` (resolved), ``checkpoints/``, ``metrics.jsonl`` (one line
per log interval), ``tensorboard/``. ``--resume`` continues from the newest checkpoint
with model, optimizer, scheduler, scaler, step and RNG states; the temperature follows
from the step.

One run at a time trains in an experiment dir: :func:`train` holds its lock
(:mod:`sqvae_speech.locks`), taken by the main process only (rank 0 under ``accelerate
launch``), so a second ``train`` (or an ``evaluate`` writing ``EXP/results.json``) on it
stops at once with :class:`~sqvae_speech.errors.LockedError`.

A full disk. The checkpoints are what must survive, and ``metrics.jsonl`` and the
TensorBoard events live beside them: a log record that does not fit means the next
checkpoint will not fit either. So a full disk while appending either stops training
with :class:`~sqvae_speech.errors.DiskFullError` (exit 2) naming the file and the newest
complete checkpoint (``--resume`` continues from it), the partial record cut off again
(:func:`~sqvae_speech.fileio.append_bytes`), like a full disk while writing a checkpoint.
TensorBoard events are written by :class:`~sqvae_speech.trainlog.EventLog` in the training loop itself, not by
``SummaryWriter``, whose background thread only reports a failed write at some later call
(and prints its own traceback). stderr (the progress bar and messages, often redirected to
a log file) is the exception: output that does not fit there is dropped and training
carries on; the run says so once at its end (:func:`lossy_stderr`).
"""

from __future__ import annotations

import errno
import os
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

from .checkpoint import (
    check_same_setup,
    checkpoint_config,
    latest_checkpoint,
    load_checkpoint,
    load_scheduler_state,
    resume_hint,
    rng_state,
    save_checkpoint,
    scheduler_state,
    set_rng_state,
)
from .config import ExperimentConfig, apply_overrides, dump_yaml, load_yaml
from .data.batching import BucketBatchSampler, CropDataset, UtteranceDataset, collate
from .data.featstore import FeatureStore
from .errors import ConfigError, DiskFullError, NonFiniteError
from .fileio import atomic_write_text
from .locks import dir_lock
from .models import SpeechSQVAE, build_optimizer, describe
from .nets import cpu as cpu_kernels
from .nets.cpu.allocator import keep_freed_memory
from .trainlog import log_metrics, lossy_stderr, open_event_log, trim_metrics

METRICS = ("loss", "recon", "latent", "mse_db2", "kl_continuous", "kl_discrete", "perplexity", "log_var_mean")


def resolve_config(config_path: str | None, overrides: list[str], variant: str | None,
                   feats_dir: str | Path | None = None) -> ExperimentConfig:
    """Config file + ``section.key=value`` overrides. Without a ``features`` section the
    feature settings are taken from the store in ``feats_dir`` (it is authoritative); a
    ``features`` section that disagrees with the store is an error later, naming both."""
    data = load_yaml(config_path) if config_path else {}
    if variant:
        overrides = [f"model.variant={variant}", *overrides]
    data = apply_overrides(data, overrides)
    if "features" not in data and feats_dir is not None:
        data["features"] = FeatureStore.open(feats_dir).config.to_dict()
    return ExperimentConfig.from_dict(data, where=config_path or "config")


def build_loader(cfg: ExperimentConfig, store: FeatureStore, seed: int, pin_memory: bool,
                 num_processes: int = 1) -> DataLoader:
    tc = cfg.train
    workers = tc.num_workers
    common: dict[str, Any] = {"num_workers": workers, "collate_fn": collate, "pin_memory": pin_memory,
                              "persistent_workers": workers > 0}
    if tc.batching == "crops":
        ds = CropDataset(store, cfg.model.speakers, tc.crop_frames)
        # drop_last on every process: fewer items than batch_size x processes means an
        # epoch without a single batch (and a loop that never ends).
        if len(ds) < tc.batch_size * num_processes:
            raise ConfigError(
                f"train.batch_size={tc.batch_size} x {num_processes} process(es) exceeds the {len(ds)} usable "
                f"utterances in {store.path}; lower train.batch_size or use fewer processes")
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=tc.batch_size, sampler=RandomSampler(ds, generator=gen),
                          drop_last=True, **common)
    ds = UtteranceDataset(store, cfg.model.speakers, max_frames=tc.max_utterance_frames)
    if len(ds) == 0:
        raise ConfigError(f"no utterance in {store.path} is long enough to train on")
    sampler = BucketBatchSampler(ds.lengths(), max(tc.max_frames, tc.max_utterance_frames),
                                 max_batch=tc.batch_size, seed=seed, noise=tc.bucket_noise)
    return DataLoader(ds, batch_sampler=sampler, **common)


class _Averager:
    """Sums step metrics on the device; one host transfer per log interval, not per step."""

    KEYS = (*METRICS, "grad_norm")

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.n = 0

    def add(self, out: Any, grad_norm: torch.Tensor) -> None:
        vals = torch.stack([getattr(out, k).detach().float().reshape(()) for k in METRICS]
                           + [torch.as_tensor(grad_norm).detach().float().reshape(()).to(out.loss.device)])
        self.sums = vals if self.sums is None else self.sums + vals
        self.n += 1

    def pop(self) -> dict[str, float]:
        values = (self.sums / max(1, self.n)).tolist() if self.sums is not None else []
        self.sums, self.n = None, 0
        return dict(zip(self.KEYS, values))


def experiment_lock(exp_dir: str | Path) -> AbstractContextManager[Path | None]:
    """The lock of an experiment dir, held by the main process only (:func:`~sqvae_speech.locks.dir_lock`)."""
    return dir_lock(exp_dir, "sqvae-speech train", main_only=True)


def train(cfg: ExperimentConfig, feats_dir: str | Path, exp_dir: str | Path, resume: bool = False,
          cpu: bool = False, progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Train until ``cfg.train.steps`` (or ``stop_after`` more steps). Returns a summary dict.

    Holds the lock of ``exp_dir`` throughout (:func:`experiment_lock`). A full disk while
    writing a checkpoint, ``metrics.jsonl`` or the TensorBoard events raises
    :class:`~sqvae_speech.errors.DiskFullError` naming the file and the newest complete
    checkpoint; output to a full stderr is dropped (:func:`lossy_stderr`)."""
    with lossy_stderr(), experiment_lock(exp_dir):
        return _train(cfg, feats_dir, exp_dir, resume, cpu, progress, stop_after)


def _train(cfg: ExperimentConfig, feats_dir: str | Path, exp_dir: str | Path, resume: bool,
           cpu: bool, progress: bool, stop_after: int | None) -> dict[str, Any]:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    exp_dir = Path(exp_dir)
    tc = cfg.train
    # Every utterance's checksum, once (~0.1 s per 320 MB read): a damaged store is refused
    # now, naming its utterances, not part-way through training.
    store = FeatureStore.open(feats_dir, expect_config=cfg.features, verify="full")
    speakers = tuple(store.speakers)
    if cfg.model.speakers and set(speakers) - set(cfg.model.speakers):
        missing = sorted(set(speakers) - set(cfg.model.speakers))
        raise ConfigError(f"speakers {missing} of {feats_dir} are not in model.speakers; leave model.speakers empty to take them from the data")
    if not cfg.model.speakers:
        cfg = cfg.replace(model=cfg.model.replace(speakers=speakers))

    start_step, ckpt = 0, None
    latest = latest_checkpoint(exp_dir)
    if resume and latest is not None:
        ckpt = load_checkpoint(latest)
        saved = checkpoint_config(ckpt, latest)
        check_same_setup(saved, cfg.replace(model=cfg.model.replace(speakers=saved.model.speakers)),
                         f"checkpoint {latest}", "the requested config")
        cfg = cfg.replace(model=saved.model)
        start_step = int(ckpt["step"])
    elif latest is not None:
        raise ConfigError(f"{exp_dir} already holds checkpoints (newest {latest.name}); pass --resume to continue or choose another --exp")

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one state per process; a second train() in the same process
        # (a notebook, the tests) may ask for other settings, which is fine when alone.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    # Without CUDA, say cpu=True: that is what makes accelerate run multi-process CPU
    # training (gloo) under `accelerate launch` / torchrun instead of N lone processes.
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, cpu=cpu or not torch.cuda.is_available())
    main = accelerator.is_main_process
    if accelerator.device.type == "cpu" and cpu_kernels.enabled():  # SQVAE_CPU_KERNELS
        keep_freed_memory()
    set_seed(tc.seed + start_step + accelerator.process_index)
    model = SpeechSQVAE(cfg.model)
    optimizer = build_optimizer(model, tc.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(tc.milestones), gamma=tc.gamma)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        load_scheduler_state(scheduler, ckpt["scheduler"])
        if accelerator.process_index == 0:  # other ranks keep their own seeds (distinct noise)
            set_rng_state(ckpt["rng"])
    loader = build_loader(cfg, store, seed=tc.seed + start_step, pin_memory=accelerator.device.type == "cuda",
                          num_processes=accelerator.num_processes)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if ckpt is not None and ckpt.get("scaler") is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(ckpt["scaler"])

    if main:
        exp_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(exp_dir / "config.yaml", dump_yaml(cfg))
        print(f"[train] {describe(accelerator.unwrap_model(model))}", file=sys.stderr)
        print(f"[train] {len(loader.dataset)} items from {feats_dir}, device {accelerator.device}, "
              f"{accelerator.num_processes} process(es), mixed precision {tc.mixed_precision}, "
              f"from step {start_step} to {tc.steps}", file=sys.stderr)
    end_step = tc.steps if stop_after is None else min(tc.steps, start_step + stop_after)
    step, epoch = start_step, 0
    avg, frames, t0 = _Averager(), 0, time.time()
    last_ckpt = latest

    def log_stopped(e: DiskFullError) -> DiskFullError:
        # the checkpoints share the disk: stop now, keeping the newest complete one
        return DiskFullError(f"{e}; training stopped at step {step}: {resume_hint(last_ckpt)}",
                             e.errno or errno.ENOSPC)

    try:
        writer = open_event_log(exp_dir, start_step) if main else None
    except DiskFullError as e:
        raise log_stopped(e) from e
    bar = _progress(main and progress, start_step, tc.steps)

    def checkpoint() -> Path | None:
        nonlocal last_ckpt
        accelerator.wait_for_everyone()
        if main:
            last_ckpt = save_checkpoint(exp_dir, step, {
                "config": cfg.to_dict(),
                "model": accelerator.unwrap_model(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler_state(scheduler),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "rng": rng_state(),
            }, keep=tc.keep_checkpoints)
        return last_ckpt

    model.train()
    try:
        while step < end_step:
            sampler = getattr(loader, "batch_sampler", None)
            for obj in (sampler, getattr(sampler, "batch_sampler", None)):
                if hasattr(obj, "set_epoch"):
                    obj.set_epoch(epoch)
            step_at_epoch_start = step
            for batch in loader:
                if step >= end_step:
                    break
                tau = tc.temperature(step)
                with accelerator.autocast():
                    out = model(batch.mels, batch.lengths, batch.speakers, temperature=tau)
                _check_finite(accelerator, out.loss, "loss", step, last_ckpt)
                accelerator.backward(out.loss)
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
                if tc.mixed_precision != "fp16":  # fp16's scaler skips steps with inf grads itself
                    _check_finite(accelerator, grad_norm, "gradient norm", step, last_ckpt)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                frames += int(batch.lengths.sum())
                avg.add(out, grad_norm)
                if main:
                    bar.update(1)
                if step % tc.log_every == 0 or step == end_step:
                    stats = avg.pop()
                    elapsed = time.time() - t0
                    stats |= {"temperature": tau, "lr": scheduler.get_last_lr()[0],
                              "frames_per_s": frames * accelerator.num_processes / max(elapsed, 1e-9)}
                    frames, t0 = 0, time.time()
                    if main:
                        try:
                            log_metrics(exp_dir, writer, step, stats)
                        except DiskFullError as e:
                            raise log_stopped(e) from e
                        bar.set_postfix(loss=f"{stats['loss']:.1f}", mse=f"{stats['mse_db2']:.1f}",
                                        ppl=f"{stats['perplexity']:.0f}")
                if step % tc.checkpoint_every == 0 and step < end_step:
                    checkpoint()
            if step == step_at_epoch_start:
                raise ConfigError(f"an epoch over {feats_dir} gave no training batch; lower train.batch_size or train.max_frames")
            epoch += 1
        path = checkpoint()
    except KeyboardInterrupt:
        path = checkpoint()
        if main:
            print(f"\n[train] interrupted at step {step}; saved {path}", file=sys.stderr)
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    accelerator.wait_for_everyone()
    return {"step": step, "checkpoint": str(path) if path else None, "exp": str(exp_dir), "main": main}


def _check_finite(accelerator: Any, value: torch.Tensor, what: str, step: int, last_ckpt: Path | None) -> None:
    bad = ~torch.isfinite(value.detach().float())
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad.float().reshape(1), reduction="sum") > 0
    if bool(bad.any()):
        where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
        raise NonFiniteError(
            f"non-finite {what} at step {step + 1}; training stopped without saving the bad weights; {where}. "
            "Lower train.lr, check the features for NaN, or try --mixed-precision no"
        )


def _progress(enabled: bool, initial: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step",
                dynamic_ncols=True, mininterval=1.0)


__all__ = ["build_loader", "experiment_lock", "lossy_stderr", "resolve_config", "train", "trim_metrics"]
