"""Phone alignments: both layouts, comments, errors naming path:line, frame labels, coverage."""

from __future__ import annotations

import numpy as np
import pytest

from sqvae_speech.errors import SQVAEError
from sqvae_speech.metrics.alignment import (
    AlignmentError,
    Segment,
    check_coverage,
    frame_labels,
    read_alignment,
)


def write(tmp_path, text: str, name: str = "ali.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_four_columns_are_start_and_duration(tmp_path):
    # the first phones of a real flite utterance (awb_s001): /dh/ from 0.253 s for 27 ms
    path = write(tmp_path, "awb_s001 0.000 0.253 pau\nawb_s001 0.253 0.027 dh\nawb_s001 0.280 0.048 ax\n"
                           "awb_s002 0.000 0.180 pau\n")
    ali = read_alignment(path)
    assert ali["awb_s001"] == [Segment(0.0, 0.253, "pau"), Segment(0.253, pytest.approx(0.280), "dh"),
                               Segment(0.280, pytest.approx(0.328), "ax")]
    assert ali["awb_s002"] == [Segment(0.0, 0.18, "pau")]


def test_ctm_comments_and_sorting(tmp_path):
    path = write(tmp_path, ";; a CTM from forced alignment\n# another comment\n\n"
                           "u1 1 0.50 0.20 b\n"
                           "u1 1 0.10 0.30 a\n"
                           "   \n"
                           "u2 A 0.00 1.00 sil\n")
    ali = read_alignment(path)
    assert ali["u1"] == [Segment(0.1, pytest.approx(0.4), "a"), Segment(0.5, pytest.approx(0.7), "b")]
    assert ali["u2"] == [Segment(0.0, 1.0, "sil")]


@pytest.mark.parametrize("line, words", [
    ("u1 0.0 0.1", "columns"),
    ("u1 1 0.0 0.1 a extra", "columns"),
    ("u1 x 0.1 a", "numbers"),
    ("u1 1 0.0 nan a", "numbers"),
    ("u1 -0.1 0.2 a", "negative"),
    ("u1 1 0.1 -0.2 a", "negative"),
])
def test_bad_line_names_path_and_line(tmp_path, line, words):
    path = write(tmp_path, f"u0 0.0 0.1 a\n# fine\n{line}\n")
    with pytest.raises(AlignmentError, match=words) as e:
        read_alignment(path)
    assert f"{path}:3" in str(e.value)
    assert isinstance(e.value, SQVAEError)


def test_missing_file_says_what_writes_it(tmp_path):
    with pytest.raises(AlignmentError, match="flite-abx-set") as e:
        read_alignment(tmp_path / "nope.ctm")
    assert "nope.ctm" in str(e.value)


def test_frame_labels_gap_is_minus_one_and_index_grows():
    segs = [Segment(0.0, 0.1, "a"), Segment(0.2, 0.3, "b"), Segment(0.3, 0.4, "a")]
    index = {"b": 0}
    times = np.array([0.005, 0.095, 0.15, 0.2, 0.25, 0.3, 0.35, 0.45])
    got = frame_labels(segs, times, index)
    assert got.dtype == np.int64
    assert index == {"b": 0, "a": 1}
    assert got.tolist() == [1, 1, -1, 0, 0, 1, 1, -1]
    assert frame_labels([], times, index).tolist() == [-1] * 8


def test_check_coverage(tmp_path):
    ali = {"u1": [Segment(0.0, 1.0, "a")], "u2": [Segment(0.0, 2.04, "b")], "extra": [Segment(0, 9, "c")]}
    check_coverage(ali, {"u1": 1.0, "u2": 2.0}, "ali.ctm")  # within tolerance; extra utterances are fine
    with pytest.raises(AlignmentError, match=r"u3.*every utterance") as e:
        check_coverage(ali, {"u1": 1.0, "u3": 1.0}, "ali.ctm")
    assert "ali.ctm" in str(e.value) and "1 utterance" in str(e.value)
    many = {f"x{i}": 1.0 for i in range(7)}
    with pytest.raises(AlignmentError, match=r"7 utterances: x0, x1, x2, x3, x4, \.\.\."):
        check_coverage(ali, many, "ali.ctm")
    with pytest.raises(AlignmentError, match=r"u2 \(last segment ends at 2.040 s, audio is 1.900 s\)"):
        check_coverage(ali, {"u1": 1.0, "u2": 1.9}, "ali.ctm")
