"""Corpus trees in the real on-disk layouts of VCTK (0.80, 0.92) and ZeroSpeech 2019
English, filled with real speech: clips of the four main Fish Fillets voices (the
``sound_dir`` fixture), resampled to the corpus' rate and written in its format.

Nothing ships VCTK or ZeroSpeech, so the recipes are tested on these trees. Each voice
becomes one speaker of the fake corpus (cs-m, cs-v, nl-m, nl-v in that order).
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import soundfile

from sqvae_speech.data.audio import load_audio

VOICES = ("cs-m", "cs-v", "nl-m", "nl-v")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# The paper's ZeroSpeech 2019 dB^2 list, as the recipe carries it.
REFERENCE_EVAL_LIST = RECIPES / "zerospeech2019" / "zerospeech2019_english_mse_evaluation.json"


def copy_recipe(name: str, root: Path, *files: str) -> Path:
    """A copy of ``recipes/<name>`` in ``root/recipe`` (run.sh, local/, conf/ and ``files``),
    with the configs the recipes share (``recipes/conf``) in ``root/conf``, where the
    copy's ``../conf`` finds them. Run it with ``SQVAE_ROOT`` set to this repository: its
    data/, feats/ and exp/ land in the copy. Returns the copy's dir."""
    recipe = root / "recipe"
    recipe.mkdir(parents=True)
    for file in ("run.sh", *files):
        shutil.copy2(RECIPES / name / file, recipe / file)
    for sub in ("local", "conf"):
        if (RECIPES / name / sub).is_dir():
            shutil.copytree(RECIPES / name / sub, recipe / sub)
    shutil.copytree(RECIPES / "conf", root / "conf")
    return recipe


def voice_clips(sound_dir: Path, voice: str, count: int, min_s: float = 1.0, max_s: float = 3.5) -> list[Path]:
    """``count`` clips of one main voice lasting ``min_s``..``max_s`` seconds, spread over the
    sorted clip list (deterministic)."""
    good = _clips_between(sound_dir, voice, min_s, max_s)
    if len(good) < count:
        raise AssertionError(f"only {len(good)} clips of {voice} last {min_s}-{max_s} s in {sound_dir}")
    step = len(good) // count
    return [good[i * step] for i in range(count)]


@functools.cache
def _clips_between(sound_dir: Path, voice: str, min_s: float, max_s: float) -> list[Path]:
    # Reading ~700 headers per voice takes ~0.5 s: once per test session is enough.
    lang, code = voice.split("-")
    files = sorted(sound_dir.glob(f"*/{lang}/*-{code}-*.ogg"))
    return [f for f in files if min_s <= soundfile.info(str(f)).duration <= max_s]


def _file_id(speaker: str, i: int) -> str:
    """A 10-digit id like the corpus' (S015_0361841101), stable across runs."""
    return f"{int(hashlib.sha1(f'{speaker}-{i}'.encode()).hexdigest()[:8], 16) % 10**10:010d}"


def write_clip(src: Path, dst: Path, sample_rate: int, gain: float = 1.0, delay: int = 0) -> None:
    """``src`` resampled to ``sample_rate`` and written to ``dst`` (16-bit wav, or flac for
    a ``.flac`` name); ``gain``/``delay`` make a second microphone's version differ."""
    wav = load_audio(src, sample_rate) * gain
    if delay:
        wav = np.concatenate([np.zeros(delay, dtype=wav.dtype), wav[:-delay]])
    dst.parent.mkdir(parents=True, exist_ok=True)
    fmt = "FLAC" if dst.suffix == ".flac" else "WAV"
    soundfile.write(str(dst), wav, sample_rate, subtype="PCM_16", format=fmt)


def make_vctk(root: Path, sound_dir: Path, version: str, speakers: tuple[str, ...] = ("p225", "p226", "p227"),
              per_speaker: int = 5, no_mic2: tuple[str, ...] = ()) -> Path:
    """A VCTK ``version`` ("0.80" or "0.92") tree under ``root``; returns the corpus dir.

    0.80 unpacks into ``root/VCTK-Corpus`` (wav48/, 48 kHz 16-bit wav); 0.92 lies
    directly in ``root`` (wav48_silence_trimmed/, 48 kHz flac, _mic1 and _mic2 files;
    utterances in ``no_mic2`` get no mic2 file). Both get txt/ and speaker-info.txt.
    Utterance numbers are 001, 003, 005, ... (VCTK numbers have gaps).
    """
    corpus = root / "VCTK-Corpus" if version == "0.80" else root
    info = ["ID  AGE  GENDER  ACCENTS  REGION"]
    for spk, voice in zip(speakers, VOICES):
        info.append(f"{spk[1:]}  23  F    English    Southern  England")
        for i, clip in enumerate(voice_clips(sound_dir, voice, per_speaker)):
            utt = f"{spk}_{2 * i + 1:03d}"
            (corpus / "txt" / spk).mkdir(parents=True, exist_ok=True)
            (corpus / "txt" / spk / f"{utt}.txt").write_text("Please call Stella.\n")
            if version == "0.80":
                write_clip(clip, corpus / "wav48" / spk / f"{utt}.wav", 48000)
            else:
                write_clip(clip, corpus / "wav48_silence_trimmed" / spk / f"{utt}_mic1.flac", 48000)
                if utt not in no_mic2:
                    write_clip(clip, corpus / "wav48_silence_trimmed" / spk / f"{utt}_mic2.flac", 48000,
                               gain=0.7, delay=24)
    (corpus / "speaker-info.txt").write_text("\n".join(info) + "\n")
    return corpus


def reference_eval_items(per_speaker: int) -> list[list[str]]:
    """The first ``per_speaker`` items of V001 and of V002 in the paper's evaluation list."""
    items = json.loads(REFERENCE_EVAL_LIST.read_text())
    return [it for spk in ("V001", "V002") for it in [x for x in items if x[1] == spk][:per_speaker]]


def make_zerospeech2019(root: Path, sound_dir: Path, eval_items: list[list[str]],
                        unit_speakers: tuple[str, ...] = ("S015", "S020"), per_speaker: int = 5) -> Path:
    """A ZeroSpeech 2019 English tree under ``root`` (16 kHz wav); returns ``root``.

    train/unit: ``unit_speakers`` (voices cs-m, cs-v); train/voice: V001, V002 (nl-m,
    nl-v); train/parallel/voice: the files of ``eval_items`` (other clips of the same
    voices); train/parallel/source: files named like the first unit speaker with the same
    ids (unused by the recipes, there for the layout); test: 2 files each of speakers S002
    (the voice of the second unit speaker) and S003 (the first one's), clips not used for
    training; ``english/synthesis.txt``, the challenge's synthesis list: the first test
    file of S002 as V001, that of S003 as V002.
    """
    eng = root / "english"
    voice_of = dict(zip((*unit_speakers, "V001", "V002"), VOICES))
    n_eval = {spk: sum(1 for _, s in eval_items if s == spk) for spk in ("V001", "V002")}
    for spk, voice in voice_of.items():
        clips = voice_clips(sound_dir, voice, per_speaker + n_eval.get(spk, 0) + 2)
        sub = "unit" if spk in unit_speakers else "voice"
        for i, clip in enumerate(clips[:per_speaker]):
            write_clip(clip, eng / "train" / sub / f"{spk}_{_file_id(spk, i)}.wav", 16000)
        if spk in ("V001", "V002"):
            mine = [rel for rel, s in eval_items if s == spk]
            for rel, clip in zip(mine, clips[per_speaker:]):
                write_clip(clip, root / f"{rel}.wav", 16000)
                source_name = f"{unit_speakers[0]}_{Path(rel).name.split('_', 1)[1]}.wav"
                write_clip(clips[-1], eng / "train" / "parallel" / "source" / source_name, 16000)
        test_speaker = {unit_speakers[1]: "S002", unit_speakers[0]: "S003"}.get(spk)
        if test_speaker:
            for j, clip in enumerate(clips[-2:]):
                write_clip(clip, eng / "test" / f"{test_speaker}_{_file_id(test_speaker, j)}.wav", 16000)
    (eng / "synthesis.txt").write_text("".join(f"test/{spk}_{_file_id(spk, 0)}.wav {voice}\n"
                                               for spk, voice in (("S002", "V001"), ("S003", "V002"))))
    return root
