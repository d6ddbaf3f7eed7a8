"""Advisory directory locks: one run at a time writes a directory.

``train``, ``extract``, ``export``, ``evaluate`` and ``encode`` hold :func:`dir_lock` on the
directory they write (the experiment dir, the feature dir, the output dir) while they
work. A second run that wants the same directory stops at once with
:class:`~sqvae_speech.errors.LockedError`, which names the other process (pid, host, start
time, command) and says what to do; it never waits (no polling).

How it works. The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``DIR/.lock``, created if
needed; after acquiring it the holder writes its details into the file as JSON (``pid``,
``host``, ``command``, ``argv``, ``started``, ``started_unix``), which is what a refused run
reads and reports.

- **A killed holder's lock is taken over automatically.** A flock belongs to the open file
  and the kernel drops it when the last descriptor of the file closes, which happens when
  its process dies however it dies (SIGKILL, a crash, out of memory). The ``.lock`` file a
  killed run leaves behind (with its dead pid) is therefore free: the next run locks it
  and writes its own details over the old ones. There is no staleness test to get wrong.
  Children forked by the holder (DataLoader workers) close their copy of the descriptor
  at fork, so an orphan cannot keep a dead run's lock.
- **The file goes when the run ends.** The holder removes ``.lock`` (and the directory,
  when the lock created it and nothing else was written there) while it still holds the
  lock, then closes it. A process that opened the old file in the meantime finds, once it
  gets the lock, that the path no longer names the file it locked, and starts over on the
  new one; so two runs never both believe they hold the directory. Finished outputs hold
  no ``.lock``; a killed run's stays until the next run on that directory.
- **Re-entrant within a process**: a nested :func:`dir_lock` on a directory this process
  already holds (``sqvae-speech train`` trims ``metrics.jsonl`` under the lock, then calls
  :func:`~sqvae_speech.train.train`, which locks again) passes through. Threads of one
  process are not told apart.
- **Multi-process training** (``accelerate launch``): with ``main_only=True`` only the
  main process (global rank 0, read from the variables accelerate and MPI set:
  :data:`RANK_VARIABLES`) takes the lock, so the ranks of one job do not lock each other
  out; a second job's rank 0 is refused.

Network file systems. On NFS, Linux emulates flock with POSIX (``fcntl``) byte-range
locks, which the NFS lock service sees: runs on different client hosts exclude each other
when locking works there (NFSv4, or NFSv3 with lockd/statd running). A mount with
``nolock`` (or ``local_lock=all``) keeps locks local to one client: runs on two hosts both
get the lock and are not told apart. A crashed client's lock lasts until the server
recovers it (the NFSv4 lease, ~90 s). The emulated lock also drops if the holding process
opens and closes the lock file a second time, which nothing here does. A file system that
refuses locks (``ENOLCK``, ``EOPNOTSUPP``: some FUSE and SMB mounts) makes the command warn
once on stderr and run without a lock. None of this is worked around.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import LockedError, SQVAEError

LOCK_NAME = ".lock"
# Global rank of this process, in the order accelerate reads them (torchrun, then MPI).
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
# Tries when the path keeps naming another file than the one locked (a holder removing it
# just then): one more is needed per run that finishes meanwhile.
_ATTEMPTS = 50
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


@dataclasses.dataclass
class _Held:
    fd: int | None  # None: held without a lock (a file system without locks)
    path: Path
    created: list[Path]  # directories the lock created, deepest first
    depth: int = 1
    pid: int = dataclasses.field(default_factory=os.getpid)


_HELD: dict[str, _Held] = {}  # this process's locks, by real path of the directory


def _forget_in_child() -> None:
    # A forked child does not hold its parent's locks: close its copies of the lock files
    # so that the lock dies with the parent, not with the last orphaned child.
    for held in _HELD.values():
        if held.fd is not None:
            with contextlib.suppress(OSError):
                os.close(held.fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def is_main_process() -> bool:
    """True unless a launcher says this is a rank other than 0 (:data:`RANK_VARIABLES`,
    the first non-negative one counts, as in accelerate)."""
    for name in RANK_VARIABLES:
        try:
            rank = int(os.environ.get(name, "-1"))
        except ValueError:
            continue
        if rank >= 0:
            return rank == 0
    return True


@contextlib.contextmanager
def dir_lock(directory: str | os.PathLike, command: str, main_only: bool = False) -> Iterator[Path | None]:
    """Hold the lock of ``directory`` (created if needed) for the ``with`` block.

    ``command`` names the holder in a refused run's message (e.g. ``"sqvae-speech extract"``).
    Yields the lock file's path, or None when no lock was taken (``main_only`` on a rank
    other than 0, or a file system without locks). Raises
    :class:`~sqvae_speech.errors.LockedError` at once when another process holds it.
    """
    if main_only and not is_main_process():
        yield None
        return
    directory = Path(directory)
    key = os.path.realpath(directory)
    held = _HELD.get(key)
    if held is not None:
        held.depth += 1
        try:
            yield held.path if held.fd is not None else None
        finally:
            held.depth -= 1
        return
    held = _acquire(directory, command)
    _HELD[key] = held
    try:
        yield held.path if held.fd is not None else None
    finally:
        if _HELD.get(key) is held:
            del _HELD[key]
        if held.pid == os.getpid():  # a forked child leaving the block releases nothing
            _release(held)


def _acquire(directory: Path, command: str) -> _Held:
    created = []
    parent = directory
    while not parent.exists() and parent != parent.parent:
        created.append(parent)
        parent = parent.parent
    path = directory / LOCK_NAME
    for _ in range(_ATTEMPTS):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            continue  # the directory was removed by a run that just finished: make it again
        except OSError as e:
            raise SQVAEError(f"cannot create the lock file {path} ({e.strerror or e}); {directory} must be a "
                             "writable directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise LockedError(_locked_message(directory, holder)) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in _NO_LOCKS:
                raise
            print(f"sqvae-speech: warning: the file system of {directory} does not support locks ({e.strerror}); "
                  f"another run writing {directory} at the same time will not be detected", file=sys.stderr)
            return _Held(None, path, [])
        if _names(path, fd):
            _write(fd, command)
            return _Held(fd, path, created)
        os.close(fd)  # its holder removed it as it finished: lock the file that is there now
    raise SQVAEError(f"could not lock {path}: it was replaced {_ATTEMPTS} times in a row; run the command again")


def _names(path: Path, fd: int) -> bool:
    """True when ``path`` still names the open file ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _release(held: _Held) -> None:
    if held.fd is None:
        return
    try:
        # Removed while still locked (see the module docstring), then the lock goes with
        # the descriptor.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(held.path)
        for d in held.created:
            try:
                os.rmdir(d)  # only if empty: nothing else was written there
            except OSError:
                break
    finally:
        os.close(held.fd)


def _write(fd: int, command: str) -> None:
    now = time.time()
    info = {
        "pid": os.getpid(), "host": socket.gethostname(), "command": command,
        "argv": shlex.join([os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:]]),
        "started": datetime.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
        "started_unix": now,
    }
    data = (json.dumps(info) + "\n").encode("utf-8")
    with contextlib.suppress(OSError):  # details only: the lock is held whatever happens here
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


def _read(fd: int) -> dict[str, Any]:
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def read_lock(directory: str | os.PathLike) -> dict[str, Any]:
    """The details in ``directory``'s lock file ({} when there is none or it is unreadable).
    For tools and tests: a process holding the lock must not call this (see NFS above)."""
    try:
        fd = os.open(Path(directory) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        return _read(fd)
    finally:
        os.close(fd)


def _locked_message(directory: Path, info: dict[str, Any]) -> str:
    if info.get("pid"):
        pid, host = info["pid"], info.get("host", "?")
        who = (f"another run: pid {pid} on host {host}, started {info.get('started', '?')}, "
               f"{info.get('command', '?')} ({info.get('argv', '?')})")
        stop = f"stop it (kill {pid} on {host})"
    else:
        who, stop = "another process (it has not written its details into the lock file yet)", "stop it"
    return (f"{directory} is in use by {who}; wait until it has finished or {stop}, or write to another directory "
            "(the lock goes with that process, also when it is killed)")
