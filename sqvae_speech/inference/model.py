"""The public Python API: a trained model applied to any recording.

::

    import sqvae_speech as sq
    model = sq.load_model("exp/gaussian_4")            # experiment dir, checkpoint or model file
    units = model.encode("a.wav")                      # Units: indices [T'], quantized / z [T', D], times
    mel = model.decode(units, speaker="cs-v")          # [n_mels, 2T'] log-mel
    wav, sr = model.resynthesize("a.wav", speaker="cs-v")   # voice conversion

Encoding is deterministic whatever mode the network is in (the most probable code, no
Gumbel draw, no codebook update) and equals ``sqvae-speech export`` on the same audio:
the same features (:mod:`sqvae_speech.inference.audio_input`) through the same encoder.
Recordings longer than a minute are encoded in chunks of :data:`CHUNK_FRAMES` latent
frames with :data:`CONTEXT_FRAMES` frames of context on each side, more than the encoder's
receptive field (8 mel frames each way), so each chunk's frames are the whole recording's
and memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ExperimentConfig, FeatureConfig
from ..errors import AudioError, SQVAEError
from .audio_input import (
    AudioInput,
    MelInput,
    check_length,
    describe,
    is_path,
    mel_input,
)
from .units import Units

CHUNK_FRAMES = 3000  # latent frames per encoder call on a long recording (60 s)
CONTEXT_FRAMES = 8  # latent frames of context each side of a chunk (16 mel frames; 4 would do)
MAX_CONVERT_SECONDS = 600.0  # conversion holds the recording and its WORLD analysis in memory


class Model:
    """A trained speech model ready to use (:func:`load_model` builds it).

    Attributes:
        net: the :class:`~sqvae_speech.models.SpeechSQVAE` network (in evaluation mode).
        config: its :class:`~sqvae_speech.config.ExperimentConfig` (``config.features``: the
            log-mel settings audio is turned into).
        speakers: the decoder's speakers.
        step: training step of the weights.
        f0_stats: per-speaker log-F0 statistics for WORLD conversion, or None.
        metrics: evaluation results packaged with the model, or None.
        source: where it was loaded from.
    """

    def __init__(self, net: Any, config: ExperimentConfig, step: int, source: str, f0_stats: Any = None,
                 metrics: dict[str, Any] | None = None, device: str = "cpu") -> None:
        self.net = net.eval().to(device)
        self.config = config
        self.step, self.source, self.f0_stats, self.metrics = step, source, f0_stats, metrics
        self.device = torch.device(device)

    # -- facts -----------------------------------------------------------------------
    @property
    def speakers(self) -> list[str]:
        return list(self.config.model.speakers)

    @property
    def features(self) -> FeatureConfig:
        return self.config.features

    @property
    def rate(self) -> float:
        """Latent frames per second."""
        return self.features.sample_rate / (2.0 * self.features.hop_length)

    @property
    def num_codes(self) -> int:
        """Codebook size K (0 for the continuous VAE)."""
        from ..models import codebook_size

        return codebook_size(self.net.quantizer)

    def __repr__(self) -> str:
        from ..models import describe as describe_net

        return f"Model({describe_net(self.net)}, step={self.step}, source={self.source!r})"

    # -- encoding --------------------------------------------------------------------
    def encode(self, audio: AudioInput, sample_rate: int | None = None) -> Units:
        """Units of one recording.

        Args:
            audio: a file path (any format, rate and channel count libsndfile reads), or an
                array ``[N]`` / ``[N, C]`` / ``[C, N]`` (numpy or torch) with ``sample_rate``.

        Returns:
            :class:`Units` with ``indices [T']``, ``quantized [T', D]``, ``z [T', D]`` and
            ``times [T']``; ``T' = (T - 2) // 2`` for ``T`` log-mel frames.

        Raises:
            AudioError: a missing, unreadable, empty, silent or too short recording, or NaN samples.
        """
        return Units.concatenate(list(self.iter_encode(audio, sample_rate)))

    def iter_encode(self, audio: AudioInput, sample_rate: int | None = None) -> Iterator[Units]:
        """:meth:`encode` piece by piece: consecutive :class:`Units` of at most
        :data:`CHUNK_FRAMES` frames each, for writing a long recording as it is encoded."""
        with mel_input(audio, self.features, sample_rate) as inp:
            check_length(inp, self.features)
            yield from self._encode_input(inp)

    def encode_batch(self, items: Sequence[AudioInput], sample_rate: int | None = None,
                     max_frames: int = 8000) -> list[Units]:
        """Units of several recordings, run in length-bucketed padded batches of at most
        ``max_frames`` padded mel frames; equal to :meth:`encode` one at a time. Arrays
        all share ``sample_rate``; files, which may be mixed with them, read theirs from their headers."""
        out: list[Units | None] = [None] * len(items)
        short: list[tuple[int, MelInput]] = []
        for i, audio in enumerate(items):
            with mel_input(audio, self.features, None if is_path(audio) else sample_rate) as inp:
                check_length(inp, self.features)
                if inp.mel is None or inp.frames > 2 * CHUNK_FRAMES + 2:
                    out[i] = Units.concatenate(list(self._encode_input(inp)))
                else:
                    short.append((i, inp))
        for j, units in self.encode_mels([inp for _, inp in short], max_frames):
            out[short[j][0]] = units
        return out  # type: ignore[return-value]

    def encode_mels(self, inputs: Sequence[MelInput], max_frames: int = 8000) -> Iterator[tuple[int, Units]]:
        """``(position, Units)`` of whole-feature inputs (``inp.mel`` set), encoded in
        length-bucketed padded batches of at most ``max_frames`` padded mel frames."""
        from ..data.batching import Item, bucket_batches, collate

        lengths = [inp.frames - inp.frames % 2 for inp in inputs]
        for idx in bucket_batches(lengths, max_frames):
            batch = collate([Item(inputs[j].mel, 0, str(j)) for j in idx])
            enc = self.net.encode(batch.mels.to(self.device), batch.lengths.to(self.device))
            for b, j in enumerate(idx):
                yield j, self._units(enc, b, 0, int(enc.lengths[b]), 0, inputs[j])

    def _units(self, enc: Any, b: int, lo: int, hi: int, first: int, inp: MelInput) -> Units:
        """Frames ``lo:hi`` of batch item ``b`` of an encoder output; global frame ``first + lo``."""
        from ..zerospeech.export import frame_times, latent_time_convention

        rate, offset = latent_time_convention(self.features)
        times = frame_times(hi - lo, rate, offset) + (first + lo) / rate
        return Units(enc.indices[b, lo:hi].cpu().numpy().astype(np.int64),
                     enc.quantized[b, lo:hi].float().cpu().numpy(), enc.z[b, lo:hi].float().cpu().numpy(),
                     times, rate, inp.name, inp.seconds)

    def _encode_input(self, inp: MelInput) -> Iterator[Units]:
        """Encode ``inp`` in chunks of latent frames ``[a, b)``, each from mel frames
        ``[s, e)`` with :data:`CONTEXT_FRAMES` of context; exact (module docstring)."""
        total = inp.frames - inp.frames % 2
        latent = (total - 2) // 2
        margin = CONTEXT_FRAMES
        blocks = inp.blocks()
        buf = np.zeros((self.features.n_mels, 0), np.float32)
        buf_start = 0
        for a in range(0, latent, CHUNK_FRAMES):
            b = min(latent, a + CHUNK_FRAMES)
            s, e = max(0, 2 * (a - margin)), min(total, 2 * (b + margin) + 2)
            while buf_start + buf.shape[1] < e:
                buf = np.concatenate([buf, next(blocks)], axis=1)
            x = torch.from_numpy(np.ascontiguousarray(buf[:, s - buf_start : e - buf_start]))[None]
            enc = self.net.encode(x.to(self.device), torch.tensor([e - s], device=self.device))
            yield self._units(enc, 0, a - s // 2, b - s // 2, s // 2, inp)
            keep = max(0, 2 * (b - margin)) - buf_start  # the next chunk starts reading there
            if keep > 0:
                buf, buf_start = buf[:, keep:], buf_start + keep

    # -- decoding --------------------------------------------------------------------
    def speaker_index(self, speaker: str) -> int:
        """Row of ``speaker`` in the decoder's embedding; unknown -> SQVAEError listing the known."""
        if speaker not in self.speakers:
            raise SQVAEError(f"unknown speaker '{speaker}'; the model knows: {', '.join(self.speakers)}")
        return self.speakers.index(speaker)

    def lookup(self, indices: Any) -> np.ndarray:
        """Code indices ``[T']`` -> their code vectors ``[T', D]`` (what the decoder reads)."""
        idx = torch.as_tensor(np.asarray(indices))
        if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.dim() != 1:
            raise SQVAEError(f"units must be a 1-D array of integer code indices, got {tuple(idx.shape)} {idx.dtype}")
        if self.num_codes == 0:
            raise SQVAEError(f"{self.config.model.variant} has no codebook: decode its quantized latents instead of indices")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_codes):
            bad = int(idx.max()) if int(idx.max()) >= self.num_codes else int(idx.min())
            raise SQVAEError(f"unit {bad} is outside the codebook: this model's codes are 0 .. {self.num_codes - 1}")
        with torch.no_grad():
            return self.net.quantizer.lookup(idx.long().to(self.device)).float().cpu().numpy()

    def decode(self, units: Units | Any, speaker: str) -> np.ndarray:
        """Log-mel ``[n_mels, 2T']`` of ``units`` spoken by ``speaker``.

        ``units``: a :class:`Units`, code indices ``[T']`` (int) or quantized vectors
        ``[T', D]`` (float). The output frames align with mel frames ``1 .. 2T'`` of the
        encoded recording (scaled as the features: dB / top_db + 1).
        """
        spk = self.speaker_index(speaker)
        if isinstance(units, Units):
            q = units.quantized
        else:
            arr = np.asarray(units.detach().cpu() if hasattr(units, "detach") else units)
            q = self.lookup(arr) if arr.ndim == 1 else arr
        q = np.asarray(q, dtype=np.float32)
        d = self.config.model.embedding_dim
        if q.ndim != 2 or q.shape[1] != d or q.shape[0] == 0:
            raise SQVAEError(f"quantized latents must be [frames, {d}] with frames > 0, got {tuple(q.shape)}")
        if not np.isfinite(q).all():
            raise SQVAEError("the latents to decode hold NaN or inf")
        x = torch.from_numpy(np.ascontiguousarray(q))[None].to(self.device)
        with torch.no_grad():
            out, lengths = self.net.decode(x, torch.tensor([q.shape[0]], device=self.device),
                                           torch.tensor([spk], device=self.device))
        return out[0, :, : int(lengths[0])].float().cpu().numpy()

    def synthesize(self, units: Units | Any, speaker: str, gl_iters: int = 100, seed: int = 0,
                   vocoder: str = "griffinlim", vocoder_model: Any = None,
                   f0_from: AudioInput | None = None, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
        """Waveform ``([N] float32, sample rate)`` of ``units`` as ``speaker``.

        Units carry no pitch. Griffin-Lim (default) needs none. The neural vocoder
        (``vocoder="neural"``, ``vocoder_model``: a ``train-vocoder`` file or a loaded
        vocoder) takes its F0 contour from the recording ``f0_from`` (e.g. the one the units
        were encoded from), mapped to ``speaker``'s log-F0 statistics (:attr:`f0_stats`) and
        stretched to the units' length. For conversion of a recording with its own timing
        and pitch, see :meth:`resynthesize`.
        """
        from ..synthesis.vocoders import griffinlim, neural, peak_limit

        mel = self.decode(units, speaker)
        if vocoder == "griffinlim":
            wav = griffinlim([mel], self.features, gl_iters, seed=seed)[0]
        elif vocoder == "neural":
            if f0_from is None:
                raise SQVAEError("the neural vocoder needs a pitch contour, which units do not carry: pass f0_from "
                                 "(a recording, e.g. the one the units came from; --f0-from on the command line) "
                                 "or use vocoder='griffinlim'")
            f0 = self._f0_for(f0_from, speaker, mel.shape[1] + 2, sample_rate)
            wav = neural([mel], [f0], self._vocoder(vocoder_model), self.features, offset=1, seed=seed)[0]
        else:
            raise SQVAEError(f"synthesize: vocoder must be 'griffinlim' or 'neural', got '{vocoder}'")
        return peak_limit(wav * (0.5 / max(float(np.abs(wav).max(initial=0.0)), 1e-9))), self.features.sample_rate

    def _vocoder(self, vocoder_model: Any) -> Any:
        """A loaded neural vocoder from a path / loaded model, checked against this model's features."""
        from ..synthesis.neural import NeuralVocoder, load_vocoder

        if vocoder_model is None:
            raise SQVAEError("vocoder='neural' needs vocoder_model: the vocoder.pt written by `sqvae-speech train-vocoder`")
        net = vocoder_model if isinstance(vocoder_model, NeuralVocoder) else load_vocoder(vocoder_model, self.device)
        if net.features != self.features:
            raise SQVAEError("the neural vocoder was trained on other feature settings than this model's; train one on "
                             "the same features (`sqvae-speech train-vocoder`)")
        return net

    def _f0_for(self, audio: AudioInput, speaker: str, frames: int, sample_rate: int | None) -> np.ndarray:
        """F0 ``[frames]`` of a recording, mapped to ``speaker`` (its own log-F0 statistics as the
        source's) and stretched to ``frames`` (nearest frame)."""
        from ..synthesis.f0 import convert_f0, extract_f0, utterance_stats

        if self.f0_stats is None:
            raise SQVAEError(f"{self.source} carries no F0 statistics, which mapping the pitch to '{speaker}' needs: pass "
                             "load_model(..., f0_stats='f0_stats.json') or package the model with --f0-stats")
        with mel_input(audio, self.features, sample_rate, stream_seconds=MAX_CONVERT_SECONDS) as inp:
            if inp.wav is None:
                raise AudioError(f"{inp.name} is longer than {MAX_CONVERT_SECONDS:.0f} s; use a shorter recording for F0")
            f0 = extract_f0(inp.wav, self.features, self.f0_stats.method)
        tgt = self.f0_stats.speaker(speaker)
        f0 = convert_f0(f0, utterance_stats(f0), tgt, self.f0_stats.f0_floor, self.f0_stats.f0_ceil)
        idx = np.minimum((np.arange(frames) * f0.size / frames).astype(np.int64), f0.size - 1)
        return f0[idx]

    def resynthesize(self, audio: AudioInput, speaker: str, vocoder: str = "world", sample_rate: int | None = None,
                     source_speaker: str | None = None, f0_norm: str = "speaker", gl_iters: int = 100,
                     seed: int = 0, vocoder_model: Any = None) -> tuple[np.ndarray, int]:
        """Voice conversion: ``audio`` encoded, decoded as ``speaker``, vocoded.

        WORLD takes F0 and aperiodicity from ``audio``, the neural vocoder (``vocoder="neural"``,
        ``vocoder_model``: the ``train-vocoder`` file or a loaded vocoder) its F0; both map
        F0 to the target's log-F0 statistics (:attr:`f0_stats`; from the source speaker's
        statistics when ``source_speaker`` is a speaker in them and ``f0_norm="speaker"``,
        else from the recording's own). Griffin-Lim needs no statistics. The output has the
        loudness (RMS) of the input. Returns ``([N] float32, sample rate)``.
        """
        from ..data.audio import is_silent
        from ..synthesis.convert import Converter, Source, match_loudness

        self.speaker_index(speaker)
        if vocoder in ("world", "neural") and self.f0_stats is None:
            raise SQVAEError(f"{self.source} carries no F0 statistics, which {vocoder.replace('world', 'WORLD')} conversion needs: pass "
                             "load_model(..., f0_stats='f0_stats.json') (`sqvae-speech f0-stats`), package the model "
                             "with --f0-stats, or use vocoder='griffinlim'")
        net = self._vocoder(vocoder_model) if vocoder == "neural" else None
        with mel_input(audio, self.features, sample_rate, stream_seconds=MAX_CONVERT_SECONDS) as inp:
            check_length(inp, self.features)
            if inp.wav is None:
                raise AudioError(f"{inp.name} is longer than {MAX_CONVERT_SECONDS:.0f} s; convert it in pieces")
            key = describe(audio)
            src = Source(key, Path(key).stem, source_speaker, inp.mel, inp.wav, is_silent(inp.wav))
        conv = Converter(self.net, self.features, vocoder, self.f0_stats, gl_iters=gl_iters, seed=seed,
                         device=str(self.device), f0_norm=f0_norm, neural_vocoder=net)
        conv.check_f0(src, speaker)
        wav, _ = conv.convert(src, speaker)
        return match_loudness(wav, src), self.features.sample_rate


def load_model(source: str | Path, device: str | None = None, f0_stats: str | Path | None = None) -> Model:
    """A trained model from an experiment dir (its newest checkpoint), a checkpoint file or
    a model file (``sqvae-speech package``).

    Args:
        device: "cpu", "cuda", "cuda:1", ...; default "cpu".
        f0_stats: ``sqvae-speech f0-stats`` JSON for WORLD conversion; overrides those a
            model file carries.

    Raises:
        CheckpointError: a missing, corrupt or foreign file, or a newer format version.
    """
    from ..checkpoint import checkpoint_config, load_checkpoint, resolve_checkpoint
    from ..errors import CheckpointError
    from ..models import SpeechSQVAE
    from ..synthesis.f0 import F0Stats, read_f0_stats

    device = device or "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SQVAEError(f"device '{device}' asked for, but torch sees no CUDA GPU here; use device='cpu'")
    path = resolve_checkpoint(source)
    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    net = SpeechSQVAE(cfg.model)
    try:
        net.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} holds weights that do not fit the model its config describes: "
                              f"{str(e).splitlines()[0]}") from None
    packaged = ckpt.get("model_file", {})
    stats = None
    if f0_stats is not None:
        stats = read_f0_stats(f0_stats)
    elif packaged.get("f0_stats"):
        try:
            stats = F0Stats.from_dict(packaged["f0_stats"], f"the F0 statistics in {path}")
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"model file {path} holds unreadable F0 statistics ({e}); package it again") from None
    return Model(net, cfg, int(ckpt["step"]), str(source), stats, packaged.get("metrics"), device)
