"""Vocoders (Griffin-Lim, WORLD) and F0 analysis / statistics / conversion on real speech."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sqvae_speech.cli import main as cli_main
from sqvae_speech.cli.vocoder_check import mse_db2, round_trip
from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.audio import load_audio, preemphasis
from sqvae_speech.data.datadir import write_datadir
from sqvae_speech.data.features import logmel
from sqvae_speech.errors import SQVAEError
from sqvae_speech.synthesis.f0 import (
    OUTLIER_OCTAVES,
    compute_f0_stats,
    convert_f0,
    extract_f0,
    read_f0_stats,
    stats_of,
    utterance_stats,
)
from sqvae_speech.synthesis.vocoders import (
    WorldAnalysis,
    align_frames,
    deemphasis,
    griffinlim,
    mel_basis,
    mel_to_envelope,
    mel_to_linear,
    world,
    world_analyze,
)

CFG = FeatureConfig()
SR = CFG.sample_rate


@pytest.fixture(scope="module")
def clips(speech_files: dict[str, list[Path]]) -> dict[str, np.ndarray]:
    """One real clip per voice, cut to at most 2 s (16 kHz)."""
    return {spk: load_audio(files[1], SR)[: 2 * SR] for spk, files in speech_files.items()}


def test_deemphasis_inverts_preemphasis() -> None:
    x = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    np.testing.assert_allclose(deemphasis(preemphasis(x)), x, atol=1e-5)
    np.testing.assert_allclose(preemphasis(deemphasis(x).astype(np.float32)), x, atol=1e-4)


def test_mel_inversion_reproduces_the_mel(clips: dict[str, np.ndarray]) -> None:
    from sqvae_speech.data.features import mel_filterbank

    # the inversion undoes exactly the filterbank the features apply
    np.testing.assert_array_equal(mel_basis(CFG), mel_filterbank(CFG))
    mel = logmel(clips["cs-m"], SR)
    for method in ("pinv", "nnls"):
        lin = mel_to_linear(mel, method=method)
        assert lin.shape == (CFG.n_fft // 2 + 1, mel.shape[1]) and (lin >= 0).all()
        back = 20 * np.log10(np.maximum(mel_basis(CFG) @ lin, CFG.amin)) / CFG.top_db + 1
        assert np.mean((back - mel) ** 2) * CFG.top_db**2 < 2.0  # dB^2
    with pytest.raises(SQVAEError, match=r"\[80, T\]"):
        mel_to_linear(mel[:40])
    with pytest.raises(SQVAEError, match="NaN"):
        mel_to_linear(np.full((80, 5), np.nan))


def test_round_trip_on_real_speech(clips: dict[str, np.ndarray]) -> None:
    """audio -> log-mel -> vocoder -> log-mel. Measured on 8 test utterances (2-7 s):
    Griffin-Lim (100 iterations) 1.6 dB^2, WORLD 27 dB^2; on these 2-s clips about the same."""
    utts = ["cs-m", "nl-v"]
    wavs = [clips[u] for u in utts]
    gl = round_trip(utts, wavs, "griffinlim", CFG, gl_iters=60)
    wo = round_trip(utts, wavs, "world", CFG)
    assert gl.frames == wo.frames == sum(1 + w.size // CFG.hop_length - 2 for w in wavs)
    assert 0 < gl.mse_db2 < 8.0, gl
    assert 5.0 < wo.mse_db2 < 45.0, wo
    assert gl.gain_matched_mse_db2 <= gl.mse_db2 and wo.gain_matched_mse_db2 <= wo.mse_db2
    # the same definition as evaluate.py: sum (a - b)^2 * 80^2 / (80 * frames) over frames 1..T-2
    a = np.zeros((80, 10))
    sse, _, t = mse_db2(a, a + 0.5 / 80)
    assert t == 8 and sse / (80 * t) == pytest.approx(0.25)


def test_griffinlim_is_deterministic_and_batch_independent(clips: dict[str, np.ndarray]) -> None:
    mels = [logmel(clips["cs-v"][:SR], SR), logmel(clips["nl-m"][: SR // 2], SR)]
    a = griffinlim(mels, n_iter=8, seed=3)
    b = griffinlim(mels, n_iter=8, seed=3)
    alone = griffinlim(mels[1:], n_iter=8, seed=3)
    other = griffinlim(mels[:1], n_iter=8, seed=4)
    for x, y in zip(a, b):
        assert x.dtype == np.float32 and np.array_equal(x, y)
    assert np.array_equal(a[1], alone[0])
    assert not np.array_equal(a[0], other[0])
    # (T - 1) * hop samples, whose features have T frames again
    assert a[0].size == (mels[0].shape[1] - 1) * CFG.hop_length
    assert logmel(a[0], SR).shape == mels[0].shape


def test_world_is_deterministic_and_aligned(clips: dict[str, np.ndarray]) -> None:
    wav = clips["nl-m"]
    mel = logmel(wav, SR)
    ana = world_analyze(wav)
    assert ana.f0.shape == (mel.shape[1],) and ana.ap.shape == (mel.shape[1], 513)
    a, b = world([mel, mel], [ana, ana])
    assert np.array_equal(a, b) and a.dtype == np.float32
    assert a.size == (mel.shape[1] - 1) * CFG.hop_length and 0.05 < np.abs(a).max() <= 0.99
    # a decoder output for mel[:, 1:-1] placed at offset 1 covers the same grid
    c = world([mel[:, 1:-1]], [ana], offset=1)[0]
    assert c.size == a.size
    env = mel_to_envelope(mel, ana.f0)
    assert env.shape == (mel.shape[1], 513) and np.isfinite(env).all() and (env > 0).all()


def test_align_frames() -> None:
    m = np.arange(12, dtype=float).reshape(2, 6)
    out = align_frames(m, 8, offset=1)
    assert out.shape == (2, 8)
    assert np.array_equal(out[:, 1:7], m) and np.array_equal(out[:, 0], m[:, 0]) and np.array_equal(out[:, 7], m[:, 5])
    assert np.array_equal(align_frames(m, 4, offset=1)[:, 1:], m[:, :3])


def test_silent_and_unvoiced_inputs_give_finite_quiet_audio(clips: dict[str, np.ndarray]) -> None:
    silence = np.zeros(SR // 2, dtype=np.float32)
    mel = logmel(silence, SR)  # constant floor
    ana = world_analyze(silence)
    assert not ana.f0.any() and np.isfinite(ana.ap).all()
    for out in (griffinlim([mel], n_iter=4)[0], world([mel], [ana])[0]):
        assert np.isfinite(out).all() and np.abs(out).max() < 1e-3
    # fully unvoiced: real speech spectra with F0 forced to 0 (noise excitation only)
    speech = logmel(clips["cs-m"], SR)
    unvoiced = WorldAnalysis(np.zeros(speech.shape[1]), np.ones((speech.shape[1], 513)))
    out = world([speech], [unvoiced])[0]
    assert np.isfinite(out).all() and 0.01 < np.abs(out).max() <= 0.99
    # far too loud features are peak-limited, not clipped
    loud = griffinlim([speech + 1.0], n_iter=4)[0]
    assert np.abs(loud).max() == pytest.approx(0.99, abs=1e-6)


# ----------------------------------------------------------------------------- F0


def test_extract_f0_finds_the_voices(clips: dict[str, np.ndarray]) -> None:
    med = {spk: np.median(f[f > 0]) for spk, f in ((s, extract_f0(w)) for s, w in clips.items())}
    assert 170 < med["cs-m"] < 400 and 140 < med["nl-m"] < 300
    assert 70 < med["cs-v"] < 190 and 70 < med["nl-v"] < 190
    assert extract_f0(clips["cs-v"]).shape == (1 + clips["cs-v"].size // CFG.hop_length,)
    with pytest.raises(SQVAEError, match="F0 method"):
        extract_f0(clips["cs-v"], method="yin")


def test_convert_f0_maps_the_source_distribution_onto_the_target(clips: dict[str, np.ndarray]) -> None:
    f0_src, f0_tgt = extract_f0(clips["cs-m"]), extract_f0(clips["nl-v"])
    src, tgt = utterance_stats(f0_src), utterance_stats(f0_tgt)
    out = convert_f0(f0_src, src, tgt)
    # unvoiced stays unvoiced, voiced stays voiced
    assert np.array_equal(out > 0, f0_src > 0)
    log_in, log_out = np.log(f0_src[f0_src > 0]), np.log(out[out > 0])
    # the median and the std of the (octave-error free) core land on the target's
    assert math.exp(np.median(log_out)) == pytest.approx(tgt.median_f0_hz, rel=1e-3)
    core = np.abs(log_in - np.median(log_in)) <= OUTLIER_OCTAVES * math.log(2)
    assert log_out[core].std() == pytest.approx(tgt.std_log_f0, rel=1e-6)
    assert log_out[core].mean() - math.log(tgt.median_f0_hz) == pytest.approx(
        (src.mean_log_f0 - math.log(src.median_f0_hz)) * tgt.std_log_f0 / src.std_log_f0, abs=1e-9)
    # a speaker with no voice cannot be a target; no voiced frame in, none out
    with pytest.raises(SQVAEError, match="no voiced"):
        convert_f0(f0_src, src, stats_of(np.zeros(0), 10))
    assert not convert_f0(np.zeros(7), src, tgt).any()


def _data_dir(tmp: Path, speech_files: dict[str, list[Path]]) -> Path:
    silent = tmp / "silent.wav"
    soundfile.write(silent, np.zeros(SR // 2, dtype=np.float32), SR)
    wav_scp = {f"{spk}_{i}": str(f) for spk in ("cs-m", "nl-v") for i, f in enumerate(speech_files[spk][:2])}
    wav_scp["mute_0"] = str(silent)
    utt2spk = {u: u.rsplit("_", 1)[0] for u in wav_scp}
    write_datadir(tmp / "data", wav_scp, utt2spk)
    return tmp / "data"


def test_f0_stats_command(tmp_path: Path, speech_files: dict[str, list[Path]], capsys) -> None:
    data = _data_dir(tmp_path, speech_files)
    out = tmp_path / "stats" / "f0.json"
    assert cli_main(["f0-stats", str(data), str(out), "--no-progress"]) == 0
    assert "no voiced frame" in capsys.readouterr().err
    stats = read_f0_stats(out)
    assert set(stats.speakers) == {"cs-m", "nl-v", "mute"}
    cs, nl = stats.speaker("cs-m"), stats.speaker("nl-v")
    assert 180 < cs.median_f0_hz < 350 and 80 < nl.median_f0_hz < 170
    assert cs.utterances == nl.utterances == 2 and 0 < cs.voiced_frames < cs.frames
    assert 0.03 < cs.std_log_f0 < 0.5 and 0.03 < nl.std_log_f0 < 0.5
    assert not stats.speakers["mute"].has_voice
    with pytest.raises(SQVAEError, match="'mute' has no voiced frame"):
        stats.speaker("mute")
    with pytest.raises(SQVAEError, match="'cs-zz' is not in .*cs-m, mute, nl-v"):
        stats.speaker("cs-zz")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]
    # two worker processes give the same statistics
    again = compute_f0_stats(data, nj=2, progress=False)
    assert again.speakers == stats.speakers
    out.write_text("{}")
    with pytest.raises(SQVAEError, match="cannot be read"):
        read_f0_stats(out)
