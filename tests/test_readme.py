"""The README's examples run as written.

Every ```python block of README.md runs, in order and in one namespace, in a directory laid
out as after `make demo` (a small model trained on real speech and packaged as
``recipes/fishfillets/exp/gaussian_4.pt``) with the audio files the examples name. The
shell block of "Use it on your own audio" runs command by command; every other
``sqvae-speech`` line of the README is parsed by its command's own argument parser, so a
renamed option fails here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO, tiny_experiment

from sqvae_speech.cli import COMMANDS
from sqvae_speech.data.audio import load_audio
from sqvae_speech.data.datadir import write_datadir

README = REPO / "README.md"


def blocks(lang: str) -> list[tuple[str, str]]:
    """(heading above, body) of every fenced block of ``lang``."""
    text = README.read_text(encoding="utf-8")
    out = []
    for m in re.finditer(rf"^```{lang}\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        heading = re.findall(r"^#+ (.*)$", text[: m.start()], re.MULTILINE)[-1]
        out.append((heading, m.group(1)))
    return out


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, real_featstore, speech_files) -> Path:
    """A dir laid out as after `make demo`, plus the recordings the README names."""
    from sqvae_speech.config import FeatureConfig
    from sqvae_speech.modelfile import write_model_file
    from sqvae_speech.synthesis.f0 import compute_f0_stats, write_f0_stats
    from sqvae_speech.synthesis.neural import (
        NeuralVocoder,
        NeuralVocoderConfig,
        save_vocoder,
    )
    from sqvae_speech.train import train

    root = tmp_path_factory.mktemp("readme")
    exp = root / "recipes/fishfillets/exp"
    for variant in ("gaussian_4", "vqvae_ema"):
        cfg = tiny_experiment(steps=30, checkpoint_every=30)
        train(cfg.replace(model=cfg.model.replace(variant=variant)), real_featstore.path, exp / variant, progress=False)
    clips = {spk: files[:1] for spk, files in speech_files.items()}
    write_datadir(root / "f0data", {f"{s}-0": str(f[0]) for s, f in clips.items()}, {f"{s}-0": s for s in clips})
    stats = compute_f0_stats(root / "f0data", nj=1, method="dio", progress=False)
    write_f0_stats(root / "f0_stats.json", stats)
    write_model_file(exp / "gaussian_4", exp / "gaussian_4.pt", f0_stats=root / "f0_stats.json")
    # the neural vocoder stage 3 trains (here a small untrained one: the README's calls, not its quality)
    save_vocoder(exp / "vocoder" / "vocoder.pt", NeuralVocoder(NeuralVocoderConfig(channels=16, layers=2), FeatureConfig()), 0)
    # recordings "not in any corpus": real speech, re-recorded at other rates and layouts
    x = load_audio(speech_files["cs-m"][0], 44100)
    sf.write(root / "my_recording.wav", np.stack([x, 0.5 * x], axis=1), 44100)  # stereo 44.1 kHz
    y = load_audio(speech_files["nl-v"][1], 22050)
    sf.write(root / "another.flac", y, 22050)
    (root / "my_audio").mkdir()
    sf.write(root / "my_audio" / "a.wav", load_audio(speech_files["cs-v"][0], 16000), 16000)
    sf.write(root / "a.wav", load_audio(speech_files["nl-m"][0], 48000), 48000)
    sf.write(root / "b.flac", load_audio(speech_files["cs-m"][1], 8000), 8000)
    return root


def test_python_blocks_run(demo_dir, monkeypatch):
    found = blocks("python")
    assert len(found) >= 3, "the README lost its Python examples"
    monkeypatch.chdir(demo_dir)
    namespace: dict = {"__name__": "readme"}
    for heading, code in found:
        try:
            exec(compile(code, f"README.md ({heading})", "exec"), namespace)  # noqa: S102 (the README's own code)
        except Exception as e:  # the block's own error, with the block named
            raise AssertionError(f"README block under '{heading}' failed: {type(e).__name__}: {e}\n{code}") from e
    units = namespace["units"]
    assert units.indices.dtype == np.int64 and units.quantized.shape == (len(units), 8)
    assert namespace["mel"].shape == (80, 2 * len(units)) and namespace["wav"].ndim == 1


def test_own_audio_shell_block_runs(demo_dir):
    """The commands of "Use it on your own audio", one by one, as a user types them."""
    (heading, body), = [(h, b) for h, b in blocks("sh") if h == "Use it on your own audio"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SQVAE_NO_PROGRESS": "1"}
    commands = [ln for ln in body.splitlines() if ln.strip()]
    assert any("encode" in c for c in commands) and any("convert" in c for c in commands)
    script = "set -e\n" + "\n".join(commands)
    r = subprocess.run(["bash", "-c", script], cwd=demo_dir, env=env, capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, f"{heading}: {r.stderr[-3000:]}"
    assert (demo_dir / "units" / "a.units").is_file() and (demo_dir / "units" / "units.txt").is_file()
    assert (demo_dir / "feats" / "a.txt").is_file() and (demo_dir / "feats" / "b.txt").is_file()
    assert (demo_dir / "a_cs-v.wav").is_file() and (demo_dir / "converted" / "a_to_nl-v.wav").is_file()
    assert (demo_dir / "converted_neural" / "a_to_nl-v.wav").is_file()
    assert (demo_dir / "vqvae_ema.pt").is_file() and (demo_dir / "vqvae_ema.md").is_file()


def _parser(command: str) -> argparse.ArgumentParser:
    module = importlib.import_module(COMMANDS[command][0])
    parser = argparse.ArgumentParser(prog=f"sqvae-speech {command}", exit_on_error=False)
    module.add_arguments(parser)
    return parser


def test_every_readme_command_parses():
    """Each complete ``sqvae-speech`` line of the README names a command and options that exist."""
    checked = 0
    for _, body in blocks("sh"):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words or words[0] != "sqvae-speech" or "..." in words:
                continue
            assert words[1] in COMMANDS, f"README: unknown command in '{line.strip()}'"
            words = ["M" if w == "$M" else w for w in words]
            try:
                _parser(words[1]).parse_args(words[2:])
            except (argparse.ArgumentError, SystemExit) as e:
                raise AssertionError(f"README: '{line.strip()}' does not parse: {e}") from None
            checked += 1
    assert checked >= 15
