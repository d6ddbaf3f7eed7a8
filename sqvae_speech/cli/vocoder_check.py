"""``sqvae-speech vocoder-check``: objective figures for the vocoders and F0 conversion.

(a) Vocoder round trip on real speech: audio -> log-mel -> vocoder -> log-mel, with the
    dB^2 MSE of ``sqvae-speech evaluate`` (sum of squared differences in dB over
    ``mel[:, 1:-1]``, divided by ``n_mels`` x the compared frames, pooled over
    utterances). The output is peak-normalized again by the feature extraction, like any
    input; ``gain-matched`` also removes each utterance's mean dB offset, i.e. what is
    left when the overall level is ignored.
(b) With ``--exp`` and ``--f0-stats``: every chosen source converted with WORLD to every
    speaker (:func:`sqvae_speech.synthesis.conversion_list.make_conversion_list`), the output's median F0
    measured with the same WORLD estimator, and the fraction of voiced items whose median
    lies within 1 semitone of the target speaker's median F0 (from the statistics). The
    fraction within 1 semitone of the median of the F0 track WORLD was asked to
    synthesize is printed too: it separates the vocoder's fidelity from the statistics.

Sources are the first ``--per-speaker`` utterances (sorted ids) of each speaker of
``--data`` lasting at least ``--min-seconds``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import FeatureConfig
from ..errors import SQVAEError
from ..fileio import atomic_write_json

# An item counts as voiced when its output has at least this many voiced 10 ms frames.
MIN_VOICED_FRAMES = 10


@dataclasses.dataclass
class RoundTrip:
    vocoder: str
    mse_db2: float  # pooled over utterances
    gain_matched_mse_db2: float  # pooled, each utterance's mean dB offset removed
    frames: int
    per_utterance: dict[str, float]


def mse_db2(a: np.ndarray, b: np.ndarray, top_db: float = 80.0) -> tuple[float, float, int]:
    """(sum of squared dB differences, the same with the mean offset removed, frames) over
    frames ``1 .. T-2`` of the shorter of two scaled log-mels ``[n_mels, T]``."""
    t = min(a.shape[1], b.shape[1])
    d = (a[:, 1 : t - 1].astype(np.float64) - b[:, 1 : t - 1]) * top_db
    return float((d**2).sum()), float(((d - d.mean()) ** 2).sum()) if d.size else 0.0, max(t - 2, 0)


def round_trip(utts: Sequence[str], wavs: Sequence[np.ndarray], vocoder: str, config: FeatureConfig | None = None,
               gl_iters: int = 100, f0_method: str = "harvest", seed: int = 0, model: Any = None) -> RoundTrip:
    """Round-trip dB^2 MSE of ``vocoder`` over audio ``wavs [N_i]`` at ``config.sample_rate``
    (``model``: the neural vocoder, for ``vocoder="neural"``)."""
    from ..data.features import logmel
    from ..synthesis.f0 import extract_f0
    from ..synthesis.vocoders import griffinlim, neural, world, world_analyze

    cfg = config or FeatureConfig()
    mels = [logmel(w, cfg.sample_rate, cfg) for w in wavs]
    if vocoder == "griffinlim":
        outs = griffinlim(mels, cfg, n_iter=gl_iters, seed=seed)
    elif vocoder == "world":
        outs = world(mels, [world_analyze(w, cfg, f0_method) for w in wavs], None, cfg)
    elif vocoder == "neural" and model is not None:
        outs = neural(mels, [extract_f0(w, cfg, f0_method) for w in wavs], model, cfg, seed=seed)
    elif vocoder == "neural":
        raise SQVAEError("the neural vocoder's round trip needs its file: --vocoder-model")
    else:
        raise SQVAEError(f"unknown vocoder '{vocoder}'")
    sse = sse_gain = 0.0
    frames = 0
    per: dict[str, float] = {}
    n_mels = cfg.n_mels
    for utt, mel, out in zip(utts, mels, outs):
        s, g, t = mse_db2(mel, logmel(out, cfg.sample_rate, cfg), cfg.top_db)
        sse, sse_gain, frames = sse + s, sse_gain + g, frames + t
        per[utt] = s / (n_mels * max(t, 1))
    return RoundTrip(vocoder, sse / (n_mels * max(frames, 1)), sse_gain / (n_mels * max(frames, 1)), frames, per)


def f0_check(exp: str, items: Sequence[Any], data: str, f0_stats: str, feats: str | None = None,
             device: str = "cpu", progress: bool = True, f0_norm: str = "speaker",
             measure: str = "harvest") -> dict[str, Any]:
    """Convert ``items`` (ConversionItem) with WORLD and compare output medians with the targets'.

    An item's output median is taken over the frames WORLD was asked to voice *and* the
    estimator finds voiced in the output: the estimator's own voicing decisions on the
    output (onsets, breathy ends) would otherwise move the median of a short line by
    semitones while every shared frame matches the requested F0 to a fraction of one.
    ``measure`` is the estimator run on the output (harvest: DIO misses voicing in some
    synthetic high-pitched stretches).
    """
    from tqdm import tqdm

    from ..checkpoint import load_model
    from ..synthesis.convert import Converter, load_sources
    from ..synthesis.f0 import extract_f0, read_f0_stats, semitones

    model, cfg, step, _ = load_model(exp)
    stats = read_f0_stats(f0_stats)
    conv = Converter(model, cfg.features, "world", stats, device=device, f0_norm=f0_norm)
    sources = load_sources([it.source for it in items], cfg.features, feats, data, need_audio=True, where="vocoder-check")
    rows = []
    for it in tqdm(items, desc="f0-check", unit="item", disable=None if progress else True):
        src = sources[it.source]
        conv.check_f0(src, it.target)
        wav, _ = conv.convert(src, it.target)
        out_f0 = extract_f0(wav, cfg.features, measure, stats.f0_floor, stats.f0_ceil)
        asked = conv.target_f0(src, it.target)
        n = min(asked.size, out_f0.size)
        both = (out_f0[:n] > 0) & (asked[:n] > 0)
        voiced = int(both.sum())
        row = {"source": it.source, "source_speaker": src.speaker, "target": it.target, "voiced_frames": voiced,
               "target_median_hz": stats.speaker(it.target).median_f0_hz}
        if voiced >= MIN_VOICED_FRAMES:
            row["output_median_hz"] = float(np.median(out_f0[:n][both]))
            row["asked_median_hz"] = float(np.median(asked[:n][both]))
            row["semitones_from_target"] = semitones(row["output_median_hz"], row["target_median_hz"])
            row["semitones_from_asked"] = semitones(row["output_median_hz"], row["asked_median_hz"])
        rows.append(row)
    voiced_rows = [r for r in rows if "output_median_hz" in r]
    within = sum(abs(r["semitones_from_target"]) <= 1.0 for r in voiced_rows)
    within_asked = sum(abs(r["semitones_from_asked"]) <= 1.0 for r in voiced_rows)
    n = max(len(voiced_rows), 1)
    return {"exp": exp, "step": step, "f0_norm": f0_norm, "measured_with": measure, "items": len(rows), "voiced_items": len(voiced_rows),
            "within_1_semitone_of_target": within / n, "within_1_semitone_of_asked": within_asked / n, "rows": rows}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="data dir with the audio to test on (e.g. data/test)")
    p.add_argument("--per-speaker", type=int, default=2, help="source utterances per speaker (default 2)")
    p.add_argument("--min-seconds", type=float, default=1.5, help="shortest source in seconds (default 1.5)")
    p.add_argument("--speakers", help="comma-separated speakers (default: all of --data)")
    p.add_argument("--vocoders", default="griffinlim,world",
                   help="round trip of these (default griffinlim,world; neural needs --vocoder-model)")
    p.add_argument("--vocoder-model", metavar="VOCODER.pt", help="the neural vocoder (vocoder.pt of `train-vocoder`)")
    p.add_argument("--gl-iters", type=int, default=100, help="Griffin-Lim iterations (default 100)")
    p.add_argument("--f0-method", choices=("harvest", "dio"), default="harvest",
                   help="WORLD F0 estimator for the round trip (default harvest)")
    p.add_argument("--exp", help="trained model: also check the F0 of WORLD conversions (needs --f0-stats)")
    p.add_argument("--f0-stats", help="per-speaker F0 statistics (sqvae-speech f0-stats)")
    p.add_argument("--f0-norm", default="speaker,utterance",
                   help="F0 mappings to check, comma-separated: speaker, utterance (default both)")
    p.add_argument("--feats", help="feature store of --data's utterances (default: features computed from the audio)")
    p.add_argument("--measure-f0", choices=("harvest", "dio"), default="harvest",
                   help="F0 estimator run on the converted audio (default harvest)")
    p.add_argument("--verbose", action="store_true", help="print every conversion item")
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from ..data.audio import load_audio
    from ..data.datadir import read_datadir, utterance_audio
    from ..synthesis.conversion_list import make_conversion_list
    from ..synthesis.vocoders import VOCODERS

    vocoders = [v for v in args.vocoders.split(",") if v]
    bad = [v for v in vocoders if v not in VOCODERS]
    if bad:
        raise SQVAEError(f"--vocoders: unknown {', '.join(bad)}; choose from {', '.join(VOCODERS)}")
    if args.exp and not args.f0_stats:
        raise SQVAEError("--exp needs --f0-stats (write them with `sqvae-speech f0-stats data/train F0.json`)")
    speakers = args.speakers.split(",") if args.speakers else None
    items = make_conversion_list(args.data, args.per_speaker, args.min_seconds, speakers)
    utts = list(dict.fromkeys(it.source for it in items))
    dd = read_datadir(args.data)
    cfg = FeatureConfig()
    for norm in [n for n in args.f0_norm.split(",") if n]:
        if norm not in ("speaker", "utterance"):
            raise SQVAEError(f"--f0-norm: unknown '{norm}'; choose speaker and/or utterance")
    wavs = [load_audio(p, cfg.sample_rate, s, e) for p, s, e in (utterance_audio(dd, u) for u in utts)]
    report: dict[str, Any] = {"data": args.data, "utterances": utts, "round_trip": []}
    print(f"(a) vocoder round trip on {len(utts)} utterances of {args.data} (audio -> log-mel -> vocoder -> log-mel)")
    net = None
    if "neural" in vocoders:
        if not args.vocoder_model:
            raise SQVAEError("--vocoders neural needs --vocoder-model (vocoder.pt of `sqvae-speech train-vocoder`)")
        from ..synthesis.neural import load_vocoder

        net = load_vocoder(args.vocoder_model)
    for v in vocoders:
        r = round_trip(utts, wavs, v, cfg, args.gl_iters, args.f0_method, model=net)
        report["round_trip"].append(dataclasses.asdict(r))
        print(f"    {v:<11} dB^2 MSE {r.mse_db2:6.2f}   gain-matched {r.gain_matched_mse_db2:6.2f}   ({r.frames} frames)")
    if args.exp:
        report["f0_conversion"] = []
        for norm in [n for n in args.f0_norm.split(",") if n]:
            res = f0_check(args.exp, items, args.data, args.f0_stats, args.feats, args.device, args.progress, norm,
                           args.measure_f0)
            report["f0_conversion"].append(res)
            print(f"(b) WORLD conversion, --f0-norm {norm}, {res['items']} items ({res['voiced_items']} voiced): output "
                  f"median F0 within 1 semitone of the target speaker's median: {res['within_1_semitone_of_target']:.1%}; "
                  f"of the F0 asked for: {res['within_1_semitone_of_asked']:.1%}")
            if args.verbose:
                _print_rows(res["rows"])
    if args.json:
        atomic_write_json(args.json, report)
    return 0


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if "output_median_hz" in r:
            print(f"    {r['source']:<28} -> {r['target']:<6} out {r['output_median_hz']:6.1f} Hz  target "
                  f"{r['target_median_hz']:6.1f} Hz ({r['semitones_from_target']:+5.1f} st)  asked "
                  f"{r['asked_median_hz']:6.1f} Hz ({r['semitones_from_asked']:+5.1f} st)")
        else:
            print(f"    {r['source']:<28} -> {r['target']:<6} unvoiced output ({r['voiced_frames']} voiced frames)")
