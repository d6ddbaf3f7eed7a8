"""Kaldi-style data dirs: round trip, each validation rule, the validate-data command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sqvae_speech import cli
from sqvae_speech.data.datadir import (
    read_datadir,
    utterance_audio,
    validate_datadir,
    write_datadir,
)
from sqvae_speech.errors import DataDirError


@pytest.fixture()
def wavs(tmp_path: Path) -> list[Path]:
    """Three 1 s, 16 kHz wav files."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        p = tmp_path / "audio" / f"w{i}.wav"
        p.parent.mkdir(exist_ok=True)
        sf.write(p, 0.1 * rng.standard_normal(16000).astype(np.float32), 16000)
        out.append(p)
    return out


def _write(d: Path, **files: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name.replace("_scp", ".scp")).write_text(text)
    return d


def _good(d: Path, wavs: list[Path]) -> dict[str, str]:
    return {
        "wav_scp": f"a-1 {wavs[0]}\na-2 {wavs[1]}\nb-1 {wavs[2]}\n",
        "utt2spk": "a-1 a\na-2 a\nb-1 b\n",
        "spk2utt": "a a-1 a-2\nb b-1\n",
    }


def test_round_trip(tmp_path: Path, wavs: list[Path]) -> None:
    wav_scp = {"b-1": str(wavs[2]), "a-2": str(wavs[1]), "a-1": str(wavs[0])}
    utt2spk = {"b-1": "b", "a-1": "a", "a-2": "a"}
    write_datadir(tmp_path / "d", wav_scp, utt2spk)
    assert (tmp_path / "d/wav.scp").read_text().splitlines()[0] == f"a-1 {wavs[0]}"
    assert (tmp_path / "d/spk2utt").read_text() == "a a-1 a-2\nb b-1\n"
    dd = read_datadir(tmp_path / "d")
    assert dd.wav_scp == wav_scp and dd.utt2spk == utt2spk and dd.segments is None
    assert dd.spk2utt == {"a": ["a-1", "a-2"], "b": ["b-1"]}
    assert dd.utterances == ["a-1", "a-2", "b-1"] and dd.speakers == ["a", "b"]
    assert utterance_audio(dd, "a-2") == (str(wavs[1]), None, None)
    assert validate_datadir(tmp_path / "d") == []


def test_round_trip_segments_and_relative_paths(tmp_path: Path, wavs: list[Path]) -> None:
    segs = {"r0-x": ("r0", 0.0, 0.5), "r0-y": ("r0", 0.25, 1.0), "r1-x": ("r1", 0.1, 0.3333333333)}
    d = tmp_path / "d"
    write_datadir(d, {"r0": str(wavs[0]), "r1": str(wavs[1])}, {u: "s" for u in segs}, segs)
    dd = read_datadir(d)
    assert dd.segments == segs  # times survive the text round trip exactly
    assert utterance_audio(dd, "r0-y") == (str(wavs[0]), 0.25, 1.0)
    # Rewriting without segments removes the stale file: wav.scp ids are then utterances.
    write_datadir(d, {"u": str(wavs[0])}, {"u": "s"})
    assert not (d / "segments").exists() and read_datadir(d).utterances == ["u"]
    # A relative path resolves against the data dir itself.
    _write(tmp_path / "e", wav_scp="u ../audio/w2.wav\n", utt2spk="u s\n")
    assert Path(read_datadir(tmp_path / "e").wav_scp["u"]) == wavs[2].resolve()


def test_write_rejects_bad_ids(tmp_path: Path, wavs: list[Path]) -> None:
    with pytest.raises(DataDirError, match="whitespace"):
        write_datadir(tmp_path / "d", {"a b": str(wavs[0])}, {"a b": "s"})
    with pytest.raises(DataDirError, match="without speaker"):
        write_datadir(tmp_path / "d", {"a": str(wavs[0]), "b": str(wavs[1])}, {"a": "s"})


@pytest.mark.parametrize(
    "change, where, what",
    [
        (lambda f, w: f.update(wav_scp=f"a-2 {w[1]}\na-1 {w[0]}\nb-1 {w[2]}\n"), "wav.scp line 2", "not sorted"),
        (lambda f, w: f.update(utt2spk="a-1 a\na-1 a\na-2 a\nb-1 b\n"), "utt2spk line 2", "listed twice"),
        (lambda f, w: f.update(utt2spk="a-1 a\nb-1 b\n", spk2utt="a a-1\nb b-1\n"), "wav.scp line 2", "'a-2' has no speaker"),
        (lambda f, w: f.update(utt2spk="a-1 a\na-2 a x\nb-1 b\n"), "utt2spk line 2", "whitespace"),
        (lambda f, w: f.update(utt2spk="a-1 a\na-2 a\nb-1 b\nc-1 c\n"), "utt2spk line 4", "no audio"),
        (lambda f, w: f.update(wav_scp=f"a-1 {w[0]}\na-2 /nonexistent/x.wav\nb-1 {w[2]}\n"), "wav.scp line 2", "does not exist"),
        (lambda f, w: f.update(wav_scp=f"a-1 {w[0]}\na-2 sox {w[1]} -t wav - |\nb-1 {w[2]}\n"), "wav.scp line 2", "pipe"),
        (lambda f, w: f.update(wav_scp=f"a-1 {w[0]}\n\na-2 {w[1]}\nb-1 {w[2]}\n"), "wav.scp line 2", "empty line"),
        (lambda f, w: f.update(spk2utt="a a-1\nb b-1\n"), "spk2utt line 1", "missing a-2"),
        (lambda f, w: f.update(spk2utt="a a-1 a-2\nb b-1 a-2\n"), "spk2utt line 2", "not this speaker's"),
    ],
)
def test_validation_errors_name_file_and_line(tmp_path: Path, wavs: list[Path], change, where, what) -> None:
    files = _good(tmp_path, wavs)
    change(files, wavs)
    d = _write(tmp_path / "data" / "train", **files)
    with pytest.raises(DataDirError) as e:
        read_datadir(d)
    msg = str(e.value)
    assert f"{d}/{where}" in msg and what in msg, msg
    problems = validate_datadir(d, strict=False)
    assert any(where in p and what in p for p in problems), problems


@pytest.mark.parametrize(
    "segments, where, what",
    [
        ("r0-a r0 0.0 0.5\nr0-b r0 0.5 1.2\n", "segments line 2", "ends at 1.2 s but recording 'r0'"),
        ("r0-a r0 0.0 0.5\nr0-b r0 0.5\n", "segments line 2", "got 3 fields"),
        ("r0-a r0 0.0 0.5\nr0-b r0 0.5 abc\n", "segments line 2", "must be numbers"),
        ("r0-a r0 0.6 0.5\nr0-b r0 0.5 0.9\n", "segments line 1", "must be > start"),
        ("r0-a r0 -0.1 0.5\nr0-b r0 0.5 0.9\n", "segments line 1", "must be >= 0"),
        ("r0-a r0 0.0 0.5\nr0-b r9 0.5 0.9\n", "segments line 2", "recording 'r9'"),
    ],
)
def test_segment_errors(tmp_path: Path, wavs: list[Path], segments: str, where: str, what: str) -> None:
    d = _write(tmp_path / "d", wav_scp=f"r0 {wavs[0]}\n", utt2spk="r0-a s\nr0-b s\n", segments=segments)
    with pytest.raises(DataDirError) as e:
        read_datadir(d)
    assert f"{d}/{where}" in str(e.value) and what in str(e.value), str(e.value)


def test_segment_end_within_tolerance_is_accepted(tmp_path: Path, wavs: list[Path]) -> None:
    d = _write(tmp_path / "d", wav_scp=f"r0 {wavs[0]}\n", utt2spk="r0-a s\n", segments="r0-a r0 0.5 1.005\n")
    assert read_datadir(d).segments == {"r0-a": ("r0", 0.5, 1.005)}
    # Without file checks the duration is not looked at (nor existence).
    (d / "segments").write_text("r0-a r0 0.5 9.0\n")
    assert read_datadir(d, check_files=False).segments == {"r0-a": ("r0", 0.5, 9.0)}


def test_all_problems_reported_at_once(tmp_path: Path, wavs: list[Path]) -> None:
    d = _write(tmp_path / "d", wav_scp=f"b {wavs[0]}\na /none.wav\n", utt2spk="a s\nb s\nb s\n")
    problems = validate_datadir(d, strict=False)
    assert len(problems) == 3, problems
    with pytest.raises(DataDirError, match="3 problem"):
        validate_datadir(d)


def test_missing_dir_or_table(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match="does not exist"):
        read_datadir(tmp_path / "nope")
    _write(tmp_path / "d", wav_scp="a /x.wav\n")
    with pytest.raises(DataDirError, match="no utt2spk"):
        read_datadir(tmp_path / "d")


def test_validate_data_command(tmp_path: Path, wavs: list[Path], capsys) -> None:
    d = _write(tmp_path / "d", **_good(tmp_path, wavs))
    assert cli.main(["validate-data", str(d)]) == 0
    out = capsys.readouterr().out
    assert "3 utterances, 2 speakers" in out and "0.00 h" in out and out.strip().endswith("OK")
    (d / "utt2spk").write_text("a-1 a\na-2 a\n")
    assert cli.main(["validate-data", str(d)]) == 2
    err = capsys.readouterr().err
    assert f"{d}/wav.scp line 3" in err and "'b-1' has no speaker" in err
