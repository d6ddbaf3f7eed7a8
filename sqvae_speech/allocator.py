"""Keep freed memory in the process for reuse (glibc malloc), for CPU training.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves blocks above a
moving threshold (128 KiB at start, rising to at most 32 MiB as blocks are freed) with
fresh ``mmap`` pages that go back to the kernel on ``free``, and it trims the heap's
free top back to the kernel too. A training step allocates and frees the same large
activations every step (a whole-utterance batch of 7,000 frames x 768 channels is 22 MB
per activation), so steps kept paying page faults: ~80,000 per step, the kernel mapping
and zeroing ~300 MB again. With ``mallopt`` fixing the mmap threshold at glibc's ceiling
of 32 MiB and the trim threshold at 2 GiB, blocks up to 32 MiB are reused from the heap
after the first step; a CPU training step then ran ~15-20 % faster (bench/README.md).
Blocks above 32 MiB are still mapped afresh (glibc allows no higher threshold). The
price is that the process keeps its peak heap until it exits, which is what a training
run does anyway (and what PyTorch's CUDA caching allocator does on the GPU).

Set ``SQVAE_KEEP_FREED_MEMORY=0`` to leave malloc as it is. Anything other than Linux
with glibc is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # blocks up to 32 MiB come from the heap (glibc's ceiling)
TRIM_THRESHOLD = 2**31 - 1  # the heap's free top is returned only above 2 GiB (mallopt takes an int)

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc malloc (once per process) as described in the module docstring.

    Returns True when the settings are in effect, False where they do not apply (not
    glibc, disabled by ``SQVAE_KEEP_FREED_MEMORY=0``, or refused by ``mallopt``).
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("SQVAE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # The trim threshold first: setting either one also stops glibc's own adjustment of both.
    _done = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return _done
