"""Signal metrics against their definitions and the reference packages, on real speech."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from sqvae_speech.errors import SQVAEError
from sqvae_speech.metrics import signal

SR = 16000


@pytest.fixture(scope="module")
def speech(speech_files) -> np.ndarray:
    """A real 2 s cs-m utterance at 16 kHz, float64."""
    from sqvae_speech.data.audio import load_audio

    return load_audio(speech_files["cs-m"][0], SR).astype(np.float64)


def noisy(x: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(x.size)
    noise *= math.sqrt(np.mean(x**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return x + noise


def tone(f0: float, seconds: float = 1.0) -> np.ndarray:
    """A 10-harmonic tone with 5 Hz vibrato of +-2 % around ``f0``."""
    t = np.arange(int(seconds * SR)) / SR
    inst = f0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(inst) / SR
    return 0.3 * sum(np.sin(k * phase) / k for k in range(1, 11))


def test_identical_speech_is_perfect(speech):
    q = signal.speech_quality(speech, speech.copy(), SR)
    assert set(q) == {"mcd_db", "f0_rmse_cents", "vuv_error", "pesq_wb", "stoi"}
    assert q["pesq_wb"] == pytest.approx(4.64, abs=0.01)
    assert q["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert q["mcd_db"] == pytest.approx(0.0, abs=1e-6)
    assert q["f0_rmse_cents"] == 0.0
    assert q["vuv_error"] == 0.0


def test_mcd_matches_hand_computation(speech):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pysptk
    ref, deg = speech[: SR // 2], noisy(speech[: SR // 2], 10.0)
    length, hop, order, alpha = 512, 160, 24, 0.41
    assert signal.frame_length(SR) == length and signal.hop_length(SR) == hop
    assert pysptk.util.mcepalpha(SR) == pytest.approx(alpha)
    # Centred frames every 10 ms, SPTK Blackman window, speech = within 60 dB of the loudest frame.
    pad = np.concatenate([np.zeros(length // 2), ref, np.zeros(length)]), np.concatenate(
        [np.zeros(length // 2), deg, np.zeros(length)])
    window = pysptk.blackman(length)
    frames = [(pad[0][t * hop: t * hop + length] * window, pad[1][t * hop: t * hop + length] * window)
              for t in range(1 + ref.size // hop)]
    energy_db = np.array([10 * np.log10(np.sum(a**2)) for a, _ in frames])
    per_frame = []
    for (a, b), e in zip(frames, energy_db, strict=True):
        if e < energy_db.max() - 60:
            continue
        c = pysptk.mcep(a, order, alpha, etype=1, eps=1e-8)
        c2 = pysptk.mcep(b, order, alpha, etype=1, eps=1e-8)
        per_frame.append(10 / np.log(10) * np.sqrt(2 * sum((c[d] - c2[d]) ** 2 for d in range(1, order + 1))))
    expected = float(np.mean(per_frame))
    assert 1.0 < expected < 20.0
    assert signal.mcd(ref, deg, SR) == pytest.approx(expected, rel=1e-9)


def test_mcd_leaves_out_silent_reference_frames(speech):
    gap = np.zeros(SR // 2)
    ref = np.concatenate([speech, gap, gap])
    deg = np.concatenate([speech, gap, noisy(np.full(SR // 2, 0.1), 0.0)[: SR // 2]])
    assert signal.mcd(ref, deg, SR) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(signal.mcd(np.zeros(SR), np.ones(SR), SR))


def test_f0_rmse_of_a_50_cent_shift():
    ref, deg = tone(200.0), tone(200.0 * 2 ** (50 / 1200))
    cents, vuv = signal.f0_errors(ref, deg, SR)
    assert cents == pytest.approx(50.0, abs=2.0)
    assert vuv <= 0.03


def test_vuv_error_when_half_is_silenced():
    ref = tone(150.0)
    deg = ref.copy()
    deg[SR // 2:] = 0.0
    cents, vuv = signal.f0_errors(ref, deg, SR)
    assert vuv == pytest.approx(0.5, abs=0.05)
    assert cents < 30.0  # the voiced half is untouched: only the frames straddling the cut are off
    cents, vuv = signal.f0_errors(ref, np.zeros_like(ref), SR)
    assert math.isnan(cents)  # no frame voiced in both
    assert vuv > 0.9


def test_stoi_falls_with_noise(speech):
    from pystoi import stoi

    at_0, at_20 = signal.stoi(speech, noisy(speech, 0.0), SR), signal.stoi(speech, noisy(speech, 20.0), SR)
    assert at_0 < at_20 < 1.0 - 1e-3
    assert at_0 < 0.9
    deg = noisy(speech, 5.0)
    assert signal.stoi(speech, deg, SR) == pytest.approx(stoi(speech, deg, SR, extended=False), abs=1e-12)


def test_pesq_of_noisy_speech(speech):
    from pesq import pesq

    deg = noisy(speech, 5.0)
    score = signal.pesq_wb(speech, deg, SR)
    assert score == pytest.approx(pesq(SR, speech, deg, "wb"), abs=1e-6)
    assert 1.0 < score < 4.0


def test_pesq_resamples_other_rates(speech):
    import librosa

    x = librosa.resample(speech, orig_sr=SR, target_sr=22050)
    assert signal.pesq_wb(x, x, 22050) == pytest.approx(4.64, abs=0.01)


def test_pesq_of_silence_is_nan():
    assert math.isnan(signal.pesq_wb(np.zeros(SR), np.zeros(SR), SR))


def test_lengths(speech):
    with pytest.raises(SQVAEError, match="shorter than"):
        signal.mcd(speech[: SR // 5], speech[: SR // 5], SR)
    with pytest.raises(SQVAEError, match="shorter than"):
        signal.stoi(speech, speech[: SR // 5], SR)
    with pytest.raises(SQVAEError, match="right reference"):
        signal.speech_quality(speech[:SR], speech[: int(0.8 * SR)], SR)
    with pytest.raises(SQVAEError, match="mono"):
        signal.pesq_wb(np.stack([speech, speech]), speech, SR)
    # Within 10 %: both are trimmed to the shorter one.
    longer = np.concatenate([speech, np.ones(speech.size // 20)])
    assert signal.mcd(speech, longer, SR) == pytest.approx(0.0, abs=1e-6)
    assert signal.stoi(longer, speech, SR) == pytest.approx(1.0, abs=1e-6)


def test_a_cached_reference_gives_the_same_scores(speech):
    from sqvae_speech.metrics.signal import Reference

    deg = noisy(speech, 10.0)
    ref = Reference.of(speech, SR)
    direct, cached = signal.speech_quality(speech, deg, SR), signal.speech_quality(ref, deg, SR)
    assert cached == pytest.approx(direct, rel=1e-9, abs=1e-9)
    # a degraded signal a few samples shorter: the cached reference's extra frames are left out
    short = signal.speech_quality(ref, deg[:-37], SR)
    assert short["mcd_db"] == pytest.approx(direct["mcd_db"], rel=0.02)
    with pytest.raises(SQVAEError, match="Hz"):
        signal.speech_quality(ref, deg, SR // 2)
