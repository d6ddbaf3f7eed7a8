"""``sqvae-speech evaluate``: the paper's dB^2 MSE and whole-set codebook usage.

For every evaluation utterance (odd T trimmed by one frame): encode with deterministic
quantization, decode as the utterance's own speaker (or the speaker a list names), and

    MSE = sum_utts sum (out - mel[:, 1:-1])^2 * 80^2 / (n_mels * sum_utts (T - 2)).

Utterances run in length-bucketed padded batches; the masked model makes the result
equal to one-at-a-time evaluation. Writes ``EXP/results.json``.

It holds the lock of the directory it writes the results into (:mod:`sqvae_speech.locks`)
for its whole run, taken before the model loads: a conflict shows at once, not after the
evaluation, and two evaluations never race for one ``results.json``. For the default
``EXP/results.json`` that is the experiment dir, so an experiment that is not training
(the usual case, and any number of evaluations one after another) is evaluated as before,
while one that is training is refused with the trainer's pid: its newest checkpoint
changes (and older ones are pruned) under the evaluation, and its ``results.json`` would
describe a model that no longer is the experiment's. ``--out`` elsewhere evaluates a
running training's checkpoint anyway (the lock is then on the ``--out`` file's directory).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .checkpoint import load_model
from .data.batching import MIN_FRAMES, UtteranceDataset, bucket_batches, collate
from .data.featstore import FeatureStore
from .errors import FeatureStoreError, SQVAEError
from .fileio import atomic_write_json
from .locks import dir_lock
from .models import DB_SCALE, SpeechSQVAE, codebook_size
from .quantizers import CodebookUsage
from .zerospeech.bitrate import entropy_bits


@dataclass
class EvalResult:
    variant: str
    step: int
    seed: int
    mse_db2: float
    set_perplexity: float
    used_codes: int
    # ZeroSpeech 2019 bitrate of the code sequence: latent frames / seconds x entropy (bits)
    # of the set's code histogram (each code one symbol); NaN without codes (the VAE).
    bitrate: float
    num_codes: int
    num_utterances: int
    num_frames: int  # compared mel frames, sum of (T - 2)
    per_speaker_mse_db2: dict[str, float] = field(default_factory=dict)
    checkpoint: str = ""
    data: str = ""
    seconds: float = 0.0
    segment_frames: int = 0  # > 0: each utterance in consecutive segments of this many frames (evaluate_model)


def read_eval_list(path: str | Path) -> list[tuple[str, str]]:
    """(utterance, speaker) pairs from a JSON list of pairs or a text file of ``utt spk`` lines."""
    path = Path(path)
    if not path.is_file():
        raise SQVAEError(f"evaluation list {path} does not exist")
    text = path.read_text(encoding="utf-8")
    pairs: list[tuple[str, str]] = []
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SQVAEError(f"evaluation list {path} is not valid JSON: {e}") from None
        for i, row in enumerate(data):
            if not (isinstance(row, (list, tuple)) and len(row) == 2 and all(isinstance(x, str) for x in row)):
                raise SQVAEError(f"evaluation list {path} item {i}: expected [utterance, speaker], got {row!r}")
            pairs.append((row[0], row[1]))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise SQVAEError(f"evaluation list {path} line {n}: expected 'utterance speaker', got {line!r}")
            pairs.append((parts[0], parts[1]))
    if not pairs:
        raise SQVAEError(f"evaluation list {path} is empty")
    return pairs


def check_items(model: SpeechSQVAE, store: FeatureStore, items: Sequence[tuple[str, str]], source: str) -> None:
    """Every utterance exists, is long enough, and every speaker is known to the model."""
    known = set(model.config.speakers)
    for utt, spk in items:
        if utt not in store:
            raise SQVAEError(f"{source}: utterance '{utt}' is not in the feature store {store.path}")
        if spk not in known:
            raise SQVAEError(f"{source}: speaker '{spk}' (utterance '{utt}') was not seen in training; "
                             f"known speakers: {', '.join(sorted(known))}")
        if store.frames(utt) < MIN_FRAMES:
            raise SQVAEError(f"{source}: utterance '{utt}' has {store.frames(utt)} frames; the encoder needs at least {MIN_FRAMES}")


@torch.no_grad()
def split_segments(mels: torch.Tensor, lengths: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive ``n``-frame segments of each utterance of a padded batch, each to be
    evaluated on its own: mels [B, n_mels, T], lengths [B] -> (segments [S, n_mels, n],
    owners [S], the batch row of each). A tail shorter than ``n`` is left out."""
    segs, owners = [], []
    for b, length in enumerate(lengths.tolist()):
        for start in range(0, length - n + 1, n):
            segs.append(mels[b, :, start : start + n])
            owners.append(b)
    if not segs:
        return mels.new_zeros((0, mels.shape[1], n)), torch.zeros(0, dtype=torch.long)
    return torch.stack(segs), torch.tensor(owners, dtype=torch.long)


def evaluate_model(model: SpeechSQVAE, store: FeatureStore, items: Sequence[tuple[str, str]],
                   max_frames: int = 8000, device: str | torch.device = "cpu",
                   progress: bool = False,
                   segment_frames: int = 0) -> tuple[float, CodebookUsage, dict[str, tuple[float, int]], int]:
    """dB^2 MSE over ``items`` [(utt, speaker)]; returns (mse, usage, per-speaker (sse, frames), frames).

    ``max_frames`` bounds padded frames per batch (1 -> one utterance at a time).
    ``segment_frames`` N > 0: each utterance is cut into consecutive N-frame segments (the
    tail shorter than N left out), and each segment is encoded and decoded on its own, as
    the crops of training are: the error at the training crop length (``train.crop_frames``)
    against the whole-utterance error of N = 0.
    """
    from tqdm import tqdm

    model.eval().to(device)
    ds = UtteranceDataset(store, model.config.speakers, [u for u, _ in items], [s for _, s in items])
    # The continuous VAE has no codes: its indices are all -1, so usage stays empty (NaN, 0).
    usage = CodebookUsage(max(codebook_size(model.quantizer), 1))
    per_spk: dict[str, tuple[float, int]] = {}
    total_sse, total_frames = 0.0, 0
    batches = bucket_batches(ds.lengths(), max_frames)
    for idx in tqdm(batches, desc="evaluate", unit="batch", disable=not progress):
        batch = collate([ds[i] for i in idx])
        mels = batch.mels.to(device)
        if not torch.isfinite(mels).all():
            bad = [u for u, m in zip(batch.utts, mels) if not torch.isfinite(m).all()]
            raise FeatureStoreError(f"features of {', '.join(bad)} in {store.path} contain NaN/inf; re-extract them")
        lengths = batch.lengths.to(device)
        speakers = batch.speakers.to(device)
        owners = torch.arange(len(idx))
        if segment_frames:
            mels, owners = split_segments(mels, batch.lengths, segment_frames)
            if not len(owners):
                continue
            lengths = torch.full((len(owners),), segment_frames, dtype=torch.long, device=device)
            speakers = speakers[owners.to(device)]
        enc = model.encode(mels, lengths)
        out, out_lengths = model.decode(enc.quantized, enc.lengths, speakers)
        target = mels[:, :, 1 : 1 + out.shape[-1]]
        valid = torch.arange(out.shape[-1], device=device)[None, :] < out_lengths[:, None]
        sse = (((out.float() - target.float()) ** 2).sum(1) * valid).sum(1).double().cpu()  # [B] or [S]
        usage.update(enc.indices.cpu())
        for k, b in enumerate(owners.tolist()):
            spk = ds.speaker_names[idx[b]]
            s, f = per_spk.get(spk, (0.0, 0))
            per_spk[spk] = (s + float(sse[k]), f + int(out_lengths[k]))
        total_sse += float(sse.sum())
        total_frames += int(out_lengths.sum())
    n_mels = model.config.n_mels
    mse = total_sse * DB_SCALE**2 / (n_mels * max(total_frames, 1))
    return mse, usage, per_spk, total_frames


def code_bitrate(usage: CodebookUsage, seconds: float) -> float:
    """ZeroSpeech 2019 bitrate (bits/s) of the codes counted in ``usage`` over ``seconds`` of
    speech, each code a symbol: the bitrate of a quantized export without writing it. NaN
    when no code was counted (a continuous model)."""
    counts = usage.counts.numpy()
    n = int(counts.sum())
    if n == 0 or seconds <= 0:
        return math.nan
    return n / seconds * entropy_bits(counts)


def evaluate(exp_or_ckpt: str | Path, feats_dir: str | Path, eval_list: str | Path | None = None,
             out: str | Path | None = None, max_frames: int = 8000, device: str | None = None,
             progress: bool = True, segment_frames: int = 0) -> EvalResult:
    """Evaluate a checkpoint on a feature store (all utterances, own speakers) or a list;
    ``segment_frames``: see :func:`evaluate_model`.

    Writes ``out`` (default ``EXP/results.json``), holding the lock of its directory
    throughout (module docstring)."""
    exp = Path(exp_or_ckpt)
    if out:
        results = Path(out)
    elif exp.is_file():  # a checkpoint of EXP/checkpoints/, or a model file (results beside it)
        results = exp.parent.parent / "results.json" if exp.parent.name == "checkpoints" else exp.with_suffix(".results.json")
    else:
        results = exp / "results.json"
    with dir_lock(results.parent, "sqvae-speech evaluate"):
        result = _evaluate(exp_or_ckpt, feats_dir, eval_list, max_frames, device, progress, segment_frames)
        atomic_write_json(results, asdict(result))
    return result


def _evaluate(exp_or_ckpt: str | Path, feats_dir: str | Path, eval_list: str | Path | None, max_frames: int,
              device: str | None, progress: bool, segment_frames: int = 0) -> EvalResult:
    t0 = time.time()
    if segment_frames and (segment_frames < MIN_FRAMES or segment_frames % 2):
        raise SQVAEError(f"--segment-frames must be an even number of at least {MIN_FRAMES} frames, got {segment_frames}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, step, ckpt_path = load_model(exp_or_ckpt)
    store = FeatureStore.open(feats_dir, expect_config=cfg.features, expected_by=f"checkpoint {ckpt_path}",
                              verify="full")  # every checksum: a damaged store is refused naming its utterances
    if eval_list is not None:
        items = read_eval_list(eval_list)
        source = str(eval_list)
    else:
        items = [(u, store.speaker(u)) for u in store.utterances]
        source = str(feats_dir)
    check_items(model, store, items, source)
    mse, usage, per_spk, frames = evaluate_model(model, store, items, max_frames, device, progress, segment_frames)
    if frames == 0:
        raise SQVAEError(f"no utterance of {source} is {segment_frames} frames long: pass a smaller --segment-frames")
    n_mels = cfg.model.n_mels
    seconds = sum(store.frames(u) for u, _ in items) * cfg.features.hop_length / cfg.features.sample_rate
    result = EvalResult(
        variant=cfg.model.variant, step=step, seed=cfg.train.seed, mse_db2=mse,
        set_perplexity=float(usage.perplexity()), used_codes=int(usage.used()),
        bitrate=code_bitrate(usage, seconds),
        num_codes=codebook_size(model.quantizer), num_utterances=len(items), num_frames=frames,
        per_speaker_mse_db2={s: v[0] * DB_SCALE**2 / (n_mels * max(v[1], 1)) for s, v in sorted(per_spk.items())},
        checkpoint=str(ckpt_path), data=source, seconds=round(time.time() - t0, 2), segment_frames=segment_frames,
    )
    return result

