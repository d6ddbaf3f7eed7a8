"""A speaker probe: how much speaker identity a linear classifier reads off frame features.

A multinomial logistic regression (after standardising each dimension) is trained to
tell the speaker of single frames (``z`` or ``z_q`` of an SQ-VAE) and tested on frames of
*other utterances*: the split is by utterance, never by frame, since frames of one
utterance are correlated (a frame-level split would let the probe recognise the
recording rather than the speaker). Within each speaker, its utterances sorted by id go
alternately to train and test (the first to train), so every speaker needs at least two.

Read ``accuracy`` against two references: ``chance`` (always guessing the most frequent
test speaker) and ``shuffled_accuracy``, the same probe trained on speaker labels
permuted across the training utterances and tested on the true labels. A large gap
between ``accuracy`` and both says the features carry the speaker. (With features that
separate speakers well, the shuffled probe maps each speaker to one permuted label, so
its accuracy moves in steps of one speaker's share; it is a coarse control with few
speakers.)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import SQVAEError

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


@dataclass
class ProbeResult:
    """Frame accuracy of the speaker probe on held-out utterances, with its references."""

    accuracy: float
    chance: float  # share of the most frequent speaker among the test frames
    shuffled_accuracy: float  # control: trained on speaker labels permuted across training utterances
    train_frames: int
    test_frames: int
    converged: bool  # lbfgs converged within max_iter (the real probe; the warning is suppressed)
    speakers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, float | int | bool | list[str]]:
        """Plain Python values (JSON-ready)."""
        return asdict(self)


def _split(speakers: Sequence[str], ids: Sequence[str]) -> tuple[list[int], list[int]]:
    """Utterance indices for train and test: per speaker, sorted by id, alternating (first to train)."""
    by_spk: dict[str, list[int]] = {}
    for i, s in enumerate(speakers):
        by_spk.setdefault(s, []).append(i)
    lonely = sorted(s for s, utts in by_spk.items() if len(utts) < 2)
    if lonely:
        raise SQVAEError(
            f"speaker{'s' if len(lonely) > 1 else ''} {', '.join(map(repr, lonely[:5]))}"
            f"{', ...' if len(lonely) > 5 else ''} {'have' if len(lonely) > 1 else 'has'} only one utterance: "
            "a speaker probe needs at least two utterances of each speaker (one to train on, one to test); "
            "add utterances or leave those speakers out")
    train: list[int] = []
    test: list[int] = []
    for spk in sorted(by_spk):
        utts = sorted(by_spk[spk], key=lambda i: (ids[i], i))
        train += utts[0::2]
        test += utts[1::2]
    return train, test


def _frames(features: Sequence[np.ndarray], utts: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``k`` evenly spaced frames of each utterance in ``utts``: ``[N, D]`` and their utterance ``[N]``."""
    xs, owner = [], []
    for i in utts:
        t = len(features[i])
        idx = np.arange(t) if t <= k else (np.arange(k) * t) // k
        xs.append(features[i][idx])
        owner.append(np.full(len(idx), i, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(owner)


def _fit(x: np.ndarray, y: np.ndarray, seed: int, max_iter: int) -> tuple[Pipeline, bool]:
    """A standardise + logistic-regression probe fit on ``x`` ``[N, D]``, ``y`` ``[N]``; and whether it converged."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    # one BLAS thread: as fast on these small matrices, and several spin on barriers when
    # the cores are busy (10x slower measured on a loaded 2-core machine)
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    return model, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def speaker_probe(features: Sequence[np.ndarray], speakers: Sequence[str], utterance_ids: Sequence[str] | None = None,
                  seed: int = 0, max_frames_per_utterance: int = 200, max_iter: int = 500) -> ProbeResult:
    """Train and test a speaker probe on per-frame features (module docstring).

    ``features[i]`` is float ``[T_i, D]``, the frames of utterance ``i``; ``speakers[i]``
    its speaker; ``utterance_ids[i]`` its id (orders the split; default: the index). At
    most ``max_frames_per_utterance`` evenly spaced frames of each utterance are used.
    Deterministic for a ``seed`` (the permutation of the control). Raises
    :class:`SQVAEError` for mismatched inputs, a speaker with one utterance, fewer than
    two speakers, or non-finite features.
    """
    n = len(features)
    ids = [f"{i:09d}" for i in range(n)] if utterance_ids is None else [str(u) for u in utterance_ids]
    if len(speakers) != n or len(ids) != n:
        raise SQVAEError(f"features of {n} utterances but {len(speakers)} speakers and {len(ids)} utterance ids: "
                         "need one of each per utterance")
    if max_frames_per_utterance < 1:
        raise SQVAEError(f"max_frames_per_utterance must be >= 1, got {max_frames_per_utterance}")
    names = sorted(set(speakers))
    if len(names) < 2:
        raise SQVAEError(f"a speaker probe needs at least two speakers, got {names}")
    feats = [np.asarray(f) for f in features]
    dim = None
    for i, f in enumerate(feats):
        if f.ndim != 2 or (dim is not None and f.shape[1] != dim):
            raise SQVAEError(f"utterance {ids[i]}: features must be [T, D] with one D for all, got shape {f.shape}"
                             + (f" (others have D={dim})" if dim is not None else ""))
        dim = f.shape[1]
        if not np.all(np.isfinite(f)):
            raise SQVAEError(f"utterance {ids[i]}: features hold NaN or infinite values")

    train_utts, test_utts = _split(speakers, ids)
    code = {s: k for k, s in enumerate(names)}
    utt_label = np.array([code[s] for s in speakers], dtype=np.int64)  # [n]
    x_tr, o_tr = _frames(feats, train_utts, max_frames_per_utterance)
    x_te, o_te = _frames(feats, test_utts, max_frames_per_utterance)
    y_tr, y_te = utt_label[o_tr], utt_label[o_te]
    if not len(x_te) or np.unique(y_tr).size < 2:
        raise SQVAEError("the probe's test utterances have no frames, or its training frames only one speaker: "
                         "check for empty feature arrays")

    model, converged = _fit(x_tr, y_tr, seed, max_iter)
    accuracy = float(np.mean(model.predict(x_te) == y_te))

    # control: permute the speaker labels of the training utterances (not of frames)
    rng = np.random.default_rng(seed)
    shuffled = utt_label.copy()
    shuffled[train_utts] = utt_label[train_utts][rng.permutation(len(train_utts))]
    if np.unique(shuffled[o_tr]).size >= 2:
        control, _ = _fit(x_tr, shuffled[o_tr], seed, max_iter)
        shuffled_accuracy = float(np.mean(control.predict(x_te) == y_te))
    else:  # one label in training: the control always guesses it
        shuffled_accuracy = float(np.mean(y_te == shuffled[o_tr][0]))

    chance = float(np.bincount(y_te, minlength=len(names)).max() / len(y_te))
    return ProbeResult(accuracy=accuracy, chance=chance, shuffled_accuracy=shuffled_accuracy,
                       train_frames=len(x_tr), test_frames=len(x_te), converged=converged,
                       speakers=names)
