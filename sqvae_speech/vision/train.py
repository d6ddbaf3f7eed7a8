"""Training loop of the image models (docs/PROTOCOL.md, "Vision experiments").

Adam (lr 1e-3), batch 32, ``train.epochs`` epochs (or ``train.max_steps`` steps in all),
Gumbel-softmax temperature tau = init * exp(-decay * step), and after every epoch a
validation pass with deterministic quantization whose loss drives
ReduceLROnPlateau(factor 0.5, patience 3) and picks the best model. Device-agnostic:
``device=None`` takes CUDA when there is one, else the CPU.

Experiment dir: ``config.yaml`` (the resolved config), ``metrics.jsonl`` (train averages
every ``log_every`` steps, validation after every epoch), ``checkpoints/ckpt-<step>.pt``
(model, optimizer, scheduler, RNG, position in the epoch; atomic, loadable with
``torch.load(weights_only=True)``) and ``best.pt`` (the lowest validation loss so far).
``resume=True`` continues from the newest checkpoint at the same batch of the same epoch.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..checkpoint import (
    FORMAT,
    VERSION,
    checkpoint_to_resume,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ..config import config_diff, dump_yaml
from ..errors import CheckpointError, ConfigError, NonFiniteError
from ..fileio import append_bytes, atomic_torch_save, atomic_write_text
from .config import VisionConfig, upgrade_vision_config
from .datasets import load_splits
from .models import VisionLoss, VisionSQVAE, describe

KIND = "vision"
METRICS = VisionLoss._fields


def resolve_device(name: str | None = None) -> torch.device:
    """``None`` / "auto": CUDA if available, else CPU; otherwise any torch device string."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"--device '{name}' is not a torch device ({e}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return dev


class EpochSampler(Sampler[int]):
    """A permutation of range(n) drawn from (seed, epoch), from position ``start`` on.

    The order depends only on (seed, epoch), so a resumed run sees the batches the
    interrupted one would have seen.
    """

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0) -> None:
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[self.start :].tolist())

    def __len__(self) -> int:
        return max(0, self.n - self.start)


def _loader(ds: Dataset, batch: int, workers: int, sampler: Sampler | None, pin: bool, drop_last: bool) -> DataLoader:
    # Its own generator: a DataLoader draws a base seed each epoch, and from the global RNG
    # that draw would shift the Gumbel noise, so a resumed run would differ from an
    # uninterrupted one.
    return DataLoader(ds, batch_size=batch, sampler=sampler, shuffle=False, num_workers=workers,
                      drop_last=drop_last, pin_memory=pin, generator=torch.Generator())


class _Averager:
    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.n = 0

    def add(self, out: VisionLoss) -> None:
        vals = torch.stack([getattr(out, k).detach().float().reshape(()) for k in METRICS])
        self.sums = vals if self.sums is None else self.sums + vals
        self.n += 1

    def pop(self) -> dict[str, float]:
        values = (self.sums / max(1, self.n)).tolist() if self.sums is not None else []
        self.sums, self.n = None, 0
        return dict(zip(METRICS, values))


@torch.no_grad()
def validate(model: VisionSQVAE, ds: Dataset, batch_size: int, device: torch.device) -> dict[str, float]:
    """Mean loss terms over ``ds`` with deterministic quantization (eval mode), batch-size weighted."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {k: 0.0 for k in METRICS}
    n = 0
    for x in _loader(ds, batch_size, 0, None, False, False):
        out = model(x.to(device))
        b = x.shape[0]
        for k in METRICS:
            sums[k] += float(getattr(out, k)) * b
        n += b
    model.train(was_training)
    return {k: v / max(n, 1) for k, v in sums.items()}


def _log(exp_dir: Path, record: dict[str, Any]) -> None:
    # one append: a full disk cuts the partial line off again and raises DiskFullError
    line = json.dumps({k: (round(v, 6) if math.isfinite(v) else None) if isinstance(v, float) else v
                       for k, v in record.items()})
    append_bytes(exp_dir / "metrics.jsonl", (line + "\n").encode("utf-8"))


def _trim_metrics(exp_dir: Path, step: int) -> None:
    """Drop lines logged after ``step`` (a killed run may have logged past its last
    checkpoint) and a torn line (a run killed while appending)."""
    path = exp_dir / "metrics.jsonl"

    def logged_step(line: str) -> int | None:
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            return None

    if path.is_file():
        keep = [ln for ln in path.read_text(encoding="utf-8").splitlines()
                if (s := logged_step(ln)) is not None and s <= step]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def _check_finite(value: torch.Tensor, what: str, step: int, last: Path | None) -> None:
    if not bool(torch.isfinite(value.detach()).all()):
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise NonFiniteError(f"non-finite {what} at step {step}; training stopped without saving the bad weights; "
                             f"{where}. Lower train.lr or check the images for NaN")


def checkpoint_config(ckpt: dict[str, Any], path: str | Path) -> VisionConfig:
    """The config a vision checkpoint carries, flat quantizer keys of the first release
    upgraded (:func:`~sqvae_speech.vision.config.upgrade_vision_config`)."""
    try:
        return VisionConfig.from_dict(upgrade_vision_config(ckpt["config"]), where=str(path))
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} carries a config this version cannot read: {e}") from None


def _same_setup(saved: VisionConfig, requested: VisionConfig, path: Path) -> None:
    old, new = saved.to_dict(), requested.to_dict()
    diffs = config_diff(old, new, sections=("model",)) + config_diff(old, new, sections=("data",), ignore=("data.root",))
    if diffs:
        lines = "\n  ".join(diffs)
        raise CheckpointError(f"the requested config does not match checkpoint {path}:\n  {lines}\n"
                              "resume with the original settings, or train into a new --exp directory")


def train(cfg: VisionConfig, exp_dir: str | Path, resume: bool = False, device: str | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train until ``train.epochs`` (or ``train.max_steps``); returns a summary dict."""
    from tqdm import tqdm

    exp_dir = Path(exp_dir)
    tc = cfg.train
    dev = resolve_device(device)
    latest, ckpt = checkpoint_to_resume(exp_dir, resume, KIND)
    if ckpt is not None:
        _same_setup(checkpoint_config(ckpt, latest), cfg, latest)

    splits = load_splits(cfg.data)
    n_train = len(splits["train"])  # type: ignore[arg-type]
    steps_per_epoch = n_train // tc.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size={tc.batch_size} exceeds the {n_train} training images of '{cfg.data.name}'")
    total = tc.epochs * steps_per_epoch
    if tc.max_steps:
        total = min(total, tc.max_steps)

    torch.manual_seed(tc.seed)
    model = VisionSQVAE(cfg.model).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=tc.plateau_factor,
                                                           patience=tc.plateau_patience, threshold=1e-4)
    step, epoch, pos, best = 0, 0, 0, math.inf
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        step, epoch, pos, best = int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["position"]), float(ckpt["best_val_loss"])
        _trim_metrics(exp_dir, step)
    exp_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(exp_dir / "config.yaml", dump_yaml(cfg))
    print(f"[vision train] {describe(model)}", file=sys.stderr)
    print(f"[vision train] {cfg.data.name}: {n_train} train / {len(splits['val'])} val images, device {dev}, "  # type: ignore[arg-type]
          f"{steps_per_epoch} steps per epoch, from step {step} to {total}", file=sys.stderr)

    last_ckpt = latest

    def payload(full: bool) -> dict[str, Any]:
        p: dict[str, Any] = {"kind": KIND, "config": cfg.to_dict(), "model": model.state_dict(),
                             "epoch": epoch, "position": pos, "best_val_loss": best}
        if full:
            p |= {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}
        return p

    def end_of_epoch(complete: bool) -> None:
        nonlocal best, last_ckpt
        val = validate(model, splits["val"], tc.eval_batch_size, dev)
        if complete:  # a partial epoch (max_steps) must not count towards the plateau patience
            scheduler.step(val["loss"])
        _log(exp_dir, {"step": step, "epoch": epoch + (0 if complete else pos / steps_per_epoch), "split": "val",
                       **val, "lr": optimizer.param_groups[0]["lr"]})
        if math.isfinite(val["loss"]) and val["loss"] <= best:
            best = val["loss"]
            atomic_torch_save(exp_dir / "best.pt", {"format": FORMAT, "version": VERSION, "step": step, **payload(False)})
        last_ckpt = save_checkpoint(exp_dir, step, payload(True), keep=tc.keep_checkpoints)
        bar.set_postfix(val_loss=f"{val['loss']:.1f}", ppl=f"{val['perplexity']:.0f}")

    avg = _Averager()
    pin = dev.type == "cuda"
    bar = tqdm(total=total, initial=step, disable=not progress, desc="vision train", unit="step",
               dynamic_ncols=True, mininterval=1.0)
    t0 = time.time()
    model.train()
    try:
        while step < total and epoch < tc.epochs:
            sampler = EpochSampler(n_train, tc.seed, epoch, start=pos * tc.batch_size)
            for x in _loader(splits["train"], tc.batch_size, tc.num_workers, sampler, pin, drop_last=True):
                if step >= total:
                    break
                tau = tc.temperature(step + 1)  # the authors count steps from 1
                out = model(x.to(dev, non_blocking=True), temperature=tau)
                _check_finite(out.loss, "loss", step + 1, last_ckpt)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
                step += 1
                pos += 1
                avg.add(out)
                bar.update(1)
                if step % tc.log_every == 0:
                    stats = avg.pop()
                    _log(exp_dir, {"step": step, "epoch": epoch + pos / steps_per_epoch, "split": "train", **stats,
                                   "temperature": tau, "lr": optimizer.param_groups[0]["lr"],
                                   "images_per_s": tc.log_every * tc.batch_size / max(time.time() - t0, 1e-9)})
                    t0 = time.time()
                    bar.set_postfix(loss=f"{stats['loss']:.1f}", ppl=f"{stats['perplexity']:.0f}")
            complete = pos >= steps_per_epoch
            if complete:
                epoch, pos = epoch + 1, 0
            end_of_epoch(complete)
    except KeyboardInterrupt:
        last_ckpt = save_checkpoint(exp_dir, step, payload(True), keep=tc.keep_checkpoints)
        print(f"\n[vision train] interrupted at step {step}; saved {last_ckpt}", file=sys.stderr)
        raise
    finally:
        bar.close()
    return {"step": step, "epoch": epoch, "best_val_loss": best, "checkpoint": str(last_ckpt), "exp": str(exp_dir)}


def load_vision_model(exp_or_ckpt: str | Path, which: str = "best",
                      map_location: str | torch.device = "cpu") -> tuple[VisionSQVAE, VisionConfig, int, Path]:
    """(model in eval mode, config, step, path) from an experiment dir (``which``: "best"
    or "latest") or a checkpoint file."""
    p = Path(exp_or_ckpt)
    if p.is_file():
        path = p
    elif p.is_dir():
        found = p / "best.pt" if which == "best" else latest_checkpoint(p)
        if found is None or not found.is_file():
            raise CheckpointError(f"no {which} checkpoint in {p}: train first (`sqvae-speech vision train --exp {p}`)")
        path = found
    else:
        raise CheckpointError(f"{p} is neither an experiment dir nor a checkpoint file")
    ckpt = load_checkpoint(path, map_location)
    if ckpt.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a vision checkpoint (made by `sqvae-speech train`?)")
    cfg = checkpoint_config(ckpt, path)
    model = VisionSQVAE(cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model its config describes: {str(e).splitlines()[0]}") from None
    model.eval()
    return model, cfg, int(ckpt["step"]), path
