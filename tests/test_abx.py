"""ABX scoring against a brute-force implementation written plainly here (Python loops:
ABXpy's DTW with its backtracking, explicit triplet enumeration, ZeroSpeech averaging),
hand-known item sets, invariances, and the errors bad input must raise."""

import json
import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from sqvae_speech.cli import main as cli_main
from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.featstore import write_featstore
from sqvae_speech.errors import SQVAEError
from sqvae_speech.zerospeech.abx import (
    ItemFileError,
    ItemSet,
    abx,
    abx_from_tokens,
    dtw,
    dtw_numba,
    extract_tokens,
    open_features,
    read_items,
    write_items,
)


# -- the brute-force reference -------------------------------------------------------
def angular(u, v):
    nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    if nu == 0 and nv == 0:
        return 0.0
    if nu == 0 or nv == 0:
        return 1.0
    return math.acos(max(-1.0, min(1.0, float(np.dot(u, v)) / (nu * nv)))) / math.pi


def euclidean(u, v):
    return float(np.sqrt(((u - v) ** 2).sum()))


def sym_kl(u, v):
    eps = np.finfo(np.float64).eps
    p, q = u / u.sum() + eps, v / v.sum() + eps
    p, q = p / p.sum(), q / q.sum()
    return 0.5 * float((p * np.log(p / q)).sum()) + 0.5 * float((q * np.log(q / p)).sum())


def brute_dtw_table(d, normalize=True):
    n, m = len(d), len(d[0])
    c = [[0.0] * m for _ in range(n)]
    c[0][0] = d[0][0]
    for i in range(1, n):
        c[i][0] = d[i][0] + c[i - 1][0]
    for j in range(1, m):
        c[0][j] = d[0][j] + c[0][j - 1]
    for i in range(1, n):
        for j in range(1, m):
            c[i][j] = d[i][j] + min(c[i - 1][j], c[i - 1][j - 1], c[i][j - 1])
    if not normalize:
        return c[n - 1][m - 1]
    i, j, length = n - 1, m - 1, 1
    while i > 0 and j > 0:  # ABXpy's backtracking
        up, left, diag = c[i - 1][j], c[i][j - 1], c[i - 1][j - 1]
        if diag <= left and diag <= up:
            i, j = i - 1, j - 1
        elif left <= up:
            j -= 1
        else:
            i -= 1
        length += 1
    return c[n - 1][m - 1] / (length + i + j)


def brute_dtw(x, y, f, normalize=True):
    return brute_dtw_table([[f(a, b) for b in y] for a in x], normalize)


def brute_abx(rows, tokens, condition, f=angular, normalize=True):
    """rows[i] = (phone, prev, next, speaker). Returns the error rate in % (None: no triplet)."""
    cells = defaultdict(list)
    n = len(rows)
    for a in range(n):
        for b in range(n):
            for x in range(n):
                (pa, *ca, sa), (pb, *cb, sb), (px, *cx, sx) = rows[a], rows[b], rows[x]
                if a == x or not (ca == cb == cx) or pa != px or pb == pa or sb != sa:
                    continue
                if (condition == "within") != (sx == sa):
                    continue
                dax, dbx = brute_dtw(tokens[a], tokens[x], f, normalize), brute_dtw(tokens[b], tokens[x], f, normalize)
                cells[(tuple(ca), pa, pb, sa, sx)].append(1.0 if dax < dbx else 0.5 if dax == dbx else 0.0)
    if not cells:
        return None
    per_spk = defaultdict(list)
    for (_, pa, pb, sa, sx), v in cells.items():
        per_spk[(pa, pb, sa, sx)].append(sum(v) / len(v))
    per_phone = defaultdict(list)
    for (pa, pb, _, _), v in per_spk.items():
        per_phone[(pa, pb)].append(sum(v) / len(v))
    score = sum(sum(v) / len(v) for v in per_phone.values()) / len(per_phone)
    return 100.0 * (1.0 - score)


def make_items(rows):
    n = len(rows)
    return ItemSet("mem.item", [f"f{i}" for i in range(n)], np.zeros(n), np.ones(n), [r[0] for r in rows],
                   [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows], np.arange(2, n + 2))


def random_set(seed, n=36, dim=4, positive=False):
    rng = np.random.default_rng(seed)
    rows = [(str(rng.choice(["a", "b", "c"])), str(rng.choice(["x", "y"])), str(rng.choice(["x", "z"])),
             str(rng.choice(["s1", "s2", "s3"]))) for _ in range(n)]
    tokens = [rng.normal(size=(int(rng.integers(1, 6)), dim)) for _ in range(n)]
    if positive:
        tokens = [np.abs(t) + 0.01 for t in tokens]
    return rows, tokens


# -- agreement with the brute force -----------------------------------------------------
@pytest.mark.parametrize("distance,f,normalize", [("angular", angular, True), ("angular", angular, False),
                                                  ("euclidean", euclidean, True), ("kl", sym_kl, True)])
def test_matches_brute_force(distance, f, normalize):
    rows, tokens = random_set(1, positive=distance == "kl")
    items = make_items(rows)
    for backend in ("numba", "torch"):
        r = abx_from_tokens(items, tokens, distance, normalize=normalize, device="cpu", backend=backend, max_cells=500)
        for cond in ("within", "across"):
            ref = brute_abx(rows, tokens, cond, f, normalize)
            assert ref is not None and r[cond]["triplets"] > 20
            assert r[cond]["error"] == pytest.approx(ref, abs=1e-9), (backend, cond)


def test_dtw_backends_equal_brute_force_with_padding_and_ties():
    rng = np.random.default_rng(0)
    n = np.array([1, 3, 5, 2, 5, 4])
    m = np.array([4, 1, 5, 2, 3, 5])
    # integer distances make many ties: the path-length tie-breaking must be ABXpy's
    dist = rng.integers(0, 3, size=(6, 5, 5)).astype(np.float64)
    dist[1, 3:, :] = 1e6  # padding outside a pair's table must not matter
    for normalize in (True, False):
        ref = [brute_dtw_table(dist[p, : n[p], : m[p]].tolist(), normalize) for p in range(6)]
        torch_out = dtw(torch.from_numpy(dist), torch.from_numpy(n), torch.from_numpy(m), normalize).numpy()
        assert np.allclose(torch_out, ref, rtol=0, atol=1e-12)
        assert np.allclose(dtw_numba(dist, n, m, normalize), ref, rtol=0, atol=1e-12)
    # a known case: identical sequences -> 0; the normalized path length of a 1 x 4 table is 4
    assert brute_dtw_table([[1.0, 2.0, 3.0, 2.0]]) == pytest.approx(2.0)
    assert dtw_numba(np.array([[[1.0, 2.0, 3.0, 2.0]]]), np.array([1]), np.array([4]))[0] == pytest.approx(2.0)


# -- item sets whose answer is known by hand ----------------------------------------------
def hand_set(feature):
    """3 contexts x 2 speakers x phones a/b, two tokens of each: feature(phone, speaker, k) -> [frames, 3]."""
    rows, tokens = [], []
    for ctx in ("x", "y", "z"):
        for spk in ("s1", "s2"):
            for phone in ("a", "b"):
                for k in range(2):
                    rows.append((phone, ctx, ctx, spk))
                    tokens.append(feature(phone, spk, k))
    return make_items(rows), tokens


ONE_HOT = {"a": np.array([1.0, 0.0, 0.0]), "b": np.array([0.0, 1.0, 0.0])}


def test_identical_tokens_per_phone_give_zero_error():
    items, tokens = hand_set(lambda p, s, k: np.tile(ONE_HOT[p], (2 + k, 1)))
    r = abx_from_tokens(items, tokens, device="cpu")
    assert r["within"]["error"] == 0.0 and r["across"]["error"] == 0.0
    assert r["within"]["triplets"] == 3 * 2 * 2 * (2 * 1 * 2)  # ctx x spk x A-phone x (X, A != X, B)
    assert r["across"]["phone_pairs"] == 2


def test_labels_swapped_across_speakers_give_hundred_percent_across():
    # speaker s2 pronounces 'a' like s1's 'b' and vice versa
    swap = {("a", "s1"): "a", ("b", "s1"): "b", ("a", "s2"): "b", ("b", "s2"): "a"}
    items, tokens = hand_set(lambda p, s, k: np.tile(ONE_HOT[swap[(p, s)]], (2, 1)))
    r = abx_from_tokens(items, tokens, device="cpu")
    assert r["within"]["error"] == 0.0
    assert r["across"]["error"] == 100.0


def test_indistinguishable_tokens_give_chance():
    items, tokens = hand_set(lambda p, s, k: np.ones((3, 3)))
    r = abx_from_tokens(items, tokens, device="cpu")
    assert r["within"]["error"] == 50.0 and r["across"]["error"] == 50.0


def test_no_triplets_is_reported_not_invented():
    items = make_items([("a", "x", "y", "s1"), ("b", "x", "y", "s1")])  # one token per phone: no A != X
    r = abx_from_tokens(items, [np.ones((2, 3)), np.ones((2, 3))], device="cpu")
    assert r["within"]["error"] is None and r["within"]["triplets"] == 0


# -- invariances ---------------------------------------------------------------------------
def test_angular_is_scale_invariant_and_row_order_does_not_matter():
    rows, tokens = random_set(7, n=40)
    items = make_items(rows)
    base = abx_from_tokens(items, tokens, device="cpu")
    rng = np.random.default_rng(3)
    scaled = [t * rng.uniform(0.1, 10.0, size=(len(t), 1)) for t in tokens]  # every frame its own scale
    r = abx_from_tokens(items, scaled, device="cpu")
    perm = rng.permutation(len(items))
    shuffled = abx_from_tokens(items.subset(perm), [tokens[i] for i in perm], device="cpu")
    for cond in ("within", "across"):
        assert r[cond]["error"] == pytest.approx(base[cond]["error"], abs=1e-9)
        assert shuffled[cond]["error"] == pytest.approx(base[cond]["error"], abs=1e-9)
        assert shuffled[cond]["triplets"] == base[cond]["triplets"]
    assert shuffled["within"]["by_phone_pair"] == pytest.approx(base["within"]["by_phone_pair"])


# -- item files and feature sources ----------------------------------------------------------
def write_item_file(path, lines):
    path.write_text("#file onset offset #phone prev-phone next-phone speaker\n" + "".join(ln + "\n" for ln in lines))
    return path


@pytest.mark.parametrize("line,match", [
    ("u1 0.1 0.3 a x y", r"line 3: expected 7 columns"),
    ("u1 0.1 zero a x y s1", r"line 3: onset and offset must be numbers"),
    ("u1 0.3 0.1 a x y s1", r"line 3: needs 0 <= onset < offset"),
    ("u1 -0.1 0.1 a x y s1", r"line 3: needs 0 <= onset < offset"),
])
def test_malformed_rows_name_their_line(tmp_path, line, match):
    f = write_item_file(tmp_path / "bad.item", ["u1 0.0 0.2 a x y s1", line])
    with pytest.raises(ItemFileError, match=match):
        read_items(f)


def test_item_file_header_and_round_trip(tmp_path):
    bad = tmp_path / "h.item"
    bad.write_text("file onset offset phone\nu1 0 1 a x y s\n")
    with pytest.raises(ItemFileError, match="line 1: the header must be"):
        read_items(bad)
    rows = [("u1", 0.0, 0.25, "a", "x", "y", "s1"), ("u2", 0.1, 0.35, "b", "x", "y", "s2")]
    write_items(tmp_path / "ok.item", rows)
    items = read_items(tmp_path / "ok.item")
    assert items.file == ["u1", "u2"] and items.phone == ["a", "b"] and list(items.line) == [2, 3]
    assert np.allclose(items.offset, [0.25, 0.35])


def store_with(tmp_path, feats: dict[str, np.ndarray]):
    cfg = FeatureConfig()
    return write_featstore(tmp_path / "store", [(u, "spk", f) for u, f in sorted(feats.items())], cfg)


def test_tokens_are_the_frames_centred_inside_the_item(tmp_path):
    t = np.arange(30, dtype=np.float32)
    store = store_with(tmp_path, {"u1": np.tile(t, (80, 1))})  # frame t holds the value t, at t * 10 ms
    items_file = write_item_file(tmp_path / "i.item", ["u1 0.052 0.100 a x y s1", "u1 0.2 0.204 b x y s1"])
    tokens, single = extract_tokens(read_items(items_file), open_features(store.path))
    assert tokens[0][:, 0].tolist() == [6, 7, 8, 9, 10]  # centres 0.06 .. 0.10 s
    assert tokens[1][:, 0].tolist() == [20] and single == 0
    # an export-style dir at 50 Hz: frame i centred at 15 ms + 20 ms * i
    d = tmp_path / "exp"
    d.mkdir()
    (d / "export.json").write_text(json.dumps({"format": "sqvae-export", "file_format": "npy", "rate": 50.0,
                                               "time_offset": 0.015, "kind": "quantized", "complete": True}))
    np.save(d / "u1.npy", np.arange(14, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32))
    tokens, single = extract_tokens(read_items(items_file), open_features(d))
    assert tokens[0][:, 0].tolist() == [2, 3, 4]  # 0.055, 0.075, 0.095 s
    assert tokens[1][:, 0].tolist() == [9] and single == 1  # nothing centred in 0.200-0.204: nearest frame (0.195)


def test_missing_file_and_times_past_the_end_name_the_row(tmp_path):
    store = store_with(tmp_path, {"u1": np.ones((80, 30), np.float32)})  # frames up to 0.29 s
    missing = write_item_file(tmp_path / "m.item", ["u1 0.0 0.1 a x y s1", "u9 0.0 0.1 b x y s1"])
    with pytest.raises(SQVAEError, match=r"m.item line 3: file 'u9' is not in the feature store"):
        extract_tokens(read_items(missing), open_features(store.path))
    late = write_item_file(tmp_path / "l.item", ["u1 0.0 0.1 a x y s1", "u1 0.2 0.45 b x y s1"])
    with pytest.raises(SQVAEError, match=r"l.item line 3: token 0.2-0.45 s ends past file 'u1'"):
        extract_tokens(read_items(late), open_features(store.path))
    plain = tmp_path / "plain"
    plain.mkdir()
    np.savetxt(plain / "u1.txt", np.ones((10, 2)))
    with pytest.raises(SQVAEError, match="pass --rate"):
        extract_tokens(read_items(missing).subset([0]), open_features(plain))


def test_cli_on_a_feature_store_and_on_text_files(tmp_path, capsys):
    rng = np.random.default_rng(5)
    phones = {p: rng.normal(size=80) for p in "abc"}
    feats, lines = {}, []
    for spk in ("s1", "s2"):
        for k in range(3):
            utt = f"{spk}_{k}"
            seq = ["c", "a", "c", "b", "c"] if k % 2 else ["c", "b", "c", "a", "c"]
            feats[utt] = np.concatenate([np.tile(phones[p][:, None], (1, 10)) + 0.3 * rng.normal(size=(80, 10))
                                         for p in seq], 1).astype(np.float32)
            for i in (1, 3):  # a and b, both in context (c, c)
                lines.append(f"{utt} {0.1 * (i - 1):.2f} {0.1 * (i + 2) - 0.01:.2f} {seq[i]} {seq[i - 1]} {seq[i + 1]} {spk}")
    store = store_with(tmp_path, feats)
    items_file = write_item_file(tmp_path / "abx.item", lines)
    out = tmp_path / "r.json"
    assert cli_main(["abx", "--features", str(store.path), "--items", str(items_file), "--out", str(out),
                     "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["items"] == len(lines) and r["source"].startswith("feature store")
    assert r["within"]["error"] == 0.0 and r["across"]["error"] == 0.0 and r["across"]["triplets"] > 0
    assert "ABX across speaker (angular): 0.00 %" in capsys.readouterr().out
    # the same frames as ZeroSpeech text files at 100 Hz, frame i at i / 100 s
    txt = tmp_path / "txt"
    txt.mkdir()
    for utt, f in feats.items():
        np.savetxt(txt / f"{utt}.txt", f.T)
    r2 = abx(txt, items_file, rate=100.0, time_offset=0.0, device="cpu", progress=False)
    assert r2["across"]["triplets"] == r["across"]["triplets"] and r2["within"]["error"] == 0.0
    assert cli_main(["abx", "--features", str(store.path), "--items", str(items_file), "--rate", "50"]) == 2
    # several feature sets -> one table row each
    table = tmp_path / "abx.md"
    assert cli_main(["abx", "--features", str(store.path), str(store.path), "--labels", "log-mel", "again",
                     "--items", str(items_file), "--table", str(table), "--note", "a note", "--no-progress"]) == 0
    text = table.read_text()
    assert "| log-mel | feature store" in text and "| again |" in text and text.rstrip().endswith("a note")
    assert "| 0.00 | 0.00 |" in text


def test_hostile_labels_stay_text_in_the_abx_table():
    from sqvae_speech.zerospeech.abx.pipeline import markdown_table as abx_table

    r = {"distance": "angular", "normalize": True, "item_file": "abx.item", "items": 3, "speakers": 2, "phones": 2,
         "source": "dir <b>|x", "within": {"error": 1.0}, "across": {"error": 2.0}}
    row = abx_table({"<script>alert(1)</script>": r}).splitlines()[4]
    assert "<script>" not in row and "&lt;script&gt;alert(1)&lt;/script&gt;" in row and "&lt;b&gt;\\|x" in row
    assert row.endswith("| 1.00 | 2.00 |")
