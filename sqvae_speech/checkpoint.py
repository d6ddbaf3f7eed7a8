"""Checkpoints: atomic, self-describing, loadable with ``torch.load(weights_only=True)``.

Layout: ``EXP/checkpoints/ckpt-<step:08d>.pt``. A checkpoint is a dict of tensors and
plain Python values: ``format``, ``version``, ``step``, ``config`` (the whole
ExperimentConfig as a dict), ``model`` (state dict), and for resuming ``optimizer``,
``scheduler``, ``scaler`` and ``rng``. Files are written to a temporary name and renamed,
so a killed run never leaves a partial ``ckpt-*.pt``; temporaries (``.tmp-*``) are never
picked up and are cleaned on the next save.
"""

from __future__ import annotations

import copy
import errno
import pickle
import random
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from .config import ExperimentConfig, config_diff
from .errors import CheckpointError, ConfigError, DiskFullError, SQVAEError
from .fileio import atomic_torch_save

FORMAT = "sqvae-speech-checkpoint"
# 2: model.quantizer holds the variant's constructor arguments (upgrade_config below reads 1)
VERSION = 2
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


# Config mappings of checkpoint format 1 (sqvae-speech 0.1) used other keys:
# model.quantizer held the same seven keys for every variant, the EMA ones named ema_*,
# and train.keep_freed_memory existed (the malloc setting is now part of the CPU-kernel
# switch, sqvae_speech.nets.cpu).
_V1_RENAMES = {"ema_decay": "decay", "ema_epsilon": "epsilon"}
_V1_SQ_KEYS = ("num_embeddings", "embedding_dim", "init_log_var")
_V1_VQ_KEYS = ("num_embeddings", "embedding_dim", "ema_decay", "ema_epsilon", "commitment_cost", "reset_unused")
# What the format-1 VQ-EMA did, as today's constructor arguments: N(0, 1) codebook, a
# pseudo-count of 1 per code, the smoothed count used only for the division, and a reset
# threshold of 0.01.
_V1_VQ_BEHAVIOUR = {"init": "normal", "init_count": 1.0, "store_smoothed_count": False, "reset_threshold": 0.01}


def upgrade_config(data: dict[str, Any], version: int) -> dict[str, Any]:
    """An experiment config mapping written by checkpoint format ``version`` -> today's keys.

    Format 1 -> 2: ``model.quantizer`` keeps only the keys the variant's class takes
    (``ema_decay`` / ``ema_epsilon`` become ``decay`` / ``epsilon``; a VQ-EMA model also
    records the format-1 init and count rules, so a resumed run continues exactly), and
    ``train.keep_freed_memory`` is dropped. Mappings already in today's form pass unchanged.
    """
    data = copy.deepcopy(data)
    if version >= 2:
        return data
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("quantizer"), dict):
        old = model["quantizer"]
        variant = model.get("variant", "gaussian_4")
        if variant == "vqvae_ema":
            new = {_V1_RENAMES.get(k, k): v for k, v in old.items() if k in _V1_VQ_KEYS}
            new.update(_V1_VQ_BEHAVIOUR)
        else:
            new = {k: v for k, v in old.items() if k in _V1_SQ_KEYS}
        model["quantizer"] = new
    train = data.get("train")
    if isinstance(train, dict):
        train.pop("keep_freed_memory", None)
    return data


def checkpoint_dir(exp_dir: str | Path) -> Path:
    return Path(exp_dir) / "checkpoints"


def list_checkpoints(exp_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in ``exp_dir``, oldest first."""
    d = checkpoint_dir(exp_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(exp_dir: str | Path) -> Path | None:
    found = list_checkpoints(exp_dir)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _py_state_to_plain(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_plain_to_py_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_plain(s: tuple) -> list:
    version, internal, gauss = s
    return [version, list(internal), gauss]


def _plain_to_py_state(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


def scheduler_state(scheduler: Any) -> dict[str, Any]:
    """MultiStepLR keeps milestones in a Counter, which weights_only loading refuses."""
    state = dict(scheduler.state_dict())
    if isinstance(state.get("milestones"), Counter):
        state["milestones"] = dict(state["milestones"])
    return state


def load_scheduler_state(scheduler: Any, state: dict[str, Any]) -> None:
    state = dict(state)
    if isinstance(state.get("milestones"), dict):
        state["milestones"] = Counter(state["milestones"])
    scheduler.load_state_dict(state)


def resume_hint(latest: Path | None) -> str:
    """What ``--resume`` continues from, for the message of a run that stopped."""
    return (f"the newest complete checkpoint is {latest} (--resume continues from it)" if latest
            else "no checkpoint was written before (--resume starts from step 0)")


def save_checkpoint(exp_dir: str | Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    """Write ``payload`` (model, optimizer, ...) plus format/step atomically; keep the newest ``keep``.

    A full disk raises :class:`DiskFullError` naming the newest complete checkpoint, which
    (like every older one) is left untouched: pruning happens only after a good save.
    """
    d = checkpoint_dir(exp_dir)
    d.mkdir(parents=True, exist_ok=True)
    for stale in d.glob(".tmp-*"):
        stale.unlink(missing_ok=True)
    path = d / f"ckpt-{step:08d}.pt"
    try:
        atomic_torch_save(path, {"format": FORMAT, "version": VERSION, "step": step, **payload})
    except DiskFullError as e:
        raise DiskFullError(f"{e}; {resume_hint(latest_checkpoint(exp_dir))}", e.errno or errno.ENOSPC) from e
    for _, old in list_checkpoints(exp_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; a truncated, foreign or corrupt file is a CheckpointError.

    A model file (:mod:`sqvae_speech.modelfile`) is read too: it gives the same keys
    (``step``, ``config``, ``model``, ``version``) plus ``model_file``, the rest of it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, pickle.UnpicklingError) or first.startswith("Weights only load failed"):
            # PyTorch's text goes on to suggest weights_only=False: never for a file of unknown origin
            first = "it holds Python objects other than tensors and plain values, which are not loaded"
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({first}); it is truncated, corrupt, not a PyTorch file "
            "or one that holds more than tensors and plain values (another program's): use an earlier "
            "checkpoint from the same directory, or a model file written by `sqvae-speech package`"
        ) from None
    if isinstance(ckpt, dict) and ckpt.get("format") == "sqvae-speech-model":
        from .modelfile import model_file_to_checkpoint

        return model_file_to_checkpoint(ckpt, path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an sqvae-speech checkpoint or model file (no '{FORMAT}' or "
                              "'sqvae-speech-model' marker): was it written by another program?")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt['version']}; this toolkit reads up to {VERSION}: upgrade sqvae-speech")
    for key in ("step", "config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} lacks '{key}'; it is incomplete")
    return ckpt


def checkpoint_to_resume(exp_dir: str | Path, resume: bool, kind: str,
                         hint: str = "") -> tuple[Path | None, dict[str, Any] | None]:
    """(path, contents) of the newest checkpoint of ``exp_dir`` to continue from, or (None, None).

    A dir that holds checkpoints is refused without ``resume`` (a new run would mix with
    them), and so is a checkpoint whose ``kind`` is not ``kind`` (another trainer's; ``hint``
    says what to do instead).
    """
    latest = latest_checkpoint(exp_dir)
    if latest is None:
        return None, None
    if not resume:
        raise ConfigError(f"{exp_dir} already holds checkpoints (newest {latest.name}); pass --resume to continue "
                          "or choose another --exp")
    ckpt = load_checkpoint(latest)
    if ckpt.get("kind") != kind:
        raise CheckpointError(f"{latest} is not a {kind} checkpoint{hint}")
    return latest, ckpt


def checkpoint_config(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> ExperimentConfig:
    if ckpt.get("kind") == "vocoder":
        raise CheckpointError(f"{path} is a checkpoint of the neural vocoder (`train-vocoder`), not of an SQ-VAE: "
                              "pass it as --vocoder-model, and the SQ-VAE experiment or model file as --exp / --model")
    try:
        data = upgrade_config(ckpt["config"], int(ckpt.get("version", 1)))
        return ExperimentConfig.from_dict(data, where=str(path))
    except SQVAEError as e:
        raise CheckpointError(f"checkpoint {path} carries a config this version cannot read: {e}") from None


def resolve_checkpoint(exp_or_ckpt: str | Path) -> Path:
    """An experiment dir (its latest checkpoint) or a checkpoint file -> checkpoint path."""
    p = Path(exp_or_ckpt)
    if p.is_file():
        return p
    if p.is_dir():
        latest = latest_checkpoint(p)
        if latest is None:
            raise CheckpointError(f"no checkpoint in {checkpoint_dir(p)}: train first (`sqvae-speech train --exp {p}`)")
        return latest
    raise CheckpointError(f"{p} is neither an experiment dir nor a checkpoint file")


def load_model(exp_or_ckpt: str | Path, map_location: str | torch.device = "cpu"):
    """Build the model a checkpoint describes and load its weights. Returns (model, config, step, path)."""
    from .models import SpeechSQVAE

    path = resolve_checkpoint(exp_or_ckpt)
    ckpt = load_checkpoint(path, map_location)
    cfg = checkpoint_config(ckpt, path)
    model = SpeechSQVAE(cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the model its config describes: {str(e).splitlines()[0]}") from None
    model.eval()
    return model, cfg, int(ckpt["step"]), path


def check_same_setup(saved: ExperimentConfig, requested: ExperimentConfig, saved_name: str, requested_name: str) -> None:
    """Model and feature settings must match to resume; training settings may change."""
    diffs = config_diff(saved.to_dict(), requested.to_dict(), sections=("features", "model"), ignore=("model.speakers",))
    if diffs:
        lines = "\n  ".join(diffs)
        raise CheckpointError(
            f"{requested_name} does not match {saved_name} (each line: saved value vs requested value):\n  {lines}\n"
            "resume with the original settings, or train into a new --exp directory"
        )
