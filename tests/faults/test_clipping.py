"""Clipped audio and ``extract --max-clipped`` (docs/RELIABILITY.md, Audio): samples at
full scale are counted in each file's own sample format and rate, before resampling or
normalization, block by block for long recordings; above the limit an utterance fails
with the count in ``failed.txt``, below it a clipped one is extracted and named."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import soundfile as sf

from sqvae_speech.cli import main as cli_main
from sqvae_speech.data.audio import load_audio
from sqvae_speech.data.featstore import FeatureStore
from sqvae_speech.data.longaudio import STREAM_MIN_SECONDS

# Full scale of a format as libsndfile decodes it: the definition of docs/RELIABILITY.md.
FULL_SCALE = {"PCM_16": 1.0, "PCM_U8": 127 / 128, "ULAW": 32124 / 32768}


def _cli(args: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main([str(a) for a in args])
    assert "Traceback" not in err.getvalue()
    return rc, out.getvalue(), err.getvalue()


def _at_full_scale(path: Path) -> tuple[int, int]:
    """(samples at full scale, samples) of a file read whole, every channel."""
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    level = np.float32(0.999 * FULL_SCALE[sf.info(str(path)).subtype])
    return int(np.count_nonzero(np.abs(data) >= level)), data.size


def test_max_clipped_makes_clipped_audio_a_failure(speech_files, tmp_path):
    clip = speech_files["cs-m"][3]  # 1.1 s of real speech, Ogg: not clipped
    x = load_audio(clip, 16000)
    x /= np.abs(x).max()
    x8 = load_audio(clip, 8000)
    x8 /= np.abs(x8).max()
    files = {"a-good": clip, "b-mild": tmp_path / "mild.wav", "c-heavy": tmp_path / "heavy.wav",
             "d-8bit": tmp_path / "phone8.wav", "e-ulaw": tmp_path / "ulaw.wav", "f-long": tmp_path / "long.wav"}
    mild = np.clip(x / np.quantile(np.abs(x), 0.996), -1, 1)  # ~0.4 % of the samples clipped
    sf.write(files["b-mild"], mild, 16000, subtype="PCM_16")
    sf.write(files["c-heavy"], np.clip(8 * x, -1, 1), 16000, subtype="PCM_16")
    sf.write(files["d-8bit"], np.clip(8 * x8, -1, 1), 8000, subtype="PCM_U8")  # 8 kHz: resampled after counting
    sf.write(files["e-ulaw"], np.clip(8 * x, -1, 1), 16000, subtype="ULAW")
    n_long = int((STREAM_MIN_SECONDS + 1) * 16000)  # streamed: counted block by block
    sf.write(files["f-long"], np.resize(np.clip(3 * x, -1, 1), n_long), 16000, subtype="PCM_16")
    counts = {u: _at_full_scale(p) for u, p in files.items() if u != "a-good"}
    assert load_audio(files["f-long"], 16000, max_samples=int(STREAM_MIN_SECONDS * 16000)) is None  # the long path
    assert 0.001 <= counts["b-mild"][0] / counts["b-mild"][1] <= 0.01
    assert all(n / total > 0.01 for u, (n, total) in counts.items() if u != "b-mild")
    assert counts["d-8bit"][1] == sf.info(str(files["d-8bit"])).frames  # at the file's own 8 kHz
    # the positive peaks of 8-bit and mu-law audio never reach 0.999: full scale is the format's
    assert max(sf.read(files[u], dtype="float32")[0].max() for u in ("d-8bit", "e-ulaw")) < 0.999
    data = tmp_path / "data"
    data.mkdir()
    (data / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p in files.items()))
    (data / "utt2spk").write_text("".join(f"{u} s\n" for u in files))
    feats = tmp_path / "feats"

    rc, out, err = _cli(["extract", data, feats, "--max-clipped", "0.01", "--no-progress"])
    assert rc == 1 and "2 utterances extracted, 4 failed" in out
    failed = dict(ln.split("\t") for ln in (feats / "failed.txt").read_text().splitlines())
    assert sorted(failed) == ["c-heavy", "d-8bit", "e-ulaw", "f-long"]
    for utt, reason in failed.items():
        n, total = counts[utt]
        assert reason == (f"{files[utt]}: clipped: {n} of {total} samples ({100 * n / total:.3g} %) at full scale, "
                          "more than --max-clipped 0.01 allows")
    assert FeatureStore.open(feats).utterances == ["a-good", "b-mild"]
    frac = counts["b-mild"][0] / counts["b-mild"][1]  # below the limit: extracted and named
    assert (feats / "clipped.txt").read_text() == f"b-mild\t{files['b-mild']}: {100 * frac:.3g} % of the samples " \
                                                  "at full scale\n"
    assert f"extract: warning: 1 utterance(s) clipped, extracted anyway (at least 0.1 % of their samples at full " \
           f"scale): b-mild ({100 * frac:.2g} %)" in err

    # the store depends on the limit: another one is refused, --overwrite rebuilds
    rc, _, err = _cli(["extract", data, feats, "--no-progress"])
    assert rc == 2 and f"{feats} already holds features extracted with --max-clipped 0.01, this run asks for no " \
                       "--max-clipped limit; pass --overwrite to rebuild it" in err
    rc, _, err = _cli(["extract", data, tmp_path / "f2", "--max-clipped", "5"])
    assert rc == 2 and "--max-clipped must be a fraction of the samples between 0 and 1 (0.01 = 1 %), got 5.0" in err
    assert not (tmp_path / "f2").exists()
