"""Pieces every corpus preparation shares: the hash-ordered held-out split and the
speaker-id sort-order check."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ..errors import CorpusError


def hash_key(utt_id: str) -> str:
    """Stable order of utterance ids (SHA-1), independent of file-system order."""
    return hashlib.sha1(utt_id.encode("utf-8")).hexdigest()


def hashed_split(utt_ids: Sequence[str], durations: dict[str, float], test_per_speaker: int,
                 max_fraction: int, min_seconds: float, max_train: int = 0) -> tuple[list[str], list[str]]:
    """One speaker's utterances as (train, test), both sorted.

    Utterances are ordered by :func:`hash_key`; the test set is the first
    ``min(test_per_speaker, n // max_fraction)`` of those lasting at least ``min_seconds``;
    ``max_train`` > 0 keeps only the first that many remaining ones for training.
    """
    ordered = sorted(utt_ids, key=hash_key)
    n_test = min(test_per_speaker, len(ordered) // max_fraction)
    test = [u for u in ordered if durations[u] >= min_seconds][:n_test]
    chosen = set(test)
    train = [u for u in ordered if u not in chosen]
    if max_train > 0:
        train = train[:max_train]
    return sorted(train), sorted(test)


def check_sort_order(speakers: Sequence[str], what: str, fix: str) -> None:
    """Raise :class:`CorpusError` if sorted ``<spk>_...`` utterance ids would interleave speakers.

    Kaldi needs utterances sorted by id to come out grouped by speaker in sorted speaker
    order; "p22" and "p225" break that, since "5" sorts before "_".
    """
    for a in speakers:
        for b in speakers:
            if a != b and b.startswith(a) and b[len(a)] < "_":
                raise CorpusError(f"{what} {a} and {b} would interleave in sorted utterance order; {fix}")
