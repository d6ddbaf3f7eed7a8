"""sqvae-speech: stochastically quantized VAEs (SQ-VAE, Takida et al., ICML 2022) for speech."""

__version__ = "0.1.0"
