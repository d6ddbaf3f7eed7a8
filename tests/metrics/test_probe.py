"""Speaker probe: split by utterance, near-perfect on speaker features, chance without them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sqvae_speech.errors import SQVAEError
from sqvae_speech.metrics import probe as probe_mod
from sqvae_speech.metrics.probe import speaker_probe


def corpus(speaker_scale: float, speakers: int = 4, utts: int = 8, frames: int = 150, dim: int = 16, seed: int = 0):
    """Utterances whose frames are a speaker-specific mean (times ``speaker_scale``) plus noise."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(speakers, dim)) * speaker_scale
    feats, spk, ids = [], [], []
    for s in range(speakers):
        for u in range(utts):
            feats.append(means[s] + rng.normal(size=(frames, dim)))
            spk.append(f"spk{s}")
            ids.append(f"spk{s}_{u:02d}")
    return feats, spk, ids


def test_speaker_features_are_found():
    feats, spk, ids = corpus(speaker_scale=2.0)
    r = speaker_probe(feats, spk, ids, max_frames_per_utterance=100)
    assert r.accuracy > 0.97
    assert r.chance == pytest.approx(0.25)
    assert r.speakers == ["spk0", "spk1", "spk2", "spk3"]
    assert r.train_frames == r.test_frames == 4 * 4 * 100  # 4 of 8 utterances each side, 100 frames each
    assert r.converged
    assert r.shuffled_accuracy < r.accuracy - 0.2
    json.dumps(r.to_dict())
    assert speaker_probe(feats, spk, ids, max_frames_per_utterance=100) == r  # deterministic


def test_no_speaker_information_is_chance():
    feats, spk, ids = corpus(speaker_scale=0.0, utts=10, frames=200)
    r = speaker_probe(feats, spk, ids)
    assert r.test_frames == 4 * 5 * 200
    assert abs(r.accuracy - r.chance) < 0.1
    assert abs(r.shuffled_accuracy - r.chance) < 0.1


def test_split_is_by_utterance(monkeypatch):
    feats, spk, ids = corpus(speaker_scale=1.0, speakers=3, utts=5, frames=30)
    # ids out of order: the split follows the sorted ids, not the list order
    order = np.random.default_rng(3).permutation(len(ids))
    feats, spk, ids = [feats[i] for i in order], [spk[i] for i in order], [ids[i] for i in order]
    train, test = probe_mod._split(spk, ids)
    assert not set(train) & set(test) and sorted(train + test) == list(range(len(ids)))
    for s in set(spk):
        mine = sorted((ids[i], "train" if i in train else "test") for i in range(len(ids)) if spk[i] == s)
        assert [side for _, side in mine] == ["train", "test", "train", "test", "train"]
    # frames seen in training come from the training utterances only
    seen = []
    real = probe_mod._frames
    monkeypatch.setattr(probe_mod, "_frames", lambda f, utts, k: seen.append(list(utts)) or real(f, utts, k))
    r = speaker_probe(feats, spk, ids, max_frames_per_utterance=10)
    assert seen == [train, test] and r.train_frames == 9 * 10 and r.test_frames == 6 * 10


def test_evenly_spaced_subsample():
    x = np.arange(1000, dtype=float)[:, None]
    got, owner = probe_mod._frames([x], [0], 4)
    assert got[:, 0].tolist() == [0, 250, 500, 750] and owner.tolist() == [0] * 4
    assert probe_mod._frames([x[:3]], [0], 4)[0].shape == (3, 1)


def test_errors():
    feats, spk, ids = corpus(speaker_scale=1.0, speakers=3, utts=2, frames=20)
    with pytest.raises(SQVAEError, match="'lonely' has only one utterance.*at least two utterances of each speaker"):
        speaker_probe(feats + [feats[0]], spk + ["lonely"], ids + ["z"])
    with pytest.raises(SQVAEError, match="at least two speakers"):
        speaker_probe(feats[:2], spk[:2], ids[:2])
    with pytest.raises(SQVAEError, match="utterance spk0_01: features must be"):
        speaker_probe([feats[0], feats[1][:, :3]] + feats[2:], spk, ids)
    bad = [f.copy() for f in feats]
    bad[2][0, 0] = np.nan
    with pytest.raises(SQVAEError, match="NaN"):
        speaker_probe(bad, spk, ids)
    with pytest.raises(SQVAEError, match="one of each per utterance"):
        speaker_probe(feats, spk[:-1], ids)
