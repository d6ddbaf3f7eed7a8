"""ABX phone discriminability (ZeroSpeech 2019 / ABXpy protocol), the project's own.

- :mod:`.items`: item files (parse, validate, write);
- :mod:`.sources`: features by file (store, export dir, plain dir) and token frames;
- :mod:`.frames`: token frames and frame distances (angular, euclidean, symmetric KL);
- :mod:`.dtw`: ABXpy's DTW, numba (CPU) and batched torch (GPU) backends;
- :mod:`.pairs`: each needed token pair's DTW distance, computed once;
- :mod:`.score`: triplets, scores and the ZeroSpeech aggregation;
- :mod:`.pipeline`: :func:`abx`, a whole feature set scored against an item file
  (``sqvae-speech abx`` is :mod:`sqvae_speech.cli.abx`).
"""

from .dtw import dtw, dtw_blocks, dtw_numba
from .frames import DISTANCES, Frames, frame_distances
from .items import ItemFileError, ItemSet, read_items, write_items
from .pairs import pair_distances
from .pipeline import abx, abx_from_tokens
from .score import CONDITIONS, Labels, score_condition
from .sources import extract_tokens, open_features

__all__ = [
    "CONDITIONS", "DISTANCES", "Frames", "ItemFileError", "ItemSet", "Labels", "abx", "abx_from_tokens",
    "dtw", "dtw_blocks", "dtw_numba", "extract_tokens", "frame_distances", "open_features",
    "pair_distances", "read_items", "score_condition", "write_items",
]
