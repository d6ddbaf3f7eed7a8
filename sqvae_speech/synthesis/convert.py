"""``sqvae-speech convert``: resynthesis and voice conversion you can listen to.

For every row ``source target_speaker output_name`` of a conversion list:

1. the source's log-mel (from ``--feats``, else computed from its audio), odd T trimmed;
2. ``model.encode`` (deterministic quantization) and ``model.decode`` with the target
   speaker: ``T - 2`` frames for ``mel[:, 1:-1]``;
3. a vocoder (:mod:`sqvae_speech.synthesis.vocoders`): Griffin-Lim from the mel alone, or
   WORLD / the neural vocoder (:mod:`.neural`) with the source audio's F0 mapped to the
   target speaker's log-F0 statistics (``sqvae-speech f0-stats``; a source speaker missing
   from them is described by its own utterance's statistics);
4. ``OUT/<output_name>.wav`` (16 kHz, 16-bit, scaled to the source's RMS loudness and
   peak-limited to 0.99) and ``OUT/<output_name>.png`` (source mel,
   converted mel and, for a reconstruction (target == source speaker), their difference).

``OUT/sources/`` holds each source as heard (16 kHz) and through the vocoder alone, so a
listener can tell the vocoder's artifacts from the model's. ``compare_vocoders`` renders
every source and every item through other vocoders too (``<name>.<vocoder>.wav``), played
under the main one in the same cell of the page. ``OUT/conversion.json``
records every item and ``OUT/index.html`` is the listening page
(:mod:`sqvae_speech.synthesis.listening`). A silent source gives silence.

A source is an utterance id (of ``--feats`` and/or ``--data``) or the path of an audio
file. The list is read, written and built (``--make-list DATA_DIR ...``) by
:mod:`sqvae_speech.synthesis.conversion_list`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import FeatureConfig
from ..data.audio import is_silent, load_audio
from ..data.batching import MIN_FRAMES
from ..errors import SQVAEError
from ..fileio import atomic_path, atomic_write_json
from .conversion_list import MANIFEST, ConversionItem, check_output_names
from .f0 import F0Stats, convert_f0, read_f0_stats, utterance_stats
from .vocoders import (
    VOCODERS,
    WorldAnalysis,
    align_frames,
    griffinlim,
    neural,
    peak_limit,
    world,
    world_analyze,
)

# How WORLD conversions map F0: by the source speaker's statistics (keeps an utterance's
# register relative to its speaker) or by the utterance's own (lands on the target's median).
F0_NORMS = ("speaker", "utterance")


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass
class Source:
    key: str  # as written in the list
    label: str  # utterance id or file stem
    speaker: str | None
    mel: np.ndarray  # [n_mels, T]
    wav: np.ndarray | None  # [N] at the feature rate, when audio is known
    silent: bool


def load_sources(
    keys: Sequence[str], config: FeatureConfig, feats: str | Path | None = None, data: str | Path | None = None,
    need_audio: bool = False, where: str = "conversion list",
) -> dict[str, Source]:
    """Resolve each distinct source key to its features (and audio); checks lengths."""
    from ..data.datadir import read_datadir, utterance_audio
    from ..data.featstore import FeatureStore
    from ..data.features import logmel

    store = FeatureStore.open(feats, expect_config=config) if feats else None
    dd = read_datadir(data) if data else None
    out: dict[str, Source] = {}
    for key in dict.fromkeys(keys):
        in_store, in_data = store is not None and key in store, dd is not None and key in dd.utt2spk
        wav = None
        if in_store or in_data:
            speaker = store.speaker(key) if in_store else dd.utt2spk[key]  # type: ignore[union-attr]
            if in_data and (need_audio or not in_store):
                path, start, end = utterance_audio(dd, key)  # type: ignore[arg-type]
                wav = load_audio(path, config.sample_rate, start, end)
            elif need_audio:
                raise SQVAEError(f"{where}: source '{key}' has features but WORLD needs its audio: pass --data "
                                 "with the data dir that holds it")
            mel = store[key] if in_store else logmel(wav, config.sample_rate, config)  # type: ignore[index,arg-type]
            label = key
        elif Path(key).is_file():
            speaker, label = None, Path(key).stem
            wav = load_audio(key, config.sample_rate)
            mel = logmel(wav, config.sample_rate, config)
        else:
            looked = " and ".join(str(p) for p in (feats, data) if p) or "no --feats/--data"
            raise SQVAEError(f"{where}: source '{key}' is neither an utterance of {looked} nor an audio file")
        frames = mel.shape[1] - mel.shape[1] % 2
        if frames < MIN_FRAMES:
            raise SQVAEError(f"{where}: source '{key}' has {mel.shape[1]} feature frames "
                             f"({mel.shape[1] * config.hop_length / config.sample_rate * 1000:.0f} ms); "
                             f"the encoder needs at least {MIN_FRAMES}: use a longer source")
        if wav is not None and abs(1 + wav.size // config.hop_length - mel.shape[1]) > 1:
            raise SQVAEError(f"{where}: source '{key}': its features have {mel.shape[1]} frames but its audio "
                             f"{1 + wav.size // config.hop_length}; --feats and --data do not describe the same audio")
        silent = is_silent(wav) if wav is not None else bool(np.all(mel <= (20 * np.log10(config.amin)) / config.top_db + 1 + 1e-6))
        out[key] = Source(key, label, speaker, mel, wav, silent)
    return out


# ----------------------------------------------------------------------------- conversion


class Converter:
    """A trained model plus a vocoder. ``convert(source, target)`` -> (wav [N], mel [n_mels, T-2])."""

    def __init__(self, model: Any, config: FeatureConfig, vocoder: str = "world", f0_stats: F0Stats | None = None,
                 f0_method: str | None = None, gl_iters: int = 100, seed: int = 0, device: str = "cpu",
                 f0_norm: str = "speaker", neural_vocoder: Any = None) -> None:
        _check_vocoder(vocoder, neural_vocoder)
        if f0_norm not in F0_NORMS:
            raise SQVAEError(f"--f0-norm must be one of {', '.join(F0_NORMS)}, got '{f0_norm}'")
        self.f0_norm = f0_norm
        self.model = model.eval().to(device)
        self.config, self.vocoder, self.f0_stats = config, vocoder, f0_stats
        self.neural_vocoder = neural_vocoder
        self.f0_method = f0_method or (f0_stats.method if f0_stats else "harvest")
        self.gl_iters, self.seed, self.device = gl_iters, seed, device
        self.speakers = list(model.config.speakers)
        self._analyses: dict[str, Any] = {}
        self._f0s: dict[str, np.ndarray] = {}

    def check_target(self, target: str, where: str) -> int:
        if target not in self.speakers:
            raise SQVAEError(f"{where}: target speaker '{target}' is unknown to the model; "
                             f"known speakers: {', '.join(self.speakers)}")
        return self.speakers.index(target)

    @torch.no_grad()
    def decode(self, mel: np.ndarray, target: str) -> np.ndarray:
        """``mel [n_mels, T]`` -> the target speaker's ``[n_mels, T' - 2]`` for ``mel[:, 1:T'-1]``, T' = T - T % 2."""
        t = mel.shape[1] - mel.shape[1] % 2
        x = torch.from_numpy(np.ascontiguousarray(mel[:, :t], dtype=np.float32))[None].to(self.device)
        enc = self.model.encode(x, torch.tensor([t], device=self.device))
        spk = torch.tensor([self.check_target(target, "convert")], device=self.device)
        out, lengths = self.model.decode(enc.quantized, enc.lengths, spk)
        return out[0, :, : int(lengths[0])].float().cpu().numpy()

    def analysis(self, src: Source) -> WorldAnalysis:
        """WORLD F0 / aperiodicity of a source's audio (cached per source)."""
        if src.key not in self._analyses:
            # the F0 a neural rendering of this source already estimated is not estimated again
            self._analyses[src.key] = world_analyze(src.wav, self.config, self.f0_method, f0=self._f0s.get(src.key))
        return self._analyses[src.key]

    def source_f0(self, src: Source) -> np.ndarray:
        """F0 ``[T]`` of a source's audio (from its WORLD analysis when there is one; cached)."""
        if src.key in self._analyses:
            return self._analyses[src.key].f0
        if src.key not in self._f0s:
            from .f0 import extract_f0

            self._f0s[src.key] = extract_f0(src.wav, self.config, self.f0_method)
        return self._f0s[src.key]

    def _maps_f0(self, src: Source, target: str) -> bool:
        return self.f0_norm == "utterance" or src.speaker != target

    def check_f0(self, src: Source, target: str) -> None:
        """A WORLD conversion to another speaker needs that speaker's F0 statistics."""
        if self.vocoder == "griffinlim" or not self._maps_f0(src, target):
            return
        if self.f0_stats is None:
            raise SQVAEError(f"converting '{src.key}' to '{target}' with {self.vocoder} needs F0 statistics: pass --f0-stats "
                             "(written by `sqvae-speech f0-stats DATA_DIR OUT.json`)")
        self.f0_stats.speaker(target)

    def target_f0(self, src: Source, target: str) -> np.ndarray:
        """The source's F0 mapped to ``target``: with ``f0_norm="speaker"`` from the source
        speaker's statistics (unchanged for a reconstruction), with ``"utterance"`` from
        the utterance's own (every item, reconstructions included)."""
        f0 = self.analysis(src).f0 if self.vocoder == "world" else self.source_f0(src)
        if not self._maps_f0(src, target):
            return f0
        self.check_f0(src, target)
        assert self.f0_stats is not None
        tgt = self.f0_stats.speaker(target)
        spk = self.f0_stats.speakers.get(src.speaker or "")
        source = spk if self.f0_norm == "speaker" and spk is not None and spk.has_voice else utterance_stats(f0)
        return convert_f0(f0, source, tgt, self.f0_stats.f0_floor, self.f0_stats.f0_ceil)

    def vocode(self, src: Source, mel: np.ndarray, target: str | None, offset: int) -> np.ndarray:
        """Waveform of ``mel`` placed at ``offset`` on the source's frame grid; ``target``
        None keeps the source's own F0 (vocoder-only resynthesis)."""
        n_frames = src.mel.shape[1]
        if src.silent:
            return np.zeros((n_frames - 1) * self.config.hop_length, np.float32)
        if self.vocoder == "griffinlim":
            return griffinlim([align_frames(mel, n_frames, offset)], self.config, self.gl_iters, seed=self.seed)[0]
        if self.vocoder == "neural":
            f0 = self.source_f0(src) if target is None else self.target_f0(src, target)
            return neural([mel], [f0], self.neural_vocoder, self.config, offset=offset, seed=self.seed)[0]
        ana = self.analysis(src)
        f0 = ana.f0 if target is None else self.target_f0(src, target)
        return world([mel], [ana], [f0], self.config, offset=offset)[0]

    def with_vocoder(self, vocoder: str) -> Converter:
        """The same model, F0 statistics and cached analyses with another vocoder."""
        _check_vocoder(vocoder, self.neural_vocoder)
        other = copy.copy(self)  # shares the model and the analysis caches
        other.vocoder = vocoder
        return other

    def convert(self, src: Source, target: str) -> tuple[np.ndarray, np.ndarray]:
        mel = self.decode(src.mel, target)
        return self.vocode(src, mel, target, offset=1), mel


def _check_vocoder(vocoder: str, neural_vocoder: Any) -> None:
    if vocoder not in VOCODERS:
        raise SQVAEError(f"--vocoder must be one of {', '.join(VOCODERS)}, got '{vocoder}'")
    if vocoder == "neural" and neural_vocoder is None:
        raise SQVAEError("the neural vocoder needs --vocoder-model, the vocoder.pt written by `sqvae-speech train-vocoder`")


def packaged_f0_stats(path: str | Path) -> F0Stats | None:
    """The F0 statistics a model file carries (None for a checkpoint or a file without them)."""
    from ..checkpoint import load_checkpoint

    packaged = load_checkpoint(path).get("model_file", {}).get("f0_stats")
    return F0Stats.from_dict(packaged, f"the F0 statistics in {path}") if packaged else None


def match_loudness(wav: np.ndarray, src: Source) -> np.ndarray:
    """``wav [N]`` scaled to the RMS of its source recording, then peak-limited; unchanged
    without a recording or for silence. Listeners compare voices, not levels: a decoder
    that is a few dB off would otherwise sound better or worse for its level alone."""
    if src.wav is None or src.silent or not wav.any():
        return wav
    gain = float(np.sqrt(np.mean(src.wav.astype(np.float64) ** 2)) / np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
    return peak_limit(wav * gain)


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM wav, atomically."""
    import soundfile

    with atomic_path(path, suffix=".wav") as tmp:
        soundfile.write(tmp, np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")


def run_conversion(
    exp: str | Path, items: Sequence[ConversionItem], out_dir: str | Path, vocoder: str = "world",
    feats: str | Path | None = None, data: str | Path | None = None, f0_stats: str | Path | None = None,
    f0_method: str | None = None, gl_iters: int = 100, seed: int = 0, device: str = "cpu",
    progress: bool = True, title: str | None = None, where: str = "conversion list", f0_norm: str = "speaker",
    similarity_data: str | Path | None = None, vocoder_model: str | Path | None = None,
    compare_vocoders: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Convert ``items``, write wavs, PNGs, sources, ``conversion.json`` and ``index.html``.

    With ``similarity_data`` (a data dir of held-out recordings), each output's speaker
    similarity to its target and to its source speaker (:mod:`sqvae_speech.metrics.speaker`,
    as ``sqvae-speech report`` measures it) goes into ``conversion.json`` and beside its
    audio on the page.

    ``vocoder_model``: the neural vocoder file (``train-vocoder``'s ``vocoder.pt``), needed
    when ``vocoder`` or one of ``compare_vocoders`` is ``"neural"``.

    Returns the manifest entries. Everything is checked (output names, speakers, sources,
    lengths, F0 statistics) before the first file is written.
    """
    from tqdm import tqdm

    from ..checkpoint import load_model
    from .listening import PageItem, plot_spectrograms, write_page

    t0 = time.time()
    check_output_names(items, where)  # OUT/<name>.wav and .png: never a path out of OUT
    model, cfg, step, ckpt = load_model(exp)
    stats = read_f0_stats(f0_stats) if f0_stats else packaged_f0_stats(ckpt)
    others = [v for v in dict.fromkeys(compare_vocoders) if v != vocoder]
    from .neural import load_vocoder

    net = load_vocoder(vocoder_model, device) if vocoder_model is not None else None  # Converter says if one is missing
    conv = Converter(model, cfg.features, vocoder, stats, f0_method, gl_iters, seed, device, f0_norm, net)
    extra = [conv.with_vocoder(v) for v in others]
    for n, it in enumerate(items, 1):
        conv.check_target(it.target, f"{where} row {n} ('{it.name}')")
    need_audio = any(c.vocoder != "griffinlim" for c in (conv, *extra))
    sources = load_sources([it.source for it in items], cfg.features, feats, data, need_audio, where)
    for it in items:
        for c in (conv, *extra):
            c.check_f0(sources[it.source], it.target)
    refs = None
    if similarity_data is not None:
        from ..metrics.heldout import ReferenceVoices

        refs = ReferenceVoices(similarity_data, cfg.features.sample_rate)
        for spk in dict.fromkeys([it.target for it in items] + [s.speaker for s in sources.values() if s.speaker]):
            refs.centroid(spk)  # every speaker has held-out recordings, checked before anything is written
    out_dir = Path(out_dir)
    sr, top_db = cfg.features.sample_rate, cfg.features.top_db
    page: list[PageItem] = []
    src_names: dict[str, str] = {}
    for key, src in sources.items():
        name = _unique(re.sub(r"[^A-Za-z0-9._+-]", "_", src.label), set(src_names.values()))
        src_names[key] = name
        group, row, png = src.speaker or "(unknown speaker)", src.label, f"sources/{name}.png"
        plot_spectrograms(out_dir / png, [(f"{src.key} (source)", src.mel)], top_db=top_db)
        if src.wav is not None:  # a source given by its features alone has no recording to play
            write_wav(out_dir / "sources" / f"{name}.wav", peak_limit(src.wav), sr)
            page.append(PageItem(group, row, "recorded", f"sources/{name}.wav", png))
        for c in (conv, *extra):
            v = c.vocoder
            write_wav(out_dir / "sources" / f"{name}.{v}.wav", match_loudness(c.vocode(src, src.mel, None, 0), src), sr)
            page.append(PageItem(group, row, f"{v} only", f"sources/{name}.{v}.wav",
                                 None if src.wav is not None or c is not conv else png))
    manifest = []
    for it in tqdm(items, desc="convert", unit="item", disable=None if progress else True):
        src = sources[it.source]
        wav, mel = conv.convert(src, it.target)
        wav = match_loudness(wav, src)
        write_wav(out_dir / f"{it.name}.wav", wav, sr)
        alternatives = []
        for c in extra:
            write_wav(out_dir / f"{it.name}.{c.vocoder}.wav", match_loudness(c.vocode(src, mel, it.target, 1), src), sr)
            alternatives.append((c.vocoder, f"{it.name}.{c.vocoder}.wav"))
        t = mel.shape[1]
        reference = src.mel[:, 1 : 1 + t]
        recon = src.speaker == it.target
        panels = [(f"source {src.key} ({src.speaker or 'unknown speaker'})", reference),
                  (f"decoded as {it.target}", mel)]
        entry: dict[str, Any] = {"name": it.name, "source": it.source, "source_speaker": src.speaker,
                                 "target": it.target, "reconstruction": recon, "wav": f"{it.name}.wav",
                                 "png": f"{it.name}.png", "seconds": round(wav.size / sr, 3), "silent_source": src.silent}
        if alternatives:
            entry["other_vocoders"] = dict(alternatives)
        if recon:
            entry["mse_db2"] = float(((mel - reference) ** 2).sum() * top_db**2 / (mel.shape[0] * t))
            panels.append((f"difference (dB), dB^2 MSE {entry['mse_db2']:.1f}", mel - reference))
        plot_spectrograms(out_dir / f"{it.name}.png", panels, title=f"{it.name}  [{vocoder}]", top_db=top_db,
                          diff_index=2 if recon else None)
        caption = "reconstruction" if recon else f"to {it.target}"
        if refs is not None and not src.silent:
            entry["similarity"] = similarity(refs, wav, sr, it.target, src, str(out_dir / entry["wav"]))
            caption += "; " + ", ".join(f"{v:.2f} like {k}" for k, v in entry["similarity"].items())
        page.append(PageItem(src.speaker or "(unknown speaker)", src.label, it.target, entry["wav"], entry["png"], caption,
                             tuple(alternatives)))
        manifest.append(entry)
    atomic_write_json(out_dir / MANIFEST, {"exp": str(exp), "checkpoint": str(ckpt), "step": step, "vocoder": vocoder,
                                           "other_vocoders": others,
                                           "vocoder_model": str(vocoder_model) if net is not None else None,
                                           "f0_stats": str(f0_stats) if f0_stats else ("packaged" if stats else None), "f0_norm": f0_norm,
                                           "seconds": round(time.time() - t0, 1), "items": manifest})
    targets = list(dict.fromkeys(it.target for it in items))
    notes = (f"{cfg.model.variant} at step {step} ({ckpt}); vocoder: {vocoder}. Rows: source utterances; columns: the "
             f"source as recorded, the source through the vocoder alone, then the source decoded as each target speaker "
             f"(its own speaker = reconstruction), each scaled to the loudness (RMS) of its source recording. "
             f"Spectrograms: source, decoded, and for reconstructions the difference.")
    if extra:
        notes += (f" Under each output, the same decoded spectrogram through {', '.join(c.vocoder for c in extra)}, "
                  "for comparing the vocoders on the same items.")
    scored = [m for m in manifest if not m["reconstruction"] and "similarity" in m and m["source_speaker"]]
    if scored:
        closer = sum(m["similarity"][m["target"]] > m["similarity"][m["source_speaker"]] for m in scored)
        notes += (f" Speaker similarity: the cosine between the Resemblyzer embedding of an output and the mean "
                  f"embedding of a speaker's held-out recordings in {similarity_data}; {closer} of {len(scored)} "
                  f"conversions are closer to their target than to their source speaker.")
    write_page(out_dir, page, title or f"SQ-VAE voice conversion: {Path(exp).name}", notes,
               columns=["recorded", f"{vocoder} only", *(f"{c.vocoder} only" for c in extra), *targets])
    return manifest


def similarity(refs: Any, wav: np.ndarray, sample_rate: int, target: str, src: Source, name: str) -> dict[str, float]:
    """``{speaker: cosine}`` of an output's speaker embedding with the target's (and the
    source speaker's) held-out recordings, the source utterance itself left out."""
    from ..metrics.speaker import cosine

    emb = refs.encoder.embed(wav, sample_rate, name=name)
    out = {target: cosine(emb, refs.centroid(target, exclude=src.key))}
    if src.speaker and src.speaker != target:
        out[src.speaker] = cosine(emb, refs.centroid(src.speaker, exclude=src.key))
    return {k: round(v, 4) for k, v in out.items()}


def _unique(name: str, used: set[str]) -> str:
    out, k = name, 1
    while out in used:
        k += 1
        out = f"{name}-{k}"
    return out
