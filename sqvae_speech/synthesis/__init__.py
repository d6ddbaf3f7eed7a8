"""From units back to audio.

- :mod:`.vocoders`: Griffin-Lim and WORLD from the toolkit's log-mel;
- :mod:`.f0`: F0 analysis, per-speaker log-F0 statistics and F0 conversion;
- :mod:`.conversion_list`: conversion lists (source, target speaker, output name): read,
  written, or built from data dirs;
- :mod:`.convert`: resynthesis and voice conversion of a list of sources;
- :mod:`.listening`: the HTML listening page of a conversion run.
"""
