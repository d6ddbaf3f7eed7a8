"""Resemblyzer speaker similarity on the real Fish Fillets voices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sqvae_speech.errors import SQVAEError
from sqvae_speech.metrics.speaker import SpeakerEncoder, centroid, cosine

SR = 16000


@pytest.fixture(scope="module")
def encoder() -> SpeakerEncoder:
    return SpeakerEncoder("cpu")


@pytest.fixture(scope="module")
def clips(speech_files) -> dict[str, list[np.ndarray]]:
    """Three utterances each of cs-m (male) and cs-v (female)."""
    from sqvae_speech.data.audio import load_audio

    return {spk: [load_audio(f, SR) for f in speech_files[spk][:3]] for spk in ("cs-m", "cs-v")}


def test_same_clip_twice(encoder, clips):
    a = encoder.embed(clips["cs-m"][0], SR)
    b = encoder.embed(clips["cs-m"][0].copy(), SR)
    assert a.shape == (256,) and a.dtype == np.float32
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    assert cosine(a, b) == pytest.approx(1.0, abs=1e-5)


def test_same_speaker_is_more_similar_than_other_sex(encoder, clips):
    emb = {spk: [encoder.embed(x, SR, name=f"{spk}-{i}") for i, x in enumerate(xs)] for spk, xs in clips.items()}
    within = [cosine(a, b) for xs in emb.values() for a, b in itertools.combinations(xs, 2)]
    between = [cosine(a, b) for a in emb["cs-m"] for b in emb["cs-v"]]
    assert min(within) > max(between)
    # Each clip is closer to its own speaker's centroid than to the other's.
    cents = {spk: centroid(xs) for spk, xs in emb.items()}
    for spk, other in (("cs-m", "cs-v"), ("cs-v", "cs-m")):
        for e in emb[spk]:
            assert cosine(e, cents[spk]) > cosine(e, cents[other])


def test_silence_has_no_speech(encoder):
    with pytest.raises(SQVAEError, match="'quiet-utt' has no speech"):
        encoder.embed(np.zeros(SR, np.float32), SR, name="quiet-utt")
    with pytest.raises(SQVAEError, match="the clip has no speech"):
        encoder.embed(1e-4 * np.random.default_rng(0).standard_normal(SR).astype(np.float32), SR)


def test_cosine_and_centroid():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    assert cosine(a, b) == 0.0
    assert cosine(a, -3 * a) == pytest.approx(-1.0)
    c = centroid([a, b / 2])
    np.testing.assert_allclose(c, [np.sqrt(0.5), np.sqrt(0.5)], rtol=1e-6)
    assert c.dtype == np.float32 and np.linalg.norm(c) == pytest.approx(1.0)
    with pytest.raises(SQVAEError, match="no embeddings"):
        centroid([])
    with pytest.raises(SQVAEError):
        cosine(a, np.zeros(3))
