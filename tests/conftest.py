"""Shared fixtures. Real speech comes from the embedded Fish Fillets corpus, which
`make test` fetches (recipes/fishfillets/download). A missing corpus is an error with
the command to fix it, never a silent skip.
"""

from __future__ import annotations

import os
from pathlib import Path

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
