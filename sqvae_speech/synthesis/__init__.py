"""From units back to audio.

- :mod:`.vocoders`: Griffin-Lim and WORLD from the toolkit's log-mel;
- :mod:`.f0`: F0 analysis, per-speaker log-F0 statistics and F0 conversion;
- :mod:`.convert`: resynthesis and voice conversion of a list of sources;
- :mod:`.listening`: the HTML listening page of a conversion run.
"""
