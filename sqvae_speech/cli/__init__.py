"""The ``sqvae-speech`` command line.

Each subcommand lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so
``sqvae-speech --help`` is fast. User errors (:class:`SQVAEError`) print one clear line
and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

from ..errors import SQVAEError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("sqvae_speech.cli.prepare", "write Kaldi-style data dirs for a corpus"),
    "validate-data": ("sqvae_speech.cli.validate_data", "check a data dir (ids, speakers, files)"),
    "validate-store": ("sqvae_speech.cli.validate_store", "check feature stores for corruption (checksum of every utterance)"),
    "extract": ("sqvae_speech.cli.extract", "extract log-mel features into a packed store"),
    "train": ("sqvae_speech.cli.train", "train a speech SQ-VAE or a baseline quantizer (VQ-VAE, k-means VQ, FSQ, VAE)"),
    "evaluate": ("sqvae_speech.cli.evaluate", "dB^2 MSE and codebook usage of a trained model"),
    "compare": ("sqvae_speech.cli.compare", "table of results.json files (RESULTS.md)"),
    "f0-stats": ("sqvae_speech.cli.f0_stats", "per-speaker log-F0 statistics for voice conversion"),
    "convert": ("sqvae_speech.cli.convert", "resynthesize / convert voices with a vocoder"),
    "train-vocoder": ("sqvae_speech.cli.train_vocoder", "train the neural vocoder (log-mel + F0 -> speech) on a recipe's audio"),
    "vocoder-check": ("sqvae_speech.cli.vocoder_check", "vocoder round-trip and conversion F0 report"),
    "export": ("sqvae_speech.cli.export", "export codes / features (ZeroSpeech 2019 layout, .npy)"),
    "encode": ("sqvae_speech.cli.encode", "units / features of any audio files with a trained model"),
    "synthesize": ("sqvae_speech.cli.synthesize", "units back to audio as a chosen speaker (Griffin-Lim)"),
    "package": ("sqvae_speech.cli.package", "write a shareable model file (+ model card) from an experiment"),
    "report": ("sqvae_speech.cli.report", "unit-quality and speech-quality metrics of experiments in one report"),
    "bitrate": ("sqvae_speech.cli.bitrate", "ZeroSpeech 2019 bitrate of exported features"),
    "submission": ("sqvae_speech.cli.submission", "complete, zip and validate a ZeroSpeech 2019 submission"),
    "abx": ("sqvae_speech.cli.abx", "ABX error rate of features against an item file"),
    "vision": ("sqvae_speech.cli.vision", "image experiments: train / evaluate vision SQ-VAEs"),
    "flite-abx-set": ("sqvae_speech.cli.flite_abx_set", "synthesize a phone-labelled English ABX set with flite"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sqvae-speech",
        description="Stochastically quantized VAEs for speech: features, training, evaluation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    name = argv[0]
    if name not in COMMANDS:
        top.error(f"unknown command '{name}'; choose one of: {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"sqvae-speech {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except SQVAEError as e:
        _say(f"sqvae-speech {name}: error: {e}")
        return 2
    except KeyboardInterrupt:
        _say(f"sqvae-speech {name}: interrupted")
        return 130


def _say(message: str) -> None:
    """The error line on stderr; a stderr that cannot be written (a log file on a full
    disk) leaves only the exit status, not a traceback in place of it."""
    with contextlib.suppress(OSError):
        print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
