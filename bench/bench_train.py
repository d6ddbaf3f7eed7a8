"""Training step (forward + backward + clip + Adam step) of the paper's configuration:
batch 52 crops of 32 + 2 frames, 768 channels, K = 512, D = 64, variants I, III and IV.

Ours: :class:`sqvae_speech.models.SpeechSQVAE` with the optimizer of
:func:`sqvae_speech.models.build_optimizer`, stepped as ``sqvae_speech.train`` does.
Reference: :class:`reference.RefSQVAE` (plain Conv1d/BatchNorm1d/ReLU encoder, broadcast
[N, D, K] quantizer, unpacked GRU decoder) with ``torch.optim.Adam`` defaults, stepped as
the authors' loop does (including its three ``.item()`` calls per step). Both start from
the same weights and see the same batch of real crops.

On CUDA (only when ``torch.cuda.is_available()``) the module also measures our step in
fp32 and under bf16 autocast, the achieved TFLOP/s of the encoder convolutions, and
whether the DataLoader keeps the GPU busy.
"""

from __future__ import annotations

from typing import Any

import torch
from common import Result, alternate, median, time_ratio, with_kernel_counts
from reference import reference_from_ours

from sqvae_speech.config import ModelConfig, TrainConfig
from sqvae_speech.models import SpeechSQVAE, build_optimizer
from sqvae_speech.nets.speech import ENCODER_CONVS

VARIANTS = {"gaussian_1": ("I", 1.8), "gaussian_3": ("III", 1.8), "gaussian_4": ("IV", 2.0)}


def make_pair(variant: str, speakers: tuple[str, ...], device: torch.device, seed: int = 0):
    """(ours, reference) models with the same weights, in training mode, on ``device``."""
    torch.manual_seed(seed)
    ours = SpeechSQVAE(ModelConfig(variant=variant, speakers=speakers)).to(device).train()
    ref = reference_from_ours(ours.cpu()).to(device).train()
    return ours.to(device), ref


def step_functions(ours: SpeechSQVAE, ref: torch.nn.Module, mels: torch.Tensor, lengths: torch.Tensor,
                   speakers: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Closures doing one training step each."""
    tc = TrainConfig()
    device = mels.device
    opt_o = build_optimizer(ours, tc.lr)
    sched_o = torch.optim.lr_scheduler.MultiStepLR(opt_o, milestones=list(tc.milestones), gamma=tc.gamma)
    opt_r = torch.optim.Adam(ref.parameters(), lr=tc.lr)
    sched_r = torch.optim.lr_scheduler.MultiStepLR(opt_r, milestones=list(tc.milestones), gamma=tc.gamma)
    state = {"step": 0}

    def ours_step() -> None:
        tau = tc.temperature(state["step"])
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            out = ours(mels, lengths, speakers, temperature=tau)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), tc.grad_clip)
        opt_o.step()
        sched_o.step()
        opt_o.zero_grad(set_to_none=True)
        state["step"] += 1

    def ref_step() -> None:
        opt_r.zero_grad()
        out = ref(mels, speakers, tc.temperature(state["step"]))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), tc.grad_clip)
        opt_r.step()
        sched_r.step()
        out.recon.item(), out.kl.item(), out.perplexity.item()

    return {"ours": ours_step, "reference": ref_step}


def sync_for(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else None


def run(ctx: Any, judged: bool = True, name_suffix: str = "", note: str = "",
        extra_config: dict[str, Any] | None = None) -> list[Result]:
    """Training-step time, ours vs reference, for variants I, III, IV on every device in
    ``ctx.devices``. ``judged=False`` (bench_allocator) reports without targets, on CPU
    only, under names ending in ``name_suffix``."""
    results = []
    extra_config = extra_config or {}
    for device in ctx.devices if judged else [torch.device("cpu")]:
        mels, lengths, speakers, names = ctx.crop_batch(52)
        mels, lengths, speakers = mels.to(device), lengths.to(device), speakers.to(device)
        suffix = "" if device.type == "cpu" else f"_{device.type}"
        for variant, (roman, target) in VARIANTS.items():
            ours, ref = make_pair(variant, names, device)
            fns, per_call = with_kernel_counts(step_functions(ours, ref, mels, lengths, speakers))
            times = alternate(fns, ctx.reps, warmup=2, sync=sync_for(device))
            results.append(time_ratio(
                f"train_step_{roman}{suffix}{name_suffix}", "ms", median(times["ours"]), median(times["reference"]),
                target if device.type == "cpu" and judged else None,
                config={"variant": variant, "batch": 52, "frames": int(mels.shape[-1]), "channels": 768,
                        "K": 512, "D": 64, "device": str(device), "reps": ctx.reps,
                        "ours_ms_all": [round(t * 1e3, 1) for t in times["ours"]],
                        "reference_ms_all": [round(t * 1e3, 1) for t in times["reference"]],
                        "per_call": per_call(), **extra_config},
                note=note,
            ))
            ctx.log(results[-1])
            del ours, ref, fns
        if device.type == "cuda" and judged:
            results += cuda_extras(ctx, device, mels, lengths, speakers, names)
    return results


# ----------------------------------------------------------------------------- CUDA only

# Dense peak TFLOP/s of common GPUs from the vendors' data sheets (no sparsity; SXM
# parts unless named; the first name found in the device name wins): (fp32 without tensor cores, tf32 tensor cores or None, bf16 tensor cores with
# fp32 accumulation). cuDNN runs fp32 convolutions on TF32 tensor cores by default
# (torch.backends.cudnn.allow_tf32), so the fp32 line is judged against the TF32 peak
# then. A GPU not listed reports only the measured matmul rate.
PEAK_TFLOPS = {"H100 PCIe": (51.2, 378.0, 756.0), "H100": (67.0, 494.7, 989.4), "H200": (67.0, 494.7, 989.4), "A100": (19.5, 156.0, 312.0),
               "L40S": (91.6, 183.0, 362.1), "A10": (31.2, 62.5, 125.0), "V100": (15.7, None, None),
               "L4": (30.3, 60.0, 121.0), "RTX 4090": (82.6, 82.6, 165.2)}


def peak_tflops(device_name: str, dtype: torch.dtype, tf32: bool) -> tuple[float | None, str]:
    """(data-sheet dense peak, which peak) for the encoder convs of ``dtype`` on this GPU."""
    peaks = next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)
    if peaks is None:
        return None, "unknown GPU"
    fp32, tf32_peak, bf16 = peaks
    if dtype == torch.bfloat16:
        return bf16, "bf16 tensor cores"
    if tf32 and tf32_peak is not None:
        return tf32_peak, "tf32 tensor cores (cudnn.allow_tf32)"
    return fp32, "fp32 (no tensor cores)"


def encoder_conv_flops(batch: int, frames: int, channels: int = 768, n_mels: int = 80) -> float:
    """FLOPs of the five encoder convolutions, forward + input gradient + weight gradient."""
    total, t, c_in = 0.0, frames, n_mels
    for i, (k, s, p) in enumerate(ENCODER_CONVS):
        t = (t + 2 * p - k) // s + 1
        fwd = 2.0 * batch * t * channels * c_in * k
        total += fwd * (2 if i == 0 else 3)  # the first conv needs no input gradient
        c_in = channels
    return total


def _cuda_time(fn, reps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def cuda_extras(ctx: Any, device: torch.device, mels: torch.Tensor, lengths: torch.Tensor,
                speakers: torch.Tensor, names: tuple[str, ...], conv_batches: tuple[int, ...] = (52, 512),
                matmul_n: int = 8192, loader_steps: int = 60, loader_train: TrainConfig | None = None) -> list[Result]:
    """The GPU-only figures: bf16 vs fp32 step, encoder-conv TFLOP/s at ``conv_batches``
    crops, a ``matmul_n``^2 fp32 matmul and the DataLoader wait share over ``loader_steps``
    steps (with ``loader_train``, default :class:`TrainConfig`). The defaults are the
    benchmark's; tests run it smaller on the CPU with the CUDA calls stubbed."""
    out = []
    # fp32 vs bf16 autocast step time (ours, variant IV).
    ours, ref = make_pair("gaussian_4", names, device)
    fp32 = step_functions(ours, ref, mels, lengths, speakers)["ours"]
    bf16 = step_functions(ours, ref, mels, lengths, speakers, autocast_dtype=torch.bfloat16)["ours"]
    times = alternate({"bf16": bf16, "fp32": fp32}, ctx.reps, warmup=3, sync=torch.cuda.synchronize)
    r = time_ratio("train_step_IV_bf16_vs_fp32_cuda", "ms", median(times["bf16"]), median(times["fp32"]), None,
                   config={"device": str(device)}, note="ours under bf16 autocast (ours column) vs ours in fp32 "
                   "(reference column); ratio = speed-up of bf16")
    out.append(r)
    ctx.log(r)

    # Achieved TFLOP/s of the encoder convolutions vs the GPU's peak.
    name = torch.cuda.get_device_name(device)
    frames, channels = int(mels.shape[-1]), ours.config.encoder.channels
    for big in conv_batches:
        x = torch.randn(big, 80, frames, device=device)
        lens = torch.full((big,), frames, device=device)
        flops = encoder_conv_flops(big, frames, channels)
        for dtype in (torch.float32, torch.bfloat16):
            def fwd_bwd(dtype: torch.dtype = dtype, x: torch.Tensor = x, lens: torch.Tensor = lens) -> None:
                with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                    y, _ = ours.encoder(x, lens)
                y.float().sum().backward()
            sec = _cuda_time(fwd_bwd, max(3, ctx.reps))
            tflops = flops / sec / 1e12
            label = "fp32" if dtype == torch.float32 else "bf16"
            peak_v, peak_kind = peak_tflops(name, dtype, torch.backends.cudnn.allow_tf32)
            out.append(Result(f"encoder_conv_tflops_{label}_batch{big}_cuda", "TFLOP/s", round(tflops, 2), peak_v,
                              None if peak_v is None else round(tflops / peak_v, 3), config={
                                  "device": name, "flops_per_step": flops, "seconds": sec, "peak": peak_kind,
                                  "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                                  "cudnn_tf32": torch.backends.cudnn.allow_tf32},
                              note="reference column = data-sheet dense peak; ratio = fraction of peak"))
            ctx.log(out[-1])
    a = torch.randn(matmul_n, matmul_n, device=device)
    mm = _cuda_time(lambda: a @ a, 5)
    out.append(Result(f"matmul_{matmul_n}_fp32_cuda", "TFLOP/s", round(2 * matmul_n**3 / mm / 1e12, 2), None, None,
                      config={"device": name}, note="a large matmul: the fp32 rate this GPU reaches in practice"))
    ctx.log(out[-1])
    out.append(dataloader_busy(ctx, ours, device, loader_steps, loader_train))
    ctx.log(out[-1])
    return out


def dataloader_busy(ctx: Any, model: SpeechSQVAE, device: torch.device, steps: int = 60,
                    train: TrainConfig | None = None) -> Result:
    """Share of wall time a training loop on the GPU spends waiting for the next batch,
    with the DataLoader settings training uses (``train``, default ``TrainConfig()``: crops)."""
    import time

    from sqvae_speech.config import ExperimentConfig
    from sqvae_speech.train import build_loader

    if steps <= 5:
        raise ValueError(f"dataloader_busy needs more than the 5 start-up steps it leaves out, got {steps}")
    cfg = ExperimentConfig().replace(model=model.config, train=train or TrainConfig())
    loader = build_loader(cfg, ctx.train_store, seed=0, pin_memory=True)
    opt = build_optimizer(model, 4e-4)
    wait = total = 0.0
    n = 0
    it = iter(loader)
    t_start = time.perf_counter()
    while n < steps:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        t1 = time.perf_counter()
        out = model(batch.mels.to(device, non_blocking=True), batch.lengths.to(device), batch.speakers.to(device))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if n >= 5:  # after the workers have started
            wait += t1 - t0
            total += time.perf_counter() - t0
        n += 1
    return Result("dataloader_wait_share_cuda", "% of step time", round(100 * wait / max(total, 1e-9), 2), None, None,
                  config={"steps": steps - 5, "num_workers": cfg.train.num_workers, "batch": cfg.train.batch_size,
                          "wall_s": round(time.perf_counter() - t_start, 2)},
                  note="time blocked on next(loader) / step time; near 0 = the loader keeps the GPU busy")
