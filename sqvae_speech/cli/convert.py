"""`sqvae-speech convert`: resynthesis and voice conversion with a vocoder, and the listening page.

``--list`` converts the rows of a conversion list. ``--make-list DATA_DIR ...`` builds
the list itself: it chooses the source and target speakers
(:func:`~sqvae_speech.synthesis.conversion_list.choose_speakers`: ``--speakers``,
``--num-speakers``, ``--targets``, ``--num-targets``, ``--target-sources``) and their
utterances (:func:`~sqvae_speech.synthesis.conversion_list.make_conversion_list`). With
``--f0-data`` it also computes the F0 statistics a WORLD conversion needs, when
``--f0-stats`` is missing or lacks a speaker, so that a recipe's conversion stage is one
command.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import SQVAEError
from ..synthesis.conversion_list import (
    ConversionItem,
    choose_speakers,
    make_conversion_list,
    merge_datadirs,
    read_conversion_list,
    write_conversion_list,
)
from ..synthesis.convert import F0_NORMS, run_conversion
from ..synthesis.vocoders import VOCODERS

if TYPE_CHECKING:
    from ..config import FeatureConfig
    from ..data.datadir import DataDir

F0_UTTS_PER_SPEAKER = 50  # ~3 min of speech per speaker; harvest takes ~150 CPU-s per 4 speakers


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="audio files to convert to each --speaker (instead of --list / --make-list); any format, "
                        "rate and channel count; outputs OUT/<stem>_to_<speaker>.wav")
    p.add_argument("--exp", "--model", dest="exp", required=True,
                   help="model file (sqvae-speech package), experiment dir (newest checkpoint) or checkpoint file")
    p.add_argument("--speaker", help="with FILEs: the target speaker(s), separated by commas")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--list", dest="conv_list", help="rows 'source target_speaker output_name' (source: utterance id or audio path)")
    src.add_argument("--make-list", metavar="DATA_DIR", nargs="+",
                     help="build the list: the first --per-speaker utterances of each source speaker of the DATA_DIRs "
                          "(taken together), each converted to every target speaker; written to OUT/list.txt. "
                          "The DATA_DIRs are also --data unless it is given (several: their chosen utterances are "
                          "written to the data dir OUT/data)")
    p.add_argument("--per-speaker", type=int, default=2, help="--make-list: source utterances per speaker (default 2)")
    p.add_argument("--min-seconds", type=float, default=1.5, help="--make-list: shortest source in seconds (default 1.5)")
    p.add_argument("--speakers",
                   help="--make-list: source speakers, separated by commas or spaces (blank: as if not given). "
                        "Default: the first --num-speakers speakers of the first DATA_DIR; without --num-speakers, "
                        "only the targets' own with --target-sources, else every speaker of the DATA_DIRs the "
                        "model knows (all of them if it knows none)")
    p.add_argument("--num-speakers", type=int, default=0, metavar="N",
                   help="--make-list without --speakers: the sources are the first N speakers (sorted ids) of the "
                        "first DATA_DIR (default 0: see --speakers)")
    p.add_argument("--targets",
                   help="--make-list: target speakers, each a training speaker of the model, separated by commas or "
                        "spaces (blank: as if not given). Default: the first --num-targets training speakers; "
                        "without it, the sources the model knows")
    p.add_argument("--num-targets", type=int, default=0, metavar="N",
                   help="--make-list without --targets: the targets are the first N training speakers of the "
                        "model (sorted ids; default 0: see --targets)")
    p.add_argument("--target-sources", action="store_true",
                   help="--make-list: each target that has utterances in the DATA_DIRs is a source too (decoded as "
                        "itself: a reconstruction, the listener's reference)")
    p.add_argument("--vocoder", choices=VOCODERS, default="world",
                   help="world (default), griffinlim, or neural (the trained neural vocoder: needs --vocoder-model)")
    p.add_argument("--vocoder-model", metavar="VOCODER.pt",
                   help="the neural vocoder: vocoder.pt written by `sqvae-speech train-vocoder` (or its EXP dir)")
    p.add_argument("--compare-vocoders", metavar="NAMES",
                   help="also render every item through these vocoders (separated by commas), played under the "
                        "main one on the page, e.g. 'world,griffinlim'")
    p.add_argument("--out", required=True, help="output dir: <name>.wav, <name>.png, conversion.json, index.html")
    p.add_argument("--feats", help="feature store holding the source utterances")
    p.add_argument("--data", help="data dir holding the source utterances' audio (WORLD and the neural vocoder need it)")
    p.add_argument("--f0-stats", help="per-speaker F0 statistics (sqvae-speech f0-stats); needed by WORLD and neural "
                   "conversions")
    p.add_argument("--f0-data", metavar="DATA_DIR",
                   help="WORLD / neural: the training data dir; when --f0-stats is missing, lacks a speaker the conversion "
                        "needs (each target, and each source speaker of DATA_DIR) or was measured otherwise, "
                        "compute it from DATA_DIR for those speakers (then a rerun reuses it)")
    p.add_argument("--f0-utts-per-speaker", type=int, default=F0_UTTS_PER_SPEAKER, metavar="N",
                   help=f"--f0-data: evenly spaced utterances per speaker (default {F0_UTTS_PER_SPEAKER}; 0: all)")
    p.add_argument("--nj", type=int, default=1, help="--f0-data: parallel F0 worker processes (default 1)")
    p.add_argument("--f0-method", choices=("harvest", "dio"),
                   help="F0 estimator for WORLD and the neural vocoder (default: the one --f0-stats used, else harvest)")
    p.add_argument("--f0-norm", choices=F0_NORMS, default="speaker",
                   help="WORLD / neural F0 mapping: by the source speaker's log-F0 statistics (default; keeps each line's "
                        "register) or by the source utterance's own (every output at the target's median)")
    p.add_argument("--similarity", metavar="DATA_DIR",
                   help="held-out recordings of the target and source speakers: each output's speaker similarity "
                        "to them (Resemblyzer) goes into conversion.json and beside its audio on the page")
    p.add_argument("--gl-iters", type=int, default=100, help="Griffin-Lim iterations (default 100)")
    p.add_argument("--seed", type=int, default=0, help="Griffin-Lim initial phase seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def speaker_names(value: str | None) -> list[str] | None:
    """``"a,b c"`` -> ``["a", "b", "c"]``; None or a blank value -> None (not given)."""
    names = [x for x in re.split(r"[,\s]+", value or "") if x]
    return names or None


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model

    data = args.data
    given = [x for x, on in (("FILEs", args.files), ("--list", args.conv_list), ("--make-list", args.make_list)) if on]
    if len(given) != 1:
        raise SQVAEError("give the sources one way: audio FILEs with --speaker, --list LIST or --make-list DATA_DIR"
                         + (f" (got {' and '.join(given)})" if given else ""))
    model, cfg = load_model(args.exp)[:2] if args.make_list or args.f0_data else (None, None)
    if args.files:
        items, where = file_items(args.files, speaker_names(args.speaker)), "the command line"
        source_speakers, dd = [], None
    elif args.conv_list:
        items, where = read_conversion_list(args.conv_list), str(args.conv_list)
        source_speakers: list[str] = []
        dd = None
    else:
        dd = merge_datadirs(args.make_list)
        source_speakers, targets = choose_speakers(
            dd, list(model.config.speakers), speaker_names(args.speakers), args.num_speakers,
            speaker_names(args.targets), args.num_targets, args.target_sources)
        items = make_conversion_list(dd, args.per_speaker, args.min_seconds, source_speakers, targets)
        where = f"--make-list {' '.join(args.make_list)}"
        print(f"sources: {', '.join(source_speakers)}; targets: {', '.join(targets)}; {len(items)} items")
    f0_stats = args.f0_stats
    compare = speaker_names(args.compare_vocoders) or []
    bad = [v for v in compare if v not in VOCODERS]
    if bad:
        raise SQVAEError(f"--compare-vocoders: unknown vocoder(s) {', '.join(bad)}; choose from {', '.join(VOCODERS)}")
    if args.f0_data:
        if all(v == "griffinlim" for v in [args.vocoder, *compare]):
            print(f"--vocoder {args.vocoder}: no F0 statistics needed")
            f0_stats = None  # not even an old file
        else:
            if not args.f0_stats:
                raise SQVAEError("--f0-data needs --f0-stats FILE, the statistics to reuse or write")
            wanted = [it.target for it in items] + source_speakers
            ensure_f0_stats(args.f0_stats, args.f0_data, list(dict.fromkeys(wanted)), cfg.features,
                            args.f0_method, args.f0_utts_per_speaker, args.nj, args.progress,
                            required=[it.target for it in items])
    with tempfile.TemporaryDirectory(prefix="sqvae-convert-") as tmp:
        subset = None
        if dd is not None and not data:
            if len(args.make_list) == 1:
                data = args.make_list[0]
            else:  # one data dir holding the chosen sources of all of them
                subset = Path(tmp) / "data"
                write_subset(dd, [it.source for it in items], subset)
                data = str(subset)
        manifest = run_conversion(args.exp, items, args.out, args.vocoder, args.feats, data, f0_stats,
                                  args.f0_method, args.gl_iters, args.seed, args.device, args.progress, where=where,
                                  f0_norm=args.f0_norm, similarity_data=args.similarity,
                                  vocoder_model=args.vocoder_model, compare_vocoders=compare)
        if dd is not None:
            write_conversion_list(Path(args.out) / "list.txt", items)  # what was converted, for --list next time
        if subset is not None:
            write_subset(dd, [it.source for it in items], Path(args.out) / "data")  # the --data of that list
    recon = [m["mse_db2"] for m in manifest if "mse_db2" in m]
    extra = f"; reconstructions: mean dB^2 MSE {np.mean(recon):.1f}" if recon else ""
    scored = [m for m in manifest if not m["reconstruction"] and "similarity" in m and m["source_speaker"]]
    if scored:
        to_target = [m["similarity"][m["target"]] for m in scored]
        to_source = [m["similarity"][m["source_speaker"]] for m in scored]
        closer = sum(t > s for t, s in zip(to_target, to_source))
        extra += (f"; speaker similarity {np.mean(to_target):.3f} to the target, {np.mean(to_source):.3f} to the "
                  f"source, {closer} of {len(scored)} closer to the target")
    print(f"{len(manifest)} items written to {args.out} ({args.vocoder}){extra}; listen: {Path(args.out) / 'index.html'}")
    return 0


def file_items(files: Sequence[str], speakers: list[str] | None) -> list[ConversionItem]:
    """Each audio file converted to each speaker, named ``<stem>_to_<speaker>``."""
    if not speakers:
        raise SQVAEError("converting FILEs needs --speaker (one or more target speakers, separated by commas)")
    items, used = [], set()
    for f in files:
        if not Path(f).is_file():
            raise SQVAEError(f"{f}: no such audio file")
        stem = re.sub(r"[^A-Za-z0-9._+-]", "_", Path(f).stem).lstrip("._+-") or "audio"
        for spk in speakers:
            safe = re.sub(r"[^A-Za-z0-9._+-]", "_", spk)  # a speaker name may hold '/', '..' or markup
            name, k = f"{stem}_to_{safe}", 1
            while name in used:
                k += 1
                name = f"{stem}-{k}_to_{safe}"
            used.add(name)
            items.append(ConversionItem(str(f), spk, name))
    return items


def write_subset(dd: DataDir, utterances: Sequence[str], out: Path) -> None:
    """The data dir ``out`` holding ``utterances`` of ``dd`` (their recordings and segments)."""
    from ..data.datadir import write_datadir

    utts = sorted(set(utterances))
    utt2spk = {u: dd.utt2spk[u] for u in utts}
    if dd.segments is None:
        write_datadir(out, {u: dd.wav_scp[u] for u in utts}, utt2spk)
    else:
        segments = {u: dd.segments[u] for u in utts}
        write_datadir(out, {rec: dd.wav_scp[rec] for rec, _, _ in segments.values()}, utt2spk, segments)


def ensure_f0_stats(path: str, data_dir: str, speakers: Sequence[str], config: FeatureConfig, method: str | None,
                    per_speaker: int, nj: int, progress: bool, required: Sequence[str] = ()) -> None:
    """Make sure the F0 statistics file ``path`` holds every one of ``speakers`` that is a
    speaker of ``data_dir`` (``required`` ones must be), measured with ``method`` (if
    given) at ``config``'s sample rate and hop; otherwise compute them from ``data_dir``
    (``per_speaker`` evenly spaced utterances each) and write ``path``."""
    from ..data.datadir import read_datadir
    from ..synthesis.f0 import compute_f0_stats, read_f0_stats, write_f0_stats

    dd = read_datadir(data_dir)
    absent = [s for s in dict.fromkeys(required) if s not in dd.spk2utt]
    if absent:
        raise SQVAEError(f"--f0-data {data_dir}: target speaker(s) {', '.join(absent)} have no utterance there, so "
                         "their F0 statistics cannot be computed; pass the model's training data dir")
    wanted = [s for s in speakers if s in dd.spk2utt]
    if Path(path).is_file():
        old = read_f0_stats(path)
        if (set(wanted) <= set(old.speakers) and (method is None or old.method == method)
                and (old.sample_rate, old.hop_length) == (config.sample_rate, config.hop_length)):
            print(f"{path} holds the F0 statistics of {', '.join(wanted)}: reusing it (remove it to recompute)")
            return
    with tempfile.TemporaryDirectory(prefix="sqvae-f0-") as tmp:
        write_subset(dd, [u for u, s in dd.utt2spk.items() if s in wanted], Path(tmp) / "data")
        stats = compute_f0_stats(Path(tmp) / "data", nj=nj, method=method or "harvest", config=config,
                                 progress=progress, max_utts_per_speaker=per_speaker)
    stats.data = str(Path(data_dir).resolve())
    write_f0_stats(path, stats)
    unvoiced = [s for s, v in stats.speakers.items() if not v.has_voice]
    note = f"; no voiced frame: {', '.join(unvoiced)}" if unvoiced else ""
    print(f"{path}: F0 statistics of {', '.join(wanted)} from {data_dir} ({stats.method}, "
          f"{per_speaker or 'all'} utterances per speaker){note}")
