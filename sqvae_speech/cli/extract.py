"""`sqvae-speech extract`: log-mel features of a data dir into a packed feature store."""

from __future__ import annotations

import argparse
import sys

from ..config import load_feature_config
from ..data.audio import CLIP_LEVEL, CLIPPED_FRACTION
from ..data.extract import CLIPPED, CPU_BATCH_SIZE, CUDA_BATCH_SIZE, FAILED, extract


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_dir", metavar="DATA_DIR", help="Kaldi-style data dir (wav.scp, utt2spk[, segments])")
    parser.add_argument("feat_dir", metavar="FEAT_DIR", help="output feature store directory")
    parser.add_argument("--nj", type=int, default=1, help="parallel worker processes (default 1)")
    parser.add_argument("--config", help="YAML with feature settings (a 'features' section or the settings themselves)")
    parser.add_argument("--skip-bad", action="store_true", help="exit 0 even if some utterances failed (see failed.txt)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (batched torch features)")
    parser.add_argument(
        "--batch-size", type=int, default=None,
        help=f"utterances per batched feature call (default {CPU_BATCH_SIZE} on cpu, {CUDA_BATCH_SIZE} on cuda; "
        "0: the numpy reference, one utterance at a time)",
    )
    parser.add_argument(
        "--max-clipped", type=float, default=None, metavar="FRACTION",
        help=f"fail an utterance (failed.txt) when more than FRACTION of its samples are at full scale "
        f"(|x| >= {CLIP_LEVEL} of the format's full scale), e.g. 0.01 = 1 %%; default: no limit, utterances "
        f"with at least {CLIPPED_FRACTION:g} of them are extracted and listed in FEAT_DIR/{CLIPPED}",
    )
    parser.add_argument("--overwrite", action="store_true", help="rebuild FEAT_DIR even if it holds a complete store")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    config = load_feature_config(args.config)
    s = extract(
        args.data_dir, args.feat_dir, config, nj=args.nj, device=args.device, batch_size=args.batch_size,
        overwrite=args.overwrite, progress=args.progress, max_clipped=args.max_clipped,
    )
    failed = f", {s.num_failed} failed (see {s.feat_dir / FAILED})" if s.failed else ", 0 failed"
    if s.already_extracted:
        print(f"{s.feat_dir}: already extracted ({s.num_utterances} utterances{failed}); --overwrite rebuilds it")
    else:
        print(
            f"{s.feat_dir}: {s.num_utterances} utterances extracted{failed}; {s.audio_seconds / 3600:.2f} h of "
            f"audio, {s.computed_seconds / 3600:.2f} h computed in {s.wall_seconds:.1f} s = "
            f"{s.real_time_factor:.0f}x real time (--nj {args.nj}; "
            f"{s.computed_seconds / max(s.cpu_seconds, 1e-9):.0f}x per CPU-second of shard work)"
        )
    if s.clipped:
        worst = sorted(s.clipped, key=lambda u: (-s.clipped[u], u))
        named = ", ".join(f"{u} ({100 * s.clipped[u]:.2g} %)" for u in worst[:5]) + (", ..." if len(worst) > 5 else "")
        print(f"extract: warning: {len(worst)} utterance(s) clipped, extracted anyway (at least {100 * CLIPPED_FRACTION:g} % of "
              f"their samples at full scale): {named}; all in {s.feat_dir / CLIPPED}; --max-clipped FRACTION makes "
              "them failures", file=sys.stderr)
    if s.failed and not args.skip_bad:
        print(f"{s.num_failed} utterance(s) failed; fix them or pass --skip-bad to accept that", file=sys.stderr)
        return 1
    return 0
