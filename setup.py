"""Package metadata for sqvae-speech."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="sqvae-speech",
    version="0.1.0",
    description="Stochastically quantized VAEs (SQ-VAE) for speech representation learning",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["sqvae_speech", "sqvae_speech.*"]),
    package_data={"sqvae_speech": ["resources/*.txt"]},
    install_requires=[
        "torch>=2.4,<3",  # fused Adam on CPU, torch.is_autocast_enabled(device)
        "numpy>=1.24,<3",
        "scipy>=1.10,<2",
        "librosa>=0.10,<0.12",
        "numba>=0.57,<1",
        "soundfile>=0.12,<1",
        "soxr>=0.3,<2",
        "pyworld-prebuilt>=0.3.4,<0.4",
        "accelerate>=0.30,<2",
        "tqdm>=4.60,<5",
        "tensorboard>=2.12,<3",
        "matplotlib>=3.7,<4",
        "Pillow>=9,<14",
        "PyYAML>=6,<7",
        # metrics (sqvae-speech report): see the README's "Dependencies" for why each
        "scikit-learn>=1.3,<2",
        "pesq>=0.0.4,<0.1",
        "pystoi>=0.4,<0.5",
        "pysptk>=1.0,<2",
        "resemblyzer>=0.1.4,<0.2",
        "setuptools<82",  # resemblyzer imports pkg_resources, which setuptools 82 removed
    ],
    extras_require={"test": ["pytest>=7,<10", "ruff>=0.4,<1"]},
    entry_points={"console_scripts": ["sqvae-speech=sqvae_speech.cli:main"]},
)
