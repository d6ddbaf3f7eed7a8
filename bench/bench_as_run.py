"""The training step with each side as it is run: ours as ``sqvae-speech train`` runs it
on CPU (freed memory kept, :func:`sqvae_speech.nets.cpu.allocator.keep_freed_memory`)
against the reference as the authors' loop runs (glibc's default malloc). For information,
no target.

A process holds one malloc setting, so neither the judged ``train_step_*`` figures (both
sides in one process, default malloc) nor bench_allocator's (both with freed memory kept)
can pair the two as they are run. Here each side runs alone in a fresh Python process
(``bench_as_run.py --child``) built as bench_train builds it: the same seed, weights,
crop batch (saved by the driver) and threads; two untimed steps, then ``reps`` timed ones.
The processes take turns, one at a time (ours then the reference, then the other way
round, ``ROUNDS`` rounds), and each side's figure is the median of all its timed steps.

An earlier version kept both sides alive in two processes stepped in lockstep. Inside
``make bench`` the reference's steps there spent 740-880 ms per step in the kernel
against 450-500 ms in one process, for a reason not found, and it was dropped
(bench/README.md); one process at a time avoids whatever that was.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import Result, median, run_child, time_ratio

VARIANTS = {"gaussian_1": "I", "gaussian_3": "III", "gaussian_4": "IV"}
ROUNDS = 2
NOTE = ("each side in its own fresh process, one at a time, taking turns: ours with freed memory kept "
        "(as `train` runs on CPU), the reference with default malloc (as published); for information")


def child(impl: str, variant: str, batch_file: str, threads: int, reps: int) -> dict[str, Any]:
    """One side, alone in this process: per timed step (seconds, minor page faults,
    system CPU seconds), and whether freed memory is kept (ours, where glibc allows)."""
    kept = False
    if impl == "ours":
        from sqvae_speech.nets import cpu as cpu_kernels
        from sqvae_speech.nets.cpu.allocator import keep_freed_memory

        if cpu_kernels.enabled():  # as `train` does (SQVAE_CPU_KERNELS)
            kept = keep_freed_memory()
    import bench_train

    torch.set_num_threads(threads)
    saved = torch.load(batch_file, weights_only=True)
    ours, ref = bench_train.make_pair(variant, tuple(saved["names"]), torch.device("cpu"))
    step = bench_train.step_functions(ours, ref, saved["mels"], saved["lengths"], saved["speakers"])[impl]
    for _ in range(2):
        step()
    steps = []
    for _ in range(reps):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        secs, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        steps.append((secs, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime))
    return {"steps": steps, "keep_freed_memory": kept}


def _run_child(impl: str, variant: str, batch_file: Path, threads: int, reps: int) -> dict[str, Any]:
    return run_child(str(Path(__file__).resolve()), [impl, variant, str(batch_file), str(threads), str(reps)],
                     f"bench_as_run: the {impl} {variant} process")


def run(ctx: Any) -> list[Result]:
    mels, lengths, speakers, names = ctx.crop_batch(52)
    batch_file = ctx.work / "as_run_batch.pt"
    torch.save({"mels": mels, "lengths": lengths, "speakers": speakers, "names": list(names)}, batch_file)
    try:
        return _run_all(ctx, batch_file, 1 if ctx.args.quick else ROUNDS)
    finally:
        batch_file.unlink(missing_ok=True)


def _run_all(ctx: Any, batch_file: Path, rounds: int) -> list[Result]:
    results = []
    for variant, roman in VARIANTS.items():
        log: dict[str, list[list[float]]] = {"ours": [], "reference": []}
        kept = set()
        for r in range(rounds):
            for impl in ("ours", "reference") if r % 2 == 0 else ("reference", "ours"):
                out = _run_child(impl, variant, batch_file, ctx.threads, ctx.reps)
                log[impl] += out["steps"]
                if impl == "ours":
                    kept.add(out["keep_freed_memory"])
        per_step = {k: {"minor_page_faults": round(median([s[1] for s in v])),
                        "system_cpu_ms": round(1e3 * median([s[2] for s in v]), 1)} for k, v in log.items()}
        results.append(time_ratio(
            f"train_step_{roman}_as_run", "ms", median([s[0] for s in log["ours"]]),
            median([s[0] for s in log["reference"]]), None,
            config={"variant": variant, "processes_per_side": rounds, "timed_steps_per_process": ctx.reps,
                    "ours_keep_freed_memory": kept == {True},
                    "ours_ms_all": [round(s[0] * 1e3, 1) for s in log["ours"]],
                    "reference_ms_all": [round(s[0] * 1e3, 1) for s in log["reference"]],
                    "per_step_median": per_step},
            note=NOTE))
        ctx.log(results[-1])
    return results


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))))
    else:
        sys.exit("usage: bench_as_run.py --child ours|reference VARIANT BATCH_FILE THREADS REPS "
                 "(the driver is bench/run.py)")
