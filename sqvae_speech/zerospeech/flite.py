"""A phone-labelled English ABX set that any machine can make: flite TTS voices.

flite (CMU's small synthesizer, Debian package ``flite``) prints, with ``-psdur``, every
phone it synthesizes with its end time::

    pau:0.184 dh:0.236 ax:0.270 k:0.388 ae:0.492 t:0.543 ... pau:1.545

``tools/fetch_flite.sh DIR`` unpacks the Debian packages into DIR without root; we run
``DIR/usr/bin/flite`` with ``LD_LIBRARY_PATH`` on the unpacked libraries. Each voice
(``awb``, ``rms``, ``slt``, ``kal16``; all 16 kHz) reads the sentences of
``sqvae_speech/resources/flite_sentences.txt``, and is one speaker.

Output of :func:`make_flite_abx_set` in OUT::

    wav/<voice>_sNNN.wav   16 kHz mono PCM16
    data/                  Kaldi data dir (wav.scp, utt2spk, spk2utt; speaker = voice)
    abx.item               ABX item file (ZeroSpeech format)
    phones.ctm             Kaldi CTM ``utt 1 start dur phone``: every phone flite reported,
                           cut at the end of the audio
    text                   utt sentence

Items (ZeroSpeech "by context" triphones): every phone except ``pau`` with a phone on
both sides becomes a token labelled (phone, previous phone, next phone, voice), spanning
the previous phone's onset to the next phone's offset. Silence may be a context, but a
``pau`` context contributes at most ``pau_context`` (50 ms) next to the phone, so a token
is not mostly silence. Central phones shorter than ``min_phone`` (30 ms) are skipped, as
are tokens ending past the audio (the diphone voice kal16 reports a final pause longer
than the audio it writes; its other times agree with the audio within ~20 ms).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import soundfile as sf

from ..data.audio import resample
from ..data.datadir import write_datadir
from ..errors import SQVAEError
from ..fileio import atomic_path, atomic_write_text

VOICES = ("awb", "rms", "slt", "kal16")
SILENCE = "pau"
FETCH_HINT = "bash tools/fetch_flite.sh tools/flite"
_PHONE = re.compile(r"^([a-z]+):(\d+(?:\.\d+)?)$")


class FliteError(SQVAEError):
    """flite is missing, fails, or prints something unexpected."""


class Phone(NamedTuple):
    phone: str
    start: float
    end: float


@dataclass(frozen=True)
class Flite:
    """An unpacked flite: the binary and the directory of its shared libraries."""

    binary: Path
    lib_dir: Path | None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.lib_dir is not None:
            env["LD_LIBRARY_PATH"] = str(self.lib_dir) + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
        return env

    def run(self, *args: str) -> str:
        try:
            r = subprocess.run([str(self.binary), *args], check=False, capture_output=True, text=True, env=self.env(), timeout=120)
        except OSError as e:
            raise FliteError(f"cannot run {self.binary} ({e}); fetch it again: `{FETCH_HINT}`") from None
        if r.returncode != 0:
            raise FliteError(f"{self.binary} {' '.join(args[:3])} ... failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
        return r.stdout

    def voices(self) -> list[str]:
        """Voices built into this flite (``flite -lv``)."""
        out = self.run("-lv")
        if "Voices available:" not in out:
            raise FliteError(f"unexpected output of `{self.binary} -lv`: {out.strip()[:200]!r}")
        return out.split("Voices available:", 1)[1].split()


def default_flite_dir() -> Path:
    """``$SQVAE_FLITE``, else ``tools/flite`` of the source tree this package runs from."""
    env = os.environ.get("SQVAE_FLITE")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "tools" / "flite"


def find_flite(flite_dir: str | os.PathLike | None = None) -> Flite:
    """The flite unpacked by ``tools/fetch_flite.sh`` into ``flite_dir`` (default: :func:`default_flite_dir`)."""
    root = Path(flite_dir) if flite_dir is not None else default_flite_dir()
    binary = root / "usr" / "bin" / "flite"
    if not binary.is_file():
        raise FliteError(f"flite not found: {binary} does not exist; fetch it with `bash tools/fetch_flite.sh {root}` "
                         "(or pass --flite-dir / set SQVAE_FLITE to a dir made by that script)")
    libs = sorted(root.glob("usr/lib/*/libflite.so*")) + sorted(root.glob("usr/lib/libflite.so*"))
    return Flite(binary, libs[0].parent if libs else None)


def read_sentences(path: str | os.PathLike | None = None) -> list[str]:
    """The sentence list (package data by default); '#' lines and blank lines are skipped."""
    if path is None:
        text = resources.files("sqvae_speech").joinpath("resources/flite_sentences.txt").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    sentences = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not sentences:
        raise FliteError(f"no sentences in {path or 'the package sentence list'}")
    return sentences


def parse_psdur(text: str) -> list[Phone]:
    """``ph:end ph:end ...`` (flite -psdur) -> phones with start and end times (seconds)."""
    phones: list[Phone] = []
    start = 0.0
    for tok in text.split():
        m = _PHONE.match(tok)
        if m is None:
            raise FliteError(f"unexpected token {tok!r} in flite's phone output (expected 'phone:end-time')")
        end = float(m.group(2))
        if end < start:
            raise FliteError(f"flite phone times go backwards at {tok!r} (previous end {start})")
        phones.append(Phone(m.group(1), start, end))
        start = end
    if not phones:
        raise FliteError("flite printed no phones")
    return phones


def synthesize(flite: Flite, voice: str, text: str, wav_path: str | os.PathLike, sample_rate: int = 16000) -> tuple[list[Phone], float]:
    """Speak ``text`` with ``voice`` into ``wav_path`` (mono PCM16 at ``sample_rate``).

    Returns (phones with times, audio duration in seconds)."""
    wav_path = Path(wav_path)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wav_path.parent) as tmp:
        raw = Path(tmp) / "out.wav"
        phones = parse_psdur(flite.run("-voice", voice, "-psdur", "-t", text, "-o", str(raw)))
        wav, sr = sf.read(raw, dtype="float32", always_2d=True)
    wav = wav.mean(axis=1)
    if sr != sample_rate:
        wav = resample(wav, sr, sample_rate)
    with atomic_path(wav_path, suffix=".wav") as out:
        sf.write(out, wav, sample_rate, subtype="PCM_16")
    return phones, len(wav) / sample_rate


def item_rows(utt: str, speaker: str, phones: Sequence[Phone], duration: float, min_phone: float = 0.03,
              pau_context: float = 0.05) -> list[tuple[str, float, float, str, str, str, str]]:
    """Triphone tokens of one utterance (module docstring): (file, onset, offset, phone, prev, next, speaker)."""
    rows = []
    for k in range(1, len(phones) - 1):
        prev, cur, nxt = phones[k - 1], phones[k], phones[k + 1]
        if cur.phone == SILENCE or cur.end - cur.start < min_phone:
            continue
        onset = max(prev.start, cur.start - pau_context) if prev.phone == SILENCE else prev.start
        offset = min(nxt.end, cur.end + pau_context) if nxt.phone == SILENCE else nxt.end
        if offset > duration:
            continue
        rows.append((utt, onset, offset, cur.phone, prev.phone, nxt.phone, speaker))
    return rows


@dataclass
class FliteSet:
    out_dir: Path
    utterances: int
    items: int
    seconds_of_audio: float


def make_flite_abx_set(out_dir: str | os.PathLike, flite_dir: str | os.PathLike | None = None,
                       voices: Sequence[str] = VOICES, sentences: Sequence[str] | None = None,
                       sample_rate: int = 16000, jobs: int = 2, progress: bool = True) -> FliteSet:
    """Synthesize every sentence with every voice and write the set (module docstring)."""
    from tqdm import tqdm

    flite = find_flite(flite_dir)
    have = flite.voices()
    missing = [v for v in voices if v not in have]
    if missing:
        raise FliteError(f"voice(s) {', '.join(missing)} are not built into {flite.binary}; it has: {', '.join(have)}")
    sentences = list(sentences) if sentences is not None else read_sentences()
    out = Path(out_dir)
    jobs_list = [(v, k, s) for v in voices for k, s in enumerate(sentences, 1)]
    results: dict[str, tuple[str, list[Phone], float]] = {}

    def work(job: tuple[str, int, str]) -> None:
        voice, k, text = job
        utt = f"{voice}_s{k:03d}"
        phones, dur = synthesize(flite, voice, text, out / "wav" / f"{utt}.wav", sample_rate)
        results[utt] = (voice, phones, dur)

    with ThreadPoolExecutor(max(1, jobs)) as pool, tqdm(total=len(jobs_list), desc="flite", unit="utt",
                                                       disable=not progress) as bar:
        for _ in pool.map(work, jobs_list):
            bar.update(1)
    rows, align, text = [], [], []
    for utt in sorted(results):
        voice, phones, dur = results[utt]
        rows += item_rows(utt, voice, phones, dur)
        # kal16's final pause runs past its audio: the CTM describes the audio that exists
        align += [f"{utt} 1 {p.start:.3f} {min(p.end, dur) - p.start:.3f} {p.phone}\n" for p in phones if p.start < dur]
        text.append(f"{utt} {sentences[int(utt.rsplit('_s', 1)[1]) - 1]}\n")
    from .abx.items import write_items

    write_datadir(out / "data", {u: str((out / "wav" / f"{u}.wav").resolve()) for u in results},
                  {u: results[u][0] for u in results})
    write_items(out / "abx.item", rows)
    atomic_write_text(out / "phones.ctm", "".join(align))
    atomic_write_text(out / "text", "".join(text))
    return FliteSet(out, len(results), len(rows), float(sum(r[2] for r in results.values())))

