"""Long recordings: features streamed block by block equal the whole-file log-mel, and a
3-hour recording is extracted (and cropped for training) in bounded memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO

from sqvae_speech.config import FeatureConfig
from sqvae_speech.data import longaudio
from sqvae_speech.data.audio import load_audio, stream_audio
from sqvae_speech.data.datadir import write_datadir
from sqvae_speech.data.extract import extract
from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.data.features import logmel
from sqvae_speech.data.longaudio import logmel_long

CFG = FeatureConfig()


@pytest.fixture(scope="module")
def stereo_recording(speech_files, tmp_path_factory):
    """40 s of real stereo speech at 22.05 kHz (FLAC): resampled and downmixed when read."""
    clips = [sf.read(str(p), dtype="float32", always_2d=True)[0] for p in speech_files["nl-v"]]
    x = np.concatenate([c if c.shape[1] == 2 else np.repeat(c, 2, axis=1) for c in clips] * 2)
    path = tmp_path_factory.mktemp("long") / "stereo.flac"
    sf.write(path, x[: 40 * 22050], 22050)
    return path


@pytest.mark.parametrize("start, end", [(None, None), (1.25, 33.3)])
def test_streamed_logmel_equals_the_whole_file_logmel(stereo_recording, tmp_path, monkeypatch, start, end):
    monkeypatch.setattr(longaudio, "BLOCK_FRAMES", 97)  # many blocks, boundaries everywhere
    whole = load_audio(stereo_recording, CFG.sample_rate, start, end)
    streamed = list(stream_audio(stereo_recording, CFG.sample_rate, start, end, block_frames=7919))
    assert len(streamed) > 50 and np.array_equal(np.concatenate(streamed), whole)  # same samples, resampled too
    ref = logmel(whole, CFG.sample_rate, CFG)
    got = logmel_long(stereo_recording, tmp_path / "scratch.f32", CFG, start, end, block_frames=7919)
    assert (got.frames, got.samples) == (ref.shape[1], whole.shape[0])
    feats = np.concatenate(list(got.blocks(rows=501)), axis=1)
    assert feats.shape == ref.shape and feats.dtype == np.float32
    np.testing.assert_allclose(feats, ref, atol=1e-5, rtol=0)
    # an all-zero signal gives logmel's constant floor, never NaN
    sf.write(tmp_path / "zeros.wav", np.zeros(50_000, np.float32), 16000)
    zeros = logmel_long(tmp_path / "zeros.wav", tmp_path / "z.f32", CFG)
    np.testing.assert_array_equal(np.concatenate(list(zeros.blocks()), axis=1), logmel(np.zeros(50_000), 16000, CFG))


def test_long_recording_is_extracted_like_a_short_one(stereo_recording, speech_files, tmp_path, monkeypatch):
    monkeypatch.setattr(longaudio, "STREAM_MIN_SECONDS", 10.0)
    monkeypatch.setattr(longaudio, "BLOCK_FRAMES", 300)
    streamed = []
    real = longaudio.logmel_long
    monkeypatch.setattr(longaudio, "logmel_long", lambda path, *a, **k: streamed.append(str(path)) or real(path, *a, **k))
    short = speech_files["cs-m"][0]
    dur = sf.info(str(stereo_recording)).duration
    # long recordings that are bad in the middle or at the end: found by the streamed reading too
    x = load_audio(stereo_recording, 16000)[: 20 * 16000]
    x[15 * 16000] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    sf.write(tmp_path / "cut.wav", np.nan_to_num(x), 16000, subtype="PCM_16")
    (tmp_path / "cut.wav").write_bytes((tmp_path / "cut.wav").read_bytes()[: 30 * 16000])
    sf.write(tmp_path / "silent.wav", np.zeros(20 * 16000, np.float32), 16000)
    bad = {"x-nan": "nan.wav", "x-cut": "cut.wav", "x-silent": "silent.wav"}
    write_datadir(tmp_path / "data", {"rec": str(stereo_recording), "short": str(short),
                                      **{u: str(tmp_path / f) for u, f in bad.items()}},
                  {"long-a": "s", "long-b": "s", "short": "t", **{u: "t" for u in bad}},
                  {"long-a": ("rec", 0.0, dur), "long-b": ("rec", 2.0, 30.0), "short": ("short", 0.0, 0.5),
                   **{u: (u, 0.0, 20.0) for u in bad}})
    s = extract(tmp_path / "data", tmp_path / "feats", CFG, progress=False)
    assert s.complete and sorted(s.failed) == sorted(bad) and streamed == [str(stereo_recording)] * 2
    assert s.failed["x-nan"] == f"{tmp_path / 'nan.wav'}: NaN or infinite samples (the first at frame 240000); the file is corrupt"
    assert s.failed["x-cut"].startswith(f"{tmp_path / 'cut.wav'}: truncated: header promises")
    assert s.failed["x-silent"] == f"{tmp_path / 'silent.wav'}: silent audio (peak 0.0e+00), nothing to learn from"
    assert not [p for p in tmp_path.rglob(".tmp-*")]  # scratch files are gone
    store = FeatureStore.open(tmp_path / "feats")
    for utt, (path, start, end) in {"long-a": (stereo_recording, 0.0, dur), "long-b": (stereo_recording, 2.0, 30.0),
                                    "short": (short, 0.0, 0.5)}.items():
        ref = logmel(load_audio(path, CFG.sample_rate, start, end), CFG.sample_rate, CFG)
        np.testing.assert_allclose(store[utt], ref, atol=1e-4, rtol=0)


HOURS = 3.0
_MEASURE = r"""
import json, sys
import numpy as np

def kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

from sqvae_speech.data.batching import CropDataset
from sqvae_speech.data.extract import extract
from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.data.features import logmel
logmel(np.random.default_rng(0).standard_normal(40000).astype(np.float32), 16000)  # load librosa's filters etc.
before = kb("VmRSS")
summary = extract(sys.argv[1], sys.argv[2], progress=False)
store = FeatureStore.open(sys.argv[2])
crops = [CropDataset(store, ["s"], 32)[0].mel for _ in range(20)]  # training reads only its crops
peak = kb("VmHWM")
print(json.dumps({"growth_kb": peak - before, "frames": store.frames("long"), "failed": summary.failed,
                  "crops_finite": all(bool(np.isfinite(c).all()) and c.shape == (80, 34) for c in crops)}))
"""


def test_three_hour_recording_streams_in_bounded_memory(three_hour_wav, tmp_path):
    """3 h of 16 kHz mono PCM (345.6 MB; 691 MB as float32) through `extract` and training
    crops in a fresh process: its peak resident memory grows by less than a quarter of the
    float32 signal (measured: ~35 MB), where the whole-file path would need ~20 GB."""
    n = int(HOURS * 3600 * 16000)
    assert sf.info(str(three_hour_wav)).frames == n
    try:
        write_datadir(tmp_path / "data", {"long": str(three_hour_wav)}, {"long": "s"})
        res = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / "data"), str(tmp_path / "feats")],
                             capture_output=True, text=True, timeout=600, cwd=REPO,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, check=False)
        assert res.returncode == 0, res.stderr[-3000:]
        got = json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp_path / "feats", ignore_errors=True)
    assert got["failed"] == {} and got["frames"] == 1 + n // CFG.hop_length and got["crops_finite"]
    signal_float32 = 4 * n
    growth = got["growth_kb"] * 1024
    assert growth < signal_float32 / 4, f"peak memory grew by {growth / 2**20:.0f} MB"
    assert growth < 100 * 2**20, f"peak memory grew by {growth / 2**20:.0f} MB"
