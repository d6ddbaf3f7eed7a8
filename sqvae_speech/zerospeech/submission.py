"""``sqvae-speech submission``: a complete ZeroSpeech 2019 English submission.

What :func:`write_submission` adds to the exports of ``sqvae-speech export`` (which write
``english/test/<file>.txt``, z_q, and ``english/auxiliary_embedding1/<file>.txt``, z)::

    OUT/metadata.yaml                         the challenge's fields, from a :class:`Metadata`
                                              and the model (system description, hyperparameters)
    OUT/code/README.md                        the code statement (open source): this toolkit
                                              and the command
    OUT/english/test/<voice>_<id>.wav         for each line 'test/<spk>_<id>.wav <voice>' of
                                              the dataset's english/synthesis.txt: the test
                                              file decoded as <voice> (V001 or V002), vocoded
                                              (WORLD or Griffin-Lim), 16-bit 16 kHz
    OUT/english/{test,auxiliary_embedding1}/<file>.txt   completed (below)
    ZIP (OUT.zip by default)                  those files, paths relative to OUT
                                              (export.json and hidden files left out)

Test files that the export left out (``prepare`` skips files under 0.1 s and ``export``
those under 4 mel frames, and the challenge's test set has such files) are encoded here
from the corpus audio, edge-padded to 4 mel frames when shorter. Every file is written
atomically and a rerun keeps the ``.txt`` / ``.wav`` files already there (resume);
``metadata.yaml``, the code statement and the zip are rewritten each time. Last, the
zip (or OUT) is checked by :func:`~sqvae_speech.zerospeech.submission_check.validate_submission`,
the rules of the challenge's validator (``bootphon/zerospeech2020``: its
``validation/submission_2019.py``, ``validation/utils.py`` and ``read_2019_features.py``),
described in :mod:`sqvae_speech.zerospeech.submission_check`.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..corpora import zerospeech2019 as zs
from ..fileio import atomic_path, atomic_write_text
from ..textsafe import md_code
from .submission_check import (
    AUXILIARY,
    LANGUAGES,
    SYNTHESIS_LIST,
    Problem,
    SubmissionError,
    SynthesisItem,
    check_submission,
    corpus_test_names,
    read_synthesis_list,
    unsafe_entry,
    validate_submission,
)

__all__ = ["Metadata", "Problem", "SubmissionError", "SubmissionSummary", "check_submission", "corpus_test_names",
           "pack_submission", "read_synthesis_list", "validate_submission", "write_submission"]

CODE_STATEMENT = "code/README.md"


@dataclass
class Metadata:
    """The fields of ``metadata.yaml`` a user sets; None: described from the model."""

    author: str = "anonymous"
    affiliation: str = "unaffiliated"
    open_source: bool = True
    abx_distance: str = "dtw_cosine"
    system_description: str | None = None
    auxiliary1_description: str | None = None
    using_parallel_train: bool = False
    using_external_data: bool = False


@dataclass
class SubmissionSummary:
    out_dir: Path
    zip_path: Path | None
    encoded: int  # test files the export lacked, encoded here
    synthesized: int
    skipped_existing: int  # synthesized files already there
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0


# -- writing --------------------------------------------------------------------------
def write_submission(
    exp: str | os.PathLike, corpus_dir: str | os.PathLike, out_dir: str | os.PathLike,
    zip_path: str | os.PathLike | None = None, metadata: Metadata | None = None, vocoder: str = "world",
    f0_stats: str | os.PathLike | None = None, f0_norm: str = "utterance", gl_iters: int = 100,
    device: str | None = None, progress: bool = True, command: str = "", vocoder_model: str | os.PathLike | None = None,
) -> SubmissionSummary:
    """Complete the submission in ``out_dir`` (module docstring) with the model of ``exp``,
    pack it into ``zip_path`` (None: no zip) and validate it; the problems found are in
    the summary (none for a valid submission). ``vocoder="neural"`` needs ``vocoder_model``
    (``train-vocoder``'s ``vocoder.pt``) and, like WORLD, the voices' F0 statistics."""
    from ..locks import dir_lock

    t0 = time.time()
    root = zs.resolve_root(corpus_dir)
    names, items = corpus_test_names(root), read_synthesis_list(root)
    out = Path(out_dir)
    with dir_lock(out, "sqvae-speech submission"):
        encoded, written, skipped = _write(exp, root, out, names, items, metadata or Metadata(), vocoder, f0_stats,
                                           f0_norm, gl_iters, device or "cpu", progress, command, vocoder_model)
    if zip_path is not None:
        pack_submission(out, zip_path)
    problems = validate_submission(zip_path if zip_path is not None else out, root)
    return SubmissionSummary(out, Path(zip_path) if zip_path else None, encoded, written, skipped, problems,
                             round(time.time() - t0, 2))


def _write(exp: Any, root: Path, out: Path, names: list[str], items: list[SynthesisItem], meta: Metadata,
           vocoder: str, f0_stats: Any, f0_norm: str, gl_iters: int, device: str, progress: bool,
           command: str, vocoder_model: Any = None) -> tuple[int, int, int]:
    from ..checkpoint import load_model
    from ..synthesis.convert import Converter, packaged_f0_stats
    from ..synthesis.f0 import read_f0_stats
    from .export import read_export_meta

    model, cfg, step, ckpt = load_model(exp, map_location="cpu")
    for sub in ("test", "auxiliary_embedding1"):
        old = read_export_meta(out / "english" / sub)
        if old is not None and Path(old.get("checkpoint", "")) != Path(ckpt).resolve():
            raise SubmissionError(f"{out / 'english' / sub} holds an export of {old.get('checkpoint')}, not of "
                                  f"{Path(ckpt).resolve()}: export this model there again (--overwrite)")
    stats, net = None, None
    if vocoder == "neural":
        if vocoder_model is None:
            raise SubmissionError("--vocoder neural needs --vocoder-model, the vocoder.pt of `sqvae-speech train-vocoder`")
        from ..synthesis.neural import load_vocoder

        net = load_vocoder(vocoder_model, device)
    if vocoder in ("world", "neural"):
        stats = read_f0_stats(f0_stats) if f0_stats and Path(f0_stats).exists() else (
            None if f0_stats else packaged_f0_stats(ckpt))
        if stats is None:
            given = f" ({f0_stats} does not exist)" if f0_stats else ""
            raise SubmissionError(f"{'WORLD' if vocoder == 'world' else 'Neural'} synthesis needs the F0 statistics "
                                  f"of the target voices{given}: pass "
                                  "--f0-stats (stage 5 of the recipe writes feats/train/f0_stats.json with "
                                  "--vocoder world; `sqvae-speech f0-stats data/train FILE` computes them) or use "
                                  "--vocoder griffinlim")
    conv = Converter(model, cfg.features, vocoder, stats, None, gl_iters, 0, device, f0_norm, net)
    for voice in dict.fromkeys(it.voice for it in items):  # all checked before anything is written
        conv.check_target(voice, str(root / SYNTHESIS_LIST))
        if stats is not None:
            stats.speaker(voice)
    encoded = _encode_missing(model, cfg.features, root, names, out / "english", device, progress)
    written, skipped = _synthesize(conv, items, out / "english" / "test", progress)
    import yaml

    # through JSON: plain lists and dicts (the config holds tuples, which safe YAML cannot write)
    fields = json.loads(json.dumps(metadata_fields(meta, cfg, step, vocoder,
                                                   (out / "english" / "auxiliary_embedding1").is_dir())))
    header = ("# ZeroSpeech 2019 submission, written by `sqvae-speech submission`; check author and "
              "affiliation before you submit\n")
    atomic_write_text(out / "metadata.yaml", header + yaml.safe_dump(fields, sort_keys=False, allow_unicode=True))
    if meta.open_source:
        atomic_write_text(out / CODE_STATEMENT, code_statement(cfg, step, ckpt, command))
    else:
        (out / CODE_STATEMENT).unlink(missing_ok=True)  # an earlier open-source run's: closed source keeps code/ empty
    return encoded, written, skipped


def _encode_missing(model: Any, config: Any, root: Path, names: list[str], english: Path, device: str,
                    progress: bool) -> int:
    """z_q and z of the test files the export lacks, from the corpus audio, one at a time."""
    import torch
    from tqdm import tqdm

    from ..data.audio import load_audio
    from ..data.batching import MIN_FRAMES
    from ..data.features import logmel
    from .export import frame_times, latent_time_convention, write_feature_file

    kinds = {"test": "quantized", "auxiliary_embedding1": "z"}
    todo = [n for n in names if any(not (english / d / f"{n}.txt").is_file() for d in kinds)]
    rate, offset = latent_time_convention(config)
    model.eval().to(device)
    with torch.no_grad():
        for name in tqdm(todo, desc="encode missing test files", unit="file", disable=not progress or not todo):
            mel = logmel(load_audio(root / zs.TEST_DIR / f"{name}.wav", config.sample_rate), config.sample_rate, config)
            mel = mel[:, : mel.shape[1] - mel.shape[1] % 2]
            if mel.shape[1] < MIN_FRAMES:  # shorter than the encoder's receptive field
                mel = np.pad(mel, ((0, 0), (0, MIN_FRAMES - mel.shape[1])), mode="edge")
            x = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[None].to(device)
            enc = model.encode(x, torch.tensor([mel.shape[1]], device=device))
            n = int(enc.lengths[0])
            for d, attr in kinds.items():
                values = getattr(enc, attr)[0, :n].float().cpu().numpy()
                write_feature_file(english / d / f"{name}.txt", values, frame_times(n, rate, offset), "zerospeech")
    return len(todo)


def _synthesize(conv: Any, items: list[SynthesisItem], test_dir: Path, progress: bool) -> tuple[int, int]:
    """Each listed test file decoded as its voice and vocoded; files already there are kept."""
    from tqdm import tqdm

    from ..synthesis.convert import load_sources, match_loudness, write_wav

    todo = [it for it in items if not (test_dir / it.output).is_file()]
    for it in todo:
        for stray in test_dir.glob(f".tmp-{it.output}.*"):
            stray.unlink(missing_ok=True)  # a killed run's partial file
    sr = conv.config.sample_rate
    for it in tqdm(todo, desc=f"synthesize ({conv.vocoder})", unit="file", disable=not progress or not todo):
        src = load_sources([str(it.source)], conv.config, need_audio=conv.vocoder != "griffinlim",
                           where=SYNTHESIS_LIST)[str(it.source)]
        wav, _ = conv.convert(src, it.voice)
        write_wav(test_dir / it.output, match_loudness(wav, src), sr)
    return len(todo), len(items) - len(todo)


def metadata_fields(meta: Metadata, cfg: Any, step: int, vocoder: str, auxiliary1: bool) -> dict[str, Any]:
    """``metadata.yaml`` as a dict, the challenge's field names in its order."""
    from .. import __version__
    from ..cli.compare import MODEL_NAMES

    q = cfg.model.quantizer
    name = MODEL_NAMES.get(cfg.model.variant, cfg.model.variant)
    vocoder_name = {"world": "WORLD (F0 of the source mapped to the voice's log-F0 statistics)",
                    "neural": "a neural harmonic-plus-noise vocoder trained on the training audio (F0 of the source "
                              "mapped to the voice's log-F0 statistics)",
                    "griffinlim": "Griffin-Lim"}.get(vocoder, vocoder)
    description = meta.system_description or (
        f"{name}, sqvae-speech {__version__}: a convolutional encoder of 80-band log-mel frames (10 ms) to "
        f"{q.get('embedding_dim')}-dimensional latents at 50 Hz, quantized with a codebook of "
        f"{q.get('num_embeddings')} vectors, and a speaker-conditioned recurrent decoder back to log-mel; "
        f"trained {step} steps on the speech of {len(cfg.model.speakers)} speakers. english/test holds the quantized "
        f"vectors z_q; the synthesized speech decodes them as V001 or V002 and vocodes with {vocoder_name}.")
    fields: dict[str, Any] = {
        "author": meta.author, "affiliation": meta.affiliation, "open source": meta.open_source,
        "abx distance": meta.abx_distance, "system description": description,
        "hyperparameters": {"variant": cfg.model.variant, "quantizer": dict(q), "jitter": cfg.model.jitter,
                            "encoder channels": cfg.model.encoder.channels, "training steps": step,
                            "batch size": cfg.train.batch_size, "learning rate": cfg.train.lr, "vocoder": vocoder},
        "using parallel train": meta.using_parallel_train, "using external data": meta.using_external_data,
    }
    if auxiliary1:
        fields["auxiliary1 description"] = meta.auxiliary1_description or (
            f"z, the encoder's {q.get('embedding_dim')}-dimensional means before quantization, one per 20 ms frame")
    return fields


def code_statement(cfg: Any, step: int, ckpt: Any, command: str = "") -> str:
    """``code/README.md``: where the code is and the command that made the submission."""
    from .. import __version__

    return (f"# Code statement\n\nThis submission was made with sqvae-speech {__version__}, an open-source toolkit "
            f"for stochastically quantized VAEs on speech (the Python package and repository `sqvae-speech`).\n\n"
            f"- model: {cfg.model.variant}, checkpoint {md_code(Path(ckpt).name)} at step {step}\n"
            f"- recipe: `recipes/zerospeech2019/run.sh --corpus-dir CORPUS` (stages 0-6; stage 6 exports "
            f"english/test and english/auxiliary_embedding1 with `sqvae-speech export`, then runs the command "
            f"below)\n" + (f"- command: {md_code(command)}\n" if command else ""))


def pack_submission(sub_dir: str | os.PathLike, zip_path: str | os.PathLike) -> int:
    """Zip ``metadata.yaml``, ``code/`` and each language's ``.txt`` / ``.wav`` files
    (paths relative to ``sub_dir``; ``export.json`` and hidden files left out),
    atomically. Returns the number of files.

    Only the submission's own files go in: a symbolic link, a file whose real path is
    outside ``sub_dir`` (a linked folder) or a name that is no plain zip entry (see
    :func:`~sqvae_speech.zerospeech.submission_check.unsafe_entry`) is a
    :class:`SubmissionError` naming it, before the zip is written."""
    sub = Path(sub_dir)
    files = [sub / "metadata.yaml"] if (sub / "metadata.yaml").is_file() else []
    if (sub / "code").is_dir():
        files += sorted(p for p in (sub / "code").rglob("*") if p.is_file() and not p.name.startswith("."))
    for lang in LANGUAGES:
        for d in ("test", *AUXILIARY):
            files += sorted(p for p in (sub / lang / d).glob("*") if p.suffix in (".txt", ".wav")
                            and not p.name.startswith(".") and p.is_file())
    real = sub.resolve()
    entries = []
    for p in files:
        name = p.relative_to(sub).as_posix()
        if p.is_symlink() or not p.resolve().is_relative_to(real):
            raise SubmissionError(f"{p} is a symbolic link or lies in a linked folder (its real path is {p.resolve()}); "
                                  f"a submission zips only files inside {sub}: copy the file there")
        why = unsafe_entry(name)
        if why:
            raise SubmissionError(f"{p}: its zip entry {name!r} holds {why}; rename the file")
        entries.append((p, name))
    with atomic_path(zip_path, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for p, name in entries:
            z.write(p, name)
    return len(files)

