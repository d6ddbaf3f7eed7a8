"""Two tiny models trained on real speech, evaluated on held-out data with a phone
alignment, and a conversion by the first: what `sqvae-speech report` needs. Shared by
tests/metrics/test_report.py and tests/faults/test_report_inputs.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile
from conftest import tiny_experiment

from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.audio import load_audio
from sqvae_speech.data.datadir import write_datadir
from sqvae_speech.data.featstore import write_featstore
from sqvae_speech.data.features import logmel
from sqvae_speech.evaluate import evaluate
from sqvae_speech.synthesis.conversion_list import ConversionItem
from sqvae_speech.synthesis.convert import run_conversion
from sqvae_speech.train import train

SR = 16000
SPEAKERS = ("cs-m", "cs-v", "nl-m", "nl-v")
PHONES = ("sil", "a", "b", "c")


def _stats(path: Path) -> Path:
    """F0 statistics of the four speakers (the conversions' target register)."""
    spk = {s: {"mean_log_f0": float(np.log(m)), "std_log_f0": 0.2, "median_f0_hz": m, "voiced_frames": 100,
               "frames": 200, "utterances": 3} for s, m in zip(SPEAKERS, (110.0, 220.0, 120.0, 210.0))}
    path.write_text(json.dumps({"format": "sqvae-f0-stats", "version": 1, "method": "harvest", "f0_floor": 50.0,
                                "f0_ceil": 600.0, "sample_rate": SR, "hop_length": 160, "data": "", "failed": {},
                                "speakers": spk}))
    return path


def build_heldout(root: Path, speech_files) -> None:
    """Held-out data: 3 clips of 1.5 s per speaker, audio (root/data), features
    (root/feats), a phone alignment in 100 ms segments (root/phones.ctm) and F0
    statistics (root/f0.json)."""
    cfg = FeatureConfig()
    wav_scp, utt2spk, items, ctm = {}, {}, [], []
    for spk in SPEAKERS:
        for i, f in enumerate(speech_files[spk][3:6]):
            utt = f"{spk}_{i}"
            wav = load_audio(f, SR)[: int(1.5 * SR)]
            soundfile.write(root / f"{utt}.wav", wav, SR)
            wav_scp[utt], utt2spk[utt] = str(root / f"{utt}.wav"), spk
            items.append((utt, spk, logmel(wav, SR, cfg)))
            dur = wav.size / SR
            ctm += [f"{utt} 1 {t:.3f} {min(0.1, dur - t):.3f} {PHONES[k % 4]}\n"
                    for k, t in enumerate(np.arange(0, dur, 0.1))]
    write_datadir(root / "data", wav_scp, utt2spk)
    write_featstore(root / "feats", sorted(items), cfg)
    (root / "phones.ctm").write_text("".join(ctm))
    _stats(root / "f0.json")


def build_report_setup(root: Path, real_featstore, speech_files) -> dict[str, Path]:
    """The held-out data of :func:`build_heldout`, two tiny models (gaussian_4, vqvae_ema)
    evaluated on it, and a WORLD conversion by the first."""
    build_heldout(root, speech_files)
    exps = {}
    for variant in ("gaussian_4", "vqvae_ema"):
        exp = root / variant
        cfg_v = tiny_experiment(steps=4, checkpoint_every=4)
        cfg_v = cfg_v.replace(model=cfg_v.model.replace(variant=variant))
        train(cfg_v, real_featstore.path, exp, progress=False)
        evaluate(exp, root / "feats", progress=False)
        exps[variant] = exp
    conv = [ConversionItem(src, tgt, f"{src}__to__{tgt}") for src in ("cs-m_0", "nl-v_0") for tgt in ("cs-v", "nl-m")]
    run_conversion(exps["gaussian_4"], conv, exps["gaussian_4"] / "conversion", "world", feats=root / "feats",
                   data=root / "data", f0_stats=root / "f0.json", progress=False, f0_norm="utterance",
                   similarity_data=root / "data")
    return {"root": root, **exps}


def report_args(s: dict[str, Path], out: Path, *extra: str) -> list[str]:
    root = s["root"]
    return ["report", str(s["gaussian_4"]), str(s["vqvae_ema"]), "--out", str(out), "--data", str(root / "data"),
            "--feats", str(root / "feats"), "--phone-feats", str(root / "feats"), "--alignment",
            str(root / "phones.ctm"), "--f0-stats", str(root / "f0.json"), "--resynth-utts", "4", "--gl-iters", "4",
            "--ref-per-speaker", "3", "--nj", "1", "--no-progress", *extra]
