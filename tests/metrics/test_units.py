"""Unit quality against the HuBERT definitions, checked on cases worked out by hand."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from sqvae_speech.errors import SQVAEError
from sqvae_speech.metrics.units import contingency, unit_quality


def from_counts(counts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Frames (codes, labels) realising a phone x code count table."""
    labels, codes = [], []
    for i, row in enumerate(counts):
        for j, c in enumerate(row):
            labels += [i] * c
            codes += [j] * c
    return np.array(codes), np.array(labels)


def test_one_to_one_mapping_is_perfect():
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 5, size=n) for n in (40, 70)]
    perm = np.array([3, 0, 7, 1, 5])  # phone i -> code perm[i]; codes 2, 4, 6 unused
    q = unit_quality([perm[lab] for lab in labels], labels, 8, list("abcde"), 0.01)
    assert q.phone_purity == pytest.approx(1.0)
    assert q.code_purity == pytest.approx(1.0)
    assert q.pnmi == pytest.approx(1.0)
    assert q.code_entropy_bits == pytest.approx(0.0, abs=1e-12)
    assert q.frames == 110 and q.unlabelled_frames == 0 and q.used_codes == 5 and q.num_phones == 5
    assert q.counts.shape == (5, 8) and q.counts.dtype == np.int64 and q.counts.sum() == 110


def test_codes_independent_of_phones():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    q = unit_quality([np.zeros(10, np.int64)], [labels], 4, ["a", "b", "c"], 0.02)
    assert q.pnmi == pytest.approx(0.0, abs=1e-12)
    assert q.phone_purity == pytest.approx(0.6)  # majority phone share
    assert q.code_purity == pytest.approx(1.0)  # every phone sits in one code
    assert q.code_entropy_bits == pytest.approx(0.0, abs=1e-12)
    assert q.mean_segment_frames == 10 and q.mean_segment_ms == pytest.approx(200.0)

    # codes drawn independently of phones, many frames: PNMI near 0
    rng = np.random.default_rng(1)
    lab, cod = rng.integers(0, 4, 50_000), rng.integers(0, 4, 50_000)
    assert unit_quality([cod], [lab], 4, list("abcd"), 0.01).pnmi < 0.002


def test_two_by_two_by_hand():
    codes, labels = from_counts([[3, 1], [0, 2]])  # N = 6
    q = unit_quality([codes[:4], codes[4:]], [labels[:4], labels[4:]], 2, ["a", "b"], 0.01)
    assert q.counts.tolist() == [[3, 1], [0, 2]]
    # phone purity: code 0 holds 3 a; code 1 holds 1 a, 2 b -> (3 + 2) / 6
    assert q.phone_purity == pytest.approx(5 / 6)
    # code purity: phone a mostly code 0 (3), phone b code 1 (2) -> (3 + 2) / 6
    assert q.code_purity == pytest.approx(5 / 6)
    # p(y) = (4/6, 2/6), p(z) = (3/6, 3/6)
    p_ab = {(0, 0): 3 / 6, (0, 1): 1 / 6, (1, 1): 2 / 6}
    py, pz = (4 / 6, 2 / 6), (3 / 6, 3 / 6)
    mi = sum(p * math.log(p / (py[i] * pz[j])) for (i, j), p in p_ab.items())
    h_y = -(4 / 6) * math.log(4 / 6) - (2 / 6) * math.log(2 / 6)
    assert q.pnmi == pytest.approx(mi / h_y)
    # closed form: I = ln(3)/2 - ln(2)/3, H(y) = ln(3) - 2 ln(2)/3, so PNMI = 1/2 exactly
    assert q.pnmi == pytest.approx(0.5)
    # H(z | y=a) = H(3/4, 1/4) bits, H(z | y=b) = 0; weighted by p(y=a) = 4/6
    h_a = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert q.code_entropy_bits == pytest.approx(4 / 6 * h_a)


def test_unlabelled_frames_and_segments():
    codes = [np.array([1, 1, 2, 2, 2, 3])]
    q = unit_quality(codes, [np.array([0, -1, 0, 1, -1, 1])], 4, ["a", "b"], 0.01)
    assert q.mean_segment_frames == pytest.approx(2.0)  # runs 2, 3, 1 over all 6 frames
    assert q.mean_segment_ms == pytest.approx(20.0)
    assert q.frames == 4 and q.unlabelled_frames == 2 and q.used_codes == 3
    assert q.counts.tolist() == [[0, 1, 1, 0], [0, 0, 1, 1]]
    # runs do not continue across utterances: [1, 1] + [1, 1] is two runs of 2
    q2 = unit_quality([np.array([1, 1]), np.array([1, 1])], [np.zeros(2, int)] * 2, 2, ["a"], 0.01)
    assert q2.mean_segment_frames == pytest.approx(2.0)
    assert math.isnan(q2.pnmi)  # one phone: H(y) = 0
    d = q2.to_dict()
    assert d["pnmi"] is None and "counts" not in d and "phones" not in d
    json.dumps(q.to_dict(), allow_nan=False)
    assert set(q.to_dict()) == {"phone_purity", "code_purity", "pnmi", "code_entropy_bits", "mean_segment_frames",
                                "mean_segment_ms", "frames", "unlabelled_frames", "num_phones", "used_codes"}


def test_errors():
    with pytest.raises(SQVAEError, match="utterance 1: 3 codes but 2 phone labels"):
        unit_quality([np.zeros(2, int), np.zeros(3, int)], [np.zeros(2, int), np.zeros(2, int)], 2, ["a"], 0.01)
    with pytest.raises(SQVAEError, match="none of the 4 frames has a phone label"):
        unit_quality([np.zeros(4, int)], [np.full(4, -1)], 2, ["a"], 0.01)
    with pytest.raises(SQVAEError, match="outside the codebook"):
        contingency(np.array([0, 5]), np.array([0, 0]), 1, 4)
    with pytest.raises(SQVAEError, match="phone label 3"):
        contingency(np.array([0, 1]), np.array([0, 3]), 2, 4)


def test_100k_frames_fast():
    rng = np.random.default_rng(2)
    codes = [rng.integers(0, 512, 1000) for _ in range(100)]
    labels = [rng.integers(-1, 40, 1000) for _ in range(100)]
    t = time.perf_counter()
    q = unit_quality(codes, labels, 512, [f"p{i}" for i in range(40)], 0.01)
    assert time.perf_counter() - t < 0.5
    assert q.frames + q.unlabelled_frames == 100_000
