"""User-facing errors.

Anything a user can cause (a bad path, a malformed data dir, a wrong option) raises a
subclass of :class:`SQVAEError` whose message names the file, line, utterance or option
at fault and says what to do. The CLI prints these without a traceback and exits 2.
"""

import difflib
import errno
from collections.abc import Iterable


def name_unknown(keys: Iterable[str], valid: Iterable[str]) -> str:
    """``'x' (did you mean 'y'?), 'z'``: unknown names quoted, each with its closest valid one."""
    valid = list(valid)
    return ", ".join(f"'{k}' (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(k, valid, n=1)) else f"'{k}'"
                     for k in keys)


class SQVAEError(Exception):
    """Base class for errors that are the input's fault, not the program's."""


class ConfigError(SQVAEError):
    """A configuration file or option is invalid."""


class AudioError(SQVAEError):
    """An audio file cannot be read or holds no usable signal."""


class DataDirError(SQVAEError):
    """A Kaldi-style data directory is malformed."""


class FeatureStoreError(SQVAEError):
    """A feature store is missing, incomplete or built with other settings."""


class CheckpointError(SQVAEError):
    """A checkpoint is missing, corrupt or does not fit the model asked for."""


class NonFiniteError(SQVAEError):
    """A loss, gradient or input became NaN or infinite."""


class CorpusError(SQVAEError):
    """A corpus directory does not have the expected layout or files."""


class LockedError(SQVAEError):
    """Another process is writing the directory this command would write.

    Raised at once by :func:`sqvae_speech.locks.dir_lock`; the message names the other
    process (pid, host, start time, command) and says what to do.
    """


class WorkerDiedError(SQVAEError):
    """A worker process of a parallel run died (SIGKILL, the out-of-memory killer).

    Raised by :func:`sqvae_speech.data.extract.extract` with ``nj > 1`` instead of
    :class:`concurrent.futures.process.BrokenProcessPool`; what was written is kept and the
    same command continues the run.
    """


class DiskFullError(SQVAEError, OSError):
    """A file could not be written because its file system is full (ENOSPC) or over quota.

    Raised by :mod:`sqvae_speech.fileio` for any atomic write, so the file being written
    was left as it was (the previous version intact, or absent) and no partial file
    remains. An :class:`OSError` with ``errno`` ENOSPC (or EDQUOT), so code that handles
    ``OSError`` keeps working.
    """

    def __init__(self, message: str, err: int = errno.ENOSPC) -> None:
        OSError.__init__(self, err, message)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        # OSError pickles as (errno, strerror); keep our argument order (worker -> parent).
        return (type(self), (str(self.strerror), int(self.errno or errno.ENOSPC)))
