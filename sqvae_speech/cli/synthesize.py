"""`sqvae-speech synthesize`: units back to audio, spoken by one of the model's speakers.

``--units`` reads what ``sqvae-speech encode`` / ``export`` write: a ``.units`` file (one
line of code indices, not collapsed with ``--dedup``: the decoder needs one unit per
frame), a ``.npy`` of indices ``[T']`` or quantized vectors ``[T', D]``, or a ZeroSpeech
``.txt`` (one frame per line). Units carry no pitch: Griffin-Lim (default) needs none;
the neural vocoder (``--vocoder neural --vocoder-model VOCODER.pt``) takes the pitch
contour of a recording (``--f0-from``, e.g. the one the units came from), mapped to the
speaker's F0 statistics and stretched to the units' length. For conversion with the
source's own timing and pitch, convert the audio itself (``sqvae-speech convert --model``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import SQVAEError


def read_units(path: str | Path) -> np.ndarray:
    """A units file -> int64 indices ``[T']`` or float32 vectors ``[T', D]``."""
    from ..zerospeech.export import ExportError, load_feature_file

    path = Path(path)
    if not path.is_file():
        raise SQVAEError(f"units file {path} does not exist")
    if path.stat().st_size == 0:
        raise SQVAEError(f"units file {path} is empty")
    if path.suffix == ".units":
        try:
            tokens = path.read_text(encoding="utf-8").split()
            values = np.array([int(t) for t in tokens], dtype=np.int64)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise SQVAEError(f"units file {path} is not one line of integer code indices ({e})") from None
        if values.size == 0:
            raise SQVAEError(f"units file {path} is empty")
        return values
    try:
        values, _ = load_feature_file(path)
    except ExportError as e:
        raise SQVAEError(str(e)) from None
    if values.shape[1] == 1:
        col = values[:, 0]
        if np.issubdtype(values.dtype, np.integer) or np.all(np.mod(col, 1) == 0):
            return col.astype(np.int64)
    return values.astype(np.float32)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model file, experiment dir or checkpoint")
    p.add_argument("--units", required=True, help=".units, .npy or ZeroSpeech .txt file (see above)")
    p.add_argument("--speaker", required=True, help="one of the model's speakers")
    p.add_argument("--out", required=True, help="output .wav (16-bit)")
    p.add_argument("--vocoder", choices=("griffinlim", "neural"), default="griffinlim",
                   help="griffinlim (default) or neural (needs --vocoder-model and --f0-from)")
    p.add_argument("--vocoder-model", metavar="VOCODER.pt", help="the neural vocoder (vocoder.pt of `train-vocoder`)")
    p.add_argument("--f0-from", metavar="AUDIO", help="neural: the recording whose pitch contour is used")
    p.add_argument("--gl-iters", type=int, default=100, help="Griffin-Lim iterations (default 100)")
    p.add_argument("--seed", type=int, default=0, help="Griffin-Lim initial phase / neural vocoder noise seed")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")


def run(args: argparse.Namespace) -> int:
    from ..inference.model import load_model
    from ..synthesis.convert import write_wav

    if Path(args.out).suffix.lower() != ".wav":
        raise SQVAEError(f"--out {args.out}: the output is a .wav file")
    units = read_units(args.units)
    model = load_model(args.model, device=args.device)
    model.speaker_index(args.speaker)
    if args.vocoder == "neural" and not (args.vocoder_model and args.f0_from):
        raise SQVAEError("--vocoder neural needs --vocoder-model (vocoder.pt of `train-vocoder`) and --f0-from AUDIO "
                         "(units carry no pitch)")
    wav, sr = model.synthesize(units, args.speaker, gl_iters=args.gl_iters, seed=args.seed, vocoder=args.vocoder,
                               vocoder_model=args.vocoder_model, f0_from=args.f0_from)
    write_wav(args.out, wav, sr)
    name = "Griffin-Lim" if args.vocoder == "griffinlim" else f"neural vocoder, F0 of {args.f0_from}"
    print(f"synthesize: {args.out} ({wav.size / sr:.2f} s, {len(units)} frames as {args.speaker}, {name})")
    return 0
