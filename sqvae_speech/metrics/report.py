"""``sqvae-speech report``: every metric of units and voices, for several experiments, in
one place (``report.md``, ``report.html``, ``report.json`` and figures in one directory).

What it reads for each experiment EXP (an experiment dir):
- ``EXP/results.json`` (``sqvae-speech evaluate``): dB^2 MSE, codebook usage, bitrate;
- ``EXP/abx.json`` when present (``sqvae-speech abx``): ABX error rates;
- ``EXP/metrics.jsonl``: training curves;
- ``EXP/conversion/conversion.json`` when present (``sqvae-speech convert``): the conversions.

What it measures (:mod:`.heldout`) with the model on held-out data:
- unit quality against phone labels (``--phone-feats`` + ``--alignment``);
- a speaker probe on z and z_q of the held-out utterances (``--feats``);
- resynthesis quality on held-out recordings (``--data`` + ``--feats``): each vocoder
  alone, and each model's reconstruction through each vocoder;
- conversion quality: speaker similarity to the target and to the source, and F0 register.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import SQVAEError


@dataclasses.dataclass
class ReportOptions:
    """Where the held-out data is and how much of it to use (defaults: the CLI's)."""

    data: str  # held-out data dir (audio, speakers)
    feats: str  # its features
    phone_feats: str | None = None  # features of a phone-labelled set
    alignment: str | None = None  # its phone alignment (utt start dur phone, or a CTM)
    resynth_utts: int = 12  # held-out utterances for the resynthesis metrics, spread over speakers
    vocoders: tuple[str, ...] = ("world", "griffinlim")
    gl_iters: int = 100
    ref_per_speaker: int = 10  # held-out recordings per speaker for its speaker embedding
    f0_stats: str | None = None  # speaker median F0 for the conversions' register
    seed: int = 0
    nj: int = 2  # worker processes for the signal metrics
    progress: bool = True
    vocoder_model: str | None = None  # the neural vocoder file, for vocoders "neural"
    curve: bool = False  # the experiments are checkpoints of one run: metrics against the step (curve.py)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def check_experiment(exp: str | Path) -> dict[str, Any]:
    """The ``results.json`` of an experiment dir; SQVAEError saying what to run when missing."""
    exp = Path(exp)
    if not exp.is_dir():
        raise SQVAEError(f"{exp} is not an experiment directory (made by `sqvae-speech train --exp {exp}`)")
    path = exp / "results.json"
    if not path.is_file():
        raise SQVAEError(f"{exp} has no results.json: run `sqvae-speech evaluate --exp {exp} --feats FEATS` "
                         "on held-out features first")
    try:
        return _read_json(path)
    except ValueError as e:
        raise SQVAEError(f"{path} is not valid JSON ({e}): rerun `sqvae-speech evaluate --exp {exp}`") from None


def abx_summary(exp: Path) -> dict[str, Any] | None:
    """Within / across ABX error (%) of z and z_q from ``EXP/abx.json``, or None."""
    path = exp / "abx.json"
    if not path.is_file():
        return None
    out: dict[str, Any] = {}
    for label, r in _read_json(path).items():
        kind = "z_q" if label.endswith("(z_q)") else "z" if label.endswith("(z)") else None
        if kind:
            out[kind] = {"within": r["within"]["error"], "across": r["across"]["error"]}
    return out or None


def _names(exps: Sequence[Path]) -> list[str]:
    """Short unique names: the dir name, or its last two parts when names repeat."""
    names = [e.name for e in exps]
    return [f"{e.parent.name}/{e.name}" if names.count(e.name) > 1 else e.name for e in exps]


def f0_medians(path: str | None) -> dict[str, float] | None:
    from ..synthesis.f0 import read_f0_stats

    if not path:
        return None
    stats = read_f0_stats(path)
    return {s: v.median_f0_hz for s, v in stats.speakers.items() if v.median_f0_hz}


def make_report(exps: Sequence[str | Path], out_dir: str | Path, opts: ReportOptions) -> dict[str, Any]:
    """Measure every experiment, then write ``report.json``, ``report.md``, ``report.html``
    and the figures into ``out_dir``. Returns the report's data."""
    from ..data.datadir import read_datadir
    from ..data.featstore import FeatureStore
    from ..inference import load_model
    from ..synthesis.convert import load_sources
    from . import heldout
    from .alignment import read_alignment
    from .page import write_report

    t0 = time.time()
    exp_paths = [Path(e) for e in exps]
    if not exp_paths:
        raise SQVAEError("report: name at least one experiment dir")
    results = {str(e): check_experiment(e) for e in exp_paths}
    alignment = None
    if bool(opts.phone_feats) != bool(opts.alignment):
        raise SQVAEError("--phone-feats and --alignment go together: the features of a phone-labelled set and its "
                         "alignment")
    if opts.alignment:
        alignment = read_alignment(opts.alignment)
    dd = read_datadir(opts.data)
    models = {name: load_model(e) for name, e in zip(_names(exp_paths), exp_paths)}
    if opts.curve:
        from .curve import check_curve

        check_curve([(m.config.model.variant, m.step) for m in models.values()])
    first = next(iter(models.values()))
    cfg = first.features
    store = FeatureStore.open(opts.feats, expect_config=cfg)
    missing = [u for u in store.utt2spk() if u not in dd.utt2spk]
    if missing:
        raise SQVAEError(f"--feats {opts.feats} has {len(missing)} utterance(s) that --data {opts.data} lacks "
                         f"(e.g. '{missing[0]}'): pass the data dir these features were extracted from")
    phone_store = FeatureStore.open(opts.phone_feats, expect_config=cfg) if opts.phone_feats else None
    medians = f0_medians(opts.f0_stats)
    refs = None
    report: dict[str, Any] = {"experiments": [], "options": dataclasses.asdict(opts)}
    timings = {"units and probe": 0.0, "unit quality": 0.0, "conversion": 0.0, "resynthesis": 0.0}
    for (name, model), exp in zip(models.items(), exp_paths):
        t = time.time()
        units = heldout.encode_store(model, store)
        row: dict[str, Any] = {
            "name": name, "exp": str(exp), "variant": model.config.model.variant, "step": model.step,
            "results": results[str(exp)], "abx": abx_summary(exp),
            "code_counts": heldout.code_counts(units, model.num_codes).tolist() if model.num_codes else None,
            "probe": heldout.probe_metrics(units, store.utt2spk(), opts.seed),
        }
        timings["units and probe"] += time.time() - t
        t = time.time()
        uq = heldout.unit_metrics(model, phone_store, alignment, str(opts.alignment)) if phone_store else None
        row["units"] = uq.to_dict() if uq is not None else None
        row["_unit_quality"] = uq  # for the heatmap; not written to JSON
        timings["unit quality"] += time.time() - t
        t = time.time()
        conv = exp / "conversion"
        if (conv / "conversion.json").is_file():
            if refs is None:
                refs = heldout.ReferenceVoices(opts.data, cfg.sample_rate, opts.ref_per_speaker)
            row["conversion"] = heldout.conversion_quality(conv, refs, medians, opts.nj, opts.progress)
            row["conversion"]["page"] = str(conv / "index.html") if (conv / "index.html").is_file() else None
        else:
            row["conversion"] = None
        timings["conversion"] += time.time() - t
        report["experiments"].append(row)
    t = time.time()
    known = set.intersection(*(set(m.speakers) for m in models.values()))
    utts = (heldout.pick_utterances(store.utt2spk(), store.frames, opts.resynth_utts, speakers=sorted(known))
            if opts.resynth_utts > 0 else [])
    if utts:
        sources = load_sources(utts, cfg, opts.feats, opts.data, need_audio=True, where="report")
        f0_method = first.f0_stats.method if first.f0_stats else "harvest"
        report["resynthesis"] = heldout.resynthesis_quality(sources, models, opts.vocoders, cfg, f0_method,
                                                            opts.gl_iters, opts.nj, opts.progress,
                                                            opts.vocoder_model)
    else:
        report["resynthesis"] = []
    report["resynthesis_utterances"] = utts
    timings["resynthesis"] = time.time() - t
    report["timings"] = {k: round(v, 1) for k, v in timings.items()}
    report["seconds"] = round(time.time() - t0, 1)
    write_report(out_dir, report)
    return report
