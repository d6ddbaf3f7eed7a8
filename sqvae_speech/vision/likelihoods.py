"""Reconstruction terms of the image models, per item and averaged over the batch.

Images (x in [0, 1], decoder output through a sigmoid), D_x = C * H * W:

- ``arelbo``: 0.5 * D_x * log(SSE / B), SSE the sum of squared errors over the batch, so
  SSE / B is the per-image sum: the Gaussian likelihood with its variance set in closed
  form (Takida et al., arXiv 2102.08663), written as the authors' code writes it
  (sony/sqvae vision/model.py, ``GaussianSQVAE._calc_loss``). Against 0.5 D_x log(MSE per
  element) it is larger by the constant 0.5 D_x log D_x: same gradients and optimum, but
  the value stays positive as long as the per-image SSE is above 1 (the per-element form
  turns negative much earlier), which matters to ReduceLROnPlateau's relative threshold
  on the validation loss.
- ``learned``: SSE / (2 s2_x B) + 0.5 D_x log s2_x with a learned scalar log s2_x.
- ``mse``: plain MSE (the VQ-VAE baseline).

Label maps (decoder output: one value per class), D_x = H * W pixels:

- ``vmf``: the authors' likelihood for categorical data. Each pixel's one-hot label e_y is
  a unit vector in R^p (p classes), modelled as vMF(e_y; mu = normalize(out), kappa_x):
  -log p = -kappa_x <e_y, mu> - log C_p(kappa_x), with
  log C_p(k) = (p/2 - 1) log k - (p/2) log(2 pi) - log I_{p/2-1}(k). kappa_x is learned
  (as 1/kappa_x, initially 0.01). The authors pad p to an even number (20 for 19 classes)
  and drop the 2 pi constant; here p is the class count (I_v takes any real order) and
  the constant is kept, so the value is a proper negative log-likelihood.
- ``categorical``: softmax cross-entropy summed over pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special
from torch import Tensor


class _LogBesselI(torch.autograd.Function):
    """log I_v(k) for a scalar tensor k > 0 (scipy's scaled ive, float64, differentiable in k)."""

    @staticmethod
    def forward(ctx, k: Tensor, v: float) -> Tensor:  # type: ignore[override]
        kv = float(k.detach().double().cpu())
        ctx.v, ctx.k = v, kv
        return k.new_tensor(math.log(special.ive(v, kv)) + kv)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        # d/dk log I_v(k) = I_{v+1}(k) / I_v(k) + v / k; the ratio of scaled values is the same.
        ratio = special.ive(ctx.v + 1, ctx.k) / special.ive(ctx.v, ctx.k)
        return grad * float(ratio + ctx.v / ctx.k), None


def log_bessel_i(v: float, k: Tensor) -> Tensor:
    """log I_v(k), the modified Bessel function of the first kind; k a scalar tensor > 0."""
    return _LogBesselI.apply(k, float(v))


def vmf_log_normalizer(p: int, kappa: Tensor) -> Tensor:
    """log C_p(kappa) of the von Mises-Fisher density on the unit sphere of R^p."""
    v = p / 2.0 - 1.0
    return v * torch.log(kappa) - (p / 2.0) * math.log(2 * math.pi) - log_bessel_i(v, kappa)


def image_recon(kind: str, out: Tensor, x: Tensor, log_var_x: Tensor | None) -> tuple[Tensor, Tensor]:
    """(reconstruction term per item, MSE per element) for images out, x [B, C, H, W].

    ``arelbo``: 0.5 D_x log(SSE / B) (sony/sqvae vision/model.py); the returned MSE is
    per element, SSE / (B D_x), whatever the kind.
    """
    batch = x.shape[0]
    d_x = x[0].numel()
    sse = (out.float() - x.float()).square().sum()
    mse = sse / (batch * d_x)
    if kind == "arelbo":
        recon = 0.5 * d_x * torch.log(sse / batch)
    elif kind == "learned":
        assert log_var_x is not None
        recon = sse / (2 * torch.exp(log_var_x) * batch) + 0.5 * d_x * log_var_x
    elif kind == "mse":
        recon = mse
    else:
        raise ValueError(f"reconstruction '{kind}' is not for images")
    return recon, mse


def label_recon(kind: str, out: Tensor, y: Tensor, log_kappa_inv_x: Tensor | None) -> tuple[Tensor, Tensor]:
    """(reconstruction term per item, pixel accuracy) for per-class outputs out [B, P, H, W]
    and class maps y [B, H, W] (int64)."""
    batch, classes = out.shape[:2]
    pixels = y[0].numel()
    out = out.float()
    accuracy = (out.argmax(1) == y).float().mean()
    if kind == "categorical":
        recon = F.cross_entropy(out, y, reduction="sum") / batch
    elif kind == "vmf":
        assert log_kappa_inv_x is not None
        kappa = torch.exp(-log_kappa_inv_x)
        cos = F.normalize(out, dim=1).gather(1, y.unsqueeze(1)).sum() / batch  # sum_pixels <e_y, mu>, per item
        recon = -kappa * cos - pixels * vmf_log_normalizer(classes, kappa)
    else:
        raise ValueError(f"reconstruction '{kind}' is not for label maps")
    return recon, accuracy


def confusion_matrix(pred: Tensor, target: Tensor, classes: int) -> Tensor:
    """[classes, classes] int64 counts, rows = true class, columns = predicted."""
    idx = target.reshape(-1).long() * classes + pred.reshape(-1).long()
    return torch.bincount(idx.cpu(), minlength=classes * classes).reshape(classes, classes)


def iou_from_confusion(conf: Tensor | np.ndarray) -> tuple[float, float, list[float]]:
    """(pixel accuracy, mIoU, per-class IoU) from a confusion matrix. mIoU averages the
    classes that occur in the targets or the predictions (NaN IoU for the others)."""
    c = np.asarray(conf, dtype=np.float64)
    inter = np.diag(c)
    union = c.sum(0) + c.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
    total = c.sum()
    acc = float(inter.sum() / total) if total else math.nan
    miou = float(np.nanmean(iou)) if np.any(union > 0) else math.nan
    return acc, miou, [float(v) for v in iou]
