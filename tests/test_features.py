"""Log-mel features: the numpy path against an independent librosa computation of the
reference protocol, and the batched torch path against the numpy path."""

from __future__ import annotations

import warnings
from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch

from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.audio import load_audio
from sqvae_speech.data.features import (
    logmel,
    logmel_batch,
    logmel_many,
    mel_filterbank,
    num_frames,
)
from sqvae_speech.errors import AudioError

TOL_DB = 0.01


def reference_logmel(y: np.ndarray, sr: int, pad_mode: str = "reflect") -> np.ndarray:
    """The protocol written straight from librosa calls, ``[80, T]`` scaled features."""
    y = y / np.abs(y).max() * 0.999
    y = scipy.signal.lfilter([1, -0.97], [1], y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_fft too large" for the short-signal cases
        mel = librosa.feature.melspectrogram(
            y=y, sr=sr, n_fft=2048, hop_length=160, win_length=400, window="hann",
            center=True, pad_mode=pad_mode, power=1.0, n_mels=80, fmin=50, fmax=None,
            htk=False, norm="slaney",
        )
    return librosa.amplitude_to_db(mel, ref=1.0, amin=1e-5, top_db=80.0) / 80.0 + 1.0


def db_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) * 80.0)


@pytest.fixture(scope="module")
def clips(speech_files: dict[str, list[Path]]) -> dict[str, tuple[np.ndarray, int]]:
    """Raw soundfile reads: cs mono 1.1 s, nl stereo 2.4 s (``[N, 2]``), both 22.05 kHz."""
    out = {}
    for name, path in (("mono", speech_files["cs-m"][3]), ("stereo", speech_files["nl-v"][2])):
        data, sr = sf.read(str(path), dtype="float32")
        out[name] = (data, sr)
    assert out["stereo"][0].ndim == 2 and out["mono"][0].ndim == 1
    return out


@pytest.fixture(scope="module")
def speech16k(speech_files: dict[str, list[Path]]) -> np.ndarray:
    """Several real clips of one voice at 16 kHz, end to end (> 10 s)."""
    return np.concatenate([load_audio(p, 16000) for p in speech_files["cs-v"][:4]])


@pytest.mark.parametrize("channels", ["mono", "stereo"])
@pytest.mark.parametrize("rate", [22050, 16000, 44100, 8000])
def test_logmel_matches_librosa_reference(clips, channels: str, rate: int) -> None:
    raw, sr = clips[channels]
    # Reference: librosa.load's steps done by hand (downmix, soxr_hq resample), then the protocol.
    mono = raw.mean(axis=1) if raw.ndim == 2 else raw
    y = librosa.resample(mono, orig_sr=sr, target_sr=rate, res_type="soxr_hq") if rate != sr else mono
    expect = reference_logmel(y, rate)
    got = logmel(raw, sr, FeatureConfig(sample_rate=rate))
    assert got.dtype == np.float32
    assert got.shape == (80, 1 + len(y) // 160) == expect.shape
    assert db_diff(got, expect) < TOL_DB


@pytest.mark.parametrize("settings", [
    {},  # the protocol's: 16 kHz, n_fft 2048, 80 bands from 50 Hz
    {"sample_rate": 22050, "n_fft": 1024, "n_mels": 40, "fmin": 0.0, "fmax": 8000.0},
    {"sample_rate": 8000, "n_fft": 512, "n_mels": 64, "fmin": 20.0},
])
def test_mel_filterbank_is_librosas(settings: dict) -> None:
    cfg = FeatureConfig(**settings)
    expect = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                                 fmax=cfg.fmax, htk=False, norm="slaney", dtype=np.float64)
    got = mel_filterbank(cfg)
    assert got.shape == expect.shape == (cfg.n_mels, 1 + cfg.n_fft // 2)
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-15)


def test_shape_and_value_range(speech16k: np.ndarray) -> None:
    wav = speech16k[:40000]
    feat = logmel(wav, 16000)
    assert feat.shape == (80, 1 + 40000 // 160) == (80, num_frames(40000))
    assert feat.dtype == np.float32 and np.isfinite(feat).all()
    # Not [0, 1]: the top is max(dB)/80 + 1 and the floor exactly 80 dB (1.0) below it,
    # reached here because 2.5 s of speech with pauses spans more than 80 dB.
    top, floor = float(feat.max()), float(feat.min())
    assert floor == pytest.approx(top - 1.0, abs=1e-6)
    assert np.count_nonzero(feat == floor) > 10
    assert 0.5 < top < 1.5


def test_reflect_padding_is_the_protocol(speech16k: np.ndarray) -> None:
    wav = speech16k[:24000]
    reflect = logmel(wav, 16000)
    constant = logmel(wav, 16000, FeatureConfig(pad_mode="constant"))
    assert db_diff(constant, reference_logmel(wav, 16000, pad_mode="constant")) < TOL_DB
    per_frame = np.max(np.abs(reflect - constant), axis=0) * 80  # dB per frame
    assert np.all(per_frame[[0, 1, -2, -1]] > 0.05), per_frame[[0, 1, -2, -1]]
    assert per_frame[[0, -1]].max() > 3.0
    assert per_frame[2:-2].max() < 1e-3  # only frames whose window reaches the padding


def test_silence_gives_finite_constant() -> None:
    feat = logmel(np.zeros(3200, np.float32), 16000)
    assert np.isfinite(feat).all() and np.all(feat == feat[0, 0])
    assert feat[0, 0] == pytest.approx(-100 / 80 + 1)
    batch, _ = logmel_batch([np.zeros(3200, np.float32)])
    np.testing.assert_allclose(batch[0].numpy(), feat, atol=1e-6)


@pytest.mark.parametrize("n", [1, 700, 1024, 1025])
def test_short_signals_follow_librosa(speech16k: np.ndarray, n: int) -> None:
    # Shorter than the 1024-sample reflect padding: np.pad reflects back and forth, as librosa does.
    wav = speech16k[8000 : 8000 + n]
    feat = logmel(wav, 16000)
    assert feat.shape == (80, 1 + n // 160)
    assert db_diff(feat, reference_logmel(wav, 16000)) < TOL_DB
    batch, lens = logmel_batch([wav, speech16k[:5000]])
    assert int(lens[0]) == 1 + n // 160
    assert db_diff(batch[0, :, : lens[0]].numpy(), feat) < TOL_DB


def test_empty_and_nonfinite_input_raise() -> None:
    with pytest.raises(AudioError, match="empty"):
        logmel(np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match=r"item\(s\) \[1\] are empty"):
        logmel_batch([np.ones(500, np.float32), np.zeros(0, np.float32)])
    bad = np.ones(2000, np.float32)
    bad[7] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        logmel(bad, 16000)
    with pytest.raises(AudioError, match=r"item\(s\) \[0\]"):
        logmel_batch([bad])


@pytest.fixture(scope="module")
def three_lengths(speech16k: np.ndarray) -> list[np.ndarray]:
    """Real speech of 0.2 s, 1 s and 5 s (start offsets chosen inside voiced regions)."""
    return [speech16k[3200:6400].copy(), speech16k[20000:36000].copy(), speech16k[40000:120000].copy()]


def test_batch_equals_per_utterance(three_lengths: list[np.ndarray]) -> None:
    feats, lens = logmel_batch(three_lengths)
    assert feats.dtype == torch.float32 and lens.dtype == torch.int64
    assert lens.tolist() == [1 + len(w) // 160 for w in three_lengths]
    assert tuple(feats.shape) == (3, 80, int(lens.max()))
    for i, wav in enumerate(three_lengths):
        assert db_diff(feats[i, :, : lens[i]].numpy(), logmel(wav, 16000)) < TOL_DB
        assert torch.all(feats[i, :, lens[i] :] == 0)


def test_batch_item_independent_of_batchmates(three_lengths: list[np.ndarray]) -> None:
    short, mid, long = three_lengths
    alone, n_alone = logmel_batch([short])
    # A longer and louder neighbour must not change the short item's padding, peak or clip.
    together, n_together = logmel_batch([short, 4.0 * long, mid])
    assert int(n_alone[0]) == int(n_together[0])
    t = int(n_alone[0])
    assert db_diff(together[0, :, :t].numpy(), alone[0, :, :t].numpy()) < 1e-3


def test_padded_tensor_input_ignores_padding_content(three_lengths: list[np.ndarray]) -> None:
    lengths = [len(w) for w in three_lengths]
    padded = torch.full((3, max(lengths)), 7.0)  # junk, loud: would dominate if it leaked
    for i, w in enumerate(three_lengths):
        padded[i, : len(w)] = torch.from_numpy(w)
    from_tensor, lens_t = logmel_batch(padded, lengths=torch.tensor(lengths))
    from_list, lens_l = logmel_batch(three_lengths)
    assert torch.equal(lens_t, lens_l)
    assert db_diff(from_tensor.numpy(), from_list.numpy()) < 1e-3


def test_batch_constant_padding_mode(three_lengths: list[np.ndarray]) -> None:
    cfg = FeatureConfig(pad_mode="constant")
    feats, lens = logmel_batch(three_lengths[:2], cfg)
    for i, wav in enumerate(three_lengths[:2]):
        assert db_diff(feats[i, :, : lens[i]].numpy(), reference_logmel(wav, 16000, "constant")) < TOL_DB


def test_logmel_many_keeps_order(three_lengths: list[np.ndarray]) -> None:
    wavs = [three_lengths[2], three_lengths[0], three_lengths[1], three_lengths[0][:1500]]
    out = logmel_many(wavs, batch_size=2)
    assert len(out) == 4
    for wav, feat in zip(wavs, out):
        assert feat.dtype == np.float32 and feat.shape == (80, 1 + len(wav) // 160)
        assert db_diff(feat, logmel(wav, 16000)) < TOL_DB


def test_bad_batch_inputs_raise(three_lengths: list[np.ndarray]) -> None:
    with pytest.raises(AudioError, match="lengths"):
        logmel_batch(torch.zeros(2, 100), lengths=[50, 200])
    with pytest.raises(AudioError, match="1-D"):
        logmel_batch([np.zeros((10, 2))])
    with pytest.raises(AudioError, match="batch_size"):
        logmel_many(three_lengths, batch_size=0)
