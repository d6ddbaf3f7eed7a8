"""Tests of the speech networks' CPU kernels and their switch (sqvae_speech.nets.cpu)."""
