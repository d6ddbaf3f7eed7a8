"""``sqvae-speech extract DATA_DIR FEAT_DIR``: log-mel features of a data dir into a
packed feature store (:mod:`sqvae_speech.data.featstore`).

Resumable by design. The sorted utterances are cut into fixed shards of
:data:`SHARD_SIZE` (independent of ``--nj``, so a rerun with another ``--nj`` reuses
them). Worker processes compute whole shards (:mod:`sqvae_speech.data.shards`) and
write each atomically to ``FEAT_DIR/.parts/shard-XXXXX.npz``; when every shard exists
they are packed into ``feats.npy`` + ``index.json`` (index last), ``failed.txt`` is
written and ``.parts`` removed. A killed run leaves complete shards and at most stray
``.tmp-*`` files; the rerun computes only the missing shards. ``.parts/plan.json``
records the settings and the data the shards belong to, so shards of other settings are
never mixed in.

Bad input (unreadable, truncated, empty or silent audio, non-finite features) never stops
the run: the utterance goes to ``failed.txt`` as ``utt-id<TAB>reason`` and the command
exits 1 unless ``--skip-bad``. Clipped audio (at least
:data:`~sqvae_speech.data.audio.CLIPPED_FRACTION` of the samples at full scale, counted as
the audio is read) is extracted and listed in ``clipped.txt``, the same way, and in the
index; with ``max_clipped`` an utterance with more of its samples at full scale fails.
One FEAT_DIR is written by one run at a time: a second run stops at once with
:class:`~sqvae_speech.errors.LockedError` (:mod:`sqvae_speech.locks`).
A full disk stops the run with :class:`~sqvae_speech.errors.DiskFullError` (exit 2); the
shards written so far are kept, so the rerun after freeing space only does the rest.

``--overwrite`` keeps a complete store in FEAT_DIR readable until the new one is complete:
nothing of it is removed before packing, which writes the new ``feats.npy`` and
``index.json`` beside it and swaps them in by renames (:func:`write_featstore`; the two
need room side by side). A rebuild that stopped (a full disk, a kill) is continued by the
same command, ``--overwrite`` included: its shards are marked as a rebuild's in
``plan.json`` and reused; without ``--overwrite`` the old store is kept and the partial
rebuild discarded.

Recordings longer than a minute are read and computed block by block
(:mod:`sqvae_speech.data.longaudio`), and shards are written and packed a block at a time, so
memory stays bounded whatever the length of a recording (a 3-hour file included).

Workers start with multiprocessing's forkserver (spawn where there is none), so a script
calling :func:`extract` with ``nj > 1`` needs the usual ``if __name__ == "__main__":``.
A worker that dies (SIGKILL, the out-of-memory killer) stops the run with
:class:`~sqvae_speech.errors.WorkerDiedError` (exit 2) instead of a traceback; the shards
written so far are kept. A worker whose extract process is gone (SIGKILLed) exits at once
rather than computing on, orphaned, and writing shards beside the rerun.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from ..config import FeatureConfig
from ..errors import ConfigError, DiskFullError, FeatureStoreError, WorkerDiedError
from ..fileio import atomic_write_json, atomic_write_text
from ..locks import dir_lock
from .datadir import read_datadir, utterance_audio
from .featstore import INDEX, FeatureStore, config_diff, write_featstore
from .shards import Item, compute_shard, read_shards, shard_path, shard_totals
from .workers import init_worker

# Utterances per shard: small enough that a killed run loses little and the last shards
# balance across workers, large enough that the per-shard file costs nothing.
SHARD_SIZE = 100
# Utterances per logmel_batch call on CPU; 0 = the numpy logmel, one utterance at a time.
# Features only, one thread, embedded corpus: numpy float32 logmel ~2.8x the torch
# batched path at batch 1 (which beat batches 4 and 8: padding and masking cost more than
# batching saves) and ~3.6x librosa (bench/README.md). Reading and resampling the Ogg
# files then costs about as much as the features.
CPU_BATCH_SIZE = 0
CUDA_BATCH_SIZE = 32
PARTS = ".parts"
FAILED = "failed.txt"
CLIPPED = "clipped.txt"


@dataclasses.dataclass
class ExtractSummary:
    """What one :func:`extract` call did."""

    feat_dir: Path
    num_utterances: int  # in the store (when complete), else in the data dir
    failed: dict[str, str]  # utt -> reason, over all shards done so far
    audio_seconds: float  # audio of the extracted utterances, all shards done so far
    computed_seconds: float  # audio of the utterances this call computed
    wall_seconds: float
    cpu_seconds: float  # CPU time of this call's shard computations, all workers
    num_shards: int
    shards_computed: list[int]  # shard numbers this call computed
    complete: bool  # the store exists and is complete
    already_extracted: bool = False
    # extracted utterances with at least CLIPPED_FRACTION of their samples at full scale:
    # utt -> that fraction, over all shards done so far
    clipped: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def num_failed(self) -> int:
        return len(self.failed)

    @property
    def real_time_factor(self) -> float:
        """Audio seconds computed per wall-clock second of this call."""
        return self.computed_seconds / max(self.wall_seconds, 1e-9)


def extract(
    data_dir: str | Path,
    feat_dir: str | Path,
    config: FeatureConfig | None = None,
    nj: int = 1,
    device: str = "cpu",
    batch_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    shard_size: int | None = None,
    max_shards: int | None = None,
    max_clipped: float | None = None,
) -> ExtractSummary:
    """Extract log-mel features of every utterance of ``data_dir`` into ``feat_dir``.

    Args:
        nj: worker processes (each computes one shard at a time).
        device: 'cpu' or 'cuda' for the batched torch path.
        batch_size: utterances per :func:`~sqvae_speech.data.features.logmel_batch` call
            (default :data:`CPU_BATCH_SIZE` / :data:`CUDA_BATCH_SIZE`); 0 uses the numpy
            reference :func:`~sqvae_speech.data.features.logmel` per utterance.
        overwrite: rebuild an existing complete store (kept readable until the new one is
            complete); continues the shards of an earlier ``overwrite`` run that stopped.
        shard_size: utterances per shard (default :data:`SHARD_SIZE`); part of the resume plan.
        max_shards: compute at most this many missing shards, then stop without packing
            (a stand-in for a killed run in tests; ``complete`` is then False).
        max_clipped: an utterance with more than this fraction of its samples at full
            scale fails (``failed.txt``); None: no limit, clipped ones are only listed.

    Returns:
        An :class:`ExtractSummary`; ``failed`` lists the utterances left out and why.
    """
    t0 = time.perf_counter()
    config = config or FeatureConfig()
    feat_dir = Path(feat_dir)
    shard_size = SHARD_SIZE if shard_size is None else shard_size
    if nj < 1 or shard_size < 1:
        raise ConfigError(f"--nj and the shard size must be >= 1, got {nj} and {shard_size}")
    batch_size = _check_device(device, batch_size)
    if max_clipped is not None and not 0.0 <= max_clipped <= 1.0:
        raise ConfigError(f"--max-clipped must be a fraction of the samples between 0 and 1 (0.01 = 1 %), got {max_clipped}")

    dd = read_datadir(data_dir, check_files=False)  # a missing file fails its utterance only
    items: list[Item] = [(u, *utterance_audio(dd, u)) for u in dd.utterances]
    fingerprint = _fingerprint(items, dd.utt2spk)
    with dir_lock(feat_dir, "sqvae-speech extract"):
        if (feat_dir / INDEX).is_file() and not overwrite:
            return _existing(feat_dir, config, fingerprint, max_clipped, t0)
        # --overwrite removes nothing of a complete store: packing swaps the new one in.
        kept = (f"; the complete store already in {feat_dir} is left as it was and stays readable until the "
                "rebuild is complete (it is replaced only then, so the rebuild needs room for both; the same "
                "command with --overwrite continues the rebuild)") if overwrite and (feat_dir / INDEX).is_file() else ""

        parts = feat_dir / PARTS
        shards = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
        plan = {"feature_config": config.to_dict(), "fingerprint": fingerprint, "shard_size": shard_size,
                "num_shards": len(shards)} | ({} if max_clipped is None else {"max_clipped": max_clipped})
        _prepare_parts(parts, plan, overwrite=overwrite)
        missing = [k for k in range(len(shards)) if not shard_path(parts, k).is_file()]
        done_utts = len(items) - sum(len(shards[k]) for k in missing)
        todo = missing if max_shards is None else missing[:max_shards]
        try:
            computed = _run_shards(parts, shards, todo, config, nj, device, batch_size, progress, len(items),
                                   done_utts, max_clipped)
        except DiskFullError as e:
            raise DiskFullError(f"{e}; the shards already written in {parts} are kept and will not be computed again"
                                f"{kept}", e.errno or errno.ENOSPC) from e

        stats: dict[str, Any] = {
            "feat_dir": feat_dir, "computed_seconds": sum(r["seconds"] for r in computed),
            "cpu_seconds": sum(r["cpu_seconds"] for r in computed), "num_shards": len(shards),
            "shards_computed": sorted(r["shard"] for r in computed),
        }
        if len(todo) < len(missing):
            failed, clipped, seconds, _ = shard_totals(parts, len(shards))
            return ExtractSummary(num_utterances=len(items), failed=failed, audio_seconds=seconds, clipped=clipped,
                                  wall_seconds=time.perf_counter() - t0, complete=False, **stats)
        try:
            store, failed, clipped, seconds = _pack(parts, feat_dir, len(shards), dd.utt2spk, config, fingerprint,
                                                    data_dir, {u: p for u, p, _, _ in items}, max_clipped)
        except DiskFullError as e:
            raise DiskFullError(f"{e}; all {len(shards)} shard(s) in {parts} are kept: the rerun only packs them{kept}",
                                e.errno or errno.ENOSPC) from e
        return ExtractSummary(num_utterances=len(store), failed=failed, audio_seconds=seconds, clipped=clipped,
                              wall_seconds=time.perf_counter() - t0, complete=True, **stats)


def _check_device(device: str, batch_size: int | None) -> int:
    if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
        raise ConfigError(f"--device must be cpu or cuda, got '{device}'")
    if device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA device is available; use --device cpu")
    if batch_size is None:
        return CPU_BATCH_SIZE if device == "cpu" else CUDA_BATCH_SIZE
    if batch_size < 0:
        raise ConfigError(f"--batch-size must be >= 0, got {batch_size}")
    return batch_size


def _fingerprint(items: list[Item], utt2spk: dict[str, str]) -> str:
    """Identity of the input (ids, paths, segment times, speakers), not of file contents."""
    rows = [[u, p, s, e, utt2spk[u]] for u, p, s, e in items]
    return hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest()


def _existing(feat_dir: Path, config: FeatureConfig, fingerprint: str, max_clipped: float | None,
              t0: float) -> ExtractSummary:
    """A complete store is kept when it matches the request; otherwise say how to rebuild."""
    store = FeatureStore.open(feat_dir)
    rebuild = "pass --overwrite to rebuild it or choose another FEAT_DIR"
    if store.config != config:
        raise FeatureStoreError(
            f"{feat_dir} already holds features extracted with other settings "
            f"({config_diff(store.config, config)}); {rebuild}"
        )
    info = store.index.get("extraction", {})
    if info.get("fingerprint") != fingerprint:
        raise FeatureStoreError(
            f"{feat_dir} already holds features of other utterances "
            f"(from data dir {info.get('data_dir', 'unknown')}); {rebuild}"
        )
    if info.get("max_clipped") != max_clipped:
        def limit(v: float | None) -> str:
            return "no --max-clipped limit" if v is None else f"--max-clipped {v:g}"

        raise FeatureStoreError(f"{feat_dir} already holds features extracted with {limit(info.get('max_clipped'))}, "
                                f"this run asks for {limit(max_clipped)}; {rebuild}")
    shutil.rmtree(feat_dir / PARTS, ignore_errors=True)  # a run killed right after packing
    return ExtractSummary(
        feat_dir, len(store), dict(info.get("failed", {})), float(info.get("audio_seconds", 0.0)), 0.0,
        time.perf_counter() - t0, 0.0, 0, [], complete=True, already_extracted=True,
        clipped=dict(info.get("clipped", {})),
    )


def _prepare_parts(parts: Path, plan: dict[str, Any], overwrite: bool) -> None:
    """Keep the shards in ``parts`` that belong to ``plan``, remove the others.

    ``--overwrite`` starts afresh, except over the shards of an earlier ``--overwrite`` run
    with the same plan (marked ``"overwrite": true`` in plan.json), which it continues; a
    run without it continues any shards of the same plan."""
    plan_file = parts / "plan.json"
    if parts.is_dir():
        try:
            old = json.loads(plan_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        same = isinstance(old, dict) and {k: v for k, v in old.items() if k != "overwrite"} == plan
        if not same or (overwrite and old.get("overwrite") is not True):
            shutil.rmtree(parts)  # shards of other settings or data must never be packed
    parts.mkdir(parents=True, exist_ok=True)
    for stray in [*parts.glob(".tmp-*"), *parts.parent.glob(".tmp-*")]:
        stray.unlink(missing_ok=True)  # a killed writer's leftovers, never complete files
    if not plan_file.is_file():
        atomic_write_json(plan_file, plan | ({"overwrite": True} if overwrite else {}))


# ------------------------------------------------------------------------------ workers


def _run_shards(
    parts: Path, shards: list[list[Item]], todo: list[int], config: FeatureConfig, nj: int,
    device: str, batch_size: int, progress: bool, total: int, initial: int, max_clipped: float | None,
) -> list[dict[str, Any]]:
    from tqdm import tqdm

    cfg = config.to_dict()
    jobs = {k: (k, str(shard_path(parts, k)), shards[k], cfg, batch_size, device, max_clipped) for k in todo}
    results: list[dict[str, Any]] = []
    with tqdm(total=total, initial=initial, unit="utt", desc="extract", disable=None if progress else True) as bar:
        if min(nj, len(todo)) <= 1:
            # One shard to do (or --nj 1): a worker process would cost more than it saves.
            # One torch thread, as in workers: these small ops gain nothing from more, and
            # spinning threads lose a lot on a busy machine.
            torch = None
            if batch_size > 0:
                import torch
            threads = torch.get_num_threads() if torch else 0
            if torch:
                torch.set_num_threads(1)
            try:
                for k in todo:
                    results.append(compute_shard(*jobs[k]))
                    bar.update(len(shards[k]))
            finally:
                if torch:
                    torch.set_num_threads(threads)
            return results
        use_torch = batch_size > 0  # the batched torch path (CUDA); 0 = numpy logmel, no torch
        pool = ProcessPoolExecutor(max_workers=min(nj, len(todo)), mp_context=_mp_context(use_torch),
                                   initializer=init_worker, initargs=(use_torch, os.getpid()))
        try:
            futures = {pool.submit(compute_shard, *jobs[k]): k for k in todo}
            remaining = set(futures)
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for fut in finished:
                    try:
                        results.append(fut.result())  # a worker's bug propagates with its traceback
                    except BrokenProcessPool as e:
                        done = sum(shard_path(parts, k).is_file() for k in range(len(shards)))
                        raise WorkerDiedError(
                            f"a worker process died while computing feature shards (killed by a signal, e.g. "
                            f"SIGKILL or the out-of-memory killer; {e}); the {done} of {len(shards)} shard(s) "
                            f"written in {parts} are kept: rerun the same command to compute only the rest"
                        ) from e
                    bar.update(len(shards[futures[fut]]))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def _mp_context(use_torch: bool) -> multiprocessing.context.BaseContext:
    # Workers fork from a clean server that imported the heavy modules once; forking this
    # process instead could inherit torch/OpenMP state that deadlocks in a child. The
    # numpy path imports neither torch nor librosa (features.mel_filterbank): their
    # imports (~1.5 s and ~0.85 s) were ~20 % of extracting the embedded corpus, --nj 2.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["sqvae_speech.data.features", "sqvae_speech.data.audio", "sqvae_speech.data.longaudio"]
                                   + (["torch"] if use_torch else []))
        return ctx
    return multiprocessing.get_context("spawn")


# ------------------------------------------------------------------------------ packing


def _pack(
    parts: Path, feat_dir: Path, n: int, utt2spk: dict[str, str], config: FeatureConfig,
    fingerprint: str, data_dir: str | Path, paths: dict[str, str], max_clipped: float | None,
) -> tuple[FeatureStore, dict[str, str], dict[str, float], float]:
    failed, clipped, seconds, num_frames = shard_totals(parts, n)
    # failed.txt and clipped.txt are swapped in with the store (an old store keeps its own)
    side_files = {name: "".join(f"{u}\t{r}\n" for u, r in rows.items()) if rows else None
                  for name, rows in ((FAILED, {u: failed[u] for u in sorted(failed)}),
                                     (CLIPPED, {u: f"{paths[u]}: {100 * clipped[u]:.3g} % of the samples at full scale"
                                                for u in sorted(clipped)}))}
    if num_frames == 0:
        if side_files[FAILED] is not None:
            atomic_write_text(feat_dir / FAILED, side_files[FAILED])  # the reasons the message points to
        first = next(iter(sorted(failed.items())), ("-", "the data dir lists no utterances"))
        raise FeatureStoreError(
            f"no utterance of {data_dir} could be extracted: all {len(failed)} failed, reasons in "
            f"{feat_dir / FAILED} (first: {first[0]}: {first[1]}); fix the audio or the data dir"
        )

    def blocks() -> Iterator[tuple[str, str, Iterator[np.ndarray]]]:
        # Shards in order keep the store sorted; features are copied a block at a time.
        for utt, rows in read_shards(parts, n, config.n_mels):
            yield utt, utt2spk[utt], rows

    extra = {"extraction": {
        "data_dir": str(Path(data_dir).resolve()), "fingerprint": fingerprint,
        "audio_seconds": seconds, "failed": failed, "clipped": clipped, "max_clipped": max_clipped,
    }}
    store = write_featstore(feat_dir, blocks(), config, num_frames=num_frames, extra=extra, side_files=side_files)
    shutil.rmtree(parts, ignore_errors=True)
    return store, failed, clipped, seconds
