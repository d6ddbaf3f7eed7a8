"""Worker processes: the context every worker pool of the package starts from
(:func:`worker_context`), and the set-up of ``extract --nj N``'s workers, each of which
ends as soon as the run that started it is gone, so a SIGKILLed run leaves no orphan
writing shards beside its rerun."""

from __future__ import annotations

import os
import select
import threading
import time
from typing import Any


def init_worker(use_torch: bool, main_pid: int) -> None:
    """Set up an extraction worker: it ends with the run (:func:`exit_with`), and uses one
    torch thread."""
    exit_with(main_pid)
    if use_torch:
        import torch

        # nj processes share the cores; intra-op threads on top would oversubscribe them.
        torch.set_num_threads(1)


def exit_with(pid: int) -> None:
    """End this worker as soon as process ``pid`` (the extract run) is gone.

    A SIGKILLed run leaves its forkserver and workers alive: blocked on the task queue
    forever, and the busy ones first finish their shard, writing it while the rerun works
    in the same ``.parts``. A daemon thread waits on a pidfd of the run (polls its pid
    where there is no pidfd) and ends the process; a half-written ``.tmp-*`` shard it
    leaves is removed by the rerun."""
    try:
        fd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        fd = None

    def watch() -> None:
        if fd is not None:
            select.select([fd], [], [])  # readable once the process has exited
        else:
            while True:
                time.sleep(0.2)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-extract", daemon=True).start()


def worker_context() -> Any:
    """The multiprocessing context for worker pools of a process that may hold torch
    threads: forkserver where there is one (a fork would copy those threads' locks), spawn
    elsewhere."""
    import multiprocessing

    return multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                       else "spawn")
