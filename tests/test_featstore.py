"""The packed feature store: round trip, index layout, config checks, completeness, pickling."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from sqvae_speech.config import FeatureConfig
from sqvae_speech.data.featstore import FeatureStore, write_featstore
from sqvae_speech.errors import FeatureStoreError

CFG = FeatureConfig(n_mels=8)


def _items(seed: int = 0) -> list[tuple[str, str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    names = [("s2-b", "s2"), ("s1-a", "s1"), ("s1-c", "s1"), ("s2-a", "s2")]
    return [(u, s, rng.standard_normal((8, int(rng.integers(1, 40)))).astype(np.float32)) for u, s in names]


def test_round_trip(tmp_path: Path) -> None:
    items = _items()
    store = write_featstore(tmp_path / "fs", items, CFG)
    assert store.utterances == ["s1-a", "s1-c", "s2-a", "s2-b"] and len(store) == 4
    assert store.speakers == ["s1", "s2"] and store.config == CFG
    assert "s1-a" in store and "zz" not in store
    for utt, spk, feats in items:
        got = store[utt]
        assert got.shape == feats.shape and got.dtype == np.float32 and got.flags.writeable
        np.testing.assert_array_equal(got, feats)
        assert store.speaker(utt) == spk and store.frames(utt) == feats.shape[1]
    np.testing.assert_array_equal(store.segment("s2-b", 1, 3), items[0][2][:, 1:3])
    with pytest.raises(IndexError):
        store.segment("s2-b", 0, 1000)
    with pytest.raises(FeatureStoreError, match="'zz' is not in"):
        store["zz"]


def test_layout_is_one_packed_array_and_an_index(tmp_path: Path) -> None:
    items = _items()
    frames = sum(f.shape[1] for _, _, f in items)
    write_featstore(tmp_path / "fs", sorted(items), CFG, num_frames=frames, extra={"note": 1})
    assert sorted(p.name for p in (tmp_path / "fs").iterdir()) == ["feats.npy", "index.json"]
    index = json.loads((tmp_path / "fs/index.json").read_text())
    assert index["format"] == "sqvae-featstore" and index["version"] == 1 and index["note"] == 1
    assert index["feature_config"] == CFG.to_dict() and index["n_mels"] == 8
    feats = np.load(tmp_path / "fs/feats.npy")
    assert feats.shape == (index["num_frames"], 8)
    # Utterances are contiguous row blocks, packed in the order given (sorted).
    offset = 0
    for utt in sorted(index["utterances"]):
        entry = index["utterances"][utt]
        assert entry["offset"] == offset
        original = next(f for u, _, f in items if u == utt)
        np.testing.assert_array_equal(feats[offset : offset + entry["frames"]], original.T)
        offset += entry["frames"]
    assert offset == index["num_frames"]


def test_config_mismatch_names_the_settings(tmp_path: Path) -> None:
    write_featstore(tmp_path / "fs", _items(), CFG)
    assert FeatureStore.open(tmp_path / "fs", expect_config=CFG).config == CFG
    with pytest.raises(FeatureStoreError) as e:
        FeatureStore.open(tmp_path / "fs", expect_config=CFG.replace(hop_length=200, fmin=0.0))
    msg = str(e.value)
    assert "hop_length: store 160, expected 200" in msg and "fmin: store 50.0, expected 0.0" in msg
    assert "n_mels" not in msg and str(tmp_path / "fs") in msg


def test_missing_or_incomplete_store(tmp_path: Path) -> None:
    with pytest.raises(FeatureStoreError, match="no feature store at .*sqvae-speech extract"):
        FeatureStore.open(tmp_path / "none")
    write_featstore(tmp_path / "fs", _items(), CFG)
    (tmp_path / "fs/index.json").unlink()
    with pytest.raises(FeatureStoreError, match="incomplete.*sqvae-speech extract"):
        FeatureStore.open(tmp_path / "fs")


def test_corrupt_store(tmp_path: Path) -> None:
    write_featstore(tmp_path / "fs", _items(), CFG)
    np.save(tmp_path / "fs/feats.npy", np.zeros((3, 8), np.float32))
    with pytest.raises(FeatureStoreError, match="corrupt"):
        FeatureStore.open(tmp_path / "fs")
    (tmp_path / "fs/index.json").write_text("{not json")
    with pytest.raises(FeatureStoreError, match="cannot be read"):
        FeatureStore.open(tmp_path / "fs")


def test_interrupted_rewrite_keeps_the_old_store(tmp_path: Path) -> None:
    write_featstore(tmp_path / "fs", _items(0), CFG)
    before = {p.name: p.read_bytes() for p in (tmp_path / "fs").iterdir()}

    def dying():
        yield from _items(1)[:2]
        raise KeyboardInterrupt  # the writer is killed halfway

    with pytest.raises(KeyboardInterrupt):
        write_featstore(tmp_path / "fs", dying(), CFG, num_frames=1000)
    # The old store is untouched (the new files are swapped in only once complete), no temp file is left.
    assert {p.name: p.read_bytes() for p in (tmp_path / "fs").iterdir()} == before
    store = FeatureStore.open(tmp_path / "fs", verify="full")
    for utt, _, feats in _items(0):
        np.testing.assert_array_equal(store[utt], feats)
    # A complete rewrite replaces it, and a removed side file goes with the swap.
    (tmp_path / "fs" / "notes.txt").write_text("old\n")
    new = write_featstore(tmp_path / "fs", _items(1), CFG, side_files={"notes.txt": None, "more.txt": "new\n"})
    np.testing.assert_array_equal(new["s1-a"], {u: f for u, _, f in _items(1)}["s1-a"])
    assert sorted(p.name for p in (tmp_path / "fs").iterdir()) == ["feats.npy", "index.json", "more.txt"]


def test_bad_items_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected \\(8, T>0\\)"):
        write_featstore(tmp_path / "fs", [("a", "s", np.zeros((7, 3), np.float32))], CFG)
    with pytest.raises(ValueError, match="twice"):
        write_featstore(tmp_path / "fs", [("a", "s", np.zeros((8, 3)))] * 2, CFG)


def test_pickle_reopens_lazily(tmp_path: Path) -> None:
    items = _items()
    store = FeatureStore.open(write_featstore(tmp_path / "fs", items, CFG).path)
    _ = store["s1-a"]  # the memmap is open now
    blob = pickle.dumps(store)
    assert len(blob) < sum(f.nbytes for _, _, f in items)  # features are not copied along
    clone = pickle.loads(blob)
    assert clone._feats is None
    for utt, _, feats in items:
        np.testing.assert_array_equal(clone[utt], feats)
    assert isinstance(clone._feats, np.memmap)


def test_empty_store(tmp_path: Path) -> None:
    store = write_featstore(tmp_path / "fs", [], CFG)
    assert len(store) == 0 and store.speakers == [] and FeatureStore.open(tmp_path / "fs").num_frames == 0
