"""Your own audio through a trained model: bad input to ``sqvae-speech encode``,
``synthesize`` and ``convert --model FILE...``. Each is a clear one-line message and exit
2, with nothing half-written (no output file, no ``.tmp-*``); audio that is merely
unusual (8 / 48 kHz, 6 channels) is converted, not refused. A 3-hour recording is encoded
in bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO

import sqvae_speech as sq
from sqvae_speech.cli import main as cli_main
from sqvae_speech.data.audio import load_audio
from sqvae_speech.errors import AudioError
from sqvae_speech.modelfile import write_model_file

SPEAKERS = "cs-m, cs-v, nl-m, nl-v"


@pytest.fixture(scope="module")
def model_file(untrained_exp, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny.pt"
    write_model_file(untrained_exp, out)
    return out


@pytest.fixture(scope="module")
def speech(speech_files) -> np.ndarray:
    """2.5 s of real speech at 16 kHz."""
    return np.concatenate([load_audio(p, 16000) for p in speech_files["cs-v"][:3]])[:40000]


def _cli(args, capsys) -> tuple[int, str, str]:
    rc = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def _refused(args, capsys) -> str:
    """Exit 2 with one line, ``sqvae-speech CMD: error: MESSAGE``; returns the line."""
    rc, _, err = _cli(args, capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"sqvae-speech {args[0]}: error: "), err
    return lines[0]


def _no_temporaries(d: Path) -> None:
    assert not [p for p in d.rglob(".tmp-*")], sorted(d.rglob(".tmp-*"))


def _encode(model, inputs, out, capsys, *more) -> tuple[int, str, str]:
    return _cli(["encode", "--model", model, *inputs, "--out", out, *more, "--no-progress"], capsys)


def _synthesize(model, units, out, capsys, speaker="cs-m") -> str:
    return _refused(["synthesize", "--model", model, "--units", units, "--speaker", speaker, "--out", out], capsys)


def _convert(model, files, out, capsys, speaker="cs-m") -> str:
    return _refused(["convert", "--model", model, *files, "--speaker", speaker, "--vocoder", "griffinlim",
                     "--gl-iters", "2", "--out", out, "--no-progress"], capsys)


def _encode_fails(model, path: Path, out: Path, capsys) -> str:
    """``encode`` of one bad file: exit 2 pointing at failed.txt, which holds its reason;
    no output file and no temporary, and export.json names no file."""
    rc, text, err = _encode(model, [path], out, capsys)
    assert rc == 2 and "encode: 0 file(s) written" in text and "1 failed" in text
    assert f"sqvae-speech encode: error: 1 of 1 file(s) could not be encoded; they are listed with the reason in " \
           f"{out / 'failed.txt'}" in err
    name, listed, reason = (out / "failed.txt").read_text().rstrip("\n").split("\t")
    assert (name, listed) == (path.stem, str(path))
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "failed.txt"]
    assert json.loads((out / "export.json").read_text())["names"] == {}
    _no_temporaries(out)
    return reason


def test_missing_input_file(model_file, tmp_path, capsys):
    gone = tmp_path / "gone.wav"
    err = _refused(["encode", "--model", model_file, gone, "--out", tmp_path / "out", "--no-progress"], capsys)
    assert err.endswith(f"{gone}: no such file or directory")
    err = _synthesize(model_file, tmp_path / "gone.units", tmp_path / "out.wav", capsys)
    assert err.endswith(f"units file {tmp_path / 'gone.units'} does not exist")
    err = _convert(model_file, [gone], tmp_path / "conv", capsys)
    assert err.endswith(f"{gone}: no such audio file")
    rc, _, err = _cli(["encode", "--model", model_file, "--list", tmp_path / "wav.scp", "--out", tmp_path / "out"], capsys)
    assert rc == 2 and f"--list {tmp_path / 'wav.scp'}: no such file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_file_that_is_not_audio(model_file, tmp_path, capsys):
    bad = tmp_path / "notes.wav"
    bad.write_text("meeting notes, not a recording\n" * 20)
    reason = _encode_fails(model_file, bad, tmp_path / "out", capsys)
    assert reason == f"{bad}: not a readable audio file (Format not recognised.)"
    err = _convert(model_file, [bad], tmp_path / "conv", capsys)
    assert err.endswith(f"{bad}: not a readable audio file (Format not recognised.)")
    (tmp_path / "notes.units").write_text("twelve 3 4\n")
    err = _synthesize(model_file, tmp_path / "notes.units", tmp_path / "out.wav", capsys)
    assert f"units file {tmp_path / 'notes.units'} is not one line of integer code indices" in err
    err = _synthesize(model_file, bad, tmp_path / "out.wav", capsys)
    assert f"{bad}: unknown feature file type '.wav'" in err
    assert not (tmp_path / "conv").exists() and not (tmp_path / "out.wav").exists()
    _no_temporaries(tmp_path)


def test_zero_byte_file(model_file, tmp_path, capsys):
    empty = tmp_path / "empty.wav"
    empty.touch()
    assert _encode_fails(model_file, empty, tmp_path / "out", capsys) == f"{empty}: empty file (0 bytes)"
    assert _convert(model_file, [empty], tmp_path / "conv", capsys).endswith(f"{empty}: empty file (0 bytes)")
    (tmp_path / "empty.units").touch()
    err = _synthesize(model_file, tmp_path / "empty.units", tmp_path / "out.wav", capsys)
    assert err.endswith(f"units file {tmp_path / 'empty.units'} is empty")
    (tmp_path / "empty.npy").touch()
    err = _synthesize(model_file, tmp_path / "empty.npy", tmp_path / "out.wav", capsys)
    assert err.endswith(f"units file {tmp_path / 'empty.npy'} is empty")
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY")  # cut off in its header
    err = _synthesize(model_file, tmp_path / "cut.npy", tmp_path / "out.wav", capsys)
    assert f"feature file {tmp_path / 'cut.npy'} cannot be read (" in err
    assert not (tmp_path / "conv").exists() and not (tmp_path / "out.wav").exists()
    _no_temporaries(tmp_path)


def test_nan_samples(model_file, speech, tmp_path, capsys):
    x = speech.copy()
    x[[1000, 20000]] = [np.nan, np.inf]
    bad = tmp_path / "nan.wav"
    sf.write(bad, x, 16000, subtype="FLOAT")
    reason = _encode_fails(model_file, bad, tmp_path / "out", capsys)
    assert reason == f"{bad}: 2 NaN or infinite samples; the file is corrupt"
    assert _convert(model_file, [bad], tmp_path / "conv", capsys).endswith(reason)
    with pytest.raises(AudioError, match="the audio array holds 2 NaN or infinite samples"):
        sq.load_model(model_file).encode(x, sample_rate=16000)
    q = np.zeros((20, 8), np.float32)
    q[5, 2] = np.nan
    np.save(tmp_path / "q.npy", q)
    err = _synthesize(model_file, tmp_path / "q.npy", tmp_path / "out.wav", capsys)
    assert err.endswith("the latents to decode hold NaN or inf")
    assert not (tmp_path / "conv").exists() and not (tmp_path / "out.wav").exists()
    _no_temporaries(tmp_path)


def test_silent_or_too_short_recording(model_file, speech, tmp_path, capsys):
    sf.write(tmp_path / "silent.wav", np.zeros(32000, np.float32), 16000)
    reason = _encode_fails(model_file, tmp_path / "silent.wav", tmp_path / "out", capsys)
    assert reason == f"{tmp_path / 'silent.wav'}: silent audio (peak 0.0e+00): nothing to encode"
    sf.write(tmp_path / "short.wav", speech[:320], 16000)  # 20 ms: 3 feature frames
    reason = _encode_fails(model_file, tmp_path / "short.wav", tmp_path / "out2", capsys)
    assert reason == (f"{tmp_path / 'short.wav'}: 20 ms of audio gives 3 feature frames; the encoder needs at least 4 "
                      "(about 40 ms)")
    err = _convert(model_file, [tmp_path / "short.wav"], tmp_path / "conv", capsys)
    assert "has 3 feature frames (30 ms); the encoder needs at least 4" in err
    assert not (tmp_path / "conv").exists()


def _units_count(samples_16k: int) -> int:
    frames = 1 + samples_16k // 160
    return (frames - frames % 2 - 2) // 2


def test_other_rates_and_channel_counts_are_converted(model_file, speech_files, speech, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    x8 = load_audio(speech_files["nl-m"][0], 8000)
    sf.write(src / "rate8k.wav", x8, 8000, subtype="PCM_16")
    x48 = load_audio(speech_files["nl-m"][1], 48000)
    sf.write(src / "rate48k.flac", x48, 48000)
    clips = [load_audio(p, 16000) for p in speech_files["cs-m"][:3] + speech_files["nl-v"][:3]]
    n = min(c.size for c in clips)
    six = np.stack([c[:n] for c in clips], axis=1)  # 6 different voices, one per channel
    sf.write(src / "six.wav", six, 16000, subtype="FLOAT")
    sf.write(src / "downmix.wav", six.mean(axis=1), 16000, subtype="FLOAT")
    rc, text, _ = _encode(model_file, [src], tmp_path / "out", capsys, "--format", "units")
    assert rc == 0 and "encode: 4 file(s) written" in text and "0 failed" in text
    units = {p.stem: p.read_text().split() for p in (tmp_path / "out").glob("*.units")}
    assert sf.info(str(src / "six.wav")).channels == 6
    assert units["six"] == units["downmix"]  # the channel mean
    assert len(units["six"]) == _units_count(n)
    assert len(units["rate8k"]) == _units_count(2 * x8.size)
    assert len(units["rate48k"]) == _units_count(-(-x48.size // 3))
    m = sq.load_model(model_file)
    six_units = m.encode(src / "six.wav")
    np.testing.assert_allclose(six_units.z, m.encode(six.mean(axis=1), sample_rate=16000).z, atol=1e-6, rtol=0)
    out = tmp_path / "conv"
    rc, text, _ = _cli(["convert", "--model", model_file, src / "six.wav", src / "rate8k.wav", src / "rate48k.flac",
                        "--speaker", "nl-v", "--vocoder", "griffinlim", "--gl-iters", "2", "--out", out,
                        "--no-progress"], capsys)
    assert rc == 0 and "3 items written" in text
    for stem, samples in (("six", n), ("rate8k", 2 * x8.size), ("rate48k", -(-x48.size // 3))):
        info = sf.info(str(out / f"{stem}_to_nl-v.wav"))
        assert (info.samplerate, info.channels) == (16000, 1) and abs(info.frames - samples) <= 3 * 160


def test_unknown_speaker(model_file, speech, tmp_path, capsys):
    sf.write(tmp_path / "a.wav", speech, 16000)
    (tmp_path / "a.units").write_text("1 2 3 4 5 6\n")
    err = _synthesize(model_file, tmp_path / "a.units", tmp_path / "out.wav", capsys, speaker="en-x")
    assert err.endswith(f"unknown speaker 'en-x'; the model knows: {SPEAKERS}")
    err = _convert(model_file, [tmp_path / "a.wav"], tmp_path / "conv", capsys, speaker="cs-m,en-x")
    assert f"target speaker 'en-x' is unknown to the model; known speakers: {SPEAKERS}" in err
    assert not (tmp_path / "out.wav").exists() and not (tmp_path / "conv").exists()
    _no_temporaries(tmp_path)


class _Foreign:
    def __init__(self) -> None:
        self.layers = [3, 4]


def test_model_file_of_another_program(speech, tmp_path, capsys):
    sf.write(tmp_path / "a.wav", speech, 16000)
    (tmp_path / "a.units").write_text("1 2 3 4 5 6\n")
    plain, pickled = tmp_path / "other.pt", tmp_path / "pickled.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 10}, plain)
    torch.save(_Foreign(), pickled)
    foreign = (f"{plain} is not an sqvae-speech checkpoint or model file (no 'sqvae-speech-checkpoint' or "
               "'sqvae-speech-model' marker): was it written by another program?")
    for model, words in ((plain, foreign), (pickled, f"checkpoint {pickled} cannot be read (")):
        assert words in _refused(["encode", "--model", model, tmp_path / "a.wav", "--out", tmp_path / "out"], capsys)
        assert words in _synthesize(model, tmp_path / "a.units", tmp_path / "out.wav", capsys)
        assert words in _convert(model, [tmp_path / "a.wav"], tmp_path / "conv", capsys)
    err = _synthesize(pickled, tmp_path / "a.units", tmp_path / "out.wav", capsys)
    assert "holds more than tensors and plain values (another program's)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.units", "a.wav", "other.pt", "pickled.pt"]


def test_model_file_of_another_format_version(model_file, speech, tmp_path, capsys):
    sf.write(tmp_path / "a.wav", speech, 16000)
    (tmp_path / "a.units").write_text("1 2 3 4 5 6\n")
    data = torch.load(model_file, weights_only=True)
    newer = tmp_path / "newer.pt"
    torch.save({**data, "version": 2}, newer)
    words = f"{newer} is a model file of format version 2; this sqvae-speech ({sq.__version__}) reads up to version 1: " \
            "upgrade sqvae-speech"
    assert _refused(["encode", "--model", newer, tmp_path / "a.wav", "--out", tmp_path / "out"], capsys).endswith(words)
    assert _synthesize(newer, tmp_path / "a.units", tmp_path / "out.wav", capsys).endswith(words)
    assert _convert(newer, [tmp_path / "a.wav"], tmp_path / "conv", capsys).endswith(words)
    broken = tmp_path / "broken.pt"
    torch.save({k: v for k, v in data.items() if k != "speakers"}, broken)
    err = _synthesize(broken, tmp_path / "a.units", tmp_path / "out.wav", capsys)
    assert err.endswith(f"model file {broken} lacks 'speakers'; it is incomplete: package it again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.units", "a.wav", "broken.pt", "newer.pt"]


def test_units_outside_the_codebook(model_file, tmp_path, capsys):
    (tmp_path / "big.units").write_text("1 2 16 3\n")
    err = _synthesize(model_file, tmp_path / "big.units", tmp_path / "out.wav", capsys)
    assert err.endswith("unit 16 is outside the codebook: this model's codes are 0 .. 15")
    np.save(tmp_path / "neg.npy", np.array([4, -1, 2]))
    err = _synthesize(model_file, tmp_path / "neg.npy", tmp_path / "out.wav", capsys)
    assert err.endswith("unit -1 is outside the codebook: this model's codes are 0 .. 15")
    np.save(tmp_path / "q.npy", np.ones((10, 3), np.float32))  # vectors of another model's dimension
    err = _synthesize(model_file, tmp_path / "q.npy", tmp_path / "out.wav", capsys)
    assert err.endswith("quantized latents must be [frames, 8] with frames > 0, got (10, 3)")
    assert not (tmp_path / "out.wav").exists()
    _no_temporaries(tmp_path)


_MEASURE = r"""
import json, sys
import numpy as np

def kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

from sqvae_speech.cli import main
from sqvae_speech.inference.model import load_model
model, wav, out = sys.argv[1:4]
load_model(model).encode(np.random.default_rng(0).standard_normal(40000).astype(np.float32), sample_rate=16000)
before = kb("VmRSS")  # torch, the model and librosa's filters loaded
rc = main(["encode", "--model", model, wav, "--out", out, "--format", "units", "--no-progress"])
print(json.dumps({"rc": rc, "growth_kb": kb("VmHWM") - before}))
"""


def test_three_hour_recording_is_encoded_in_bounded_memory(model_file, three_hour_wav, tmp_path):
    """``encode --format units`` of 3 h of 16 kHz mono PCM in a fresh process: features
    computed block by block into a scratch file, encoded a minute at a time and written as
    they come; peak resident memory grows by ~35 MB (measured), asserted below 100 MB."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", _MEASURE, str(model_file), str(three_hour_wav), str(out)],
                         capture_output=True, text=True, timeout=600, cwd=REPO, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TMPDIR": str(scratch)})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["rc"] == 0
    n = sf.info(str(three_hour_wav)).frames
    assert n == 3 * 3600 * 16000
    units = (out / "long.units").read_text().split()
    assert len(units) == ((1 + n // 160) - (1 + n // 160) % 2 - 2) // 2 == 539_999
    assert set(units) <= {str(k) for k in range(16)}
    assert (out / "units.txt").read_text().startswith("long\t" + " ".join(units[:100]))
    assert json.loads((out / "export.json").read_text())["durations"] == {"long": 10800.0}
    assert list(scratch.iterdir()) == []  # the features' scratch file is gone
    growth = got["growth_kb"] * 1024
    assert growth < 100 * 2**20, f"peak memory grew by {growth / 2**20:.0f} MB"
