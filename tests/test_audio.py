"""Audio input: reading, segments, downmix, resampling, normalization, pre-emphasis and
the errors a user's files can cause."""

from __future__ import annotations

import math
from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from sqvae_speech.data.audio import (
    _channel_mean,
    audio_info,
    downmix,
    is_silent,
    load_audio,
    peak_normalize,
    preemphasis,
    resample,
)
from sqvae_speech.errors import AudioError


@pytest.fixture(scope="module")
def stereo_clip(speech_files: dict[str, list[Path]]) -> Path:
    return speech_files["nl-v"][2]  # 2.4 s, 22.05 kHz, 2 channels


@pytest.fixture(scope="module")
def mono_clip(speech_files: dict[str, list[Path]]) -> Path:
    return speech_files["cs-m"][3]  # 1.1 s, 22.05 kHz, 1 channel


def test_audio_info_reads_header(stereo_clip: Path, mono_clip: Path) -> None:
    sr, frames, channels = audio_info(stereo_clip)
    assert (sr, channels) == (22050, 2)
    assert frames == sf.info(str(stereo_clip)).frames > 22050
    assert audio_info(mono_clip)[2] == 1


def test_load_downmixes_stereo_by_averaging(stereo_clip: Path) -> None:
    raw, sr = sf.read(str(stereo_clip), dtype="float32", always_2d=True)
    assert raw.shape[1] == 2 and not np.allclose(raw[:, 0], raw[:, 1])  # really two channels
    wav = load_audio(stereo_clip, sr)
    assert wav.dtype == np.float32 and wav.ndim == 1
    np.testing.assert_array_equal(wav, raw.mean(axis=1))


@pytest.mark.parametrize("target", [16000, 8000, 44100])
def test_resampling_matches_librosa_length_and_samples(mono_clip: Path, target: int) -> None:
    raw, sr = sf.read(str(mono_clip), dtype="float32")
    wav = load_audio(mono_clip, target)
    assert wav.dtype == np.float32
    assert wav.shape == (math.ceil(len(raw) * target / sr),)
    expect = librosa.resample(raw, orig_sr=sr, target_sr=target, res_type="soxr_hq")
    np.testing.assert_array_equal(wav, expect)


def test_resampling_keeps_frequency(tmp_path: Path) -> None:
    t = np.arange(44100) / 44100
    path = tmp_path / "tone.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 1000 * t), 44100, subtype="PCM_16")
    wav = load_audio(path, 16000)
    assert len(wav) == 16000
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    assert int(np.argmax(spectrum)) == 1000  # 1 Hz bins over 1 s
    assert resample(wav, 16000, 16000) is not None and len(resample(wav, 16000, 8000)) == 8000


def test_segment_reads_exact_slice(stereo_clip: Path) -> None:
    raw, sr = sf.read(str(stereo_clip), dtype="float32", always_2d=True)
    seg = load_audio(stereo_clip, sr, start=0.5, end=1.25)
    np.testing.assert_array_equal(seg, raw[int(0.5 * sr) : round(1.25 * sr)].mean(axis=1))
    tail = load_audio(stereo_clip, sr, start=1.0)
    assert len(tail) == len(raw) - sr
    # Rounded end times up to 0.5 s past the end are cut at the end (Kaldi's behaviour).
    duration = len(raw) / sr
    assert len(load_audio(stereo_clip, sr, start=1.0, end=duration + 0.01)) == len(raw) - sr


@pytest.mark.parametrize(("start", "end", "words"), [
    (0.0, 60.0, "past the end of the file (duration 2.3"),
    (30.0, None, "past the end of the file (duration 2.3"),
    (1.0, 0.5, "end must be after start"),
    (-1.0, 0.5, "start must be >= 0"),
])
def test_bad_segment_raises(stereo_clip: Path, start: float, end: float | None, words: str) -> None:
    with pytest.raises(AudioError, match=r"segment") as err:
        load_audio(stereo_clip, 16000, start=start, end=end)
    assert str(stereo_clip) in str(err.value) and words in str(err.value)


def _write_wav(path: Path, n: int = 8000, subtype: str = "PCM_16") -> Path:
    rng = np.random.default_rng(0)
    sf.write(path, (0.1 * rng.standard_normal(n)).astype(np.float32), 16000, subtype=subtype)
    return path


def _cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _missing(tmp: Path) -> Path:
    return tmp / "nope.wav"


def _zero_bytes(tmp: Path) -> Path:
    p = tmp / "empty.wav"
    p.write_bytes(b"")
    return p


def _text_as_wav(tmp: Path) -> Path:
    p = tmp / "notes.wav"
    p.write_text("this is not audio\n" * 20)
    return p


def _truncated_wav(tmp: Path) -> Path:
    return _cut(_write_wav(tmp / "cut.wav"), 0.5)


def _header_only_wav(tmp: Path) -> Path:
    p = _write_wav(tmp / "head.wav")
    p.write_bytes(p.read_bytes()[:30])
    return p


def _truncated_flac(tmp: Path) -> Path:
    p = tmp / "cut.flac"
    sf.write(p, (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    return _cut(p, 0.5)


def _truncated_ogg(tmp: Path) -> Path:
    p = tmp / "cut.ogg"
    sf.write(p, (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    return _cut(p, 0.5)


def _nan_wav(tmp: Path) -> Path:
    p = tmp / "nan.wav"
    x = (0.1 * np.random.default_rng(0).standard_normal(4000)).astype(np.float32)
    x[100] = np.nan
    x[200] = np.inf
    sf.write(p, x, 16000, subtype="FLOAT")
    return p


def _no_frames_wav(tmp: Path) -> Path:
    p = tmp / "noframes.wav"
    sf.write(p, np.zeros(0, dtype=np.float32), 16000)
    return p


@pytest.mark.parametrize(("make", "words"), [
    (_missing, "does not exist"),
    (_zero_bytes, "empty file (0 bytes)"),
    (_text_as_wav, "not a readable audio file"),
    (_header_only_wav, "not a readable audio file"),
    (_truncated_wav, "truncated"),
    (_truncated_ogg, "truncated"),
    (_truncated_flac, "not a readable audio file"),
    (_nan_wav, "2 NaN or infinite samples"),
    (_no_frames_wav, "zero-length"),
])
def test_bad_files_raise_audio_error_naming_the_path(tmp_path: Path, make, words: str) -> None:
    path = make(tmp_path)
    with pytest.raises(AudioError) as err:
        load_audio(path, 16000)
    assert str(path) in str(err.value)
    assert words in str(err.value)


def test_audio_info_errors_name_the_path(tmp_path: Path) -> None:
    for path in (_missing(tmp_path), _text_as_wav(tmp_path)):
        with pytest.raises(AudioError, match="notes.wav|nope.wav") as err:
            audio_info(path)
        assert str(path) in str(err.value)


def test_intact_files_of_each_format_read_whole(tmp_path: Path) -> None:
    t = np.arange(16000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1230 * t)).astype(np.float32)
    for name in ("a.wav", "a.flac", "a.ogg"):
        sf.write(tmp_path / name, x, 16000)
        wav = load_audio(tmp_path / name, 16000)
        assert wav.shape == (16000,)
        assert np.corrcoef(wav, x)[0, 1] > 0.99  # ogg is lossy, not exact


def test_downmix_layouts() -> None:
    x = np.stack([np.ones(1000), 3 * np.ones(1000)])  # [C, N]
    np.testing.assert_array_equal(downmix(x), 2 * np.ones(1000, np.float32))
    np.testing.assert_array_equal(downmix(x.T), 2 * np.ones(1000, np.float32))  # [N, C]
    assert downmix(np.arange(5.0)).dtype == np.float32
    with pytest.raises(AudioError):
        downmix(np.zeros((2, 2, 2)))


@pytest.mark.parametrize("channels", [1, 2, 3, 6, 7, 8, 11])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int16])
def test_channel_mean_equals_numpy_mean_bit_for_bit(channels: int, dtype: type) -> None:
    # The channel-at-a-time sum (the fast path: fewer than 8 float channels) must give
    # numpy's own mean of the same array exactly, in both layouts, also with fewer
    # samples than channels.
    rng = np.random.default_rng(channels)
    for n in (48000, 3):
        x = (rng.standard_normal((n, channels)) * 3000).astype(dtype)  # [N, C]
        for data, axis in ((x, 1), (np.ascontiguousarray(x.T), 0)):
            expect = data.mean(axis=axis).astype(np.float32)
            got = _channel_mean(data, axis=axis)
            assert got.dtype == np.float32 and got.shape == (n,)
            np.testing.assert_array_equal(got, expect)
            if n > channels:  # downmix takes the shorter axis as the channels
                np.testing.assert_array_equal(downmix(data), expect)


def test_peak_normalize(mono_clip: Path) -> None:
    wav = load_audio(mono_clip, 16000)
    out = peak_normalize(0.01 * wav)
    assert out.dtype == np.float32
    assert np.max(np.abs(out)) == pytest.approx(0.999, abs=1e-6)
    np.testing.assert_allclose(out, wav / np.abs(wav).max() * 0.999, atol=1e-6)
    silent = peak_normalize(np.zeros(100, np.float32))
    assert np.array_equal(silent, np.zeros(100)) and np.isfinite(silent).all()
    assert peak_normalize(np.zeros(0, np.float32)).shape == (0,)
    assert np.max(np.abs(peak_normalize(-wav, peak=0.5))) == pytest.approx(0.5, abs=1e-6)


def test_preemphasis_formula(mono_clip: Path) -> None:
    x = load_audio(mono_clip, 16000)
    y = preemphasis(x, 0.97)
    assert y[0] == x[0]
    np.testing.assert_allclose(y[1:], x[1:] - 0.97 * x[:-1], atol=1e-7)
    np.testing.assert_allclose(y, scipy.signal.lfilter([1, -0.97], [1], x), atol=1e-6)
    assert preemphasis(np.array([2.0], np.float32))[0] == 2.0


def test_is_silent(mono_clip: Path) -> None:
    assert is_silent(np.zeros(100))
    assert is_silent(np.full(100, 5e-5))
    assert is_silent(np.zeros(0))
    assert not is_silent(load_audio(mono_clip, 16000))
