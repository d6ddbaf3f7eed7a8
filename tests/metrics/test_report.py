"""``sqvae-speech report`` on two tiny models trained on real speech: every section is
filled, the pages agree with report.json, the HTML's images load in a real browser, and
bad input (missing or uncovering alignment, a speaker without held-out audio, an
experiment without results) is a one-line error with exit 2."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import tiny_experiment
from test_listening_page import browser_check

from sqvae_speech.cli import main
from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.audio import load_audio
from sqvae_speech.data.datadir import write_datadir
from sqvae_speech.data.featstore import write_featstore
from sqvae_speech.data.features import logmel
from sqvae_speech.evaluate import evaluate
from sqvae_speech.synthesis.conversion_list import ConversionItem
from sqvae_speech.synthesis.convert import run_conversion
from sqvae_speech.train import train

SR = 16000
SPEAKERS = ("cs-m", "cs-v", "nl-m", "nl-v")
PHONES = ("sil", "a", "b", "c")


def _stats(path: Path) -> Path:
    """F0 statistics of the four speakers (the conversions' target register)."""
    spk = {s: {"mean_log_f0": float(np.log(m)), "std_log_f0": 0.2, "median_f0_hz": m, "voiced_frames": 100,
               "frames": 200, "utterances": 3} for s, m in zip(SPEAKERS, (110.0, 220.0, 120.0, 210.0))}
    path.write_text(json.dumps({"format": "sqvae-f0-stats", "version": 1, "method": "harvest", "f0_floor": 50.0,
                                "f0_ceil": 600.0, "sample_rate": SR, "hop_length": 160, "data": "", "failed": {},
                                "speakers": spk}))
    return path


@pytest.fixture(scope="module")
def setup(real_featstore, speech_files, tmp_path_factory) -> dict[str, Path]:
    """Held-out data (3 clips of 1.5 s per speaker, audio + features + a phone alignment
    in 100 ms segments), two tiny models (gaussian_4, vqvae_ema) evaluated on it, and a
    WORLD conversion by the first."""
    root = tmp_path_factory.mktemp("report")
    cfg = FeatureConfig()
    wav_scp, utt2spk, items, ctm = {}, {}, [], []
    for spk in SPEAKERS:
        for i, f in enumerate(speech_files[spk][3:6]):
            utt = f"{spk}_{i}"
            wav = load_audio(f, SR)[: int(1.5 * SR)]
            soundfile.write(root / f"{utt}.wav", wav, SR)
            wav_scp[utt], utt2spk[utt] = str(root / f"{utt}.wav"), spk
            items.append((utt, spk, logmel(wav, SR, cfg)))
            dur = wav.size / SR
            ctm += [f"{utt} 1 {t:.3f} {min(0.1, dur - t):.3f} {PHONES[k % 4]}\n"
                    for k, t in enumerate(np.arange(0, dur, 0.1))]
    write_datadir(root / "data", wav_scp, utt2spk)
    write_featstore(root / "feats", sorted(items), cfg)
    (root / "phones.ctm").write_text("".join(ctm))
    exps = {}
    for variant in ("gaussian_4", "vqvae_ema"):
        exp = root / variant
        cfg_v = tiny_experiment(steps=4, checkpoint_every=4)
        cfg_v = cfg_v.replace(model=cfg_v.model.replace(variant=variant))
        train(cfg_v, real_featstore.path, exp, progress=False)
        evaluate(exp, root / "feats", progress=False)
        exps[variant] = exp
    conv = [ConversionItem(src, tgt, f"{src}__to__{tgt}") for src in ("cs-m_0", "nl-v_0") for tgt in ("cs-v", "nl-m")]
    run_conversion(exps["gaussian_4"], conv, exps["gaussian_4"] / "conversion", "world", feats=root / "feats",
                   data=root / "data", f0_stats=_stats(root / "f0.json"), progress=False, f0_norm="utterance",
                   similarity_data=root / "data")
    return {"root": root, **exps}


def _args(s: dict[str, Path], out: Path, *extra: str) -> list[str]:
    root = s["root"]
    return ["report", str(s["gaussian_4"]), str(s["vqvae_ema"]), "--out", str(out), "--data", str(root / "data"),
            "--feats", str(root / "feats"), "--phone-feats", str(root / "feats"), "--alignment",
            str(root / "phones.ctm"), "--f0-stats", str(root / "f0.json"), "--resynth-utts", "4", "--gl-iters", "4",
            "--ref-per-speaker", "3", "--nj", "1", "--no-progress", *extra]


@pytest.fixture(scope="module")
def report(setup: dict[str, Path], tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "report"
    assert main(_args(setup, out)) == 0
    return out


def test_every_section_is_filled(report: Path) -> None:
    r = json.loads((report / "report.json").read_text())
    g, v = r["experiments"]
    assert (g["variant"], v["variant"]) == ("gaussian_4", "vqvae_ema") and g["step"] == 4
    for e in (g, v):
        assert e["results"]["num_utterances"] == 12
        assert 0 <= e["units"]["pnmi"] <= 1 and 0 < e["units"]["phone_purity"] <= 1
        assert e["units"]["num_phones"] == 4 and e["units"]["frames"] > 500
        assert sum(e["code_counts"]) == e["units"]["frames"] + e["units"]["unlabelled_frames"]
        for kind in ("z", "z_q"):
            p = e["probe"][kind]
            assert 0 <= p["accuracy"] <= 1 and p["chance"] == pytest.approx(0.25, abs=0.05)
            assert sorted(p["speakers"]) == list(SPEAKERS)
    # conversions by the first model only: 2 sources x 2 targets, minus the reconstructions (none here)
    c = g["conversion"]
    assert v["conversion"] is None and c["total"] == 4 and 0 <= c["closer"] <= 4
    assert -1 <= c["sim_target"] <= 1 and -1 <= c["sim_source"] <= 1
    assert all(it["semitones_from_target"] is not None for it in c["items"])
    # resynthesis: each vocoder alone, then each model through each vocoder, on one utterance per speaker
    systems = [row["system"] for row in r["resynthesis"]]
    assert systems == ["world (vocoder only)", "griffinlim (vocoder only)", "gaussian_4 -> world",
                       "gaussian_4 -> griffinlim", "vqvae_ema -> world", "vqvae_ema -> griffinlim"]
    assert len(r["resynthesis_utterances"]) == 4
    world_alone = r["resynthesis"][0]["mean"]
    assert world_alone["pesq_wb"] > r["resynthesis"][2]["mean"]["pesq_wb"]  # a 4-step model is far worse
    for row in r["resynthesis"]:
        assert row["utterances"] == 4 and set(row["per_utterance"]) == set(r["resynthesis_utterances"])
        m = row["mean"]
        assert 1.0 <= m["pesq_wb"] <= 4.64 and 0 <= m["stoi"] <= 1 and m["mcd_db"] > 0 and 0 <= m["vuv_error"] <= 1


def test_the_listening_page_shows_the_same_similarity(report: Path, setup: dict[str, Path]) -> None:
    """convert --similarity scores each output as the report does, and the page shows it."""
    conv = setup["gaussian_4"] / "conversion"
    manifest = {m["name"]: m for m in json.loads((conv / "conversion.json").read_text())["items"]}
    page = (conv / "index.html").read_text()
    r = json.loads((report / "report.json").read_text())
    for it in r["experiments"][0]["conversion"]["items"]:
        sim = manifest[it["name"]]["similarity"]
        assert sim[it["target"]] == pytest.approx(it["sim_target"], abs=1e-4)
        assert sim[it["source_speaker"]] == pytest.approx(it["sim_source"], abs=1e-4)
        assert f"{sim[it['target']]:.2f} like {it['target']}" in page
    closer = r["experiments"][0]["conversion"]["closer"]
    assert f"{closer} of 4 conversions are closer to their target" in page


def test_seed_table_gives_mean_and_std() -> None:
    from sqvae_speech.metrics.page import seed_table

    def exp(name: str, mse: float, share: float | None) -> dict:
        return {"name": name, "results": {"mse_db2": mse, "used_codes": 10},
                "conversion": None if share is None else {"closer_share": share}}

    rep = {"experiments": [exp("a_seed0", 70.0, 0.5), exp("a_seed1", 74.0, 1.0), exp("b", 60.0, None),
                           exp("c_seed0", 80.0, None), exp("c_seed2", 82.0, None)]}
    header, rows = seed_table(rep)
    assert header[:4] == ["setup", "seeds", "dB^2 MSE", "codes used"]
    a = dict(zip(header, rows[0]))
    assert a["setup"] == "a" and a["seeds"] == "2" and a["dB^2 MSE"] == "72.00 +- 2.83"
    assert a["closer to target"] == "0.75 +- 0.35" and a["PNMI"] == "n/a"
    assert [r[0] for r in rows] == ["a", "c"]  # "b" has no seeds


def test_pages_agree_with_the_numbers(report: Path) -> None:
    r = json.loads((report / "report.json").read_text())
    md = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    g = r["experiments"][0]
    assert f"| PNMI | {g['units']['pnmi']:.3f}" in md.replace("**", "")
    assert f"{g['conversion']['closer']}/4" in md and f"{g['conversion']['closer']}/4" in html
    assert md.count("\n| ") > 40  # the summary, resynthesis, probe and conversion tables
    link = re.search(r"\]\(([^)]*conversion/index\.html)\)", md).group(1)
    assert (report / link).resolve() == (Path(g["exp"]) / "conversion" / "index.html").resolve()
    for name in ("usage.png", "curves.png", "phones_gaussian_4.png", "phones_vqvae_ema.png"):
        assert (report / name).stat().st_size > 5000 and f"src='{name}'" in html and f"]({name})" in md


def test_html_images_load_in_a_browser(report: Path, tmp_path: Path) -> None:
    res = browser_check(report, tmp_path, name="report.html")
    assert len(res["img"]) == 4
    for i in res["img"]:
        assert i["complete"] and i["naturalWidth"] > 100, i


def _fails(args: list[str], capsys, *words: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sqvae-speech report: error:") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err


def test_bad_input_is_a_clear_error(setup: dict[str, Path], tmp_path: Path, capsys) -> None:
    root = setup["root"]
    out = tmp_path / "out"
    # a missing alignment
    args = _args(setup, out)
    args[args.index("--alignment") + 1] = str(tmp_path / "none.ctm")
    _fails(args, capsys, "none.ctm", "does not exist", "flite-abx-set")
    # an alignment that does not cover an utterance
    lines = (root / "phones.ctm").read_text().splitlines(keepends=True)
    partial = tmp_path / "partial.ctm"
    partial.write_text("".join(ln for ln in lines if not ln.startswith("nl-m_1 ")))
    args[args.index("--alignment") + 1] = str(partial)
    _fails(args, capsys, "partial.ctm", "nl-m_1")
    # --phone-feats without --alignment
    args = _args(setup, out)
    del args[args.index("--alignment"): args.index("--alignment") + 2]
    _fails(args, capsys, "--phone-feats and --alignment")
    # an experiment without results
    bare = tmp_path / "bare"
    shutil.copytree(setup["vqvae_ema"], bare, ignore=shutil.ignore_patterns("results.json"))
    args = _args(setup, out)
    args[2] = str(bare)
    _fails(args, capsys, "bare has no results.json", "sqvae-speech evaluate")
    # a conversion target without held-out audio: the held-out set of cs-m and cs-v only
    # (the first model converted to cs-v and nl-m)
    cfg = FeatureConfig()
    wav_scp, utt2spk, items = {}, {}, []
    for spk in ("cs-m", "cs-v", "nl-v"):
        for i in range(3):
            utt = f"{spk}_{i}"
            wav_scp[utt], utt2spk[utt] = str(root / f"{utt}.wav"), spk
            items.append((utt, spk, logmel(load_audio(root / f"{utt}.wav", SR), SR, cfg)))
    write_datadir(tmp_path / "data3", wav_scp, utt2spk)
    write_featstore(tmp_path / "feats3", sorted(items), cfg)
    args = _args(setup, out)
    args[args.index("--data") + 1] = str(tmp_path / "data3")
    args[args.index("--feats") + 1] = str(tmp_path / "feats3")
    del args[args.index("--phone-feats"): args.index("--phone-feats") + 4]
    _fails(args, capsys, "speaker 'nl-m' has no held-out recording", "data3")
    assert not (out / "report.json").exists()
