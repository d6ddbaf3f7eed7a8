"""Evaluation of a trained image model on a split, with deterministic quantization.

Reported (``EXP/results_<split>.json``):

- images: ``mse`` per element (the paper's Table 2 gives it x 1e3) and ``sse_per_image``;
- label maps: ``pixel_accuracy`` and ``miou`` over the classes that occur (19 for
  CelebAMask-HQ), with ``per_class_iou``;
- codebook usage: ``batch_perplexity`` (mean over batches of ``train.eval_batch_size``
  images; it depends on the batch size), ``set_perplexity`` (exp entropy of the code
  histogram of the whole split, bounded by K) and ``used_codes`` (the continuous VAE has
  no codes: perplexities NaN, written as null, and 0 used of 0);
- ``loss``: the training objective per item (the validation criterion);
- ``seed``: the model's ``train.seed`` (runs that differ only by it are one point of a sweep).

``reconstructions_<split>.png``: the first images of the split (top) over their
reconstructions (bottom); label maps drawn with one colour per class.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..fileio import atomic_path, atomic_write_json
from ..quantizers import CodebookUsage
from .config import VisionConfig
from .datasets import load_splits
from .likelihoods import confusion_matrix, iou_from_confusion
from .models import VisionSQVAE
from .train import load_vision_model, resolve_device


@dataclass
class VisionResult:
    dataset: str
    split: str
    variant: str
    num_codes: int
    embedding_dim: int
    step: int
    num_images: int
    loss: float
    batch_perplexity: float
    set_perplexity: float
    used_codes: int
    mse: float = math.nan
    sse_per_image: float = math.nan
    pixel_accuracy: float = math.nan
    miou: float = math.nan
    per_class_iou: list[float] = field(default_factory=list)
    seed: int | None = None  # train.seed of the model
    checkpoint: str = ""
    seconds: float = 0.0


@torch.no_grad()
def evaluate_model(model: VisionSQVAE, ds: Dataset, batch_size: int = 32, device: str | torch.device = "cpu",
                   progress: bool = False) -> dict[str, object]:
    """Metrics of ``model`` (put in eval mode) over ``ds``; see the module docstring."""
    from tqdm import tqdm

    model.eval().to(device)
    usage = CodebookUsage(model.num_codes)  # VAE: 0 codes, usage n/a (NaN, 0 used)
    classes = model.config.channels
    conf = torch.zeros(classes, classes, dtype=torch.int64)
    loss_sum, sse, elems, n = 0.0, 0.0, 0, 0
    batch_ppl: list[float] = []
    for x in tqdm(DataLoader(ds, batch_size=batch_size, shuffle=False), desc="evaluate", unit="batch",
                  disable=not progress):
        x = x.to(device)
        losses, out, indices = model.step(x)
        loss_sum += float(losses.loss) * x.shape[0]
        usage.update(indices.cpu())
        batch_ppl.append(float(losses.perplexity))
        if model.label:
            conf += confusion_matrix(out.argmax(1), x, classes)
        else:
            sse += float((out.double() - x.double()).square().sum())
            elems += x.numel()
        n += x.shape[0]
    metrics: dict[str, object] = {
        "num_images": n, "loss": loss_sum / max(n, 1), "batch_perplexity": float(np.mean(batch_ppl)) if batch_ppl else math.nan,
        "set_perplexity": usage.perplexity(), "used_codes": usage.used(),
    }
    if model.label:
        acc, miou, per_class = iou_from_confusion(conf)
        metrics |= {"pixel_accuracy": acc, "miou": miou, "per_class_iou": per_class}
    else:
        metrics |= {"mse": sse / max(elems, 1), "sse_per_image": sse / max(n, 1)}
    return metrics


def label_palette(classes: int) -> np.ndarray:
    """[classes, 3] uint8 distinct colours (class 0, the background, black)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    colours = np.array([cmap(i % 20)[:3] for i in range(classes)]) * 255
    colours[0] = 0
    return colours.astype(np.uint8)


def to_rgb(batch: Tensor, label: bool, classes: int) -> np.ndarray:
    """Images [B, C, H, W] in [0, 1] or class maps [B, H, W] -> uint8 [B, H, W, 3]."""
    if label:
        return label_palette(classes)[batch.long().cpu().numpy()]
    arr = (batch.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def save_grid(rows: list[np.ndarray], path: str | Path, scale: int = 2, pad: int = 2) -> None:
    """Write rows of uint8 images [N, H, W, 3] as one PNG grid (atomically)."""
    from PIL import Image

    n = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    canvas = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            canvas[top : top + h, left : left + w] = img
    im = Image.fromarray(canvas)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    with atomic_path(path, suffix=".png") as tmp:
        im.save(tmp, format="PNG")


@torch.no_grad()
def reconstruction_grid(model: VisionSQVAE, ds: Dataset, path: str | Path, n: int = 16,
                        device: str | torch.device = "cpu") -> None:
    """Originals over reconstructions of the first ``n`` items of ``ds``."""
    n = min(n, len(ds))  # type: ignore[arg-type]
    x = torch.stack([ds[i] for i in range(n)]).to(device)
    out, _ = model.eval().reconstruct(x)
    classes = model.config.channels
    rec = out.argmax(1) if model.label else out
    save_grid([to_rgb(x, model.label, classes), to_rgb(rec, model.label, classes)], path)


def evaluate(exp_or_ckpt: str | Path, split: str = "test", which: str = "best", device: str | None = None,
             data_root: str | None = None, out: str | Path | None = None, grid: bool = True,
             progress: bool = True, limit: int | None = None) -> VisionResult:
    """Evaluate a trained model on a split of its data set; writes ``results_<split>.json``
    (and ``reconstructions_<split>.png``) into the experiment dir, or ``out``."""
    t0 = time.time()
    dev = resolve_device(device)
    model, cfg, step, path = load_vision_model(exp_or_ckpt, which)
    data = cfg.data
    if data_root:
        data = data.replace(root=data_root)
    if limit is not None:
        data = data.replace(**{f"{split}_limit": limit})
    ds = load_splits(data)[split]
    m = evaluate_model(model, ds, cfg.train.eval_batch_size, dev, progress)
    result = VisionResult(dataset=cfg.data.name, split=split, variant=cfg.model.variant,
                          num_codes=model.num_codes, embedding_dim=cfg.model.embedding_dim, step=step,
                          seed=cfg.train.seed, checkpoint=str(path), **m)  # type: ignore[arg-type]
    result.seconds = round(time.time() - t0, 2)
    exp_dir = Path(exp_or_ckpt) if Path(exp_or_ckpt).is_dir() else path.parent if path.name == "best.pt" else path.parent.parent
    # NaN (a metric that does not apply) becomes null: strict JSON has no NaN
    plain = {k: _json_safe(v) for k, v in asdict(result).items()}
    atomic_write_json(out or exp_dir / f"results_{split}.json", plain)
    if grid:
        reconstruction_grid(model, ds, exp_dir / f"reconstructions_{split}.png", device=dev)
    return result


def _json_safe(v: object) -> object:
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return None if isinstance(v, float) and math.isnan(v) else v


def describe_result(r: VisionResult) -> str:
    quality = (f"pixel accuracy {r.pixel_accuracy:.4f} | mIoU {r.miou:.4f}" if not math.isnan(r.pixel_accuracy)
               else f"MSE {r.mse:.5f} (x1e3 {r.mse * 1e3:.2f})")
    return (f"{r.dataset} {r.split} {r.variant} K={r.num_codes} step {r.step}: {quality} | batch perplexity "
            f"{r.batch_perplexity:.1f} | set perplexity {r.set_perplexity:.1f} | used codes {r.used_codes}/{r.num_codes} "
            f"| {r.num_images} images")


__all__ = ["VisionConfig", "VisionResult", "evaluate", "evaluate_model", "reconstruction_grid", "save_grid"]
