"""The listening page: structure, relative paths, and a real browser (headless Chromium)
loading every <audio> and <img> of a conversion page built from real speech."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import tiny_experiment

from sqvae_speech.data.audio import load_audio
from sqvae_speech.errors import SQVAEError
from sqvae_speech.synthesis.conversion_list import ConversionItem
from sqvae_speech.synthesis.convert import run_conversion
from sqvae_speech.synthesis.listening import PageItem, render_page, write_page
from sqvae_speech.train import train

SR = 16000
INSTALL_HINT = "run tools/install_chromium.sh (as root) or make test"

# Injected into a *copy* of the page (the real page has no script): once the page has
# loaded, wait until every <audio> has its metadata or an error, then write what each
# element reports into the DOM, which --dump-dom prints.
CHECKER = r"""<script>
(function () {
  function report() {
    var res = {audio: [], img: []};
    document.querySelectorAll("audio").forEach(function (a) {
      res.audio.push({src: a.getAttribute("src"), readyState: a.readyState,
                      duration: isFinite(a.duration) ? a.duration : -1, error: a.error ? a.error.code : null});
    });
    document.querySelectorAll("img").forEach(function (i) {
      res.img.push({src: i.getAttribute("src"), complete: i.complete, naturalWidth: i.naturalWidth});
    });
    var pre = document.createElement("pre");
    pre.id = "sqvae-check";
    pre.textContent = JSON.stringify(res);
    document.body.appendChild(pre);
  }
  window.addEventListener("load", function () {
    var audios = Array.prototype.slice.call(document.querySelectorAll("audio"));
    var pending = audios.length;
    if (!pending) { report(); return; }
    audios.forEach(function (a) {
      var settled = false;
      function settle() { if (!settled) { settled = true; if (--pending === 0) report(); } }
      if (a.readyState >= 1 || a.error) { settle(); return; }
      a.addEventListener("loadedmetadata", settle);
      a.addEventListener("error", settle);
      a.load();
    });
  });
})();
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"headless Chromium is needed to test the listening page: {INSTALL_HINT}")


def dump_dom(page_dir: Path, tmp: Path, extra_html: str = "", name: str = "index.html") -> subprocess.CompletedProcess:
    """Open a copy of ``page_dir/name`` with ``extra_html`` added at the end of its body in
    headless Chromium; its DOM once loaded (``stdout``)."""
    copy = page_dir / f"{Path(name).stem}.check.html"
    html = (page_dir / name).read_text(encoding="utf-8")
    assert html.count("</body>") == 1, "the page must end its body once"
    copy.write_text(html.replace("</body>", extra_html + "</body>"), encoding="utf-8")
    try:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp / 'chromium-profile'}", "--autoplay-policy=no-user-gesture-required",
               "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()]
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    finally:
        copy.unlink()


def checker_result(r: subprocess.CompletedProcess) -> dict:
    """What :data:`CHECKER` wrote into a dumped DOM."""
    m = re.search(r'<pre id="sqvae-check">(.*?)</pre>', r.stdout, re.DOTALL)
    assert m, f"the checker never reported (rc {r.returncode}): {r.stderr[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def browser_check(page_dir: Path, tmp: Path, extra_html: str = "", name: str = "index.html") -> dict:
    """Open a checker copy of ``page_dir/name`` in headless Chromium; what it reports."""
    return checker_result(dump_dom(page_dir, tmp, extra_html + CHECKER, name))


@pytest.fixture(scope="module")
def page(real_featstore, speech_files, tmp_path_factory) -> Path:
    """A WORLD conversion page from real speech: 2 sources (a cs-m and an nl-v clip given
    as audio files) x 2 target speakers, decoded by a tiny trained model."""
    root = tmp_path_factory.mktemp("page")
    exp = root / "exp"
    train(tiny_experiment(steps=4, checkpoint_every=4), real_featstore.path, exp, progress=False)
    sources = []
    for spk in ("cs-m", "nl-v"):
        path = root / f"{spk}.wav"
        soundfile.write(path, load_audio(speech_files[spk][2], SR)[: int(1.5 * SR)], SR)
        sources.append(path)
    items = [ConversionItem(str(s), t, f"{s.stem}__to__{t}") for s in sources for t in ("cs-v", "nl-m")]
    # wav-path sources have no speaker: F0 is mapped from each utterance's own statistics
    stats = root / "f0.json"
    stats.write_text(json.dumps({
        "format": "sqvae-f0-stats", "version": 1, "method": "harvest", "f0_floor": 50.0, "f0_ceil": 600.0,
        "sample_rate": SR, "hop_length": 160, "data": "", "failed": {},
        "speakers": {"cs-v": {"mean_log_f0": 4.85, "std_log_f0": 0.2, "median_f0_hz": 124.0, "voiced_frames": 100,
                              "frames": 200, "utterances": 3},
                     "nl-m": {"mean_log_f0": 5.33, "std_log_f0": 0.2, "median_f0_hz": 202.0, "voiced_frames": 100,
                              "frames": 200, "utterances": 3}}}))
    run_conversion(exp, items, root / "conv", "world", f0_stats=stats, progress=False)
    return root / "conv"


def test_page_loads_in_a_browser(page: Path, tmp_path: Path) -> None:
    html = (page / "index.html").read_text()
    audio_src = re.findall(r'<audio [^>]*src="([^"]+)"', html)
    img_src = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(audio_src) == 2 * (2 + 2) and len(img_src) == 2 * (1 + 2)
    res = browser_check(page, tmp_path)
    assert [a["src"] for a in res["audio"]] == audio_src
    for a in res["audio"]:
        assert a["error"] is None and a["readyState"] >= 1 and 1.0 < a["duration"] < 2.0, a
    assert [i["src"] for i in res["img"]] == img_src
    for i in res["img"]:
        assert i["complete"] and i["naturalWidth"] > 100, i


def test_the_browser_check_catches_broken_media(page: Path, tmp_path: Path) -> None:
    (page / "broken.wav").write_bytes(b"RIFF but not audio at all")
    try:
        res = browser_check(page, tmp_path, '<audio src="broken.wav"></audio><audio src="gone.wav"></audio>'
                                            '<img src="gone.png">')
    finally:
        (page / "broken.wav").unlink()
    bad = {a["src"]: a for a in res["audio"][-2:]}
    assert all(a["error"] is not None and a["readyState"] == 0 for a in bad.values()), bad
    assert res["img"][-1]["naturalWidth"] == 0


def test_every_wav_of_the_page_is_16khz_speech(page: Path) -> None:
    html = (page / "index.html").read_text()
    wavs = re.findall(r'<audio [^>]*src="([^"]+)"', html)
    for rel in wavs:
        wav, sr = soundfile.read(page / rel, dtype="float32")
        assert sr == SR and wav.ndim == 1 and np.isfinite(wav).all(), rel
        assert 0.02 < np.abs(wav).max() <= 0.995 and np.sqrt(np.mean(wav**2)) > 1e-3, rel


def test_page_is_self_contained(page: Path) -> None:
    html = (page / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(not r.startswith(("/", "http:", "https:", "file:")) and ".." not in r for r in refs)
    assert "<script" not in html and "<link" not in html
    # the page and its files can move together
    moved = page.parent / "moved"
    shutil.copytree(page, moved)
    assert all((moved / r).is_file() for r in refs)


def test_write_page_checks_paths_and_escapes(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "a b.wav", np.zeros(160, np.float32), SR)
    item = PageItem("<grp>", "row&1", "col", "a b.wav", caption='say "hi"')
    write_page(tmp_path, [item], title="T<1>")
    html = (tmp_path / "index.html").read_text()
    assert "&lt;grp&gt;" in html and "row&amp;1" in html and 'src="a%20b.wav"' in html and "T&lt;1&gt;" in html
    for bad in ("/etc/passwd", "../a b.wav", "missing.wav"):
        with pytest.raises(SQVAEError, match="relative path inside|does not exist"):
            write_page(tmp_path, [PageItem("g", "r", "c", bad)])
    with pytest.raises(SQVAEError, match="no items"):
        write_page(tmp_path, [])
    # columns: the ones asked for first, in that order
    html = render_page([PageItem("g", "r", "x", "a"), PageItem("g", "r", "y", "b")], "t", columns=["y"])
    assert html.index("<th>y</th>") < html.index("<th>x</th>")
