"""CPU kernels of the speech networks, and the one switch that turns them on or off.

The model files (:mod:`sqvae_speech.nets.speech`, :mod:`sqvae_speech.nets.masking`) hold
the stock PyTorch computation, the one a GPU runs (``nn.Conv1d``, ``F.batch_norm`` or the
masked batch norm, ``nn.GRU`` over a ``pack_padded_sequence``), plus one dispatch point
per layer that asks :func:`applies_to`. The modules here compute the same functions
faster on CPU; each equals the stock path to float rounding (tests/test_speed_paths.py,
tests/test_gru.py, tests/nets/test_cpu_switch.py):

- :mod:`.conv`: the encoder's k3 / stride 1 / padding 1 convolutions by Winograd F(4, 3)
  and the weight gradient of the others by matrix products;
- :mod:`.batchnorm`: training-mode batch norm of the valid frames of a padded batch by
  the fused kernels, packed (:func:`.batchnorm.compact_batch_norm`) or in the padding
  (:func:`.batchnorm.padded_batch_norm`);
- :mod:`.gru`: one GRU layer with a hand-written backward;
- :mod:`.bigru`: the decoder's bidirectional GRU on a time-major padded batch, one
  unidirectional layer at a time, without packing;
- :mod:`.allocator`: a glibc malloc setting that keeps freed memory in the process
  (``train`` applies it on CPU while the switch is on).

The switch. ``SQVAE_CPU_KERNELS`` in the environment: ``1`` (or unset / empty) turns the
kernels on, ``0`` off; anything else is an error. It is read at every dispatch, so it is
a property of the process, not of an experiment: checkpoints, configs and numbers (to
float rounding) do not depend on it. :func:`use_cpu_kernels` overrides it for a block
(tests, benchmarks). A kernel runs only when the switch is on, its tensors are on CPU and
its own conditions hold (float32, no CPU autocast, no cross-process batch norm, ...);
otherwise the stock path runs, so CPU with the switch off executes literally the code a
GPU executes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from torch import Tensor

ENV_VAR = "SQVAE_CPU_KERNELS"

_override: bool | None = None  # set by use_cpu_kernels; None: the environment decides


def enabled() -> bool:
    """Whether the CPU kernels may run: the innermost :func:`use_cpu_kernels` block if any,
    else ``SQVAE_CPU_KERNELS`` (``1``, unset or empty: True; ``0``: False)."""
    if _override is not None:
        return _override
    value = os.environ.get(ENV_VAR, "").strip()
    if value in ("", "1"):
        return True
    if value == "0":
        return False
    raise ValueError(f"{ENV_VAR} must be 1 (CPU kernels on, the default) or 0 (off, the stock path), got {value!r}")


@contextlib.contextmanager
def use_cpu_kernels(flag: bool) -> Iterator[None]:
    """Within the block, :func:`enabled` is ``flag`` whatever the environment says.

    Process-wide (every thread sees it) and nestable; the previous state comes back on
    exit. Autograd's backward needs no switch: the path is chosen in the forward.
    """
    global _override
    saved = _override
    _override = bool(flag)
    try:
        yield
    finally:
        _override = saved


def applies_to(x: Tensor) -> bool:
    """The dispatch question every layer asks: the switch is on and ``x`` is on CPU. The
    kernel then checks its own conditions (dtype, autocast, ...) and takes the stock
    computation where they fail; the decoder's time-major GRU then runs ``torch.gru``
    layers differentiated by autograd instead of the hand-written backward."""
    return x.device.type == "cpu" and enabled()
