import numpy as np
import torch

from sqvae_speech.data.batching import (
    MIN_FRAMES,
    BucketBatchSampler,
    CropDataset,
    UtteranceDataset,
    bucket_batches,
    collate,
    padding_waste,
)


def test_bucket_batches_cover_every_index_once_within_budget():
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(20, 900, size=500))
    batches = bucket_batches(lengths, max_frames=4000, max_batch=64)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(500))
    for b in batches:
        assert len(b) <= 64
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 4000


def test_bucketing_keeps_padding_small_on_real_lengths(real_featstore):
    lengths = [real_featstore.frames(u) for u in real_featstore.utterances]
    unsorted = [list(range(i, min(i + 8, len(lengths)))) for i in range(0, len(lengths), 8)]
    bucketed = bucket_batches(lengths, max_frames=2000)
    assert padding_waste(lengths, bucketed) < 0.10
    assert padding_waste(lengths, bucketed) < padding_waste(lengths, unsorted)


def test_bucket_sampler_reshuffles_per_epoch_reproducibly():
    lengths = list(range(10, 400, 3))
    a = BucketBatchSampler(lengths, 600, seed=1)
    b = BucketBatchSampler(lengths, 600, seed=1)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first
    assert sorted(i for x in a for i in x) == list(range(len(lengths)))


def test_crop_dataset_windows_come_from_the_utterance(real_featstore):
    speakers = real_featstore.speakers
    ds = CropDataset(real_featstore, speakers, crop_frames=32)
    torch.manual_seed(0)
    for i in range(0, len(ds), 7):
        item = ds[i]
        full = real_featstore[item.utt]
        assert item.mel.shape == (80, 34)
        # the window occurs in the utterance at some offset
        offs = [s for s in range(full.shape[1] - 33) if np.array_equal(full[:, s : s + 34], item.mel)]
        assert offs
        assert speakers[item.speaker] == real_featstore.speaker(item.utt)
    assert ds.skipped == sum(real_featstore.frames(u) < 34 for u in real_featstore.utterances)


def test_utterance_dataset_trims_odd_and_crops_long(real_featstore):
    ds = UtteranceDataset(real_featstore, real_featstore.speakers, max_frames=51)
    for i in range(len(ds)):
        item = ds[i]
        t = real_featstore.frames(item.utt)
        assert item.mel.shape[1] == min(t, 51) - min(t, 51) % 2
        assert item.mel.shape[1] % 2 == 0 and item.mel.shape[1] >= MIN_FRAMES
    assert ds.lengths() == [ds[i].mel.shape[1] for i in range(len(ds))]


def test_collate_pads_and_keeps_lengths(real_featstore):
    ds = UtteranceDataset(real_featstore, real_featstore.speakers)
    batch = collate([ds[0], ds[5], ds[9]])
    assert batch.mels.shape[0] == 3 and batch.mels.shape[2] == int(batch.lengths.max())
    for b, i in enumerate([0, 5, 9]):
        t = int(batch.lengths[b])
        assert torch.equal(batch.mels[b, :, :t], torch.from_numpy(ds[i].mel))
        assert batch.mels[b, :, t:].abs().sum() == 0
    assert batch.utts == [ds.utts[0], ds.utts[5], ds.utts[9]]
