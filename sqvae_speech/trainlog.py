"""What training writes besides checkpoints: ``metrics.jsonl``, TensorBoard events and
stderr, each safe on a full disk.

- :func:`log_metrics` appends one JSON line per log interval with
  :func:`~sqvae_speech.fileio.append_bytes` (a full disk is a ``DiskFullError`` and never a
  torn line) and the same scalars to :class:`EventLog`;
- :class:`EventLog` writes TensorBoard's records in the caller's thread;
- :func:`lossy_stderr` drops output to a full stderr instead of stopping a run;
- :func:`trim_metrics` drops what a killed run logged past its last checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import json
import math
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .fileio import append_bytes, atomic_write_text


class EventLog:
    """A TensorBoard event file (``EXP/tensorboard/events.out.tfevents.*``, the records
    ``SummaryWriter.add_scalar`` writes), written in the caller's thread: each log interval
    is one :func:`~sqvae_speech.fileio.append_bytes`, so a full disk is a
    :class:`~sqvae_speech.errors.DiskFullError` at that call and never a torn record.

    ``SummaryWriter`` writes from a background thread instead: a failed write kills that
    thread (which prints its own traceback), the events after it are lost, and the error
    reaches the training loop as a bare ``OSError`` at whichever later call happens to
    check, with the partial record left at the end of the file.

    A new file per run, as ``SummaryWriter`` does; it starts with a ``SessionLog.START`` at
    ``start_step + 1``, so TensorBoard drops what an earlier run logged after the checkpoint
    this one resumed from (``SummaryWriter``'s ``purge_step``).
    """

    def __init__(self, logdir: Path, start_step: int) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary, self._records = event_pb2, summary_pb2, RecordWriter
        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = next(p for n in itertools.count() if not (p := logdir / f"{name}.{n}").exists())
        now = time.time()
        self._append([event_pb2.Event(wall_time=now, file_version="brain.Event:2"),
                      event_pb2.Event(wall_time=now, step=start_step + 1,
                                      session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        self._append([self._event.Event(wall_time=now, step=step, summary=self._summary.Summary(
            value=[self._summary.Summary.Value(tag=tag, simple_value=v)])) for tag, v in values.items()])

    def _append(self, events: list[Any]) -> None:
        buf = io.BytesIO()
        records = self._records(buf)
        for event in events:
            records.write(event.SerializeToString())
        append_bytes(self.path, buf.getvalue())

    def close(self) -> None:
        pass  # every record is written when it is logged


def open_event_log(exp_dir: Path, start_step: int) -> EventLog | None:
    try:
        return EventLog(exp_dir / "tensorboard", start_step)
    except ImportError:  # tensorboard is a dependency, but keep training alive without it
        print("[train] tensorboard is not installed: no TensorBoard events (metrics.jsonl has every logged value)",
              file=sys.stderr)
        return None


def log_metrics(exp_dir: Path, writer: EventLog | None, step: int, stats: dict[str, float]) -> None:
    """One line of ``EXP/metrics.jsonl`` and the same scalars in the TensorBoard events."""
    # non-finite values (the VQ-VAE has no variance: NaN) become null to keep strict JSON
    line = json.dumps({"step": step, **{k: round(v, 6) if math.isfinite(v) else None for k, v in stats.items()}})
    append_bytes(exp_dir / "metrics.jsonl", (line + "\n").encode("utf-8"))
    if writer is not None:
        writer.scalars(step, {f"train/{k}": v for k, v in stats.items() if math.isfinite(v)})


class _LossyStream:
    """A text stream whose writes that fail on a full file system (ENOSPC, EDQUOT) are
    dropped and counted instead of raised; any other error is raised."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.lost = 0
        self.error: OSError | None = None

    def _guard(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.lost += 1
            self.error = self.error or e
            return None

    def write(self, text: str) -> int:
        self._guard(self._stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def lossy_stderr() -> Iterator[None]:
    """While training, output to a stderr on a full file system (redirected to a log file)
    is dropped instead of stopping the run: the progress bar and messages are not worth
    the training, whose records (checkpoints, ``metrics.jsonl``) stop it with a clear
    error if their own disk is full. When the outermost block ends, the run says once how
    many writes were lost (if stderr can be written by then). Nested blocks do nothing."""
    if isinstance(sys.stderr, _LossyStream):
        yield
        return
    real, lossy = sys.stderr, _LossyStream(sys.stderr)
    sys.stderr = lossy
    finished = False
    try:
        yield
        finished = True
    finally:
        sys.stderr = real
        if lossy.lost:
            reason = lossy.error.strerror if lossy.error is not None else "disk full"
            outcome = ("training carried on: metrics.jsonl and the checkpoints are complete" if finished
                       else "the error below says why training stopped")
            with contextlib.suppress(OSError):
                print(f"[train] {lossy.lost} write(s) to stderr failed ({reason}) and were dropped; {outcome}",
                      file=real, flush=True)


def trim_metrics(exp_dir: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (a killed run may have logged past its last
    checkpoint, or before its first: ``step`` 0), and a torn line (a run killed while
    appending; a full disk cuts its partial line off itself)."""
    path = exp_dir / "metrics.jsonl"
    if not path.is_file():
        return

    def logged_step(line: str) -> int | None:
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            return None

    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines()
            if (s := logged_step(ln)) is not None and s <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))
