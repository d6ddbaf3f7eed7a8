"""Outputs for downstream evaluation (the ZeroSpeech 2019 protocol).

- :mod:`.export`: codes or features written one file per utterance, with frame times;
- :mod:`.bitrate`: the ZeroSpeech bitrate of exported features;
- :mod:`.flite`: a phone-labelled English ABX set synthesized offline with flite;
- :mod:`.abx`: ABX discriminability (items, DTW, scoring), the project's own.
"""
