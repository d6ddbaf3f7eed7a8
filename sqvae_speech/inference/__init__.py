"""Trained models applied to any recording: the public Python API (re-exported from
:mod:`sqvae_speech`) and the file writer of ``sqvae-speech encode``.

- :func:`load_model` -> :class:`Model` (``encode``, ``encode_batch``, ``decode``,
  ``synthesize``, ``resynthesize``, ``lookup``);
- :class:`Units`: what ``encode`` returns.
"""

from .model import Model, load_model
from .units import Units

__all__ = ["Model", "Units", "load_model"]
