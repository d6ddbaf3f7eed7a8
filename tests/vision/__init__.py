"""Tests of the image experiments (sqvae_speech.vision, recipes/vision). A package, so that
its conftest.py is imported as vision.conftest and does not replace the top-level
tests/conftest.py that other test modules import from."""
