"""ZeroSpeech 2019 bitrate: hand-computed values, symbol identity, and the CLI's duration sources."""

import json
import math

import numpy as np
import pytest
import soundfile as sf

from sqvae_speech.cli import main as cli_main
from sqvae_speech.cli.bitrate import bitrate_of_dir
from sqvae_speech.data.datadir import write_datadir
from sqvae_speech.errors import SQVAEError
from sqvae_speech.zerospeech.bitrate import (
    bitrate,
    entropy_bits,
    read_durations,
    symbol_counts,
)


def test_hand_computed_bitrates():
    a, b = [1.0, 2.0], [3.0, 4.0]
    # 4 frames, 2 equiprobable symbols (1 bit), 2 s -> 4 / 2 * 1 = 2 bits/s
    assert bitrate([np.array([a, a]), np.array([b, b])], [1.0, 1.0]) == pytest.approx(2.0)
    # 3 symbols with p = 1/2, 1/4, 1/4 (1.5 bits) over 8 frames in 4 s -> 3 bits/s
    x = np.array([a, a, a, a, b, b, [5.0, 6.0], [5.0, 6.0]])
    assert bitrate([x[:5], x[5:]], [3.0, 1.0]) == pytest.approx(8 / 4 * 1.5)
    # continuous features: every frame its own symbol -> H = log2 N
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(50, 4)), rng.normal(size=(30, 4))]
    assert bitrate(feats, [1.0, 0.6]) == pytest.approx(80 / 1.6 * math.log2(80))
    # one symbol only carries no information
    assert bitrate([np.zeros((10, 3))], [1.0]) == 0.0


def test_symbols_are_exact_rows():
    counts, n = symbol_counts([np.array([[0.0, 1.0], [-0.0, 1.0], [0.0, 1.0 + 1e-12]])])
    assert n == 3 and sorted(counts.tolist()) == [1, 2]  # -0.0 is 0.0; 1 + 1e-12 is another symbol
    counts, n = symbol_counts([np.array([3, 3, 7]), np.array([7, 1])])  # code indices, [T]
    assert n == 5 and sorted(counts.tolist()) == [1, 2, 2]
    assert entropy_bits(np.array([1, 1, 1, 1])) == pytest.approx(2.0)
    with pytest.raises(SQVAEError, match="different dimensions"):
        symbol_counts([np.zeros((2, 3)), np.zeros((2, 4))])


def write_export(d, feats, durations, fmt="zerospeech"):
    d.mkdir()
    ext = {"zerospeech": ".txt", "npy": ".npy"}[fmt]
    for name, f in feats.items():
        np.savetxt(d / f"{name}.txt", f, fmt="%.9g") if fmt == "zerospeech" else np.save(d / f"{name}{ext}", f)
    meta = {"format": "sqvae-export", "version": 1, "file_format": fmt, "kind": "quantized", "rate": 50.0,
            "time_offset": 0.015, "names": {f"utt-{n}": n for n in feats}, "durations": durations, "complete": True}
    (d / "export.json").write_text(json.dumps(meta))


def test_cli_duration_sources_agree(tmp_path, capsys):
    rng = np.random.default_rng(1)
    codes = rng.normal(size=(8, 3)).astype(np.float32)
    feats = {"a": codes[rng.integers(0, 8, 100)], "b": codes[rng.integers(0, 8, 60)]}
    durs = {"a": 2.0, "b": 1.2}
    expected = bitrate(list(feats.values()), list(durs.values()))
    write_export(tmp_path / "txt", feats, durs)
    write_export(tmp_path / "npy", feats, durs, "npy")
    assert bitrate_of_dir(tmp_path / "txt")["bitrate"] == pytest.approx(expected)
    assert bitrate_of_dir(tmp_path / "npy")["bitrate"] == pytest.approx(expected)
    # durations from frame counts: 160 frames at 50 Hz = 3.2 s, the total of the durations above
    assert bitrate_of_dir(tmp_path / "txt", rate=50.0)["bitrate"] == pytest.approx(expected)
    # a ZeroSpeech-style list (names with extensions) selects the files
    lst = tmp_path / "bitrate_filelist.txt"
    lst.write_text("a.txt 2.0\n")
    r = bitrate_of_dir(tmp_path / "txt", str(lst))
    assert r["files"] == 1 and r["bitrate"] == pytest.approx(bitrate([feats["a"]], [2.0]))
    assert read_durations(lst) == {"a": 2.0}
    # a data dir: durations from the audio, utterance ids mapped to file names by export.json
    wavs = {}
    for name, dur in durs.items():
        wavs[f"utt-{name}"] = str(tmp_path / f"{name}.wav")
        sf.write(wavs[f"utt-{name}"], np.zeros(int(dur * 16000), np.float32), 16000)
    write_datadir(tmp_path / "data", wavs, {u: "spk" for u in wavs})
    assert bitrate_of_dir(tmp_path / "txt", str(tmp_path / "data"))["bitrate"] == pytest.approx(expected)
    out = tmp_path / "b.json"
    assert cli_main(["bitrate", str(tmp_path / "txt"), "--json", str(out)]) == 0
    assert f"bitrate {expected:.2f} bits/s" in capsys.readouterr().out
    assert json.loads(out.read_text())["frames"] == 160


def test_cli_errors(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    np.savetxt(plain / "a.txt", np.ones((4, 2)))
    with pytest.raises(SQVAEError, match="pass --durations"):
        bitrate_of_dir(plain)
    lst = tmp_path / "l.txt"
    lst.write_text("a 1.0\nb 2.0\n")
    with pytest.raises(SQVAEError, match="1 file\\(s\\) have no feature file.*b"):
        bitrate_of_dir(plain, str(lst))
    lst.write_text("a one\n")
    with pytest.raises(SQVAEError, match="line 1: expected 'name duration-seconds'"):
        bitrate_of_dir(plain, str(lst))
    assert bitrate_of_dir(plain, rate=100.0)["bitrate"] == 0.0  # one symbol
    assert cli_main(["bitrate", str(tmp_path / "missing")]) == 2
