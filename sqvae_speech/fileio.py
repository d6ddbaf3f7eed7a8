"""Atomic file writing: write to a temporary file in the target's directory, fsync,
then rename over the target. A reader sees the old file or the new one, never half of
one; a killed writer leaves at most a stray ``.tmp-*`` file, which is ignored.

A write that fails because the file system is full (or over quota) raises
:class:`~sqvae_speech.errors.DiskFullError` naming the file: the temporary file is removed
and the target left as it was.

Files that belong together (a feature store's ``feats.npy`` and ``index.json``) are written
with :func:`staged_path` and put in place by renames only once all of them are complete.
Logs that grow (``metrics.jsonl``, TensorBoard events) are appended with
:func:`append_bytes`: a record that does not fit is cut off again, so the file always ends
with a complete record.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DiskFullError

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Some writers lose the errno (numpy's tofile says "N requested and M written", torch's
# zip writer "file write failed"); a failed write with less than this left free on the
# file system is then taken for a full disk.
_NEARLY_FULL_BYTES = 16 * 2**20


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``.

    The caller writes the whole file to the yielded path. On an exception the temporary
    file is removed and ``target`` is left as it was; a full disk raises
    :class:`DiskFullError`. ``suffix`` keeps an extension (e.g. ``.npy``) for libraries
    that insist on one.
    """
    target = Path(target)
    with staged_path(target, suffix) as tmp_path:
        yield tmp_path
    try:
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except BaseException as e:
        full = _is_disk_full(e, target.parent)
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if full:
            raise _disk_full(target, e) from e
        raise


@contextlib.contextmanager
def staged_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """:func:`atomic_path` without the rename: yield a temporary path next to ``target``;
    once the body returned the file is fsynced and left there, for the caller to rename
    onto ``target`` (``os.replace``) together with the other files of a set, or to remove.

    On an exception the temporary file is removed and ``target`` is left as it was; a full
    disk raises :class:`DiskFullError` naming ``target``.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.name}.", suffix=suffix, dir=target.parent)
    except OSError as e:
        if _is_disk_full(e, target.parent):
            raise _disk_full(target, e) from e
        raise
    # mkstemp makes 0600 files; results should be readable like any other file.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException as e:
        full = _is_disk_full(e, target.parent)  # before the partial file frees its space
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if full:
            raise _disk_full(target, e) from e
        raise


def append_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Append ``data`` to ``target`` (created if missing) as one record.

    If the write fails part-way (a full disk writes what fits, then fails), the file is
    cut back to its length before, or removed if this call created it, so it never ends
    with a torn record that would break its next reader; truncating needs no space. A full
    disk raises :class:`DiskFullError` naming the file.
    """
    target = Path(target)
    try:
        size: int | None = target.stat().st_size
    except FileNotFoundError:
        size = None
    try:
        with open(target, "ab") as f:
            f.write(data)
            f.flush()
    except BaseException as e:
        # The file is closed (its buffer flushed as far as it goes) before it is cut back.
        full = _is_disk_full(e, target.parent)
        with contextlib.suppress(OSError):
            if size is None:
                target.unlink()
            else:
                os.truncate(target, size)
        if full:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
            code = e.errno if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS else errno.ENOSPC
            raise DiskFullError(
                f"disk full while appending to {target} ({reason}): the partial record was removed, "
                f"{target.name} ends with its last complete one; free space on the file system of "
                f"{target.parent} and run the command again", code) from e
        raise


def _is_disk_full(e: BaseException, directory: Path) -> bool:
    """True for ENOSPC / EDQUOT, or a write error on a file system that is (nearly) full."""
    if isinstance(e, DiskFullError):
        return False  # already says so (a nested atomic write)
    if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
        return True
    if isinstance(e, (OSError, RuntimeError)):
        try:
            st = os.statvfs(directory)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < _NEARLY_FULL_BYTES
    return False


def _disk_full(target: Path, e: BaseException) -> DiskFullError:
    if isinstance(e, OSError) and e.strerror:
        reason = e.strerror
    else:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    was = "was left as it was" if target.exists() else "was not created"
    code = e.errno if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS else errno.ENOSPC
    return DiskFullError(
        f"disk full while writing {target} ({reason}): {target.name} {was} and the partial file was "
        f"removed; free space on the file system of {target.parent} and run the command again",
        code,
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_json(target: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``target`` atomically."""
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class _ErrorKeepingWriter:
    """A binary file for ``torch.save`` that remembers the OSError of a failed write:
    torch turns it into a RuntimeError without the errno ("unexpected pos ...")."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._f.flush()


def atomic_torch_save(target: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` to ``target`` atomically."""
    import torch

    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        writer = _ErrorKeepingWriter(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise
