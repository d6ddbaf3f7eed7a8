"""Hostile names: utterance ids, speaker, experiment and file names holding markup
(``<script>``, an ``<img onerror>``), quotes, ``&``, ``../``, ``$`` or Markdown go into
the listening page, the report, model cards, output file names and zip entries as text:
escaped, or refused with an error naming them; never run, never a path out of the
output dir. The pages are opened in headless Chromium, which would run any payload that
got through: each hostile name sets ``window.__pwned`` if it runs, and a control payload
added by the test itself (``window.__control``) proves that such payloads do run there."""

from __future__ import annotations

import ast
import json
import re
import shlex
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import markdown
import numpy as np
import pytest
import soundfile
import torch
from conftest import tiny_experiment
from PIL import Image
from test_listening_page import CHECKER, checker_result, dump_dom

from sqvae_speech.checkpoint import save_checkpoint
from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.datadir import read_datadir, write_datadir
from sqvae_speech.data.featstore import write_featstore
from sqvae_speech.errors import SQVAEError
from sqvae_speech.inference.encode_files import collect_inputs
from sqvae_speech.metrics.page import write_report
from sqvae_speech.modelfile import write_model_file
from sqvae_speech.models import SpeechSQVAE
from sqvae_speech.synthesis.conversion_list import ConversionItem, make_conversion_list
from sqvae_speech.synthesis.convert import run_conversion
from sqvae_speech.synthesis.listening import PageItem, write_page
from sqvae_speech.textsafe import one_line
from sqvae_speech.zerospeech.export import ExportError, export_features
from sqvae_speech.zerospeech.submission import (
    SubmissionError,
    pack_submission,
    validate_submission,
)

SR = 16000


def _pwn(tag: str) -> str:
    return f"window.__pwned=(window.__pwned||[]).concat(['{tag}'])"


# Each runs (and records its tag in window.__pwned) if it reaches a page unescaped.
SCRIPT = f"<script>{_pwn('script')}</script>"
IMG = f'<img src=x onerror="{_pwn("img")}">'
QUOTES = f"\"'><svg onload=\"{_pwn('svg')}\">"
ATTR = f"x' onmouseover='{_pwn('attr')}' y=\""
TRAVERSAL = "../x"
AMP = "a&amp;b&lt;c>"  # must show as these 13 characters, not as "a&b<c>"
HOSTILE = (SCRIPT, IMG, QUOTES, ATTR, TRAVERSAL, AMP)

# Added by the test: proves the browser runs scripts and handlers in this setup, then
# reports (percent-encoded, so the DOM dump cannot mangle it) what ran and what is text.
CONTROL = "<img src='missing-control.png' onerror=\"window.__control=(window.__control||[]).concat(['img'])\">" \
          "<script>window.__control=(window.__control||[]).concat(['script'])</script>"
REPORTER = r"""<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var all = Array.prototype.slice.call(document.querySelectorAll("*"));
    var res = {
      pwned: window.__pwned || [], control: window.__control || [], scripts: document.scripts.length,
      handlers: all.filter(function (el) {
        return Array.prototype.some.call(el.attributes, function (a) { return /^on/i.test(a.name); });
      }).length,
      svg: document.querySelectorAll("svg").length,
      text: Array.prototype.map.call(document.querySelectorAll("title,h1,h2,th,td,p,li,div.caption"),
                                     function (el) { return el.textContent; }),
      refs: all.filter(function (el) { return el.hasAttribute("src") || el.hasAttribute("href"); })
               .map(function (el) { return el.getAttribute("src") || el.getAttribute("href"); })
    };
    var pre = document.createElement("pre");
    pre.id = "sqvae-hostile";
    pre.textContent = encodeURIComponent(JSON.stringify(res));
    document.body.appendChild(pre);
  }, 300);
});
</script>"""


def _open_hostile(page_dir: Path, tmp: Path, name: str) -> tuple[dict, dict]:
    """(what REPORTER found, what CHECKER found) for ``page_dir/name`` in Chromium."""
    r = dump_dom(page_dir, tmp, CONTROL + REPORTER + CHECKER, name)
    m = re.search(r'<pre id="sqvae-hostile">([^<]*)</pre>', r.stdout)
    assert m, f"the reporter never reported (rc {r.returncode}): {r.stderr[-2000:]}"
    res = json.loads(unquote(m.group(1)))
    assert sorted(res["control"]) == ["img", "script"], f"the control payload did not run: {res}"
    return res, checker_result(r)


def _no_payload_ran(res: dict) -> None:
    assert res["pwned"] == [], f"a hostile name ran: {res['pwned']}"
    assert res["scripts"] == 3, res  # the control, the reporter and the checker: none from the page
    assert res["handlers"] == 1 and res["svg"] == 0, res  # the control's onerror only


def _wav(path: Path, seconds: float = 0.3) -> Path:
    t = np.arange(int(seconds * SR)) / SR
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)
    return path


def test_listening_page_shows_hostile_names_as_text(tmp_path: Path) -> None:
    page = tmp_path / "page"
    page.mkdir()
    audio = _wav(page / "x\" onerror=\"alert(1) &amp; 'q'.wav")  # a file name with quotes, & and spaces
    png = page / "spec <b>&.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 16), dtype=np.uint8)).save(png, format="PNG")
    items = [PageItem(group, row, column, audio.name, png.name, caption=caption)
             for group, row, column, caption in zip(HOSTILE, reversed(HOSTILE), HOSTILE[1:] + HOSTILE[:1],
                                                   HOSTILE[2:] + HOSTILE[:2])]
    write_page(page, items, title=SCRIPT + QUOTES, notes=IMG + AMP, columns=[ATTR])
    html = (page / "index.html").read_text()
    assert "<script" not in html and "<img src=x" not in html and "<svg" not in html
    for bad in ("../x.wav", "javascript:alert(1).wav", "/etc/passwd"):  # sources stay inside the page dir
        with pytest.raises(SQVAEError, match="relative path inside"):
            write_page(page, [PageItem("g", "r", "c", bad)])
    res, media = _open_hostile(page, tmp_path, "index.html")
    _no_payload_ran(res)
    for name in HOSTILE:
        assert any(name in t for t in res["text"]), f"{name!r} is not shown as text"
    assert any(SCRIPT + QUOTES in t for t in res["text"])  # the title
    for a in media["audio"]:  # the quoted file name still names the file: it plays
        assert a["error"] is None and a["readyState"] >= 1 and a["duration"] > 0.2, a
    for i in media["img"][:-1]:  # the last one is the control's missing image
        assert i["complete"] and i["naturalWidth"] == 16, i
    for ref in res["refs"]:
        assert ":" not in ref and ".." not in ref and (ref == "missing-control.png" or (page / unquote(ref)).is_file())


def _report(tmp: Path) -> tuple[Path, dict]:
    """A report (as ``sqvae-speech report`` writes it) of two experiments in dirs with
    hostile names, one with a listening page; speakers, systems and paths hostile too."""
    names = [IMG + "\n# heading\r\n<b>", QUOTES + " $\\foo$ & `tick` | *star* [link](javascript:alert(1))"]
    exps = []
    for n, name in enumerate(names):
        exp = tmp / name
        exp.mkdir()
        (exp / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "mse_db2": 40.0 - s - n, "perplexity": 5.0 + s})
                                                   + "\n" for s in (1, 2, 3)))
        exps.append(exp)
    (exps[1] / "conversion").mkdir()
    (exps[1] / "conversion" / "index.html").write_text("<!DOCTYPE html><title>page</title>")
    speakers = [SCRIPT, ATTR]
    rows = []
    for n, (name, exp) in enumerate(zip(names, exps)):
        probe = {k: {"accuracy": 0.5, "shuffled_accuracy": 0.3, "chance": 0.5, "test_frames": 100, "speakers": speakers}
                 for k in ("z", "z_q")}
        conversion = {"vocoder": IMG, "sim_target": 0.7, "sim_source": 0.6, "closer": 1, "total": 2,
                      "closer_share": 0.5, "within_1_semitone": 0.5, "mean_abs_semitones": 1.0,
                      "page": str(exp / "conversion" / "index.html"),
                      "items": [{"name": SCRIPT, "target": speakers[0], "source_speaker": speakers[1]}]}
        rows.append({"name": name, "exp": str(exp), "variant": "gaussian_4", "step": 3,
                     "results": {"mse_db2": 40.0 + n, "used_codes": 10, "num_codes": 16},
                     "abx": None, "code_counts": [5, 3, 0, 1], "probe": probe, "units": None,
                     "conversion": conversion if n == 1 else None})
    report = {"experiments": rows, "seconds": 1.0, "resynthesis_utterances": [TRAVERSAL, AMP],
              "options": {"data": str(tmp / SCRIPT.replace("/", "")), "feats": ATTR, "vocoders": ["world"]},
              "resynthesis": [{"system": f"{name} through world", "model": name, "vocoder": "world", "utterances": 2,
                               "mean": {"mcd_db": 5.0}, "per_utterance": {}} for name in names]}
    out = tmp / "report"
    write_report(out, report)
    return out, report


class _Tags(HTMLParser):
    """Start tags and attributes of a rendered page, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _rendered_markdown(text: str) -> _Tags:
    """``text`` rendered as Python-Markdown does (raw HTML passed through), parsed; every
    tag must be one Markdown makes, with no handler and no scheme in a link."""
    parsed = _Tags()
    parsed.feed(markdown.markdown(text, extensions=["tables", "fenced_code"]))
    allowed = {"h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td", "strong", "em", "ul", "li", "a", "img",
               "code", "pre"}
    for tag, attrs in parsed.tags:
        assert tag in allowed, f"Markdown let a <{tag}> through: {attrs}"
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        for k in ("href", "src"):
            assert ":" not in (attrs.get(k) or ""), (tag, attrs)
    return parsed


def test_report_shows_hostile_names_as_text(tmp_path: Path) -> None:
    out, report = _report(tmp_path)
    res, media = _open_hostile(out, tmp_path, "report.html")
    _no_payload_ran(res)
    text = "\n".join(res["text"])
    for e in report["experiments"]:
        assert e["name"].replace("\r\n", "\n") in text, e["name"]  # as HTML reads line ends
    assert IMG in text and report["options"]["feats"] in text  # the vocoder and a path: text
    assert [i["naturalWidth"] > 100 for i in media["img"]] == [True, True, False]  # usage, curves; control
    page = [r for r in res["refs"] if r.endswith("index.html")]
    assert len(page) == 1 and ":" not in page[0] and (out / unquote(page[0])).resolve() == \
        (tmp_path / report["experiments"][1]["name"] / "conversion" / "index.html").resolve()
    # report.md: the same names, as text in any Markdown renderer; every table row keeps its cells
    md = (out / "report.md").read_text()
    assert "<" not in md
    tables = [b.splitlines() for b in md.split("\n\n") if b.startswith("|")]
    assert len(tables) == 4  # all metrics, resynthesis, probe, conversion
    for table in tables:
        cells = {len(re.findall(r"(?<!\\)\|", line)) for line in table}
        assert len(cells) == 1, table  # no name ends a cell or a row
    parsed = _rendered_markdown(md)
    assert [t for t, _ in parsed.tags if t == "h1"] == ["h1"]  # a newline in a name starts no heading
    shown = "".join(parsed.text)
    for e in report["experiments"]:
        assert one_line(e["name"]) in shown, e["name"]  # control characters as spaces
    links = [a["href"] for t, a in parsed.tags if t == "a"]
    assert len(links) == 1 and (out / unquote(links[0])).resolve() == (out / unquote(page[0])).resolve()


def _exp(path: Path, speakers: tuple[str, ...]) -> Path:
    """An experiment dir with one checkpoint (step 3) of an untrained tiny model."""
    torch.manual_seed(0)
    cfg = tiny_experiment()
    cfg = cfg.replace(model=cfg.model.replace(speakers=speakers))
    save_checkpoint(path, 3, {"config": cfg.to_dict(), "model": SpeechSQVAE(cfg.model).state_dict()}, keep=1)
    return path


def test_model_card_shows_hostile_names_as_text(tmp_path: Path) -> None:
    speakers = (SCRIPT, "a|b`c`*d*\n## x", QUOTES, "$(touch PWNED)")
    exp = _exp(tmp_path / "exp `x` <b>", speakers)
    out = tmp_path / "m \"'$(touch PWNED)`x`<i>.pt"
    write_model_file(exp, out)
    card = out.with_suffix(".md").read_text()
    parsed = _rendered_markdown(card)
    assert parsed.tags[0][0] == "h1" and sum(t == "tr" for t, _ in parsed.tags) == 9  # the table keeps its rows
    assert [t for t, _ in parsed.tags if t in ("h1", "h2")] == ["h1", "h2", "h2"]  # Evaluation, Use
    shown = "".join(parsed.text)
    for name in (*speakers, out.name, exp.name):
        assert one_line(name) in shown, name
    # the code samples quote the names: they run as written, never as other code
    code = card.split("```python\n")[1].split("```")[0]
    calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)]
    literals = [c.value for call in calls for c in [*call.args, *(k.value for k in call.keywords)]
                if isinstance(c, ast.Constant)]
    assert out.name in literals and speakers[0] in literals
    sh = card.split("```sh\n")[1].split("```")[0].strip()
    assert shlex.split(sh)[:4] == ["sqvae-speech", "encode", "--model", out.name]
    with pytest.raises(SQVAEError, match="control character"):
        write_model_file(exp, tmp_path / "new\nline.pt")
    assert not (tmp_path / "new\nline.pt").exists()


def test_utterance_ids_with_paths_never_write_outside_the_export_dir(tmp_path: Path) -> None:
    cfg = FeatureConfig()
    rng = np.random.default_rng(0)

    def mel() -> np.ndarray:
        return (rng.random((cfg.n_mels, 40)) - 1).astype(np.float32)

    exp = _exp(tmp_path / "exp", ("spk",))
    # a Kaldi data dir takes such ids (no whitespace is all it asks); they name no file there
    for utt in ("../evil", "sub/utt", SCRIPT.replace(" ", "")):
        _wav(tmp_path / "a.wav")
        dd = write_datadir(tmp_path / "data", {utt: str(tmp_path / "a.wav")}, {utt: "spk"})
        assert read_datadir(dd.path).utterances == [utt]
    store = write_featstore(tmp_path / "feats", [("../evil", "spk", mel()), ("ok", "spk", mel())], cfg)
    out = tmp_path / "out" / "export"
    with pytest.raises(ExportError, match=r"utterance ids of .*output name '\.\./evil' of '\.\./evil' must be a "
                                          r"relative path without '\.\.'"):
        export_features(exp, store.path, out, progress=False)
    assert not (tmp_path / "out" / "evil.txt").exists() and not (out / "export.json").exists()
    # '/' is a sub-folder of the output (ZeroSpeech names are paths): inside it, as written
    store = write_featstore(tmp_path / "feats2", [("sub/utt", "spk", mel()), ("<b>&'", "spk", mel())], cfg)
    summary = export_features(exp, store.path, out, progress=False)
    assert summary.written == 2 and (out / "sub" / "utt.txt").is_file() and (out / "<b>&'.txt").is_file()
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.joinpath("out").rglob("*")
                     if p.is_file() and p.name != ".lock")
    assert written == ["out/export/<b>&'.txt", "out/export/export.json", "out/export/sub/utt.txt"]


def test_conversion_outputs_are_plain_names_inside_the_output_dir(tmp_path: Path) -> None:
    wav = _wav(tmp_path / "a.wav", 2.0)
    utts = {"../../evil": "../spk", "a/b": SCRIPT.replace(" ", ""), "<img>": "../spk", "ok": "ok"}
    dd = write_datadir(tmp_path / "data", {u: str(wav) for u in utts}, utts)
    items = make_conversion_list(dd, per_speaker=2, min_seconds=0.1)
    names = [it.name for it in items]
    assert len(set(names)) == len(items) == 4 * 3
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", n) for n in names), names
    # a list (or an API caller) naming outputs by paths or markup is refused before anything is written
    out = tmp_path / "conv"
    for name in ("../evil", "a/b", "<script>", "", "conversion"):
        with pytest.raises(SQVAEError, match=r"row 1: output name .* must be a plain file stem"):
            run_conversion(tmp_path / "no-exp", [ConversionItem("ok", "ok", name)], out, progress=False)
    with pytest.raises(SQVAEError, match="output name 'x' already used by row 1"):
        run_conversion(tmp_path / "no-exp", [ConversionItem("ok", "ok", "x")] * 2, out, progress=False)
    assert not out.exists() and not (tmp_path / "evil.wav").exists()


def test_encode_output_names_with_dot_dot_are_refused(tmp_path: Path) -> None:
    wav = _wav(tmp_path / "a.wav")
    for name in ("../evil", "a/../../evil", "/abs/evil"):
        lst = tmp_path / "list.txt"
        lst.write_text(f"{name} {wav}\n")
        with pytest.raises(SQVAEError, match=rf"list.txt line 1: output name '{re.escape(name)}' must be a relative "
                                             r"path without '\.\.'"):
            collect_inputs([], [lst])
    lst.write_text(f"sub/<b>&'\"x {wav}\n")  # a sub-folder and markup: a name inside the output dir
    assert collect_inputs([], [lst]) == {"sub/<b>&'\"x": str(wav)}


def _submission(root: Path) -> Path:
    sub = root / "sub"
    (sub / "english" / "test").mkdir(parents=True)
    (sub / "code").mkdir()
    (sub / "metadata.yaml").write_text("author: x\n")
    (sub / "code" / "README.md").write_text("code\n")
    (sub / "english" / "test" / "S001_1.txt").write_text("0 1\n")
    return sub


def test_submission_zip_holds_only_plain_entries_of_its_own_files(tmp_path: Path) -> None:
    sub = _submission(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the zip\n")
    zip_path = tmp_path / "sub.zip"
    link = sub / "english" / "test" / "S001_2.txt"
    link.symlink_to(secret)
    with pytest.raises(SubmissionError, match=r"S001_2\.txt is a symbolic link .* copy the file there"):
        pack_submission(sub, zip_path)
    link.unlink()
    (sub / "code" / "docs").symlink_to(tmp_path, target_is_directory=True)  # a linked folder: not followed
    (sub / "code" / "linked.md").symlink_to(secret)
    with pytest.raises(SubmissionError, match=r"linked\.md is a symbolic link"):
        pack_submission(sub, zip_path)
    (sub / "code" / "linked.md").unlink()
    odd = sub / "english" / "test" / "S001_9\\..\\..\\evil.txt"  # one file name on Linux; a path on Windows
    odd.write_text("0 1\n")
    with pytest.raises(SubmissionError, match=r"holds a backslash; rename the file"):
        pack_submission(sub, zip_path)
    odd.unlink()
    assert not zip_path.exists()
    assert pack_submission(sub, zip_path) == 3
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
    assert sorted(names) == ["code/README.md", "english/test/S001_1.txt", "metadata.yaml"]


def test_submission_check_never_unpacks_entries_outside_its_folder(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("metadata.yaml", "author: x\n")
        z.writestr("../evil.txt", "x")
        z.writestr("/abs.txt", "x")
        z.writestr("english\\..\\..\\win.txt", "x")
    problems = validate_submission(bad)
    assert [p.code for p in problems] == ["unsafe-entry"]
    assert "'../evil.txt' (a '..' part)" in problems[0].message and "'/abs.txt' (an absolute path)" in problems[0].message
    assert "(a backslash)" in problems[0].message
    assert not (tmp_path.parent / "evil.txt").exists() and not Path("/abs.txt").exists()
