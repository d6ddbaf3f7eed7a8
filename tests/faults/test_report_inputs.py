"""``sqvae-speech report`` on bad input: one line naming the file, utterance or speaker at
fault, exit 2, and no report written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from report_setup import SR, build_report_setup, report_args

from sqvae_speech.cli import main
from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.audio import load_audio
from sqvae_speech.data.datadir import write_datadir
from sqvae_speech.data.featstore import write_featstore
from sqvae_speech.data.features import logmel


@pytest.fixture(scope="module")
def setup(real_featstore, speech_files, tmp_path_factory) -> dict[str, Path]:
    return build_report_setup(tmp_path_factory.mktemp("report"), real_featstore, speech_files)


def _fails(args: list[str], capsys, out: Path, *words: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sqvae-speech report: error:") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    assert not (out / "report.json").exists() and not (out / "report.html").exists()


def test_report_missing_alignment(setup, tmp_path, capsys) -> None:
    args = report_args(setup, tmp_path / "out")
    args[args.index("--alignment") + 1] = str(tmp_path / "none.ctm")
    _fails(args, capsys, tmp_path / "out", "none.ctm", "does not exist", "flite-abx-set")


def test_report_alignment_missing_an_utterance(setup, tmp_path, capsys) -> None:
    lines = (setup["root"] / "phones.ctm").read_text().splitlines(keepends=True)
    partial = tmp_path / "partial.ctm"
    partial.write_text("".join(ln for ln in lines if not ln.startswith("nl-m_1 ")))
    args = report_args(setup, tmp_path / "out")
    args[args.index("--alignment") + 1] = str(partial)
    _fails(args, capsys, tmp_path / "out", "partial.ctm", "nl-m_1")


def test_report_phone_feats_without_alignment(setup, tmp_path, capsys) -> None:
    args = report_args(setup, tmp_path / "out")
    del args[args.index("--alignment"): args.index("--alignment") + 2]
    _fails(args, capsys, tmp_path / "out", "--phone-feats and --alignment")


def test_report_experiment_without_results(setup, tmp_path, capsys) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(setup["vqvae_ema"], bare, ignore=shutil.ignore_patterns("results.json"))
    args = report_args(setup, tmp_path / "out")
    args[2] = str(bare)
    _fails(args, capsys, tmp_path / "out", "bare has no results.json", "sqvae-speech evaluate")


def test_report_speaker_without_heldout_audio(setup, tmp_path, capsys) -> None:
    """The first model converted to cs-v and nl-m; the held-out set here has no nl-m."""
    root, cfg = setup["root"], FeatureConfig()
    wav_scp, utt2spk, items = {}, {}, []
    for spk in ("cs-m", "cs-v", "nl-v"):
        for i in range(3):
            utt = f"{spk}_{i}"
            wav_scp[utt], utt2spk[utt] = str(root / f"{utt}.wav"), spk
            items.append((utt, spk, logmel(load_audio(root / f"{utt}.wav", SR), SR, cfg)))
    write_datadir(tmp_path / "data3", wav_scp, utt2spk)
    write_featstore(tmp_path / "feats3", sorted(items), cfg)
    args = report_args(setup, tmp_path / "out")
    args[args.index("--data") + 1] = str(tmp_path / "data3")
    args[args.index("--feats") + 1] = str(tmp_path / "feats3")
    del args[args.index("--phone-feats"): args.index("--phone-feats") + 4]
    _fails(args, capsys, tmp_path / "out", "speaker 'nl-m' has no held-out recording", "data3")
