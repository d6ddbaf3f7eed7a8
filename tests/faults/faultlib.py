"""Fault injection for the fault tests: a file that fails (ENOSPC) or kills its process
(SIGKILL) once a given number of bytes went through it.

:func:`install` replaces ``open`` in one module of the package (every writer of the
package opens its files with the builtin ``open``: checkpoints and JSON/text in
``sqvae_speech.fileio``, feature shards in ``sqvae_speech.data.shards``, the packed store in
``sqvae_speech.data.featstore_write``, export files in ``sqvae_speech.zerospeech.export``), so the fault hits
the n-th file whose name contains a given string, part-way through its writing, exactly
where a real full disk or a real kill would.

The subprocess driver (``fault_driver.py``) reads the same specification from the
``SQVAE_FAULTS`` environment variable: ``module:match:nth:after_bytes:action`` items
separated by ``;``.
"""

from __future__ import annotations

import builtins
import errno
import importlib
import os
import signal
from collections.abc import Callable
from typing import Any, Self

ACTIONS = ("enospc", "kill")


class FaultyFile:
    """Wraps a file opened for writing; once ``budget`` bytes were written, writes the part
    that still fits, then raises ENOSPC (and keeps raising it) or SIGKILLs the process."""

    def __init__(self, f: Any, budget: int, action: str) -> None:
        self._f = f
        self._left = budget
        self._action = action

    def write(self, data: Any) -> int:
        size = len(data.encode("utf-8")) if isinstance(data, str) else memoryview(data).nbytes
        if size <= self._left:
            self._left -= size
            return self._f.write(data)
        if self._left > 0:
            part = data[: self._left] if isinstance(data, str) else memoryview(data).cast("B")[: self._left]
            self._f.write(part)
            self._left = 0
        if self._action == "kill":
            self._f.flush()  # the partial file is on disk, as a killed writer leaves it
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def faulty_open(match: str, nth: int, after_bytes: int, action: str) -> Callable[..., Any]:
    """An ``open`` whose ``nth`` file opened for writing with ``match`` in its name faults."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    seen = 0

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        nonlocal seen
        f = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 (returned to the caller)
        if any(c in mode for c in "wax") and match in os.path.basename(os.fspath(file)):
            seen += 1
            if seen == nth:
                return FaultyFile(f, after_bytes, action)
        return f

    return fake_open


def install(module: str, match: str, nth: int, after_bytes: int, action: str) -> None:
    """Make ``module``'s ``open`` fault (see :func:`faulty_open`); for subprocesses."""
    importlib.import_module(module).open = faulty_open(match, nth, after_bytes, action)


def spec(module: str, match: str, nth: int, after_bytes: int, action: str) -> str:
    """One item of ``SQVAE_FAULTS``."""
    return f"{module}:{match}:{nth}:{after_bytes}:{action}"


def install_from_env(value: str) -> None:
    for item in filter(None, value.split(";")):
        module, match, nth, after, action = item.split(":")
        install(module, match, int(nth), int(after), action)
