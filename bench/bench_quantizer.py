"""The quantizer alone: forward + backward time and peak memory, ours vs reference, for
the latents of one paper-sized batch (52 crops -> N = 52 x 16 = 832 positions, D = 64,
K = 512), variants I, III and IV, in training mode (Gumbel-softmax sample).

Ours: :class:`sqvae_speech.quantizers.GaussianSQ` (distance by two matrix products).
Reference: :class:`reference.RefSQEmbedding` (distance by an [N, D, K] broadcast).
The downstream loss is the latent loss plus <z_q, g> for a fixed random g, so gradients
flow through both the loss and the quantized output, as in training.

Peak memory. Each (implementation, variant) runs in a fresh Python process: it builds
the inputs, makes one small warm-up call (N = 16) so lazily allocated library buffers
exist, resets the kernel's peak-RSS mark (``5 > /proc/self/clear_refs``), reads its
resident set size (VmRSS), runs one full forward + backward and reports the peak RSS
(VmHWM) minus that RSS: the extra memory the call needed at its peak. (``ru_maxrss``
would not do: a child created by fork + exec inherits its parent's maximum.) On CUDA the
same child uses ``torch.cuda.max_memory_allocated`` instead.

    python bench/bench_quantizer.py --child ours gaussian_4 cpu   # one memory measurement
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import Result, alternate, median, run_child, time_ratio, with_kernel_counts
from reference import RefSQEmbedding

from sqvae_speech.quantizers import GaussianSQ

VARIANTS = {"gaussian_1": ("I", 0), "gaussian_3": ("III", 1), "gaussian_4": ("IV", 64)}
BATCH, LENGTH, DIM, CODES = 52, 16, 64, 512
SPEED_TARGET, MEMORY_TARGET = 20.0, 10.0


def make(impl: str, variant: str, device: torch.device, batch: int = BATCH, seed: int = 0):
    """(quantizer, z, log_var, g) with the same codebook and inputs for both implementations."""
    torch.manual_seed(seed)
    channels = VARIANTS[variant][1]
    z = torch.randn(batch, LENGTH, DIM, device=device, requires_grad=True)
    log_var = (0.3 * torch.randn(batch, LENGTH, max(channels, 1), device=device)).requires_grad_(True)
    g = torch.randn(batch, LENGTH, DIM, device=device)
    codebook = torch.randn(CODES, DIM)
    if impl == "ours":
        q = GaussianSQ(CODES, DIM, variant=VARIANTS[variant][0], var_space="log")
        with torch.no_grad():
            q.codebook.copy_(codebook)
    else:
        q = RefSQEmbedding(variant, CODES, DIM)
        with torch.no_grad():
            q.embedding.copy_(codebook)
    return q.to(device).train(), z, log_var, g


def step_fn(impl: str, variant: str, q: torch.nn.Module, z: torch.Tensor, log_var: torch.Tensor, g: torch.Tensor):
    scalar = torch.full((1,), math.log(10.0), device=z.device)  # the initial learned scalar
    batch = z.shape[0]

    def ours() -> None:
        out = q(z, None if variant == "gaussian_1" else log_var, None, 1.0)
        (out.loss / batch + (out.quantized * g).sum()).backward()

    def ref() -> None:
        lv = scalar if variant == "gaussian_1" else log_var + scalar
        zq, loss, _ = q(z, lv, 1.0)
        (loss + (zq * g).sum()).backward()

    return ours if impl == "ours" else ref


def child(impl: str, variant: str, device_name: str) -> dict[str, Any]:
    """Peak extra memory (bytes) of one forward + backward, measured in this process."""
    device = torch.device(device_name)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    small = make(impl, variant, device, batch=1)  # N = 16 positions
    step_fn(impl, variant, *small)()  # warm-up: kernels, library buffers
    q, z, log_var, g = make(impl, variant, device)
    fn = step_fn(impl, variant, q, z, log_var, g)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return {"peak_bytes": torch.cuda.max_memory_allocated() - base, "method": "torch.cuda.max_memory_allocated"}
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    rss_before = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    return {"peak_bytes": max(0, peak - rss_before) * 1024, "method": "VmHWM - VmRSS before the call",
            "peak_mark_reset": reset}


def _status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def measure_memory(impl: str, variant: str, device: torch.device, threads: int) -> dict[str, Any]:
    env = dict(os.environ, BENCH_THREADS=str(threads))
    return run_child(str(Path(__file__).resolve()), [impl, variant, str(device)], f"memory child {impl} {variant}", env)


def run(ctx: Any, judged: bool = True, name_suffix: str = "", note: str = "",
        extra_config: dict[str, Any] | None = None) -> list[Result]:
    """Quantizer time and peak memory, ours vs reference, per variant and device.
    ``judged=False`` (bench_allocator): time only, CPU only, no targets, names ending in
    ``name_suffix``."""
    results = []
    for device in ctx.devices if judged else [torch.device("cpu")]:
        suffix = ("" if device.type == "cpu" else f"_{device.type}") + name_suffix
        sync = torch.cuda.synchronize if device.type == "cuda" else None
        for variant, (roman, _) in VARIANTS.items():
            fns, per_call = with_kernel_counts(
                {impl: step_fn(impl, variant, *make(impl, variant, device)) for impl in ("ours", "reference")})
            check = agreement(variant, device)
            times = alternate(fns, max(ctx.reps, 5) * 2, warmup=2, sync=sync)
            r = time_ratio(f"quantizer_fwd_bwd_{roman}{suffix}", "ms", median(times["ours"]), median(times["reference"]),
                           SPEED_TARGET if device.type == "cpu" and judged else None,
                           config={"N": BATCH * LENGTH, "D": DIM, "K": CODES, "device": str(device), **check,
                                   "per_call": per_call(), **(extra_config or {})},
                           note=note)
            results.append(r)
            ctx.log(r)
            if not judged:
                continue
            mem = {impl: measure_memory(impl, variant, device, ctx.threads) for impl in ("ours", "reference")}
            mib = {k: v["peak_bytes"] / 2**20 for k, v in mem.items()}
            ratio = mib["reference"] / mib["ours"] if mib["ours"] > 0 else None
            r = Result(f"quantizer_peak_memory_{roman}{suffix}", "MiB", round(mib["ours"], 2), round(mib["reference"], 2),
                       None if ratio is None else round(ratio, 2),
                       f">= {MEMORY_TARGET:g}x" if device.type == "cpu" else "",
                       None if ratio is None or device.type != "cpu" else ratio >= MEMORY_TARGET,
                       config={"method": mem["ours"]["method"], "fresh_process": True,
                               **{f"{k}_peak_mark_reset": v.get("peak_mark_reset") for k, v in mem.items()}},
                       note="ratio = reference peak / our peak (lower memory is better)")
            results.append(r)
            ctx.log(r)
    return results


def agreement(variant: str, device: torch.device) -> dict[str, Any]:
    """Both formulations give the same logits and nearest codes on the same inputs."""
    q, z, log_var, _ = make("ours", variant, device)
    ref, _, _, _ = make("reference", variant, device)
    from reference import reference_distances

    with torch.no_grad():
        lv = None if variant == "gaussian_1" else log_var
        ours_logits = q.eval().logits(z, lv)
        scalar = q.log_var_scalar.detach().reshape(1)
        ref_lv = scalar if variant == "gaussian_1" else log_var + scalar
        ref_logits = -reference_distances(z, ref_lv, ref.embedding, variant).view_as(ours_logits)
    diff = float((ours_logits - ref_logits).abs().max() / ref_logits.abs().max())
    same = float((ours_logits.argmax(-1) == ref_logits.argmax(-1)).float().mean())
    return {"max_rel_logit_diff": diff, "same_argmax_share": same}


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], sys.argv[4])))
    else:
        sys.exit("usage: bench_quantizer.py --child ours|reference VARIANT DEVICE (the driver is bench/run.py)")
