"""Metrics of units and voices, gathered by ``sqvae-speech report``.

- :mod:`.alignment`: phone alignments (``utt start dur phone`` or a Kaldi CTM) and frame labels;
- :mod:`.units`: phone purity, code purity, PNMI, code entropy per phone, segment length;
- :mod:`.probe`: a logistic-regression speaker probe on frame features;
- :mod:`.signal`: MCD, F0 RMSE and V/UV error, wide-band PESQ, STOI;
- :mod:`.speaker`: speaker similarity from Resemblyzer embeddings;
- :mod:`.report`: the report over experiments (report.md, report.html, report.json).
"""
