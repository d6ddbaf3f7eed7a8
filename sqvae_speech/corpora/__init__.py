"""Corpus preparation: one module per corpus, each writing Kaldi-style data dirs."""
