"""The benchmarks' own code (bench/), without running `make bench` (minutes).

`make bench` is only as honest as its reference re-implementations, and its GPU part runs
only where a GPU is lent. These tests hold both to account in every test run:

- the reference formulation gives our results: features, quantizer logits, training
  losses and gradients (same weights, same noise), evaluation MSE;
- the analytic FLOP count of the encoder convolutions equals PyTorch's own count;
- the GPU-only figures run end to end on the CPU with the CUDA calls stubbed, so a
  change in the package cannot break them unseen;
- the "as run" figure's fresh processes run, ours with freed memory kept;
- the encode figures run end to end on a few real files, and their identity check
  catches a differing file.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_as_run
import bench_encode
import bench_eval
import bench_quantizer
import bench_train
from reference import RefEncoder, reference_from_ours, reference_logmel_file

from sqvae_speech.config import (
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
    TrainConfig,
)
from sqvae_speech.data.audio import load_audio
from sqvae_speech.data.batching import CropDataset, collate
from sqvae_speech.data.datadir import write_datadir
from sqvae_speech.data.features import logmel
from sqvae_speech.evaluate import evaluate_model
from sqvae_speech.models import SpeechSQVAE

VARIANTS = ("gaussian_1", "gaussian_3", "gaussian_4")


def small_model(variant: str, speakers: tuple[str, ...], jitter: float = 0.5, seed: int = 0) -> SpeechSQVAE:
    """A model small enough for a CPU test, in the shapes the reference can hold."""
    torch.manual_seed(seed)
    cfg = ModelConfig(variant=variant, jitter=jitter, encoder=EncoderConfig(channels=32),
                      quantizer={"num_embeddings": 16, "embedding_dim": 8},
                      decoder=DecoderConfig(speaker_embedding_dim=8, hidden_size=16), speakers=speakers)
    return SpeechSQVAE(cfg).train()


def crops(store, speakers: tuple[str, ...], batch: int, seed: int = 0):
    """(mels [B, 80, 34], lengths [B], speakers [B]) of real crops."""
    torch.manual_seed(seed)
    ds = CropDataset(store, speakers, 32)
    b = collate([ds[i] for i in range(batch)])
    return b.mels, b.lengths, b.speakers


def test_reference_features_equal_ours(speech_files):
    for path in (speech_files["cs-m"][0], speech_files["nl-v"][1]):
        ref = reference_logmel_file(str(path))
        ours = logmel(load_audio(path, 16000), 16000)
        assert ref.shape == ours.shape, path
        assert float(np.abs(ref - ours).max()) * 80 < 0.01, f"{path}: features differ by more than 0.01 dB"


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_quantizer_logits_equal_ours(variant):
    agree = bench_quantizer.agreement(variant, torch.device("cpu"))  # paper size: 832 x 512 logits
    assert agree["max_rel_logit_diff"] < 1e-5
    assert agree["same_argmax_share"] == 1.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_training_loss_and_gradients_equal_ours(real_featstore, variant):
    """Same weights and the same Gumbel uniforms (one draw of [N, K] each, from the same
    seed), jitter off: the reference's loss equals ours, and so do the gradients of the
    first encoder conv, the output conv, the codebook, the variance scalar and the decoder's
    output layer."""
    speakers = tuple(real_featstore.speakers)
    ours = small_model(variant, speakers, jitter=0.0)
    ref = reference_from_ours(ours).train()
    mels, lengths, spk = crops(real_featstore, speakers, 6)
    torch.manual_seed(1)
    out = ours(mels, lengths, spk, temperature=0.8)
    out.loss.backward()
    torch.manual_seed(1)
    ref_out = ref(mels, spk, 0.8)
    ref_out.loss.backward()
    torch.testing.assert_close(ref_out.loss, out.loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ref_out.recon, out.recon, rtol=1e-5, atol=1e-4)
    pairs = [(ref.encoder.encoder[0].weight, ours.encoder.convs[0].weight),
             (ref.encoder.encoder[15].weight, ours.encoder.out.weight),
             (ref.encoder.codebook.embedding, ours.quantizer.codebook),
             (ref.encoder.log_var_q_scalar, ours.quantizer.log_var_scalar),
             (ref.decoder.fc.weight, ours.decoder.proj.weight)]
    for r, o in pairs:
        torch.testing.assert_close(r.grad.reshape(o.grad.shape), o.grad, rtol=1e-3, atol=1e-4)


def test_training_step_closures_step_both_models(real_featstore):
    speakers = tuple(real_featstore.speakers)
    ours = small_model("gaussian_4", speakers)
    ref = reference_from_ours(ours).train()
    mels, lengths, spk = crops(real_featstore, speakers, 4)
    before = {"ours": ours.quantizer.codebook.detach().clone(), "reference": ref.encoder.codebook.embedding.detach().clone()}
    fns = bench_train.step_functions(ours, ref, mels, lengths, spk)
    for _ in range(2):
        fns["ours"]()
        fns["reference"]()
    assert not torch.equal(before["ours"], ours.quantizer.codebook)
    assert not torch.equal(before["reference"], ref.encoder.codebook.embedding)
    assert all(p.grad is None for p in ours.parameters()), "the step must leave no gradients behind"


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_evaluation_equals_ours(real_featstore, variant):
    store = real_featstore
    speakers = tuple(store.speakers)
    model = small_model(variant, speakers)
    mels, lengths, spk = crops(store, speakers, 16)
    with torch.no_grad():  # batch-norm statistics of real crops
        for _ in range(3):
            model(mels, lengths, spk)
    model.eval()
    items = [(u, store.speaker(u)) for u in store.utterances]
    ours = evaluate_model(model, store, items, 2000, "cpu")[0]
    ref = bench_eval.reference_mse(reference_from_ours(model).eval(), store, items, speakers, torch.device("cpu"))
    assert abs(ours - ref) / ref < 1e-4, (ours, ref)


def test_reference_from_ours_refuses_what_the_reference_lacks():
    cfg = small_model("gaussian_4", ("a",)).config
    with pytest.raises(ValueError, match="2-layer GRU"):
        reference_from_ours(SpeechSQVAE(cfg.replace(decoder=DecoderConfig(8, 16, num_layers=1))))
    with pytest.raises(ValueError, match="variants"):
        reference_from_ours(SpeechSQVAE(cfg.replace(variant="gaussian_2")))


def test_encoder_conv_flops_equal_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    channels, batch, frames = 16, 3, 34
    encoder = RefEncoder("gaussian_4", 80, channels, num_embeddings=16, embedding_dim=8)
    convs = [m for m in encoder.encoder if isinstance(m, torch.nn.Conv1d)][:5]  # the 1x1 output conv is not counted
    x = torch.randn(batch, 80, frames)  # no input gradient, as for the real encoder input
    with FlopCounterMode(display=False) as counter:
        y = x
        for conv in convs:
            y = torch.relu(conv(y))
        y.sum().backward()
    assert counter.get_total_flops() == bench_train.encoder_conv_flops(batch, frames, channels)


def test_peak_tflops_picks_the_named_part():
    assert bench_train.peak_tflops("NVIDIA H100 PCIe", torch.float32, tf32=True) == (378.0, "tf32 tensor cores (cudnn.allow_tf32)")
    assert bench_train.peak_tflops("NVIDIA H100 80GB HBM3", torch.float32, tf32=False)[0] == 67.0
    assert bench_train.peak_tflops("NVIDIA H200", torch.bfloat16, tf32=True)[0] == 989.4
    assert bench_train.peak_tflops("Tesla V100-SXM2-16GB", torch.float32, tf32=True)[0] == 15.7  # no TF32
    assert bench_train.peak_tflops("Some Future GPU", torch.float32, tf32=True) == (None, "unknown GPU")


class _Event:
    """torch.cuda.Event on the host clock."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.t = 0.0

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _Event) -> float:
        return (end.t - self.t) * 1e3


class _Ctx:
    reps = 1

    def __init__(self, store) -> None:
        self.train_store = store
        self.logged: list = []

    def log(self, r) -> None:
        self.logged.append(r)


def test_cuda_figures_run_with_cuda_stubbed(real_featstore, monkeypatch):
    """The GPU-only figures (bench_train.cuda_extras) end to end on the CPU, smaller, with
    CUDA events, synchronization and the device name stubbed: every figure comes out
    with the fields bench/README.md describes."""
    speakers = tuple(real_featstore.speakers)
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(bench_train, "make_pair", lambda variant, names, device, seed=0: (
        small_model(variant, names).to(device), reference_from_ours(small_model(variant, names)).to(device)))
    mels, lengths, spk = crops(real_featstore, speakers, 4)
    ctx = _Ctx(real_featstore)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(CUDA is not available|pin_memory).*")
        results = bench_train.cuda_extras(ctx, torch.device("cpu"), mels, lengths, spk, speakers, conv_batches=(4,),
                                          matmul_n=64, loader_steps=8,
                                          loader_train=TrainConfig(batch_size=8, num_workers=1))
    names = [r.name for r in results]
    assert names == ["train_step_IV_bf16_vs_fp32_cuda", "encoder_conv_tflops_fp32_batch4_cuda",
                     "encoder_conv_tflops_bf16_batch4_cuda", "matmul_64_fp32_cuda", "dataloader_wait_share_cuda"]
    assert names == [r.name for r in ctx.logged]
    for r in results:
        assert r.ours is not None and np.isfinite(r.ours) and r.ours >= 0, r
    conv = results[1]
    assert conv.reference == 494.7 and conv.config["peak"].startswith("tf32")  # cudnn.allow_tf32 defaults on
    assert conv.config["flops_per_step"] == bench_train.encoder_conv_flops(4, 34, 32)
    assert results[-1].config["steps"] == 3 and 0 <= results[-1].ours <= 100


def test_as_run_figure_runs_each_side_in_a_fresh_process(real_featstore, tmp_path, monkeypatch):
    """bench_as_run end to end (variant IV only, one round, one timed step, 8 crops of
    the paper-size model): two real child processes, ours with freed memory kept."""
    speakers = tuple(real_featstore.speakers)
    mels, lengths, spk = crops(real_featstore, speakers, 8)
    ctx = _Ctx(real_featstore)
    ctx.work, ctx.threads = tmp_path, 1
    ctx.args = type("Args", (), {"quick": True})()
    ctx.crop_batch = lambda batch: (mels, lengths, spk, speakers)
    monkeypatch.setattr(bench_as_run, "VARIANTS", {"gaussian_4": "IV"})
    (r,) = bench_as_run.run(ctx)
    assert r.name == "train_step_IV_as_run" and r.target == "" and r.passed is None
    assert r.ours > 0 and r.reference > 0 and r.ratio == pytest.approx(r.reference / r.ours, rel=1e-2)
    assert r.config["ours_keep_freed_memory"] is True  # Linux with glibc, as CI runs
    assert len(r.config["ours_ms_all"]) == len(r.config["reference_ms_all"]) == 1
    assert set(r.config["per_step_median"]) == {"ours", "reference"}
    assert not (tmp_path / "as_run_batch.pt").exists()


def test_encode_figures_run_on_a_few_real_files(speech_files, tmp_path):
    """bench_encode end to end (6 real files, a tiny model, one timed round): both paths
    write into fresh dirs, every file's indices are compared, and the figures come out
    with a target on the ratio and the real-time rate."""
    wav = {f"{spk}_{p.stem}": str(p) for spk, files in speech_files.items() for p in files[:2]}
    write_datadir(tmp_path / "data" / "test", wav, {u: u.split("_")[0] for u in wav})
    conf = tmp_path / "tiny.yaml"
    conf.write_text("model:\n  encoder: {channels: 32}\n  quantizer: {num_embeddings: 16, embedding_dim: 8}\n"
                    "  decoder: {speaker_embedding_dim: 8, hidden_size: 16}\n")
    ctx = _Ctx(None)
    ctx.data_dir, ctx.work, ctx.threads = tmp_path / "data", tmp_path, 1
    ratio, rtf = bench_encode.run(ctx, n_files=6, models={"tiny": (conf, 1.0)})
    assert [ratio.name, rtf.name] == ["encode_vs_three_step_tiny", "encode_rtf_tiny"] == [r.name for r in ctx.logged]
    assert ratio.unit == "s" and ratio.target == ">= 1.5x" and ratio.passed is not None
    # ours and reference are printed to the millisecond: the ratio lies within what that rounding allows
    lo, hi = (ratio.reference - 5e-4) / (ratio.ours + 5e-4), (ratio.reference + 5e-4) / (ratio.ours - 5e-4)
    assert lo - 1e-3 <= ratio.ratio <= hi + 1e-3
    assert ratio.config["files"] == 6 and ratio.config["files_compared_identical"] == 12  # warm-up + 1 round
    assert ratio.config["encoder_channels"] == 32 and set(ratio.config["reference_steps_s_median"]) == {
        "datadir", "extract", "export"}
    assert rtf.ours > 0 and rtf.target == "ours >= 1x rt" and rtf.passed is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "tiny.yaml"]  # scratch dirs removed


def test_encode_identity_check_catches_a_differing_file(tmp_path):
    for side in ("ours", "reference"):
        (tmp_path / side).mkdir()
        np.save(tmp_path / side / "a.npy", np.arange(5, dtype=np.int64))
    bench_encode.check_same_indices(["a"], tmp_path / "ours", tmp_path / "reference")
    np.save(tmp_path / "reference" / "a.npy", np.array([0, 1, 2, 3, 5], dtype=np.int64))
    with pytest.raises(AssertionError, match="differ for 1 of 1 files: a "):
        bench_encode.check_same_indices(["a"], tmp_path / "ours", tmp_path / "reference")


def test_report_scoring_figure_runs_on_real_files(speech_files, tmp_path):
    """bench_report end to end (2 real utterances, a tiny model, one timed round): the
    scores of both sides are compared and the figure is seconds per utterance."""
    import bench_report

    from sqvae_speech.config import FeatureConfig
    from sqvae_speech.data.featstore import write_featstore

    cfg = FeatureConfig()
    wav, items = {}, []
    for spk in ("cs-m", "nl-v"):
        p = speech_files[spk][2]
        utt = f"{spk}_{p.stem}"
        wav[utt] = str(p)
        items.append((utt, spk, logmel(load_audio(p, 16000), 16000, cfg)))
    write_datadir(tmp_path / "data" / "test", wav, {u: u.split("_")[0] for u in wav})
    write_featstore(tmp_path / "feats", sorted(items), cfg)
    conf = tmp_path / "tiny.yaml"
    conf.write_text("model:\n  encoder: {channels: 32}\n  quantizer: {num_embeddings: 16, embedding_dim: 8}\n"
                    "  decoder: {speaker_embedding_dim: 8, hidden_size: 16}\n")
    ctx = _Ctx(None)
    ctx.data_dir, ctx.test_feats, ctx.work, ctx.threads = tmp_path / "data", tmp_path / "feats", tmp_path, 1
    (res,) = bench_report.run(ctx, n_utts=2, conf=conf)
    assert res.name == "report_resynthesis_per_utt" and res.unit == "s" and res.ours > 0 and res.reference > 0
    assert res.config["utterances"] == 2 and res.config["scores_compared"] == 2 * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "feats", "tiny.yaml"]  # scratch removed


def test_report_score_check_catches_a_difference():
    import bench_report

    ours = [{"model": None, "vocoder": "world", "system": "world (vocoder only)",
             "per_utterance": {"u": {"mcd_db": 3.0, "f0_rmse_cents": 10.0, "vuv_error": 0.1, "pesq_wb": 2.0, "stoi": 0.9}}}]
    same = {"u": {(None, "world"): dict(ours[0]["per_utterance"]["u"])}}
    assert bench_report.check_same_scores(ours, same) == 1
    same["u"][None, "world"]["pesq_wb"] = 2.5
    with pytest.raises(AssertionError, match="differ for 1 of 1"):
        bench_report.check_same_scores(ours, same)


def test_vocoder_figures_run_on_real_files(speech_files, tmp_path):
    """bench_vocoder end to end in quick mode (real files: 4 training clips, 1 held-out
    utterance, a small vocoder, 1 timed step and round, 4 Griffin-Lim iterations): the
    training step and the one-thread speed of neural, Griffin-Lim and WORLD come out
    with the fields bench/README.md describes, and the thread counts are restored."""
    import bench_vocoder

    from sqvae_speech.config import FeatureConfig
    from sqvae_speech.data.featstore import write_featstore
    from sqvae_speech.synthesis.neural import NeuralVocoderConfig
    from sqvae_speech.synthesis.neural_train import VocoderTrainConfig

    cfg = FeatureConfig()
    wav, items = {}, []
    for spk in ("cs-m", "nl-v"):
        for p in speech_files[spk][2:4]:
            utt = f"{spk}_{p.stem}"
            wav[utt] = str(p)
            items.append((utt, spk, logmel(load_audio(p, 16000), 16000, cfg)))
    for part in ("train", "test"):
        write_datadir(tmp_path / "data" / part, wav, {u: u.split("_")[0] for u in wav})
    write_featstore(tmp_path / "feats", sorted(items), cfg)
    ctx = _Ctx(None)
    ctx.data_dir, ctx.work, ctx.threads = tmp_path / "data", tmp_path, 1
    ctx.train_feats = ctx.test_feats = tmp_path / "feats"
    ctx.args = type("Args", (), {"quick": True})()
    threads = torch.get_num_threads()
    results = bench_vocoder.run(ctx, gl_iters=4, train_steps=1, utts_per_speaker=2,
                                vocoder=NeuralVocoderConfig(channels=16, layers=2),
                                train=VocoderTrainConfig(batch_size=2, segment_frames=20))
    assert torch.get_num_threads() == threads
    step, rtf, vs_world = results
    assert [r.name for r in results] == [r.name for r in ctx.logged] == [
        "vocoder_train_step", "vocoder_rtf_1core", "vocoder_rtf_1core_vs_world"]
    assert step.unit == "ms" and step.ours > 0 and step.reference is None and step.passed is None
    assert step.config["clips"] == 4 and step.config["batch_size"] == 2 and len(step.config["step_s_all"]) == 1
    assert step.config["steps_per_10_min"] == pytest.approx(600e3 / step.ours, rel=1e-2)
    assert rtf.unit == vs_world.unit == "x real time" and rtf.target == "ours >= 20x rt" and rtf.passed is not None
    assert rtf.config["threads"] == 1 and rtf.config["utterances"] == 1 and rtf.config["gl_iters"] == 4
    assert set(rtf.config["cpu_per_wall"]) == {"neural", "griffinlim", "world"}
    assert rtf.ours == vs_world.ours > 0 and rtf.reference > 0 and vs_world.reference > 0
    assert rtf.ratio == pytest.approx(rtf.config["neural_vs_griffinlim"], rel=1e-6)
    assert vs_world.ratio == pytest.approx(rtf.config["neural_vs_world"], rel=1e-6)
