"""Shared pieces of the benchmarks: the result record, side-by-side timing, the machine.

Timing rule for every "ours vs reference" figure: both run in the same process, after
warm-up calls, in alternation (ours, reference, ours, reference, ...), and the median of
each is reported. Load from other processes then slows both alike instead of whichever
happened to run while the machine was busy.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class Result:
    """One benchmark line. ``ratio`` is oriented so that > 1 means ours is better
    (reference time / our time, our rate / reference rate, reference memory / ours)."""

    name: str
    unit: str
    ours: float | None
    reference: float | None
    ratio: float | None
    target: str = ""
    passed: bool | None = None
    config: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_ratio(name: str, unit: str, ours_s: float, ref_s: float, target: float | None, **kw: Any) -> Result:
    """A Result from two median times in seconds (unit 'ms' or 's'); ratio = ref / ours."""
    scale = 1e3 if unit == "ms" else 1.0
    ratio = ref_s / ours_s if ours_s > 0 else None
    passed = None if target is None or ratio is None else ratio >= target
    return Result(name, unit, round(ours_s * scale, 3), round(ref_s * scale, 3),
                  None if ratio is None else round(ratio, 3),
                  "" if target is None else f">= {target:g}x", passed, **kw)


def alternate(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1,
              sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Wall seconds of each call, ``warmup`` untimed rounds first, then ``reps`` rounds
    in which every function runs once, in the given order."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for key, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[key].append(time.perf_counter() - t0)
    return times


def with_kernel_counts(fns: dict[str, Callable[[], Any]]) -> tuple[dict[str, Callable[[], Any]], Callable[[], dict[str, Any]]]:
    """``fns`` wrapped to count, per function, the process's minor page faults and system
    (kernel) CPU time during its calls -> (wrapped fns, a function giving the per-call means
    over every call so far, warm-up included: ``{key: {"minor_page_faults": n,
    "system_cpu_ms": ms}}``). Process-wide counters (all threads), so only meaningful when
    the functions run one at a time (as in :func:`alternate`)."""
    totals = {k: [0, 0, 0.0] for k in fns}  # calls, faults, system seconds

    def wrap(key: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def counted() -> Any:
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            out = fn()
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            t = totals[key]
            t[0] += 1
            t[1] += r1.ru_minflt - r0.ru_minflt
            t[2] += r1.ru_stime - r0.ru_stime
            return out
        return counted

    def per_call() -> dict[str, Any]:
        return {k: {"minor_page_faults": round(f / max(n, 1)), "system_cpu_ms": round(1e3 * s / max(n, 1), 1)}
                for k, (n, f, s) in totals.items()}

    return {k: wrap(k, fn) for k, fn in fns.items()}, per_call


def run_child(script: str, args: list[str], what: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python script --child ARGS`` in a fresh process and return the JSON object on
    its last line of output; a failing child raises with ``what`` and its stderr's tail."""
    proc = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True, env=env,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    """CPU model, cores, torch version, threads, GPU (if any) and the load right now."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average": load_average(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(OpenMP default)"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def table(results: list[Result]) -> str:
    """A plain-text table of results."""
    rows = [("benchmark", "unit", "ours", "reference", "ratio", "target", "ok")]
    for r in results:
        ok = "" if r.passed is None else ("yes" if r.passed else "NO")
        rows.append((r.name, r.unit, fmt(r.ours), fmt(r.reference), "-" if r.ratio is None else f"{r.ratio:.2f}x",
                     r.target, ok))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
