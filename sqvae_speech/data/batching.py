"""Training and evaluation data over a packed feature store.

Two batching modes (``TrainConfig.batching``):

- ``crops``: the paper's random crops of ``crop_frames + 2`` mel frames (the two extra
  frames are the encoder's context; the decoder reconstructs ``mel[:, 1:-1]``).
- ``utterances``: whole variable-length utterances, bucketed by length so that a batch
  holds at most ``max_frames`` padded frames; odd lengths are trimmed by one frame and
  utterances longer than ``max_utterance_frames`` are randomly cropped to that length.

A padded batch always travels with its lengths: ``Batch(mels [B, n_mels, T], lengths
[B], speakers [B], utts)``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import ConfigError
from .featstore import FeatureStore

# The encoder maps T mel frames to (T - 2) // 2 latent frames: at least one needs T >= 4.
MIN_FRAMES = 4


class Batch(NamedTuple):
    mels: torch.Tensor  # [B, n_mels, T] zero-padded
    lengths: torch.Tensor  # [B] int64, even
    speakers: torch.Tensor  # [B] int64 index into the model's speaker list
    utts: list[str]


class Item(NamedTuple):
    mel: np.ndarray  # [n_mels, T]
    speaker: int
    utt: str


def speaker_index(speakers: Sequence[str]) -> dict[str, int]:
    """Map speaker id -> embedding row (the order of ``ModelConfig.speakers``)."""
    return {s: i for i, s in enumerate(speakers)}


class CropDataset(Dataset):
    """Random ``crop_frames + 2``-frame crops, one per utterance per epoch.

    Utterances shorter than the crop are left out (their count is in ``skipped``).
    The crop offset comes from ``torch``'s RNG, which the DataLoader seeds per worker.
    """

    def __init__(self, store: FeatureStore, speakers: Sequence[str], crop_frames: int) -> None:
        self.store = store
        self.window = crop_frames + 2
        spk = speaker_index(speakers)
        self.utts = [u for u in store.utterances if store.frames(u) >= self.window]
        self.skipped = len(store) - len(self.utts)
        if not self.utts:
            longest = max((store.frames(u) for u in store.utterances), default=0)
            raise ConfigError(
                f"train.crop_frames={crop_frames} needs utterances of at least {self.window} frames, "
                f"but the longest in {store.path} has {longest}; lower train.crop_frames"
            )
        self.speakers = [spk[store.speaker(u)] for u in self.utts]

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> Item:
        utt = self.utts[i]
        # Only the crop is read: a crop of a 3-hour recording costs what one of 3 s does.
        start = int(torch.randint(0, self.store.frames(utt) - self.window + 1, ()).item())
        return Item(self.store.segment(utt, start, start + self.window), self.speakers[i], utt)


class UtteranceDataset(Dataset):
    """Whole utterances (odd lengths trimmed by one frame).

    ``max_frames`` crops longer utterances at a random offset (training); ``None`` keeps
    them whole (evaluation). Utterances shorter than ``MIN_FRAMES`` are left out.
    """

    def __init__(
        self,
        store: FeatureStore,
        speakers: Sequence[str],
        utts: Sequence[str] | None = None,
        utt_speakers: Sequence[str] | None = None,
        max_frames: int | None = None,
    ) -> None:
        self.store = store
        spk = speaker_index(speakers)
        utts = list(store.utterances if utts is None else utts)
        names = list(utt_speakers) if utt_speakers is not None else [store.speaker(u) for u in utts]
        keep = [i for i, u in enumerate(utts) if store.frames(u) >= MIN_FRAMES]
        self.skipped = [u for u in utts if store.frames(u) < MIN_FRAMES]
        self.utts = [utts[i] for i in keep]
        self.speaker_names = [names[i] for i in keep]
        self.speakers = [spk[n] for n in self.speaker_names]
        self.max_frames = max_frames
        if max_frames is not None and max_frames < MIN_FRAMES:
            raise ConfigError(f"train.max_utterance_frames must be >= {MIN_FRAMES}, got {max_frames}")

    def __len__(self) -> int:
        return len(self.utts)

    def lengths(self) -> list[int]:
        """Frames each item will have (after trimming/cropping), for bucketing."""
        out = []
        for u in self.utts:
            t = self.store.frames(u)
            if self.max_frames is not None:
                t = min(t, self.max_frames)
            out.append(t - t % 2)
        return out

    def __getitem__(self, i: int) -> Item:
        utt = self.utts[i]
        t = self.store.frames(utt)
        start = 0
        if self.max_frames is not None and t > self.max_frames:
            start = int(torch.randint(0, t - self.max_frames + 1, ()).item())
            t = self.max_frames
        t -= t % 2
        # Only the frames used are read (a crop of a long recording stays small).
        return Item(self.store.segment(utt, start, start + t), self.speakers[i], utt)


def collate(items: Sequence[Item]) -> Batch:
    """Pad items to the longest; lengths are trimmed to even numbers of frames."""
    lengths = [it.mel.shape[1] - it.mel.shape[1] % 2 for it in items]
    n_mels = items[0].mel.shape[0]
    mels = torch.zeros(len(items), n_mels, max(lengths), dtype=torch.float32)
    for b, (it, t) in enumerate(zip(items, lengths)):
        mels[b, :, :t] = torch.from_numpy(it.mel[:, :t])
    return Batch(
        mels,
        torch.tensor(lengths, dtype=torch.int64),
        torch.tensor([it.speaker for it in items], dtype=torch.int64),
        [it.utt for it in items],
    )


def bucket_batches(lengths: Sequence[int], max_frames: int, max_batch: int | None = None) -> list[list[int]]:
    """Group indices into batches of similar length, ``len(batch) * longest <= max_frames``.

    Indices are sorted by length, then cut greedily; a single item longer than
    ``max_frames`` forms a batch of its own. The result is deterministic.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = max(lengths[i], max((lengths[j] for j in cur), default=0))
        full = max_batch is not None and len(cur) >= max_batch
        if cur and (longest * (len(cur) + 1) > max_frames or full):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def padding_waste(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Fraction of padded frames in ``batches`` (0 = no padding)."""
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    valid = sum(lengths[i] for b in batches for i in b)
    return 1.0 - valid / total if total else 0.0


class BucketBatchSampler(Sampler[list[int]]):
    """Length-bucketed batches for ``utterances`` mode, reshuffled every epoch.

    Lengths are jittered by up to ``noise`` (relative) before sorting so that batch
    composition varies between epochs while padding stays small; batch order is
    shuffled. Seeded by ``seed + epoch`` (``set_epoch``) for reproducible resumes.
    """

    def __init__(self, lengths: Sequence[int], max_frames: int, max_batch: int | None = None,
                 seed: int = 0, shuffle: bool = True, noise: float = 0.02) -> None:
        self.lengths = list(lengths)
        self.max_frames = max_frames
        self.max_batch = max_batch
        self.seed = seed
        self.shuffle = shuffle
        self.noise = noise
        self.epoch = 0
        self._batches = self._make()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._batches = self._make()

    def _make(self) -> list[list[int]]:
        if not self.shuffle:
            return bucket_batches(self.lengths, self.max_frames, self.max_batch)
        rng = random.Random(self.seed + self.epoch)
        noisy = [t * (1.0 + self.noise * rng.random()) for t in self.lengths]
        order = bucket_batches(noisy, self.max_frames, self.max_batch)
        rng.shuffle(order)
        return order

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def bucketed_waste(lengths: Sequence[int], max_frames: int) -> float:
    """Padding waste of the deterministic bucketing of ``lengths`` (for reports)."""
    return padding_waste(lengths, bucket_batches(lengths, max_frames))


def epochs_for(steps: int, batches_per_epoch: int) -> int:
    return math.ceil(steps / max(1, batches_per_epoch))
