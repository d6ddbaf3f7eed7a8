"""Keep freed memory in the process during CPU training (glibc malloc settings).

Part of the CPU kernels (:mod:`sqvae_speech.nets.cpu`): ``train`` applies
:func:`keep_freed_memory` on CPU while the switch ``SQVAE_CPU_KERNELS`` is on. It changes
no number, only how often the big tensors' pages are mapped afresh.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and unmaps it at ``free``, and returns free memory at the top of the heap to the
kernel past 128 KiB. The activations of a whole-utterance batch (8,000 frames x 768
channels: ~24 MB each, Winograd tiles ~36 MB) are allocated and freed at every step, so
each step touched its big tensors' pages afresh: ~9 page faults per trained frame, 3-10 %
of a step's time in the kernel, where 52-crop batches (a few MB per tensor) fault not at
all. With mmap off and trimming capped at 2 GiB the pages stay mapped and are reused
(faults per frame ~0.1 after the first steps; bench/README.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: ~2 GiB, more than a CPU step frees

_applied = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse: no mmap for large blocks, no trimming
    below 2 GiB. Process-wide and idempotent; peak memory is unchanged, resident memory no
    longer shrinks between steps. Returns True once applied (Linux with glibc), False where
    there is no glibc ``mallopt`` (nothing is changed)."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only (musl has a mallopt that does nothing)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _applied
