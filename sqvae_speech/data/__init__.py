"""From recordings to training batches.

- :mod:`.audio`: read any format soundfile reads, downmix, resample, peak-normalize, pre-emphasis;
- :mod:`.features`: the reference log-mel (numpy) and its batched torch twin;
- :mod:`.longaudio`: recordings past a minute, streamed in bounded memory;
- :mod:`.datadir`: Kaldi data dirs (wav.scp, utt2spk, spk2utt, segments), validated;
- :mod:`.extract`: a data dir -> a feature store, in parallel, resumable;
- :mod:`.featstore`: the packed, memory-mapped feature store and its index;
- :mod:`.batching`: crop and whole-utterance datasets, length bucketing, padded collate.
"""
