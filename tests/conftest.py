"""Shared fixtures. Real speech comes from the embedded Fish Fillets corpus, which
`make test` fetches (recipes/fishfillets/download). A missing corpus is an error with
the command to fix it, never a silent skip.
"""

from __future__ import annotations

import os
from pathlib import Path

# Tests use tiny models: one thread is as fast, and on a busy machine several OpenMP
# threads spin on barriers and slow each step down by orders of magnitude. Set before
# torch is imported; subprocesses (recipes, accelerate launch) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

REPO = Path(__file__).resolve().parents[1]


def _corpus_sound_dir() -> Path:
    root = Path(os.environ.get("SQVAE_CORPUS", REPO / "recipes/fishfillets/download"))
    done = root / ".done"
    if not done.is_file():
        pytest.fail(
            f"embedded corpus not found at {root}: run `make corpus` (or `make test`, which fetches it), "
            "or set SQVAE_CORPUS to a download dir made by recipes/fishfillets/local/download.sh"
        )
    return Path(done.read_text().strip())


@pytest.fixture(scope="session")
def sound_dir() -> Path:
    """Directory ``.../fillets-ng/sound`` with ``<level>/<lang>/<abbr>-<spk>-<word>.ogg``."""
    return _corpus_sound_dir()


@pytest.fixture(scope="session")
def speech_files(sound_dir: Path) -> dict[str, list[Path]]:
    """A few real clips per main voice (cs-m, cs-v, nl-m, nl-v), sorted, deterministic."""
    out: dict[str, list[Path]] = {}
    for lang in ("cs", "nl"):
        for spk in ("m", "v"):
            files = sorted(sound_dir.glob(f"*/{lang}/*-{spk}-*.ogg"))
            out[f"{lang}-{spk}"] = files[:: max(1, len(files) // 8)][:8]
    return out


@pytest.fixture(scope="session")
def real_featstore(tmp_path_factory, sound_dir: Path):
    """A small feature store of real speech: 10 clips of each main voice (40 utterances)."""
    from sqvae_speech.config import FeatureConfig
    from sqvae_speech.data.audio import load_audio
    from sqvae_speech.data.featstore import write_featstore
    from sqvae_speech.data.features import logmel

    cfg = FeatureConfig()
    items = []
    for lang in ("cs", "nl"):
        for spk in ("m", "v"):
            files = sorted(sound_dir.glob(f"*/{lang}/*-{spk}-*.ogg"))
            for f in files[:: max(1, len(files) // 10)][:10]:
                wav = load_audio(f, cfg.sample_rate)
                items.append((f"{lang}-{spk}_{f.stem}", f"{lang}-{spk}", logmel(wav, cfg.sample_rate, cfg)))
    return write_featstore(tmp_path_factory.mktemp("feats"), sorted(items), cfg)


def tiny_experiment(**train):
    """A config small enough to train a few steps in seconds on one CPU core."""
    from sqvae_speech.config import ExperimentConfig

    data = {
        "model": {"encoder": {"channels": 32}, "quantizer": {"num_embeddings": 16, "embedding_dim": 8},
                  "decoder": {"speaker_embedding_dim": 8, "hidden_size": 16}},
        "train": {"steps": 6, "batch_size": 4, "crop_frames": 16, "num_workers": 0, "checkpoint_every": 2,
                  "log_every": 1, **train},
    }
    return ExperimentConfig.from_dict(data)


# ----------------------------------------------------------------------------- the neural vocoder's tests


@pytest.fixture(scope="module")
def voc_data(speech_files, tmp_path_factory) -> dict:
    """One real clip of each main voice (2.5-6.3 s): data dir, feature store, F0 cache
    (for tests/test_neural_vocoder.py and test_train_vocoder.py; helpers in tests/vocoder_setup.py)."""
    import vocoder_setup as vs

    from sqvae_speech.data.datadir import write_datadir
    from sqvae_speech.data.extract import extract
    from sqvae_speech.synthesis.neural_data import load_clips

    root = tmp_path_factory.mktemp("vocoder_data")
    wav_scp, utt2spk = {}, {}
    for voice, files in sorted(speech_files.items()):
        wav_scp[f"{voice}-0"] = str(files[1])
        utt2spk[f"{voice}-0"] = voice
    write_datadir(root / "data", wav_scp, utt2spk)
    extract(root / "data", root / "feats", progress=False)
    clips, fc = load_clips(root / "data", root / "feats", vs.tiny().train, root / "f0.npz", progress=False)
    assert fc == vs.FC and len(clips) == 4
    return {"data": root / "data", "feats": root / "feats", "f0": root / "f0.npz", "clips": clips}


@pytest.fixture(scope="module")
def trained(voc_data, tmp_path_factory) -> Path:
    """A vocoder experiment trained 12 steps (checkpoints every 4, the newest 2 kept)."""
    import vocoder_setup as vs

    exp = vs.new_exp(tmp_path_factory.mktemp("trained") / "exp", voc_data)
    summary = vs.run(vs.tiny(steps=12), voc_data, exp)
    assert summary["step"] == 12 and summary["vocoder"] == str(exp / "vocoder.pt")
    return exp

