"""Quantizers shared by the speech and vision models.

- :class:`GaussianSQ`: Gaussian SQ-VAE, variance parameterizations I-IV.
- :class:`VMFSQ`: von Mises-Fisher SQ-VAE for categorical data.
- :class:`VQEMA`: the VQ-VAE baseline with an EMA codebook.
- :func:`batch_perplexity`, :class:`CodebookUsage`: codebook usage meters.

Every quantizer has ``forward(z [B, L, D], log_var=None, mask=None, temperature=1.0)
-> QuantizerOutput``; losses are summed over valid positions (divide by the batch size
in the model).
"""

from .common import QuantizerOutput, gumbel_softmax_sample
from .gaussian import VAR_SPACES, VARIANTS, GaussianSQ, gaussian_logits
from .usage import CodebookUsage, batch_perplexity
from .vmf import VMFSQ
from .vqema import VQEMA

__all__ = [
    "VARIANTS",
    "VAR_SPACES",
    "VMFSQ",
    "VQEMA",
    "CodebookUsage",
    "GaussianSQ",
    "QuantizerOutput",
    "batch_perplexity",
    "gaussian_logits",
    "gumbel_softmax_sample",
]
