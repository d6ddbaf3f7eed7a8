"""Quantizers shared by the speech and vision models.

- :class:`GaussianSQ`: Gaussian SQ-VAE, variance parameterizations I-IV (optionally with
  a fixed variance).
- :class:`VMFSQ`: von Mises-Fisher SQ-VAE for categorical data.
- :class:`VQEMA`: the VQ-VAE baseline with an EMA codebook (bshall/ZeroSpeech).
- :class:`KMeansVQ`: practitioners' VQ (vector-quantize-pytorch: k-means init, dead codes).
- :class:`FSQ`: finite scalar quantization.
- :class:`GaussianVAE`: the continuous VAE (no quantization).
- :data:`QUANTIZERS`, :func:`get_quantizer`: the name -> quantizer registry models build from.
- :func:`batch_perplexity`, :class:`CodebookUsage`: codebook usage meters.

Every quantizer has ``forward(z [B, L, D], log_var=None, mask=None, temperature=1.0)
-> QuantizerOutput``; losses are summed over valid positions (divide by the batch size
in the model). ``lookup(indices [...]) -> [..., D]`` gives the vectors the decoder gets
for code indices; ``encoder_channels(embedding_dim, **kwargs)`` the channels the encoder
must emit.
"""

from .common import QuantizerOutput, gumbel_softmax_sample
from .continuous import GaussianVAE
from .fsq import FSQ
from .gaussian import VAR_SPACES, VARIANTS, GaussianSQ, gaussian_logits
from .kmeans_vq import KMeansVQ
from .registry import QUANTIZERS, QuantizerSpec, get_quantizer
from .usage import CodebookUsage, batch_perplexity
from .vmf import VMFSQ
from .vqema import VQEMA

__all__ = [
    "FSQ",
    "QUANTIZERS",
    "VARIANTS",
    "VAR_SPACES",
    "VMFSQ",
    "VQEMA",
    "CodebookUsage",
    "GaussianSQ",
    "GaussianVAE",
    "KMeansVQ",
    "QuantizerOutput",
    "QuantizerSpec",
    "batch_perplexity",
    "gaussian_logits",
    "get_quantizer",
    "gumbel_softmax_sample",
]
