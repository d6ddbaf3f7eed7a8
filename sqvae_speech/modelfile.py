"""Model files: one shareable file per trained model (``sqvae-speech package``).

A training checkpoint holds what resuming needs (optimizer, scheduler, RNG states) and
nothing a user of the model needs beyond the weights. A model file holds what applying
the model needs, and loads with ``torch.load(path, weights_only=True)`` (plain Python
values and tensors only)::

    {"format": "sqvae-speech-model", "version": 1,
     "config": {...},            # the whole experiment config (features, model, train)
     "config_version": 2,        # the checkpoint format whose config keys it uses
     "model": {...},             # state dict
     "speakers": [...],          # the decoder's speakers, in embedding order
     "f0_stats": {...} | None,   # per-speaker log-F0 statistics (WORLD conversion)
     "step": 3000,               # training step of the weights
     "metrics": {...} | None,    # results.json of `sqvae-speech evaluate`
     "toolkit": "0.1.0", "created": "2026-12-05T03:00:00+00:00",
     "source": {"experiment": "gaussian_4", "checkpoint": "ckpt-00003000.pt"}}

Only names, never paths of the machine that wrote it, go into ``source``.
:func:`write_model_file` writes it atomically with a Markdown model card beside it
(``OUT`` with the suffix ``.md``). :func:`~sqvae_speech.checkpoint.load_checkpoint`, and so
every ``--exp`` / ``--model`` option and :func:`sqvae_speech.load_model`, reads model
files as well as checkpoints.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

from . import __version__
from .errors import CheckpointError, SQVAEError
from .fileio import atomic_torch_save, atomic_write_text
from .textsafe import md_code, md_text, one_line

MODEL_FORMAT = "sqvae-speech-model"
MODEL_VERSION = 1
SUFFIX = ".pt"


def model_file_to_checkpoint(data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """A loaded model file -> the dict :func:`~sqvae_speech.checkpoint.load_checkpoint`
    returns (``step``, ``config``, ``model``, ``version``), plus ``model_file`` (the rest)."""
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} is a model file without a valid format version ({version!r}); package it again")
    if version > MODEL_VERSION:
        raise CheckpointError(f"{path} is a model file of format version {version}; this sqvae-speech "
                              f"({__version__}) reads up to version {MODEL_VERSION}: upgrade sqvae-speech")
    for key in ("config", "config_version", "model", "step", "speakers"):
        if key not in data:
            raise CheckpointError(f"model file {path} lacks '{key}'; it is incomplete: package it again")
    return {"format": "sqvae-speech-checkpoint", "version": int(data["config_version"]), "step": int(data["step"]),
            "config": data["config"], "model": data["model"], "model_file": data}


def _read_results(path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SQVAEError(f"evaluation results {path} cannot be read ({e}); rerun `sqvae-speech evaluate`") from None
    if not isinstance(metrics, dict) or "mse_db2" not in metrics:
        raise SQVAEError(f"{path} is not a results.json of `sqvae-speech evaluate`")
    return {k: v for k, v in metrics.items() if k not in ("checkpoint", "data")}  # no machine paths


def write_model_file(exp: str | Path, out: str | Path, f0_stats: str | Path | None = None,
                     results: str | Path | None = None) -> dict[str, Any]:
    """Package the newest checkpoint of ``exp`` (or the checkpoint file ``exp``) into ``out``.

    Args:
        f0_stats: ``sqvae-speech f0-stats`` JSON to embed (WORLD conversion needs it); its
            speakers must include every speaker of the model.
        results: ``results.json`` of ``sqvae-speech evaluate``; default ``EXP/results.json``
            when it exists and was computed on the packaged step.

    Returns the written mapping (without the weights). Writes ``out`` and the model card
    ``out`` with suffix ``.md``, both atomically.
    """
    import torch  # noqa: F401  (atomic_torch_save needs it)

    from .checkpoint import checkpoint_config, load_checkpoint, resolve_checkpoint
    from .models import SpeechSQVAE
    from .synthesis.f0 import read_f0_stats

    out = Path(out)
    if out.suffix != SUFFIX:
        raise SQVAEError(f"model file {out}: give it the suffix {SUFFIX} (the model card goes beside it as .md)")
    if one_line(out.name) != out.name:
        raise SQVAEError(f"model file {out!r}: its name holds a control character (a newline, tab or escape); "
                         "the model card quotes the name: choose a plain one")
    ckpt_path = resolve_checkpoint(exp)
    ckpt = load_checkpoint(ckpt_path)
    if "model_file" in ckpt:
        raise SQVAEError(f"{ckpt_path} is already a model file; copy it (and its .md) instead")
    cfg = checkpoint_config(ckpt, ckpt_path)
    model = SpeechSQVAE(cfg.model)
    model.load_state_dict(ckpt["model"])  # refuses weights that do not fit the config
    speakers = list(cfg.model.speakers)
    stats = None
    if f0_stats is not None:
        f0 = read_f0_stats(f0_stats)
        missing = [s for s in speakers if s not in f0.speakers]
        if missing:
            raise SQVAEError(f"F0 statistics {f0_stats} lack the model's speaker(s) {', '.join(missing)}; "
                             "compute them on the model's training data dir")
        if (f0.sample_rate, f0.hop_length) != (cfg.features.sample_rate, cfg.features.hop_length):
            raise SQVAEError(f"F0 statistics {f0_stats} were measured at {f0.sample_rate} Hz / hop {f0.hop_length}, "
                             f"the model's features at {cfg.features.sample_rate} Hz / hop {cfg.features.hop_length}")
        stats = {**f0.to_dict(), "data": ""}  # no machine paths
    exp_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    metrics = None
    if results is not None:
        metrics = _read_results(Path(results))
    elif (exp_dir / "results.json").is_file():
        found = _read_results(exp_dir / "results.json")
        metrics = found if found.get("step") == int(ckpt["step"]) else None
    if metrics is not None and metrics.get("step") not in (None, int(ckpt["step"])):
        raise SQVAEError(f"results {results} are of step {metrics.get('step')} but the packaged checkpoint is of step "
                         f"{ckpt['step']}; evaluate it again")
    payload = {
        "format": MODEL_FORMAT, "version": MODEL_VERSION, "config": cfg.to_dict(), "config_version": 2,
        "model": {k: v.detach().cpu().contiguous() for k, v in ckpt["model"].items()},
        "speakers": speakers, "f0_stats": stats, "step": int(ckpt["step"]), "metrics": metrics,
        "toolkit": __version__, "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": {"experiment": exp_dir.name, "checkpoint": ckpt_path.name},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(out, payload)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    meta = {k: v for k, v in payload.items() if k != "model"}
    atomic_write_text(out.with_suffix(".md"), model_card(meta, model, out.name, digest))
    return meta


def model_card(meta: dict[str, Any], model: Any, file_name: str, sha256: str) -> str:
    """The Markdown card of a model file: what it is, how it was made, how it scores, how to use it."""
    from .models import codebook_size, count_parameters

    cfg = meta["config"]
    m, f, t = cfg["model"], cfg["features"], cfg.get("train", {})
    metrics = meta.get("metrics")
    f0 = meta.get("f0_stats")
    # names (file, experiment, speakers) are shown as text: escaped in Markdown, quoted in code
    f0_row = f"of {', '.join(md_text(s) for s in sorted(f0['speakers']))}" if f0 else "none (WORLD conversion needs them)"
    lines = [
        f"# {md_text(file_name)}: {m['variant']} speech model (sqvae-speech)", "",
        (f"A {m['variant']} model trained with sqvae-speech {meta['toolkit']} for {meta['step']} steps "
         f"(experiment {md_code(meta['source']['experiment'])}, {md_text(meta['source']['checkpoint'])})."), "",
        "| | |", "|---|---|",
        f"| quantizer | {m['variant']}, K = {codebook_size(model.quantizer)}, D = {m['quantizer'].get('embedding_dim', '')} |",
        f"| parameters | {count_parameters(model) / 1e6:.2f} M |",
        f"| speakers | {len(meta['speakers'])}: {', '.join(md_text(s) for s in meta['speakers'])} |",
        (f"| features | {f['n_mels']} log-mel bands, {f['sample_rate']} Hz, hop {f['hop_length']}, "
         f"window {f['win_length']} (units at {f['sample_rate'] / (2 * f['hop_length']):g} per second) |"),
        (f"| training | batch {t.get('batch_size', '?')}, {t.get('batching', 'crops')}, lr {t.get('lr', '?')}, "
         f"seed {t.get('seed', '?')} |"),
        f"| F0 statistics | {f0_row} |",
        f"| format | {meta['format']} version {meta['version']}, created {meta['created']} |",
        f"| sha256 | `{sha256}` |", "",
    ]
    if metrics:
        lines += ["## Evaluation", "",
                  (f"On {metrics.get('num_utterances', '?')} held-out utterances: dB^2 MSE {metrics['mse_db2']:.2f}, "
                   f"{metrics.get('used_codes', '?')} of {metrics.get('num_codes', '?')} codes used, "
                   f"set perplexity {metrics.get('set_perplexity', float('nan')):.1f}, "
                   f"bitrate {metrics.get('bitrate', float('nan')):.1f} bit/s."), ""]
    else:
        lines += ["## Evaluation", "", "Not evaluated (`sqvae-speech evaluate` writes the figures packaged here).", ""]
    lines += ["## Use", "", "```python", "import sqvae_speech as sq",
              f"model = sq.load_model({_py_str(file_name)})", 'units = model.encode("recording.wav")   # units.indices: [T\'] int64',
              f'wav, sr = model.resynthesize("recording.wav", speaker={_py_str(meta["speakers"][0])})', "```", "",
              "```sh", f"sqvae-speech encode --model {shlex.quote(one_line(file_name))} recordings/ --out units --format units",
              "```", "",
              "The file loads with `torch.load(path, weights_only=True)`.", ""]
    return "\n".join(lines)


def _py_str(text: str) -> str:
    """A Python string literal of ``text`` on one line (quotes, backslashes and control
    characters escaped), for the card's code sample."""
    return json.dumps(text, ensure_ascii=False).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
