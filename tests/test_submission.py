"""``sqvae-speech submission``: a ZeroSpeech 2019 submission written with a tiny trained
model on a corpus tree in the real layout (english/synthesis.txt included), accepted by the
validator; and the ways a submission goes wrong, each failing with its named problem."""

from __future__ import annotations

import json
import shutil
import wave
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml
from conftest import tiny_experiment
from corpus_trees import make_zerospeech2019, reference_eval_items, voice_clips

from sqvae_speech.cli import main as cli_main
from sqvae_speech.config import FeatureConfig
from sqvae_speech.corpora import zerospeech2019 as zs
from sqvae_speech.data.audio import load_audio
from sqvae_speech.data.datadir import write_datadir
from sqvae_speech.data.featstore import write_featstore
from sqvae_speech.data.features import logmel
from sqvae_speech.errors import SQVAEError
from sqvae_speech.synthesis.f0 import compute_f0_stats, write_f0_stats
from sqvae_speech.train import train
from sqvae_speech.zerospeech.export import export_features
from sqvae_speech.zerospeech.submission import (
    Metadata,
    SubmissionError,
    check_submission,
    corpus_test_names,
    read_synthesis_list,
    validate_submission,
    write_submission,
)
from sqvae_speech.zerospeech.submission_check import frame_width

SHORT = "S003_0000000001"  # 20 ms: prepare and export leave it out, the submission encodes it


@pytest.fixture(scope="module")
def corpus(sound_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_zerospeech2019(tmp_path_factory.mktemp("zs2019"), sound_dir, reference_eval_items(1),
                               per_speaker=3)
    wav = load_audio(voice_clips(sound_dir, "cs-m", 1)[0], 16000)[:320]
    soundfile.write(root / "english" / "test" / f"{SHORT}.wav", wav, 16000, subtype="PCM_16")
    return root


def _store(path: Path, wavs: list[Path]):
    cfg = FeatureConfig()
    items = [(zs.parse_name(w)[1], zs.parse_name(w)[0], logmel(load_audio(w, 16000), 16000, cfg)) for w in wavs]
    return write_featstore(path, sorted(items), cfg)


@pytest.fixture(scope="module")
def model(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model trained on the tree's english/train (S015, S020, V001, V002), the test
    features (without the 20-ms file, as stage 2 would) and V001 / V002 F0 statistics."""
    tmp = tmp_path_factory.mktemp("model")
    train_wavs = sorted((corpus / "english" / "train").glob("*/*.wav"))
    store = _store(tmp / "feats_train", train_wavs)
    train(tiny_experiment(steps=4, checkpoint_every=4), store.path, tmp / "exp", progress=False)
    tests = [w for w in sorted((corpus / "english" / "test").glob("*.wav")) if w.stem != SHORT]
    voices = [w for w in train_wavs if w.name.startswith("V")]
    write_datadir(tmp / "voices", {w.stem: str(w) for w in voices}, {w.stem: w.name[:4] for w in voices})
    write_f0_stats(tmp / "f0.json", compute_f0_stats(tmp / "voices", method="dio", progress=False))
    return {"exp": tmp / "exp", "test_feats": _store(tmp / "feats_test", tests).path, "f0": tmp / "f0.json"}


def _export(model: dict[str, Path], out: Path) -> None:
    for kind, d in (("quantized", "test"), ("auxiliary", "auxiliary_embedding1")):
        export_features(model["exp"], model["test_feats"], out / "english" / d, kind, progress=False)


@pytest.fixture(scope="module")
def submission(corpus: Path, model: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("submission")
    _export(model, tmp / "submission")
    summary = write_submission(model["exp"], corpus, tmp / "submission", tmp / "submission.zip",
                               Metadata(author="A. Author", affiliation="A Lab"), "world", model["f0"],
                               progress=False, command="sqvae-speech submission ...")
    return summary


def test_synthesis_list_and_test_files(corpus: Path) -> None:
    items = read_synthesis_list(corpus)
    assert [(it.source.name[:4], it.voice, it.output[:5]) for it in items] == [("S002", "V001", "V001_"),
                                                                              ("S003", "V002", "V002_")]
    assert all(it.output.split("_")[1] == it.source.name.split("_")[1] for it in items)
    assert len(corpus_test_names(corpus)) == 5 and SHORT in corpus_test_names(corpus / "english")


def test_written_submission_is_valid(submission, corpus: Path) -> None:
    s = submission
    assert s.problems == [] and (s.synthesized, s.skipped_existing, s.encoded) == (2, 0, 1)
    names = corpus_test_names(corpus)
    wavs = [it.output for it in read_synthesis_list(corpus)]
    with zipfile.ZipFile(s.zip_path) as z:
        listed = sorted(z.namelist())
    assert listed == sorted(["metadata.yaml", "code/README.md"] + [f"english/test/{n}.txt" for n in names]
                            + [f"english/test/{w}" for w in wavs]
                            + [f"english/auxiliary_embedding1/{n}.txt" for n in names])
    assert validate_submission(s.zip_path, corpus) == [] and validate_submission(s.out_dir, corpus) == []
    check_submission(s.zip_path, corpus)
    # the synthesized speech: 16-bit 16 kHz, as long as its source (to a hop)
    for it in read_synthesis_list(corpus):
        with wave.open(str(s.out_dir / "english" / "test" / it.output)) as w:
            assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (16000, 2, 1)
            assert abs(w.getnframes() - soundfile.info(it.source).frames) <= 2 * 160
    # the 20-ms file: one frame of z_q and of z, D = 8 (tiny config), like the exported ones
    for d in ("test", "auxiliary_embedding1"):
        assert np.loadtxt(s.out_dir / "english" / d / f"{SHORT}.txt", ndmin=2).shape == (1, 8)
        assert {frame_width(p, p.name)[0] for p in (s.out_dir / "english" / d).glob("*.txt")} == {8}
    meta = yaml.safe_load((s.out_dir / "metadata.yaml").read_text())
    assert list(meta) == ["author", "affiliation", "open source", "abx distance", "system description",
                          "hyperparameters", "using parallel train", "using external data", "auxiliary1 description"]
    assert (meta["author"], meta["open source"], meta["abx distance"]) == ("A. Author", True, "dtw_cosine")
    assert meta["hyperparameters"]["quantizer"]["num_embeddings"] == 16 and "V001 or V002" in meta["system description"]
    assert "sqvae-speech" in (s.out_dir / "code" / "README.md").read_text()


def test_rerun_keeps_written_files(submission, corpus: Path, model: dict[str, Path]) -> None:
    wav = submission.out_dir / "english" / "test" / read_synthesis_list(corpus)[0].output
    before = wav.stat().st_mtime_ns
    again = write_submission(model["exp"], corpus, submission.out_dir, submission.zip_path, vocoder="world",
                             f0_stats=model["f0"], progress=False)
    assert (again.synthesized, again.skipped_existing, again.encoded, again.problems) == (0, 2, 0, [])
    assert wav.stat().st_mtime_ns == before


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _edit_frames(rel: str, edit: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / rel
        path.write_text("\n".join(edit(_lines(path))) + "\n")
    return apply


def _edit_meta(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        meta = yaml.safe_load((root / "metadata.yaml").read_text())
        edit(meta)
        (root / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return apply


def _nest(root: Path, name: str) -> None:
    """Everything of ``root`` moved into ``root/name``."""
    entries = sorted(root.iterdir())
    (root / name).mkdir()
    for p in entries:
        p.rename(root / name / p.name)


BROKEN: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (mutation, problem code, text the message holds)
    "missing txt": (lambda r: (r / "english/test" / f"{SHORT}.txt").unlink(), "missing-file",
                    f"english/test/{SHORT}.txt is missing"),
    "missing auxiliary txt": (lambda r: (r / "english/auxiliary_embedding1" / f"{SHORT}.txt").unlink(),
                              "missing-file", f"english/auxiliary_embedding1/{SHORT}.txt is missing"),
    "missing wav": (lambda r: next((r / "english/test").glob("V002_*.wav")).unlink(), "missing-file",
                    "english/test/V002_"),
    "frame width of one line": (_edit_frames(f"english/test/{SHORT}.txt", lambda ls: ls + [ls[0] + " 0.5"]),
                                "frame-width", f"english/test/{SHORT}.txt line 2 has 9 values, line 1 8"),
    "frame width of one file": (_edit_frames(f"english/auxiliary_embedding1/{SHORT}.txt",
                                             lambda ls: [" ".join(x.split()[:7]) for x in ls]),
                                "dimension-mismatch", f"english/auxiliary_embedding1/{SHORT}.txt has 7 values"),
    "not a number": (_edit_frames(f"english/test/{SHORT}.txt", lambda ls: [ls[0].replace(" ", " abc ", 1)]),
                     "frame-format", "'abc' is not a number"),
    "two spaces": (_edit_frames(f"english/test/{SHORT}.txt", lambda ls: [x.replace(" ", "  ") for x in ls]),
                   "frame-format", "'' is not a number"),
    "nan": (_edit_frames(f"english/test/{SHORT}.txt", lambda ls: ["nan" + x[x.index(" "):] for x in ls]),
            "frame-format", "line 1 holds NaN or inf"),
    "empty file": (lambda r: (r / "english/test" / f"{SHORT}.txt").write_text("\n"), "frame-format", "is empty"),
    "unreadable wav": (lambda r: next((r / "english/test").glob("V001_*.wav")).write_bytes(b"RIFF0000WAVEjunk"),
                       "bad-wav", "cannot be read as a wav file"),
    "metadata field missing": (_edit_meta(lambda m: m.pop("author")), "metadata-missing-field", "'author'"),
    "metadata wrong type": (_edit_meta(lambda m: m.update({"open source": "yes please"})), "metadata-type",
                            "'open source' must be true or false, got 'yes please'"),
    "metadata empty field": (_edit_meta(lambda m: m.update({"affiliation": None})), "metadata-empty-field",
                             "'affiliation' is empty"),
    "metadata bad distance": (_edit_meta(lambda m: m.update({"abx distance": "euclidean"})), "metadata-value",
                              "'abx distance' must be one of dtw_cosine, dtw_kl, levenshtein"),
    "metadata unknown field": (_edit_meta(lambda m: m.update({"notes": "x"})), "metadata-forbidden-field", "'notes'"),
    "auxiliary undescribed": (_edit_meta(lambda m: m.pop("auxiliary1 description")), "metadata-missing-field",
                              "'auxiliary1 description'"),
    "metadata not yaml": (lambda r: (r / "metadata.yaml").write_text("author: [unclosed\n"), "metadata-unreadable",
                          "not valid YAML"),
    "extra top-level file": (lambda r: (r / "notes.txt").write_text("x"), "extra-entry", "notes.txt"),
    "zipped with its dir": (lambda r: _nest(r, "submission"), "extra-entry",
                            "(zip the contents of submission/, not the dir itself)"),
    "open source without code": (lambda r: shutil.rmtree(r / "code"), "missing-entry", "code is missing"),
    "closed source with code": (_edit_meta(lambda m: m.update({"open source": False})), "code",
                                "declared closed source but code/ is not empty"),
    "auxiliary2 alone": (lambda r: (r / "english/auxiliary_embedding1").rename(r / "english/auxiliary_embedding2"),
                         "auxiliary-mismatch", "auxiliary_embedding2 without auxiliary_embedding1"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_submission_fails_with_named_problem(name: str, submission, corpus: Path, tmp_path: Path) -> None:
    mutate, code, text = BROKEN[name]
    root = tmp_path / "sub"
    with zipfile.ZipFile(submission.zip_path) as z:
        z.extractall(root)
    mutate(root)
    with zipfile.ZipFile(tmp_path / "broken.zip", "w") as z:  # the whole tree, as a user might zip it
        for f in sorted(root.rglob("*")):
            z.write(f, f.relative_to(root).as_posix())
    for path in (root, tmp_path / "broken.zip"):
        problems = validate_submission(path, corpus)
        assert any(p.code == code and text in p.message for p in problems), (name, problems)
    with pytest.raises(SubmissionError, match="is not a valid ZeroSpeech 2019 submission") as err:
        check_submission(tmp_path / "broken.zip", corpus)
    assert f"{code}: " in str(err.value) and text in str(err.value)


def test_frame_format_rules(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    for text, width in (("1 2 3\n4 5 6\n", 3), ("1 2\r\n\n3 4\r\n \n", 2), ("-1e-3 .5\n", 2), ("7\n", 1)):
        f.write_text(text)
        assert frame_width(f, "a.txt") == (width, None), text
    for text, message in (("1\t2\n", "'1\\t2' is not a number"), ("1 2 \n", "'' is not a number"),
                          ("1 2\n3\n", "line 2 has 1 values, line 1 2"), ("", "is empty"), ("1 inf\n", "NaN or inf")):
        f.write_text(text)
        assert message in frame_width(f, "a.txt")[1].message, text
    f.write_bytes(b"\xff\xfe1 2\n")
    assert frame_width(f, "a.txt")[1].code == "frame-format"


def test_without_corpus_the_file_set_is_not_checked(submission, tmp_path: Path) -> None:
    root = tmp_path / "sub"
    shutil.copytree(submission.out_dir, root)
    (root / "english" / "test" / f"{SHORT}.txt").unlink()
    assert validate_submission(root) == []
    (root / "english" / "test" / "S002_x.txt").write_text("1 2\n")
    assert [p.code for p in validate_submission(root)] == ["dimension-mismatch"]
    assert [p.code for p in validate_submission(root, require_surprise=True)] == ["missing-entry",
                                                                                   "dimension-mismatch"]
    assert validate_submission(tmp_path / "nothing.zip")[0].code == "not-a-submission"


def test_cli_writes_validates_and_exits_2(corpus: Path, model: dict[str, Path], submission, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    # no export at all: every test file is encoded here; Griffin-Lim needs no F0 statistics
    out = tmp_path / "submission"
    args = ["submission", "--exp", str(model["exp"]), "--corpus-dir", str(corpus), "--out", str(out),
            "--vocoder", "griffinlim", "--gl-iters", "2", "--closed-source", "--no-progress"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "2 file(s) synthesized (griffinlim)" in printed and "5 test file(s) the export lacked encoded" in printed
    assert "author and affiliation are the defaults" in printed
    assert f"{out}.zip is a valid ZeroSpeech 2019 submission" in printed
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert (meta["open source"], meta["author"], meta["hyperparameters"]["vocoder"]) == (False, "anonymous", "griffinlim")
    assert not (out / "code").exists()
    assert cli_main(["submission", "--validate-only", f"{out}.zip", "--corpus-dir", str(corpus)]) == 0
    # broken: exit 2, each problem named
    next((out / "english" / "test").glob("V001_*.wav")).unlink()
    (out / "notes.txt").write_text("x")
    assert cli_main(["submission", "--validate-only", str(out), "--corpus-dir", str(corpus)]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "extra-entry: the top level holds notes.txt" in err
    assert "missing-file: english/test/V001_" in err
    assert cli_main(["submission", "--out", str(out), "--corpus-dir", str(corpus)]) == 2
    assert "--exp, --out and --corpus-dir are needed" in capsys.readouterr().err


def test_errors_before_anything_is_written(corpus: Path, model: dict[str, Path], tmp_path: Path) -> None:
    tree = tmp_path / "corpus"
    shutil.copytree(corpus, tree)
    out = tmp_path / "out"
    # WORLD without F0 statistics (a checkpoint carries none)
    with pytest.raises(SubmissionError, match="WORLD synthesis needs the F0 statistics of the target voices"):
        write_submission(model["exp"], tree, out, progress=False)
    with pytest.raises(SubmissionError, match=r"target voices \(.*none.json does not exist\): pass --f0-stats"):
        write_submission(model["exp"], tree, out, f0_stats=tmp_path / "none.json", progress=False)
    # a voice the model does not know
    listing = tree / "english" / "synthesis.txt"
    listing.write_text(listing.read_text().replace("V002", "V003"))
    with pytest.raises(SQVAEError, match="target speaker 'V003' is unknown to the model"):
        write_submission(model["exp"], tree, out, vocoder="griffinlim", progress=False)
    # the list itself: malformed, a file not in the corpus, absent
    listing.write_text("test/S002_1.wav\n")
    with pytest.raises(SubmissionError, match="line 1: expected 'test/<spk>_<id>.wav <voice>'"):
        read_synthesis_list(tree)
    listing.write_text("test/S002_0000000009.wav V001\n")
    with pytest.raises(SubmissionError, match="line 1: .*S002_0000000009.wav does not exist"):
        read_synthesis_list(tree)
    listing.unlink()
    with pytest.raises(SubmissionError, match="english/synthesis.txt not found: the synthesis list ships with"):
        write_submission(model["exp"], tree, out, vocoder="griffinlim", progress=False)
    assert not out.exists()
    # an export of another model in the submission dir
    (out / "english" / "test").mkdir(parents=True)
    (out / "english" / "test" / "export.json").write_text(json.dumps(
        {"format": "sqvae-export", "checkpoint": "/elsewhere/ckpt.pt"}))
    (tree / "english" / "synthesis.txt").write_text((corpus / "english" / "synthesis.txt").read_text())
    with pytest.raises(SubmissionError, match="holds an export of /elsewhere/ckpt.pt"):
        write_submission(model["exp"], tree, out, vocoder="griffinlim", progress=False)
