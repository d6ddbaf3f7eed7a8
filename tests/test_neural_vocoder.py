"""The neural vocoder (sqvae_speech/synthesis/neural.py): excitation, network, files,
`vocoders.neural` and vocoder-check, on real speech with tiny networks; its training is
tests/test_train_vocoder.py."""


from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_experiment
from vocoder_setup import (
    FC,
    HOP,
    SR,
    TINY_NET,
    no_temp_files,
    randomize_output,
    receptive_radius,
)

from sqvae_speech.checkpoint import (
    checkpoint_config,
    list_checkpoints,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from sqvae_speech.cli import main as cli_main
from sqvae_speech.config import ConfigError, FeatureConfig
from sqvae_speech.data.audio import load_audio, peak_normalize, preemphasis
from sqvae_speech.data.features import logmel
from sqvae_speech.errors import CheckpointError, SQVAEError
from sqvae_speech.models import SpeechSQVAE
from sqvae_speech.synthesis.f0 import extract_f0
from sqvae_speech.synthesis.neural import (
    NeuralVocoder,
    NeuralVocoderConfig,
    excitation,
    load_vocoder,
    save_vocoder,
    synthesize,
)
from sqvae_speech.synthesis.vocoders import deemphasis, neural, peak_limit

# ----------------------------------------------------------------------------- excitation


def test_excitation_is_a_band_limited_pulse_train_at_f0():
    x32 = excitation(np.full(100, 200.0), FC, max_harmonic_hz=3000.0)
    assert x32.dtype == np.float32 and x32.size == 99 * HOP and np.isfinite(x32).all()
    x = x32.astype(np.float64)
    spec = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(x.size, 1.0 / SR)
    harmonics = 198 * np.arange(1, 16)  # 198 whole periods: 200 Hz is bin 198
    np.testing.assert_allclose(freqs[harmonics], 200.0 * np.arange(1, 16))
    # every harmonic up to max_harmonic_hz, each a cosine of amplitude 1 (|X| = N / 2) ...
    np.testing.assert_allclose(spec[harmonics] / (x.size / 2), 1.0, rtol=1e-4)
    # ... and nothing else: no DC, no energy between the harmonics or above the limit
    energy = spec**2
    assert energy[harmonics].sum() / energy.sum() > 1 - 1e-9
    assert energy[freqs > 3100.0].sum() / energy.sum() < 1e-9
    assert abs(x.mean()) < 1e-6
    # the pulse peak at phase 0 is the number of harmonics, not a division by zero
    assert x.max() == pytest.approx(15.0, rel=1e-6)
    # phase0 (turns) shifts the train: half a period is 40 samples at 200 Hz
    half = excitation(np.full(100, 200.0), FC, 3000.0, phase0=0.5)
    np.testing.assert_allclose(half[:-40], x[40:], atol=1e-4)
    # the default limit is 7600 Hz: 38 harmonics of 200 Hz
    assert excitation(np.full(100, 200.0), FC).max() == pytest.approx(38.0, rel=1e-6)


def test_excitation_of_unvoiced_and_short_input():
    assert excitation(np.zeros(50), FC).tolist() == [0.0] * (49 * HOP)
    assert excitation(np.full(1, 200.0), FC).size == 0 and excitation(np.zeros(0), FC).size == 0
    # a voiced-unvoiced-voiced track: silent where both neighbouring frames are unvoiced,
    # a 10 ms fade at each voicing boundary
    f0 = np.r_[np.full(20, 180.0), np.zeros(20), np.full(20, 120.0)]
    x = excitation(f0, FC)
    assert x.size == 59 * HOP and x.dtype == np.float32 and np.isfinite(x).all()
    assert not x[20 * HOP: 39 * HOP + 1].any()
    assert np.abs(x[: 19 * HOP]).max() > 10 and np.abs(x[40 * HOP:]).max() > 10
    fade = np.abs(x[19 * HOP: 20 * HOP])
    assert fade[:80].max() > fade[80:].max()  # fading out towards the unvoiced frame
    # F0 is interpolated between frames, never extrapolated to nonsense: harmonics of
    # 180 Hz (42 below 7600 Hz) and 120 Hz (63)
    # (a period is not a whole number of samples: the peaks fall between them)
    assert 0.98 * 42 < np.abs(x[: 19 * HOP]).max() <= 42 and 0.98 * 63 < np.abs(x[40 * HOP:]).max() <= 63


def test_excitation_keeps_its_pitch_over_minutes():
    """The phase runs in float64 turns: after 3 minutes (2.88 M samples) a period of a
    200 Hz train is still the first period (float32 turns would be off by ~1000 turns)."""
    x = excitation(np.full(3 * 60 * 100 + 1, 200.0), FC)
    period = 80  # samples of 200 Hz; x.size is a multiple of it
    assert x.size == 2_880_000 and x.size % period == 0
    np.testing.assert_allclose(x[-period:], x[:period], atol=0.01)  # peak 38
    tail = np.abs(np.fft.rfft(x[-SR:].astype(np.float64)))  # the last second: 1 Hz bins
    np.testing.assert_allclose(tail[200:7601:200] / (SR / 2), 1.0, rtol=1e-3)  # 38 harmonics of 200 Hz
    assert (tail[7700:] ** 2).sum() < 1e-6 * (tail**2).sum()


# ----------------------------------------------------------------------------- the network


def test_untrained_vocoder_reproduces_the_level_and_spectral_shape_of_the_recording(speech_files):
    """With the zero-initialised last convolution the output is the prior alone: the
    recording's mel envelope on each excitation. Its STFT magnitude, averaged over the
    speech frames, matches the pre-emphasized recording's within 0.3 nats overall and
    within 0.8 in each of 9 bands (measured on these clips: within 0.12 and 0.52). The
    mean *log* magnitude is no such measure: it is dominated by the spectral valleys of the
    recording (2 nats below the output's on the Dutch clips, whose codec left little above 7 kHz)."""
    torch.manual_seed(0)
    model = NeuralVocoder(TINY_NET, FC).eval()
    window = torch.hann_window(400)
    freqs = np.arange(257) * SR / 512
    edges = [0, 300, 600, 1000, 1500, 2200, 3000, 4000, 5500, 8001]

    def magnitude(y: np.ndarray) -> np.ndarray:
        return torch.stft(torch.from_numpy(y), 512, HOP, 400, window, return_complex=True).abs().numpy()

    for voice in ("cs-m", "cs-v", "nl-m", "nl-v"):
        wav = load_audio(speech_files[voice][1], SR)[: 2 * SR]
        mel, f0 = logmel(wav, SR), extract_f0(wav, FC)
        y = synthesize(model, mel, f0, seed=0)
        assert y.dtype == np.float32 and y.shape == ((mel.shape[1] - 1) * HOP,) and np.isfinite(y).all()
        ref = preemphasis(peak_normalize(wav, FC.peak), FC.preemph)[: y.size]
        a, b = magnitude(y), magnitude(ref)
        speech = mel.max(axis=0) > mel.max() - 30 / FC.top_db  # frames within 30 dB of the loudest
        assert speech.sum() > 100, voice
        overall = np.log(a[:, speech].mean() / b[:, speech].mean())
        assert abs(overall) < 0.3, (voice, overall)
        bands = [np.log(a[(freqs >= lo) & (freqs < hi)][:, speech].mean() / b[(freqs >= lo) & (freqs < hi)][:, speech].mean())
                 for lo, hi in itertools.pairwise(edges)]
        assert max(map(abs, bands)) < 0.8, (voice, np.round(bands, 2))
        assert 0.7 < y.std() / ref.std() < 1.4, voice


def test_padded_batch_equals_each_utterance_alone(voc_data):
    """The network is convolutional with zero padding: in a batch where the shorter item
    is padded, its frames further than the receptive radius from its end are those of the
    item alone, and so are its samples before the STFT window reaches them."""
    cfg = NeuralVocoderConfig(channels=16, layers=3, dilations=(1, 2, 4))
    r = receptive_radius(cfg)
    assert r == 8
    torch.manual_seed(1)
    model = randomize_output(NeuralVocoder(cfg, FC).eval())
    mels, f0s = [], []
    for clip, t in ((voc_data["clips"][0], 97), (voc_data["clips"][1], 60)):  # cs-m, cs-v
        # a stretch with voiced and unvoiced frames, ending voiced
        start = next(s for s in range(clip.f0.size - t) if 10 < (clip.f0[s: s + t] > 0).sum() < t - 5 and clip.f0[s + t - 1] > 0)
        mels.append(torch.from_numpy(clip.mel[:, start: start + t]))
        f0s.append(torch.from_numpy(clip.f0[start: start + t]))
    t_long, t_short = 97, 60
    pad = t_long - t_short
    mel_b = torch.stack([mels[0], torch.cat([mels[1], torch.full((80, pad), 0.5)], 1)])
    f0_b = torch.stack([f0s[0], torch.cat([f0s[1], torch.full((pad,), 150.0)])])
    n_long, n_short = (t_long - 1) * HOP, (t_short - 1) * HOP
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(2, n_long, generator=g)
    pulses = torch.stack([torch.from_numpy(excitation(f.numpy(), FC)) for f in f0_b])
    with torch.no_grad():
        batch_p, batch_n = model.responses(mel_b, f0_b)
        batch_y = model(mel_b, f0_b, pulses, noise)
        for i, (mel, f0, n) in enumerate(zip(mels, f0s, (n_long, n_short))):
            alone_p, alone_n = model.responses(mel[None], f0[None])
            alone_y = model(mel[None], f0[None], pulses[i: i + 1, :n], noise[i: i + 1, :n])
            t = mel.shape[1] - (r if i else 0)  # frames the padding cannot reach
            for b, a in ((batch_p, alone_p), (batch_n, alone_n)):
                np.testing.assert_allclose(b[i, :, :t].numpy(), a[0, :, :t].numpy(), rtol=0, atol=5e-6)
            # the samples whose STFT frames are all unreached (a frame's window spans +-200 samples)
            m = n if i == 0 else t * HOP - 200
            np.testing.assert_allclose(batch_y[i, :m].numpy(), alone_y[0, :m].numpy(), rtol=1e-4, atol=1e-5)
            if i:  # the radius is exact: the padding does reach the next frame
                # (at the edge of the reach, through 4 layers of small initial weights, the
                # difference is ~6e-5, 60 times the rounding differences of ~1e-6 before it)
                assert (batch_p[i, :, t] - alone_p[0, :, t]).abs().max() > 2e-5
                assert (batch_p[i, :, t:t_short] - alone_p[0, :, t:]).abs().max() > 0.1
    # the network part is not negligible here (the test would not see it otherwise)
    with torch.no_grad():
        prior_only = NeuralVocoder(cfg, FC).responses(mel_b, f0_b)[0]
    assert (batch_p - prior_only).abs().mean() > 0.1


def test_forward_checks_the_excitation_length():
    model = NeuralVocoder(TINY_NET, FC)
    mel, f0 = torch.zeros(1, 80, 10), torch.full((1, 10), 100.0)
    with pytest.raises(ValueError, match="1440 samples"):
        model(mel, f0, torch.zeros(1, 1441), torch.zeros(1, 1441))
    with pytest.raises(ConfigError, match="kernel_size must be odd"):
        NeuralVocoder(NeuralVocoderConfig(kernel_size=4), FC)


# ----------------------------------------------------------------------------- files


def test_save_and_load_vocoder_round_trip(tmp_path):
    torch.manual_seed(3)
    model = randomize_output(NeuralVocoder(TINY_NET, FC))
    path = save_vocoder(tmp_path / "exp" / "vocoder.pt", model, step=7, train={"lr": 0.5})
    assert path == tmp_path / "exp" / "vocoder.pt" and not no_temp_files(tmp_path)
    raw = torch.load(path, weights_only=True)  # tensors and plain values only
    assert raw["format"] == "sqvae-speech-vocoder" and raw["version"] == 1 and raw["step"] == 7
    assert raw["config"]["train"] == {"lr": 0.5} and raw["config"]["features"] == FC.to_dict()
    for loaded in (load_vocoder(path), load_vocoder(tmp_path / "exp")):
        assert not loaded.training and loaded.step == 7
        assert loaded.config == TINY_NET and loaded.features == FC
        saved, got = model.state_dict(), loaded.state_dict()
        assert saved.keys() == got.keys() and all(torch.equal(saved[k], got[k]) for k in saved)
    mel, f0 = np.zeros((80, 12), np.float32) + 0.6, np.full(12, 140.0)
    assert np.array_equal(synthesize(model.eval(), mel, f0, seed=1), synthesize(load_vocoder(path), mel, f0, seed=1))


def test_load_vocoder_refuses_what_is_not_a_vocoder_naming_the_file(tmp_path, trained):
    good = trained / "vocoder.pt"
    raw = torch.load(good, weights_only=True)
    # a checkpoint of train-vocoder loads too, with its step
    ckpt = list_checkpoints(trained)[-1][1]
    assert load_vocoder(ckpt).step == 12

    def refused(path: Path, match: str) -> None:
        with pytest.raises(CheckpointError, match=match) as e:
            load_vocoder(path)
        assert str(path) in str(e.value), e.value

    refused(tmp_path / "nothing.pt", "does not exist")
    (tmp_path / "empty_dir").mkdir()
    refused(tmp_path / "empty_dir", "holds no vocoder.pt")
    # an SQ-VAE checkpoint: the file and the experiment dir
    cfg = tiny_experiment()
    cfg = cfg.replace(model=cfg.model.replace(speakers=("a", "b")))
    sq = save_checkpoint(tmp_path / "sqvae", 3, {"config": cfg.to_dict(), "model": SpeechSQVAE(cfg.model).state_dict()}, keep=1)
    refused(sq, "is an SQ-VAE model or checkpoint; --vocoder-model takes the vocoder.pt")
    refused(tmp_path / "sqvae", "holds no vocoder.pt")
    newer = tmp_path / "newer.pt"
    torch.save({**raw, "version": 2}, newer)
    refused(newer, "format version 2; .* upgrade sqvae-speech")
    cut = tmp_path / "truncated.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    refused(cut, "cannot be read .*truncated")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    refused(other, "not a vocoder file")
    incomplete = tmp_path / "incomplete.pt"
    torch.save({k: v for k, v in raw.items() if k != "config"}, incomplete)
    refused(incomplete, "incomplete")
    misfit = tmp_path / "misfit.pt"
    torch.save({**raw, "config": {**raw["config"], "vocoder": {**raw["config"]["vocoder"], "channels": 24}}}, misfit)
    refused(misfit, "does not fit its config")


def test_sqvae_loaders_refuse_a_vocoder_checkpoint(trained):
    path = list_checkpoints(trained)[-1][1]
    ckpt = load_checkpoint(path)
    assert ckpt["kind"] == "vocoder"
    with pytest.raises(CheckpointError, match=r"neural vocoder .*--vocoder-model") as e:
        checkpoint_config(ckpt, path)
    assert str(path) in str(e.value)
    with pytest.raises(CheckpointError, match="--vocoder-model"):
        load_model(trained)


def test_sqvae_commands_refuse_a_vocoder_experiment(trained, voc_data, capsys):
    assert cli_main(["evaluate", "--exp", str(trained), "--feats", str(voc_data["feats"]), "--no-progress",
                     "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--vocoder-model" in err and "Traceback" not in err, err


# ----------------------------------------------------------------------------- vocoders.neural


def test_neural_vocoder_function(voc_data):
    torch.manual_seed(4)
    model = randomize_output(NeuralVocoder(TINY_NET, FC).eval(), scale=0.05)
    clip = voc_data["clips"][2]
    mel, f0 = clip.mel[:, :120] - 10 / FC.top_db, clip.f0[:120]  # 10 dB down: no peak limiting
    t = mel.shape[1]
    (full,) = neural([mel], [f0], model, FC)
    assert full.dtype == np.float32 and full.size == (t - 1) * HOP and 0.01 < np.abs(full).max() < 0.99
    expected = peak_limit(deemphasis(synthesize(model, mel, f0.astype(np.float64), seed=0), FC.preemph))
    assert np.array_equal(full, expected)
    # a decoder output covers mel[:, 1:-1]: placed at offset 1 it gives the same grid, and
    # the same audio wherever the repeated edge frames do not reach
    (dec,) = neural([mel[:, 1:-1]], [f0], model, FC, offset=1)
    assert dec.size == full.size and not np.array_equal(dec, full)
    # (the first frame reaches r frames, then the STFT window 200 samples; de-emphasis
    # carries a difference on, decaying as 0.97 ** n: 10 more frames)
    r = receptive_radius(TINY_NET)
    inner = slice((r + 10) * HOP, (t - 2 - r) * HOP - 200)
    np.testing.assert_allclose(dec[inner], full[inner], atol=1e-5)
    (shifted,) = neural([mel[:, 1:-1]], [f0], model, FC, offset=0)
    assert not np.allclose(shifted[inner], full[inner], atol=1e-3)
    # deterministic for a seed, batch independent, another seed is other noise
    again = neural([mel[:, :50], mel], [f0[:50], f0], model, FC)
    assert np.array_equal(again[1], full) and again[0].size == 49 * HOP
    assert not np.array_equal(neural([mel], [f0], model, FC, seed=1)[0], full)
    # non-finite or negative F0 is taken as unvoiced
    bad = f0.astype(np.float64).copy()
    bad[f0 == 0] = np.nan
    assert np.array_equal(neural([mel], [bad], model, FC)[0], full)
    with pytest.raises(SQVAEError, match="other feature settings"):
        neural([mel], [f0], NeuralVocoder(TINY_NET, FeatureConfig(fmin=0.0)), FC)
    with pytest.raises(SQVAEError, match="1 mels but 2 F0"):
        neural([mel], [f0, f0], model, FC)


def test_vocoder_check_round_trip_takes_the_neural_vocoder(voc_data):
    """`vocoder-check --vocoders neural --vocoder-model V`: audio -> log-mel -> neural vocoder ->
    log-mel on real speech, the same figure as for WORLD and Griffin-Lim; without the file, a clear error."""
    from sqvae_speech.cli.vocoder_check import round_trip
    from sqvae_speech.data.datadir import read_datadir, utterance_audio

    dd = read_datadir(voc_data["data"])
    utts = dd.utterances[:2]
    wavs = [load_audio(p, SR, s, e) for p, s, e in (utterance_audio(dd, u) for u in utts)]
    model = NeuralVocoder(TINY_NET, FC)  # untrained: the prior alone already gives speech-shaped spectra
    r = round_trip(utts, wavs, "neural", FC, f0_method="dio", model=model)
    assert r.vocoder == "neural" and r.frames > 100 and set(r.per_utterance) == set(utts)
    assert 0 < r.mse_db2 < 400 and np.isfinite(r.gain_matched_mse_db2)
    with pytest.raises(SQVAEError, match="--vocoder-model"):
        round_trip(utts, wavs, "neural", FC, f0_method="dio")


def test_lifter_removes_harmonic_ripple_and_keeps_the_envelope():
    """vocoder.lifter_ms: a log envelope (a formant) plus the ripple of 130 Hz harmonics comes
    out as the envelope alone; a constant stays that constant; 0 builds no lifter."""
    from sqvae_speech.synthesis.neural import _lifter_matrix

    lifter = _lifter_matrix(512, SR, 2.5)
    f = np.arange(257) * SR / 512
    envelope = -(((f - 700) / 500) ** 2) / 4
    rippled = envelope + 0.3 * np.cos(2 * np.pi * f / 130)
    assert np.abs(lifter @ rippled - envelope)[5:200].max() < 0.03  # the ripple was 0.3
    np.testing.assert_allclose(lifter @ np.full(257, 2.0), 2.0, atol=1e-9)
    assert _lifter_matrix(512, SR, 0.0) is None and NeuralVocoder(TINY_NET, FC).lifter is None
    model = NeuralVocoder(NeuralVocoderConfig(channels=16, layers=2, lifter_ms=2.5), FC)
    mel = torch.rand(1, 80, 30) * 0.5 + 0.3
    f0 = torch.full((1, 30), 120.0)
    for response in model.responses(mel, f0):  # pulses and noise
        cepstrum = torch.fft.irfft(response[0].T, n=512)  # [T, 512]: nothing left above 2.5 ms (40 samples)
        assert cepstrum[:, 41:472].abs().max() < 1e-4 * cepstrum[:, :41].abs().max()
