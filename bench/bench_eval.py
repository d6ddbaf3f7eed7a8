"""Evaluation (the paper's dB^2 MSE) of the held-out set of the embedded corpus.

One model (variant IV, paper size, batch-norm statistics from a few training-mode passes
over real crops) evaluated twice with the same weights:

- ours: :func:`sqvae_speech.evaluate.evaluate_model`, length-bucketed padded batches of
  at most ``max_frames`` frames (default 8000), masked encoder, packed GRU;
- reference: :class:`reference.RefSQVAE` holding the same weights
  (:func:`reference.reference_from_ours`), one unpadded utterance at a time, the
  authors' formula ``sum SSE * 80^2 / (80 * sum (T - 2))``.

Both read the same features from the feature store (the reference's per-utterance
feature computation is left out; extraction has its own benchmark). The two MSEs must
agree to 1e-4 relative; the throughput is utterances per second.
"""

from __future__ import annotations

from typing import Any

import torch
from common import Result, alternate, median
from reference import reference_from_ours

from sqvae_speech.config import ModelConfig
from sqvae_speech.evaluate import evaluate_model
from sqvae_speech.models import DB_SCALE, SpeechSQVAE

TARGET = 2.0


def warmed_model(ctx: Any, device: torch.device) -> SpeechSQVAE:
    """A paper-size IV model whose batch norms hold statistics of real crops, in eval mode."""
    torch.manual_seed(0)
    mels, lengths, speakers, names = ctx.crop_batch(52)
    model = SpeechSQVAE(ModelConfig(variant="gaussian_4", speakers=names)).train()
    with torch.no_grad():
        for _ in range(3):
            model(mels, lengths, speakers)
    return model.eval().to(device)


def reference_mse(ref: torch.nn.Module, store: Any, items: list[tuple[str, str]], speakers: tuple[str, ...],
                  device: torch.device) -> float:
    sse, frames = 0.0, 0
    for utt, spk in items:
        mel = store[utt]
        mel = mel[:, : mel.shape[1] - mel.shape[1] % 2]
        x = torch.from_numpy(mel.copy()).unsqueeze(0).to(device)
        s, n = ref.utterance_sse(x, torch.tensor([speakers.index(spk)], device=device))
        sse += s
        frames += n
    return sse * DB_SCALE**2 / (80 * frames)


def run(ctx: Any) -> list[Result]:
    results = []
    store = ctx.test_store
    items = [(u, store.speaker(u)) for u in store.utterances]
    for device in ctx.devices:
        suffix = "" if device.type == "cpu" else f"_{device.type}"
        model = warmed_model(ctx, torch.device("cpu"))
        ref = reference_from_ours(model).eval().to(device)
        model = model.to(device)
        values: dict[str, float] = {}

        def ours(model: SpeechSQVAE = model, device: torch.device = device, values: dict = values) -> None:
            values["ours"] = evaluate_model(model, store, items, ctx.eval_max_frames, device)[0]

        def reference(ref: torch.nn.Module = ref, model: SpeechSQVAE = model, device: torch.device = device,
                      values: dict = values) -> None:
            values["reference"] = reference_mse(ref, store, items, model.config.speakers, device)

        sync = torch.cuda.synchronize if device.type == "cuda" else None
        evaluate_model(model, store, items[:4], ctx.eval_max_frames, device)  # warm-up
        reference_mse(ref, store, items[:4], model.config.speakers, device)
        times = alternate({"ours": ours, "reference": reference}, ctx.eval_reps, warmup=0, sync=sync)
        rel = abs(values["ours"] - values["reference"]) / values["reference"]
        if rel > 1e-4:
            raise AssertionError(f"evaluation differs: ours {values['ours']:.6f} vs reference {values['reference']:.6f} dB^2")
        n = len(items)
        o, r = n / median(times["ours"]), n / median(times["reference"])
        res = Result(f"eval_utterances_per_s{suffix}", "utt/s", round(o, 2), round(r, 2), round(o / r, 2),
                     f">= {TARGET:g}x" if device.type == "cpu" else "", o / r >= TARGET if device.type == "cpu" else None,
                     config={"utterances": n, "frames": int(sum(store.frames(u) for u, _ in items)),
                             "max_frames": ctx.eval_max_frames, "mse_db2_ours": round(values["ours"], 6),
                             "mse_db2_reference": round(values["reference"], 6), "relative_difference": rel,
                             "device": str(device), "reps": ctx.eval_reps,
                             "ours_s_all": [round(t, 3) for t in times["ours"]],
                             "reference_s_all": [round(t, 3) for t in times["reference"]]},
                     note="same weights; results equal (relative_difference)")
        results.append(res)
        ctx.log(res)
    return results

