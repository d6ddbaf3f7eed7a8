"""The report's resynthesis scoring, per held-out utterance: ours against the metric
functions called one by one.

- ours: :func:`sqvae_speech.metrics.heldout.resynthesis_quality` with ``nj=1``: per
  utterance, one WORLD analysis of the recording, whose Harvest F0 is also the reference
  F0, and one set of the recording's mel-cepstra, shared by every system;
- reference: the same vocoding, each system then scored with
  :func:`~sqvae_speech.metrics.signal.mcd`, :func:`~sqvae_speech.metrics.signal.f0_errors`,
  :func:`~sqvae_speech.metrics.signal.pesq_wb` and :func:`~sqvae_speech.metrics.signal.stoi`
  on the two signals, as one would call pysptk, pyworld, pesq and pystoi directly (the
  reference is analysed again for every system).

Data: ``N_UTTS`` (4) held-out utterances of the embedded corpus, one per main speaker
(:func:`~sqvae_speech.metrics.heldout.pick_utterances`). Model: untrained, with the
architecture of ``recipes/fishfillets/conf/demo.yaml`` (scoring time does not depend on
the weights). Systems: WORLD and Griffin-Lim (100 iterations) alone and the model's
reconstruction through each: 4 per utterance. One untimed round on one utterance first
(imports), then the two sides alternate; medians. Both sides must give the same scores
(to 1e-9) for every utterance and system, or the benchmark fails. Figure: seconds per
utterance (4 systems scored).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_encode import MODELS, untrained_exp
from common import alternate, median, time_ratio

from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.inference.model import load_model
from sqvae_speech.metrics import heldout, signal
from sqvae_speech.synthesis.convert import Converter, load_sources
from sqvae_speech.synthesis.vocoders import (
    align_frames,
    griffinlim,
    world,
    world_analyze,
)

N_UTTS = 4
VOCODERS = ("world", "griffinlim")
GL_ITERS = 100


def one_by_one(sources: dict[str, Any], model: Any, config: Any) -> dict[str, dict[tuple[str | None, str], dict]]:
    """The reference side: every system vocoded as ours does, each scored by the metric functions alone."""
    decoder = Converter(model.net, config, "griffinlim")
    sr = config.sample_rate
    out: dict[str, dict[tuple[str | None, str], dict]] = {}
    for u, src in sources.items():
        ana = world_analyze(src.wav, config, "harvest")
        mels = [(None, src.mel, 0), ("m", decoder.decode(src.mel, src.speaker), 1)]
        out[u] = {}
        for name, mel, offset in mels:
            for voc in VOCODERS:
                if voc == "world":
                    y = world([mel], [ana], None, config, offset=offset)[0]
                else:
                    y = griffinlim([align_frames(mel, src.mel.shape[1], offset)], config, GL_ITERS)[0]
                cents, vuv = signal.f0_errors(src.wav, y, sr)
                out[u][name, voc] = {"mcd_db": signal.mcd(src.wav, y, sr), "f0_rmse_cents": cents, "vuv_error": vuv,
                                     "pesq_wb": signal.pesq_wb(src.wav, y, sr), "stoi": signal.stoi(src.wav, y, sr)}
    return out


def check_same_scores(ours: list[dict[str, Any]], ref: dict[str, dict[tuple[str | None, str], dict]]) -> int:
    """Every utterance and system: the same five scores (to 1e-9, NaN equal to NaN)."""
    bad, n = [], 0
    for row in ours:
        key = ("m" if row["model"] else None, row["vocoder"])
        for u, m in row["per_utterance"].items():
            r = ref[u][key]
            n += 1
            close = all(np.isclose(m[k], r[k], rtol=1e-9, atol=1e-9, equal_nan=True) for k in r)
            if not close:
                bad.append(f"{u} {row['system']}: ours {m}, reference {r}")
    if bad:
        raise AssertionError(f"scores differ for {len(bad)} of {n}: {'; '.join(bad[:3])}")
    return n


def run(ctx: Any, n_utts: int = N_UTTS, conf: Path | None = None) -> list:
    conf = conf or MODELS["demo"][0]
    threads = torch.get_num_threads()
    torch.set_num_threads(ctx.threads)
    scratch = Path(tempfile.mkdtemp(prefix="report-", dir=ctx.work))
    try:
        cfg = untrained_exp(conf, scratch / "exp")
        model = load_model(scratch / "exp", device="cpu")
        store = FeatureStore.open(ctx.test_feats)
        utts = heldout.pick_utterances(store.utt2spk(), store.frames, n_utts)
        sources = load_sources(utts, cfg.features, ctx.test_feats, ctx.data_dir / "test", need_audio=True)
        got: dict[str, Any] = {}

        def ours() -> None:
            got["ours"] = heldout.resynthesis_quality(sources, {"m": model}, VOCODERS, cfg.features, "harvest",
                                                      GL_ITERS, nj=1, progress=False)

        def reference() -> None:
            got["reference"] = one_by_one(sources, model, cfg.features)

        first = {utts[0]: sources[utts[0]]}  # untimed: imports and first-call set-up of both sides
        heldout.resynthesis_quality(first, {"m": model}, VOCODERS, cfg.features, nj=1, progress=False)
        one_by_one(first, model, cfg.features)
        times = alternate({"ours": ours, "reference": reference}, ctx.reps, warmup=0)
        compared = check_same_scores(got["ours"], got["reference"])
        seconds = sum(s.wav.size for s in sources.values()) / cfg.features.sample_rate
        o, r = median(times["ours"]) / len(utts), median(times["reference"]) / len(utts)
        res = time_ratio("report_resynthesis_per_utt", "s", o, r, None, config={
            "utterances": len(utts), "audio_seconds": round(seconds, 2), "systems_per_utt": 2 * len(VOCODERS),
            "gl_iters": GL_ITERS, "threads": ctx.threads, "reps": ctx.reps, "model": conf.name,
            "scores_compared": compared,
            "ours_s_all": [round(t, 3) for t in times["ours"]],
            "reference_s_all": [round(t, 3) for t in times["reference"]]},
            note=f"{len(utts)} held-out utterances, WORLD + Griffin-Lim alone and through an untrained demo "
                 "model: resynthesis_quality (ours) vs the metric functions one by one; same scores")
        ctx.log(res)
        return [res]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        torch.set_num_threads(threads)
