"""``sqvae-speech convert``: conversion lists, WORLD / Griffin-Lim conversion with a tiny
trained model on real speech, output files, and the errors users can cause."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import tiny_experiment

from sqvae_speech.cli import main as cli_main
from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.audio import load_audio
from sqvae_speech.data.datadir import read_datadir, write_datadir
from sqvae_speech.data.featstore import write_featstore
from sqvae_speech.data.features import logmel
from sqvae_speech.errors import SQVAEError
from sqvae_speech.synthesis.conversion_list import (
    ConversionItem,
    choose_speakers,
    make_conversion_list,
    merge_datadirs,
    read_conversion_list,
    write_conversion_list,
)
from sqvae_speech.synthesis.convert import run_conversion, write_wav
from sqvae_speech.synthesis.f0 import compute_f0_stats, extract_f0, write_f0_stats
from sqvae_speech.train import train

SR = 16000
SPEAKERS = "cs-m, cs-v, nl-m, nl-v"


@pytest.fixture(scope="module")
def tiny_exp(real_featstore, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("exp")
    train(tiny_experiment(steps=4, checkpoint_every=4), real_featstore.path, exp, progress=False)
    return exp


@pytest.fixture(scope="module")
def data(tmp_path_factory, speech_files) -> Path:
    """A data dir of real speech: 2 s of two clips each of cs-m and nl-v (16 kHz wavs),
    plus a 1-s clip that --min-seconds 1.5 leaves out."""
    root = tmp_path_factory.mktemp("data")
    wav_scp, utt2spk = {}, {}
    for spk in ("cs-m", "nl-v"):
        for i, f in enumerate(speech_files[spk][1:3]):
            utt = f"{spk}_{i + 1}"
            soundfile.write(root / f"{utt}.wav", load_audio(f, SR)[: 2 * SR], SR)
            wav_scp[utt], utt2spk[utt] = str(root / f"{utt}.wav"), spk
    soundfile.write(root / "short.wav", load_audio(speech_files["cs-m"][3], SR)[:SR], SR)
    wav_scp["cs-m_0"], utt2spk["cs-m_0"] = str(root / "short.wav"), "cs-m"
    write_datadir(root / "data", wav_scp, utt2spk)
    return root / "data"


@pytest.fixture(scope="module")
def two_dirs(data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The utterances of ``data`` in two data dirs: cs-m's, then nl-v's."""
    root, dd = tmp_path_factory.mktemp("two"), read_datadir(data)
    dirs = []
    for spk in ("cs-m", "nl-v"):
        utts = dd.spk2utt[spk]
        write_datadir(root / spk, {u: dd.wav_scp[u] for u in utts}, {u: spk for u in utts})
        dirs.append(root / spk)
    return dirs[0], dirs[1]


@pytest.fixture(scope="module")
def f0_stats(data: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("f0") / "f0.json"
    write_f0_stats(path, compute_f0_stats(data, progress=False))
    return path


def _no_temporaries(d: Path) -> bool:
    return not [p for p in d.rglob(".tmp-*")]


def test_conversion_lists(data: Path, tmp_path: Path) -> None:
    items = make_conversion_list(data, per_speaker=1, min_seconds=1.5)
    assert items == [ConversionItem("cs-m_1", t, f"cs-m_1__to__{t}") for t in ("cs-m", "nl-v")] + [
        ConversionItem("nl-v_1", t, f"nl-v_1__to__{t}") for t in ("cs-m", "nl-v")]
    assert make_conversion_list(data, per_speaker=2, min_seconds=0.5, speakers=["cs-m"], targets=["nl-v"])[0].source == "cs-m_0"
    # too few long enough: the longest others fill in (2 s before 1 s), sorted by id
    assert [it.source for it in make_conversion_list(data, per_speaker=2, min_seconds=9, targets=["nl-v"])] == [
        "cs-m_1", "cs-m_2", "nl-v_1", "nl-v_2"]
    assert [it.source for it in make_conversion_list(data, per_speaker=3, min_seconds=1.5, targets=["nl-v"])][:3] == [
        "cs-m_0", "cs-m_1", "cs-m_2"]
    with pytest.raises(SQVAEError, match="cs-zz.*speakers: cs-m, nl-v"):
        make_conversion_list(data, speakers=["cs-zz"])
    path = tmp_path / "list.txt"
    write_conversion_list(path, items)
    assert read_conversion_list(path) == items
    for text, match in (("a b\n", "line 1: expected"), ("a b c\nd e c\n", "line 2: output name 'c' already used"),
                        ("a b ../c\n", "plain file stem"), ("# nothing\n", "no rows")):
        path.write_text(text)
        with pytest.raises(SQVAEError, match=match):
            read_conversion_list(path)


def test_speaker_choice(two_dirs: tuple[Path, Path]) -> None:
    """choose_speakers: the --speakers / --num-speakers / --targets / --num-targets /
    --target-sources rules of `convert --make-list`, over two data dirs taken together."""
    known = ["cs-m", "cs-v", "nl-m", "nl-v"]
    dd = merge_datadirs(two_dirs)
    assert dd.speakers == ["cs-m", "nl-v"] and len(dd.utterances) == 5
    assert choose_speakers(dd, known) == (["cs-m", "nl-v"], ["cs-m", "nl-v"])  # every speaker the model knows
    assert choose_speakers(dd, ["nl-v", "xx"]) == (["nl-v"], ["nl-v"])
    # the first N speakers of the first dir
    assert choose_speakers(merge_datadirs(two_dirs[::-1]), known, num_speakers=1) == (["nl-v"], ["nl-v"])
    # the targets' own utterances as sources, after the others; one without any is a target only
    assert choose_speakers(dd, known, speakers=["nl-v"], targets=["cs-v", "cs-m"], target_sources=True) == (
        ["nl-v", "cs-m"], ["cs-v", "cs-m"])
    assert choose_speakers(dd, known, num_targets=2, target_sources=True) == (["cs-m"], ["cs-m", "cs-v"])
    assert choose_speakers(dd, known, speakers=["nl-v", "nl-v"], targets=["nl-m"]) == (["nl-v"], ["nl-m"])
    for kwargs, match in (
        ({"targets": ["p999"]}, f"'p999' is unknown to the model; known speakers: {SPEAKERS} .*not a target"),
        ({"speakers": ["zz"]}, "source speaker.s. zz not in .*cs-m, .*nl-v .speakers: cs-m, nl-v."),
        ({"targets": ["cs-v"], "target_sources": True}, "no source speaker: none of the targets .cs-v. has an utt"),
        ({"num_speakers": -1}, "must be >= 0"),
    ):
        with pytest.raises(SQVAEError, match=match):
            choose_speakers(dd, known, **kwargs)
    # a model that knows none of them: every speaker is a source, to given targets
    assert choose_speakers(dd, ["xx"], targets=["xx"]) == (["cs-m", "nl-v"], ["xx"])
    with pytest.raises(SQVAEError, match="no target speaker: none of the source speakers .cs-m, nl-v. is known"):
        choose_speakers(dd, ["xx"])
    with pytest.raises(SQVAEError, match="cs-m_0, cs-m_1, cs-m_2 are in more than one of the data dirs"):
        merge_datadirs([two_dirs[0], two_dirs[0]])
    assert make_conversion_list(dd, per_speaker=1, speakers=["nl-v", "cs-m"], targets=["cs-v"]) == [
        ConversionItem("nl-v_1", "cs-v", "nl-v_1__to__cs-v"), ConversionItem("cs-m_1", "cs-v", "cs-m_1__to__cs-v")]


def test_make_list_computes_the_f0_statistics_it_needs(tiny_exp: Path, data: Path, two_dirs: tuple[Path, Path],
                                                       tmp_path: Path, capsys) -> None:
    """`convert --make-list A B ... --f0-data DATA`: one command for a recipe's stage 5."""
    stats, out = tmp_path / "f0.json", tmp_path / "conv"
    args = ["convert", "--exp", str(tiny_exp), "--make-list", *map(str, two_dirs), "--speakers", "nl-v",
            "--targets", "cs-m", "--target-sources", "--per-speaker", "1", "--f0-stats", str(stats),
            "--f0-data", str(data), "--f0-utts-per-speaker", "2", "--f0-norm", "utterance", "--out", str(out),
            "--no-progress"]
    # a target without utterances in --f0-data: an error before anything is computed or written
    assert cli_main([*args, "--targets", "cs-v"]) == 2
    assert "--f0-data" in capsys.readouterr().err and not stats.exists() and not out.exists()
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "sources: nl-v, cs-m; targets: cs-m; 2 items" in printed
    assert f"{stats}: F0 statistics of cs-m, nl-v from {data} (harvest, 2 utterances per speaker)" in printed
    f0 = json.loads(stats.read_text())
    assert sorted(f0["speakers"]) == ["cs-m", "nl-v"] and f0["data"] == str(data.resolve())
    assert [f0["speakers"][s]["utterances"] for s in ("cs-m", "nl-v")] == [2, 2]
    items = json.loads((out / "conversion.json").read_text())["items"]
    assert [(it["source"], it["target"]) for it in items] == [("nl-v_1", "cs-m"), ("cs-m_1", "cs-m")]
    # the sources came from two dirs: the ones converted are written as one, the --data of list.txt
    assert read_datadir(out / "data").utt2spk == {"cs-m_1": "cs-m", "nl-v_1": "nl-v"}
    assert (out / "list.txt").read_text().splitlines() == ["nl-v_1 cs-m nl-v_1__to__cs-m", "cs-m_1 cs-m cs-m_1__to__cs-m"]
    # a rerun reuses the statistics; Griffin-Lim needs none
    stamp = stats.stat().st_mtime_ns
    assert cli_main(args) == 0
    assert f"{stats} holds the F0 statistics of cs-m, nl-v: reusing it" in capsys.readouterr().out
    assert cli_main([*args, "--vocoder", "griffinlim", "--gl-iters", "4", "--out", str(tmp_path / "gl")]) == 0
    assert "--vocoder griffinlim: no F0 statistics needed" in capsys.readouterr().out
    assert stats.stat().st_mtime_ns == stamp


def test_world_conversion_writes_a_listening_set(tiny_exp: Path, data: Path, f0_stats: Path, tmp_path: Path) -> None:
    out = tmp_path / "conv"
    rc = cli_main(["convert", "--exp", str(tiny_exp), "--make-list", str(data), "--per-speaker", "1",
                   "--f0-stats", str(f0_stats), "--vocoder", "world", "--out", str(out), "--no-progress"])
    assert rc == 0
    manifest = json.loads((out / "conversion.json").read_text())
    assert manifest["vocoder"] == "world" and len(manifest["items"]) == 4
    assert (out / "list.txt").read_text().splitlines()[0] == "cs-m_1 cs-m cs-m_1__to__cs-m"
    for item in manifest["items"]:
        wav, sr = soundfile.read(out / item["wav"], dtype="float32")
        assert sr == SR and np.isfinite(wav).all() and 0.01 < np.abs(wav).max() <= 0.995  # 0.99 + 16-bit rounding
        assert abs(wav.size - 2 * SR) <= 160
        # as loud as the source (RMS), unless the 0.99 peak limit took some of it
        source = soundfile.read(out / "sources" / f"{item['source']}.wav", dtype="float32")[0]
        assert 0.3 < np.sqrt(np.mean(wav**2)) / np.sqrt(np.mean(source**2)) < 1.05
        assert (out / item["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert item["reconstruction"] == (item["source_speaker"] == item["target"])
        assert ("mse_db2" in item) == item["reconstruction"]
    for name in ("cs-m_1.wav", "cs-m_1.world.wav", "cs-m_1.png", "nl-v_1.wav"):
        assert (out / "sources" / name).is_file()
    page = (out / "index.html").read_text()
    assert page.count("<audio ") == 4 + 2 * 2 and "<script" not in page and "cs-m_1__to__nl-v.png" in page
    assert _no_temporaries(out)
    # F0 really moved: cs-m (female) decoded as nl-v (male) is far lower than its source
    stats = json.loads(f0_stats.read_text())["speakers"]
    conv = extract_f0(soundfile.read(out / "cs-m_1__to__nl-v.wav", dtype="float32")[0])
    src = extract_f0(soundfile.read(out / "sources" / "cs-m_1.wav", dtype="float32")[0])
    assert np.median(conv[conv > 0]) < 0.75 * np.median(src[src > 0])
    assert abs(np.log2(np.median(conv[conv > 0]) / stats["nl-v"]["median_f0_hz"])) < 0.5


def test_griffinlim_from_an_audio_file_is_deterministic(tiny_exp: Path, data: Path, tmp_path: Path) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text(f"# source target name\n{data.parent / 'nl-v_2.wav'} cs-v mine\n")
    outs = []
    for k in range(2):
        manifest = run_conversion(tiny_exp, read_conversion_list(lst), tmp_path / f"out{k}", "griffinlim",
                                  gl_iters=8, progress=False)
        assert manifest[0]["source_speaker"] is None and not manifest[0]["reconstruction"]
        outs.append((tmp_path / f"out{k}" / "mine.wav").read_bytes())
    assert outs[0] == outs[1]
    assert "(unknown speaker)" in (tmp_path / "out0" / "index.html").read_text()


def test_features_and_audio_must_agree(tiny_exp: Path, data: Path, f0_stats: Path, tmp_path: Path) -> None:
    cfg = FeatureConfig()
    wav = load_audio(data.parent / "cs-m_1.wav", SR)
    store = write_featstore(tmp_path / "feats", [("cs-m_1", "cs-m", logmel(wav, SR, cfg)),
                                                 ("nl-v_1", "nl-v", logmel(wav[: SR // 2], SR, cfg))], cfg)
    items = [ConversionItem("cs-m_1", "nl-v", "a")]
    run_conversion(tiny_exp, items, tmp_path / "ok", feats=store.path, data=data, f0_stats=f0_stats, progress=False)
    with pytest.raises(SQVAEError, match="WORLD needs its audio: pass --data"):
        run_conversion(tiny_exp, items, tmp_path / "x", feats=store.path, f0_stats=f0_stats, progress=False)
    with pytest.raises(SQVAEError, match="'nl-v_1'.*do not describe the same audio"):
        run_conversion(tiny_exp, [ConversionItem("nl-v_1", "nl-v", "b")], tmp_path / "x", feats=store.path,
                       data=data, progress=False)


def test_user_errors(tiny_exp: Path, data: Path, f0_stats: Path, tmp_path: Path, capsys) -> None:
    def conv(items, **kw):
        return run_conversion(tiny_exp, items, tmp_path / "out", data=data, progress=False, **kw)

    with pytest.raises(SQVAEError, match=f"target speaker 'xx-q' is unknown to the model; known speakers: {SPEAKERS}"):
        conv([ConversionItem("cs-m_1", "xx-q", "a")], f0_stats=f0_stats)
    lst = tmp_path / "bad.txt"
    lst.write_text("cs-m_1 xx-q a\n")
    assert cli_main(["convert", "--exp", str(tiny_exp), "--list", str(lst), "--data", str(data), "--out",
                     str(tmp_path / "out"), "--no-progress"]) == 2
    assert f"known speakers: {SPEAKERS}" in capsys.readouterr().err
    short = tmp_path / "short.wav"
    soundfile.write(short, load_audio(data.parent / "cs-m_1.wav", SR)[:400], SR)  # 3 frames
    with pytest.raises(SQVAEError, match="3 feature frames .*at least 4"):
        conv([ConversionItem(str(short), "cs-m", "a")], f0_stats=f0_stats)
    with pytest.raises(SQVAEError, match="needs F0 statistics: pass --f0-stats"):
        conv([ConversionItem("cs-m_1", "nl-v", "a")])
    with pytest.raises(SQVAEError, match="'nope' is neither an utterance"):
        conv([ConversionItem("nope", "nl-v", "a")], f0_stats=f0_stats)
    assert not (tmp_path / "out").exists()  # everything is checked before anything is written


def test_silent_source_gives_silence(tiny_exp: Path, f0_stats: Path, tmp_path: Path) -> None:
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(SR, dtype=np.float32), SR)
    for vocoder in ("world", "griffinlim"):
        out = tmp_path / vocoder
        run_conversion(tiny_exp, [ConversionItem(str(silent), "nl-v", "s")], out, vocoder, f0_stats=f0_stats,
                       gl_iters=4, progress=False)
        wav, sr = soundfile.read(out / "s.wav", dtype="float32")
        assert sr == SR and wav.size >= SR - 160 and np.isfinite(wav).all() and not wav.any()
        assert json.loads((out / "conversion.json").read_text())["items"][0]["silent_source"]


def test_wav_is_written_atomically(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "a.wav"
    write_wav(target, np.full(800, 0.5, np.float32), SR)
    before = target.read_bytes()

    def broken(path, *args, **kwargs):
        Path(path).write_bytes(b"RIFF half a file")
        raise OSError("disk full")

    monkeypatch.setattr(soundfile, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        write_wav(target, np.zeros(800, np.float32), SR)
    assert target.read_bytes() == before and _no_temporaries(tmp_path)


def test_vocoder_check_reports_round_trip_and_f0(tiny_exp: Path, data: Path, f0_stats: Path, tmp_path: Path,
                                                 capsys) -> None:
    out = tmp_path / "check.json"
    rc = cli_main(["vocoder-check", "--data", str(data), "--per-speaker", "1", "--vocoders", "world",
                   "--exp", str(tiny_exp), "--f0-stats", str(f0_stats), "--json", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "world       dB^2 MSE" in printed and "within 1 semitone" in printed
    report = json.loads(out.read_text())
    assert report["utterances"] == ["cs-m_1", "nl-v_1"]
    (rt,) = report["round_trip"]
    assert rt["vocoder"] == "world" and 5 < rt["mse_db2"] < 60 and rt["frames"] == 2 * (1 + 2 * SR // 160 - 2)
    speaker, utterance = report["f0_conversion"]
    assert speaker["f0_norm"] == "speaker" and utterance["f0_norm"] == "utterance"
    for res in (speaker, utterance):
        assert res["items"] == 4 and res["voiced_items"] == 4
        # WORLD realizes the F0 it is asked for (the model is untrained; F0 comes from the stats)
        assert res["within_1_semitone_of_asked"] >= 0.75
    # mapped by each utterance's own statistics, every output sits at its target's median
    assert utterance["within_1_semitone_of_target"] >= 0.75
    assert cli_main(["vocoder-check", "--data", str(data), "--exp", str(tiny_exp)]) == 2
    assert "--exp needs --f0-stats" in capsys.readouterr().err


def test_png_is_written_atomically(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    from sqvae_speech.synthesis.listening import plot_spectrograms

    target = tmp_path / "a.png"
    mel = np.random.default_rng(0).uniform(0.2, 1.0, (80, 30))
    plot_spectrograms(target, [("source", mel), ("decoded", mel), ("difference", mel - mel)], diff_index=2)
    before = target.read_bytes()
    assert before[:8] == b"\x89PNG\r\n\x1a\n"

    def broken(self, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plot_spectrograms(target, [("source", mel)])
    assert target.read_bytes() == before and _no_temporaries(tmp_path)
