"""``make bench``: every benchmark, ours next to the reference formulation, in one run.

    SQVAE_CORPUS=recipes/fishfillets/download .venv/bin/python bench/run.py [--only NAMES]
        [--reps N] [--threads N] [--nj N] [--quick] [--out bench/results.json]

Prepares the embedded corpus (data dirs + feature stores) in a scratch dir, then runs
the benchmarks in this order: extract, train, quantizer, eval, encode, report, vocoder, abx,
utterances, as_run, allocator (utterances and allocator set the process-wide malloc option that
training sets; as_run runs each side in fresh processes of its own). Prints
one line per figure as it comes and a table at the end; writes ``bench/results.json``
(one object per figure: name, unit, ours, reference, ratio, target, passed, config, note;
plus the machine). See bench/README.md for what each benchmark compares.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import torch
from common import Result, machine, table

BENCHMARKS = ("extract", "train", "quantizer", "eval", "encode", "report", "vocoder", "abx", "utterances", "as_run",
              "allocator")


class Context:
    """What the benchmarks share: devices, repetitions, the corpus and its feature stores."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.threads = torch.get_num_threads()
        self.devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
        self.reps = args.reps
        self.extract_reps = 1 if args.quick else 3
        self.eval_reps = 1 if args.quick else 2
        self.eval_max_frames = 8000
        self.utterance_batches = 3 if args.quick else 16
        self.utterance_passes = 1 if args.quick else 3
        self.nj = args.nj
        self.corpus = corpus_dir()
        self.data_dir = work / "data"
        self.train_feats = work / "feats" / "train"
        self.test_feats = work / "feats" / "test"
        self._crops: Any = None

    def log(self, r: Result) -> None:
        ratio = "" if r.ratio is None else f"  ratio {r.ratio:.2f}x"
        ok = "" if r.passed is None else ("  [target met]" if r.passed else f"  [TARGET NOT MET: {r.target}]")
        print(f"  {r.name}: ours {r.ours} {r.unit}, reference {r.reference}{ratio}{ok}", flush=True)

    @property
    def train_store(self):
        from sqvae_speech.data.featstore import FeatureStore

        return FeatureStore.open(self.train_feats)

    @property
    def test_store(self):
        from sqvae_speech.data.featstore import FeatureStore

        return FeatureStore.open(self.test_feats)

    def crop_batch(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[str, ...]]:
        """A fixed batch of real 34-frame crops: (mels [B, 80, 34], lengths [B], speakers [B], speaker names)."""
        if self._crops is None or self._crops[0].shape[0] != batch:
            from sqvae_speech.data.batching import CropDataset, collate

            store = self.train_store
            names = tuple(store.speakers)
            ds = CropDataset(store, names, 32)
            g = torch.Generator().manual_seed(0)
            torch.manual_seed(0)
            idx = torch.randperm(len(ds), generator=g)[:batch].tolist()
            b = collate([ds[i] for i in idx])
            self._crops = (b.mels, b.lengths, b.speakers, names)
        return self._crops


def corpus_dir() -> Path:
    root = Path(os.environ.get("SQVAE_CORPUS", REPO / "recipes/fishfillets/download"))
    if not (root / ".done").is_file():
        sys.exit(f"bench: embedded corpus not found at {root}: run `make corpus` or set SQVAE_CORPUS "
                 "to a download dir made by recipes/fishfillets/local/download.sh")
    return root


def prepare(ctx: Context, need_train_feats: bool) -> None:
    """Data dirs of the embedded corpus and (untimed) feature stores the benchmarks read."""
    from sqvae_speech.data.extract import extract

    t0 = time.perf_counter()
    if not (ctx.data_dir / "train" / "wav.scp").is_file():
        from sqvae_speech.cli import main as cli

        rc = cli(["prepare", "fishfillets", str(ctx.corpus), str(ctx.data_dir)])
        if rc != 0:
            sys.exit("bench: `sqvae-speech prepare fishfillets` failed")
    extract(ctx.data_dir / "test", ctx.test_feats, nj=ctx.nj, progress=False)
    if need_train_feats:
        extract(ctx.data_dir / "train", ctx.train_feats, nj=ctx.nj, progress=False)
    print(f"[bench] corpus prepared in {time.perf_counter() - t0:.1f} s ({ctx.work})", flush=True)


def abx_results(ctx: Context) -> list[Result]:
    """ABX items/s from bench/bench_abx.py (written with the ABX scorer; no reference exists)."""
    spec = importlib.util.spec_from_file_location("bench_abx", HERE / "bench_abx.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    out = []
    for device in ctx.devices:
        figures = module.main(["--threads", str(ctx.threads), "--device", str(device)])
        suffix = "" if device.type == "cpu" else f"_{device.type}"
        r = Result(f"abx_items_per_s{suffix}", "items/s", figures["items_per_s"], None, None,
                   config=figures, note="no reference ABX scorer runs here (fastabx needs Python >= 3.12 and CUDA)")
        ctx.log(r)
        out.append(r)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="sqvae-speech benchmarks: ours vs the reference formulation")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of each side after warm-up (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--nj", type=int, default=2, help="extraction worker processes (default 2)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, figures are noisier)")
    p.add_argument("--out", default=str(HERE / "results.json"), help="results file (default bench/results.json)")
    p.add_argument("--work", help="scratch dir (default: a temporary dir, removed at the end)")
    args = p.parse_args(argv)
    only = BENCHMARKS if not args.only else tuple(x.strip() for x in args.only.split(","))
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.quick:
        args.reps = min(args.reps, 3)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sqvae-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, work)
    info = machine()
    print(f"[bench] {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['threads']} threads, "
          f"load average {info['load_average']}", flush=True)
    if not torch.cuda.is_available():
        print("[bench] no GPU: CUDA benchmarks not run", flush=True)

    t_start = time.perf_counter()
    prepare(ctx, need_train_feats="extract" not in only)
    modules = {"extract": "bench_extract", "train": "bench_train", "quantizer": "bench_quantizer",
               "utterances": "bench_utterances", "eval": "bench_eval", "encode": "bench_encode", "report": "bench_report",
               "vocoder": "bench_vocoder",
               "as_run": "bench_as_run", "allocator": "bench_allocator"}
    results: list[Result] = []
    errors: list[str] = []
    for name in BENCHMARKS:
        if name not in only:
            continue
        print(f"[bench] {name}", flush=True)
        t0 = time.perf_counter()
        try:
            if name == "abx":
                if not (HERE / "bench_abx.py").is_file():
                    print("[bench] ABX bench is not available (bench/bench_abx.py missing)", flush=True)
                    continue
                results += abx_results(ctx)
            else:
                results += importlib.import_module(modules[name]).run(ctx)
        except Exception:  # noqa: BLE001 -- one broken benchmark must not hide the others' figures
            errors.append(name)
            traceback.print_exc()
            print(f"[bench] {name} FAILED (traceback above)", flush=True)
        print(f"[bench] {name} took {time.perf_counter() - t0:.1f} s", flush=True)

    info["load_average_end"] = machine()["load_average"]
    info["total_seconds"] = round(time.perf_counter() - t_start, 1)
    from sqvae_speech.fileio import atomic_write_json

    # The output path is recorded relative to the repository: results.json is committed,
    # and no path of the machine that ran it belongs in the repository.
    recorded = {k: (os.path.relpath(v, HERE.parent) if k == "out" else v) for k, v in vars(args).items()}
    atomic_write_json(args.out, {"machine": info, "args": recorded,
                                 "failed_benchmarks": errors, "results": [r.to_dict() for r in results]})
    print()
    print(table(results))
    targets = [r for r in results if r.passed is not None]
    met = sum(r.passed for r in targets)
    print(f"\n[bench] targets met: {met}/{len(targets)}; total {info['total_seconds']:.0f} s; "
          f"load average at start {info['load_average']}, at end {info['load_average_end']}; wrote {args.out}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
