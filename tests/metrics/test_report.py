"""``sqvae-speech report`` on two tiny models trained on real speech: every section is
filled, the pages agree with report.json and with the listening page, and the HTML's
images load in a real browser. Bad input: tests/faults/test_report_inputs.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from report_setup import SPEAKERS, build_report_setup, report_args
from test_listening_page import browser_check

from sqvae_speech.cli import main


@pytest.fixture(scope="module")
def setup(real_featstore, speech_files, tmp_path_factory) -> dict[str, Path]:
    return build_report_setup(tmp_path_factory.mktemp("report"), real_featstore, speech_files)


@pytest.fixture(scope="module")
def report(setup: dict[str, Path], tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "report"
    assert main(report_args(setup, out)) == 0
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
    assert systems == ["world (vocoder only)", "griffinlim (vocoder only)", "gaussian_4 through world",
                       "gaussian_4 through griffinlim", "vqvae_ema through world", "vqvae_ema through griffinlim"]
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
