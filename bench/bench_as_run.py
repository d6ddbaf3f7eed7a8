"""The training step with each side as it is run: ours as ``sqvae-speech train`` runs it
on CPU (freed memory kept, :func:`sqvae_speech.allocator.keep_freed_memory`) against the
reference as the authors' loop runs (glibc's default malloc). For information, no target.

The judged ``train_step_*`` figures keep both sides in one process, so both share one
malloc setting: the default there, freed memory kept in ``bench_allocator``. A process
cannot hold both settings, so here each side runs in its own fresh process (spawned, with
the same threads, weights and batch as bench_train), and the driver makes them step one
at a time, alternating (ours, reference, ours, ...), warm-up rounds first: load from other
processes hits both alike, as in the one-process figures. Each worker times its own step
and counts its page faults and system CPU time per step.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from multiprocessing.connection import Connection
from typing import Any

import torch
from common import Result, median, time_ratio

VARIANTS = {"gaussian_1": "I", "gaussian_3": "III", "gaussian_4": "IV"}


def _worker(conn: Connection, impl: str, variant: str, batch: tuple[Any, ...], names: tuple[str, ...],
            threads: int, keep_freed: bool) -> None:
    """One side in its own process: build the pair of models (same seed as bench_train),
    then answer each "step" with (seconds, page faults, system CPU seconds) until "stop"."""
    if keep_freed:
        from sqvae_speech.allocator import keep_freed_memory

        keep_freed_memory()
    import bench_train

    torch.set_num_threads(threads)
    mels, lengths, speakers = (torch.from_numpy(a) for a in batch)
    ours, ref = bench_train.make_pair(variant, names, torch.device("cpu"))
    step = bench_train.step_functions(ours, ref, mels, lengths, speakers)[impl]
    conn.send("ready")
    while conn.recv() == "step":
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        secs, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        conn.send((secs, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime))
    conn.close()


def run(ctx: Any) -> list[Result]:
    mels, lengths, speakers, names = ctx.crop_batch(52)
    batch = (mels.numpy(), lengths.numpy(), speakers.numpy())
    mp = multiprocessing.get_context("spawn")
    results = []
    for variant, roman in VARIANTS.items():
        sides = {"ours": True, "reference": False}  # keep freed memory?
        pipes, procs = {}, []
        try:
            for impl, keep in sides.items():
                parent, child = mp.Pipe()
                p = mp.Process(target=_worker, args=(child, impl, variant, batch, names, ctx.threads, keep), daemon=True)
                p.start()
                child.close()
                pipes[impl] = parent
                procs.append(p)
            for conn in pipes.values():
                if conn.recv() != "ready":
                    raise RuntimeError("bench_as_run: a worker did not start")
            log: dict[str, list[tuple[float, int, float]]] = {k: [] for k in sides}
            for round_ in range(2 + ctx.reps):  # two warm-up rounds
                for impl, conn in pipes.items():
                    conn.send("step")
                    out = conn.recv()
                    if round_ >= 2:
                        log[impl].append(out)
        finally:
            for conn in pipes.values():
                try:
                    conn.send("stop")
                except (BrokenPipeError, OSError):
                    pass
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
        per_step = {k: {"minor_page_faults": round(sum(x[1] for x in v) / len(v)),
                        "system_cpu_ms": round(1e3 * sum(x[2] for x in v) / len(v), 1)} for k, v in log.items()}
        r = time_ratio(
            f"train_step_{roman}_as_run", "ms", median([x[0] for x in log["ours"]]),
            median([x[0] for x in log["reference"]]), None,
            config={"variant": variant, "batch": 52, "reps": ctx.reps, "threads": ctx.threads,
                    "ours_keep_freed_memory": True, "reference_keep_freed_memory": False,
                    "ours_ms_all": [round(x[0] * 1e3, 1) for x in log["ours"]],
                    "reference_ms_all": [round(x[0] * 1e3, 1) for x in log["reference"]], "per_call": per_step},
            note="each side in its own process, stepped in lockstep: ours with freed memory kept (as `train` on "
                 "CPU), the reference with default malloc (as published); for information")
        results.append(r)
        ctx.log(r)
    return results
