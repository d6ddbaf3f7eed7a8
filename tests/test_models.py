import math

import pytest
import torch

from sqvae_speech.config import EncoderConfig, ModelConfig
from sqvae_speech.data.batching import UtteranceDataset, collate
from sqvae_speech.models import SpeechSQVAE, encoder_out_channels
from sqvae_speech.quantizers import GaussianSQ
from sqvae_speech.quantizers.registry import QUANTIZERS

VARIANTS = list(QUANTIZERS)  # every registered quantizer drives the speech model


def small(variant, speakers=("cs-m", "cs-v", "nl-m", "nl-v"), **kw):
    quantizer = {"num_embeddings": 32, "embedding_dim": 8} | ({"levels": [4, 8]} if variant == "fsq" else {})
    cfg = ModelConfig(variant=variant, encoder=EncoderConfig(channels=32),
                      quantizer=quantizer, speakers=tuple(speakers), **kw)
    torch.manual_seed(0)
    return SpeechSQVAE(cfg)


def _warm_bn(model, batch):
    """Give BatchNorm non-trivial running statistics, then switch to eval."""
    model.train()
    with torch.no_grad():
        model(batch.mels, batch.lengths, batch.speakers)
    return model.eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_batch_equals_one_at_a_time(variant, real_featstore):
    ds = UtteranceDataset(real_featstore, real_featstore.speakers)
    idx = [0, 11, 22, 33, 39]
    batch = collate([ds[i] for i in idx])
    model = _warm_bn(small(variant), batch)
    enc = model.encode(batch.mels, batch.lengths)
    out, out_len = model.decode(enc.quantized, enc.lengths, batch.speakers)
    for b, i in enumerate(idx):
        one = collate([ds[i]])
        e1 = model.encode(one.mels, one.lengths)
        o1, _ = model.decode(e1.quantized, e1.lengths, one.speakers)
        t = int(enc.lengths[b])
        assert torch.equal(enc.indices[b, :t], e1.indices[0])
        assert (enc.indices[b, t:] == -1).all()
        torch.testing.assert_close(out[b, :, : int(out_len[b])], o1[0], atol=1e-5, rtol=1e-5)
    # the loss in eval mode counts the same elements whatever the padding
    loss_batch = model(batch.mels, batch.lengths, batch.speakers)
    sse = 0.0
    for i in idx:
        one = collate([ds[i]])
        sse += float(model(one.mels, one.lengths, one.speakers).mse_db2) * (ds[i].mel.shape[1] - 2)
    frames = sum(ds[i].mel.shape[1] - 2 for i in idx)
    assert math.isclose(float(loss_batch.mse_db2), sse / frames, rel_tol=1e-4)


@pytest.mark.parametrize("variant,channels", [("gaussian_1", 8), ("gaussian_2", 9), ("gaussian_3", 9), ("gaussian_4", 16),
                                              ("vqvae_ema", 8), ("vq_kmeans", 8), ("fsq", 8), ("vae", 16)])
def test_encoder_emits_the_variance_channels_of_each_variant(variant, channels):
    assert encoder_out_channels(variant, 8) == channels
    model = small(variant).eval()
    enc = model.encode(torch.rand(2, 80, 40), torch.tensor([40, 30]))
    assert enc.z.shape == (2, 19, 8)
    assert (enc.log_var is None) == (channels == 8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_encoder_codebook_and_variance(variant):
    model = small(variant).train()
    out = model(torch.rand(4, 80, 34), torch.full((4,), 34), torch.tensor([0, 1, 2, 3]))
    out.loss.backward()
    assert model.encoder.convs[0].weight.grad.abs().sum() > 0
    enc_grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in enc_grads)
    assert any(g.abs().sum() > 0 for g in enc_grads)
    assert model.decoder.rnn.weight_ih_l0.grad.abs().sum() > 0
    if isinstance(model.quantizer, GaussianSQ):
        assert model.quantizer.codebook.grad.abs().sum() > 0
        if variant != "gaussian_fixed":
            assert model.quantizer.log_var_scalar.grad is not None and model.quantizer.log_var_scalar.grad != 0
        else:
            assert not model.quantizer.log_var_scalar.requires_grad


def test_arelbo_and_learned_reconstruction_terms():
    mels = torch.rand(3, 80, 30)
    lengths = torch.tensor([30, 24, 18])
    spk = torch.tensor([0, 1, 2])
    m = small("gaussian_1").eval()
    out = m(mels, lengths, spk)
    mse = float(out.mse_db2) / 80**2
    d_x = 80 * (28 + 22 + 16) / 3
    assert math.isclose(float(out.recon), 0.5 * d_x * math.log(mse), rel_tol=1e-4)
    learned = small("gaussian_1", recon="learned").eval()
    out2 = learned(mels, lengths, spk)  # log s2_x = 0: recon = SSE / 2 / B
    mse2 = float(out2.mse_db2) / 80**2
    assert math.isclose(float(out2.recon), mse2 * 80 * (28 + 22 + 16) / 2 / 3, rel_tol=1e-4)
    vq = small("vqvae_ema").eval()
    out3 = vq(mels, lengths, spk)
    assert math.isclose(float(out3.recon), float(out3.mse_db2) / 80**2, rel_tol=1e-5)


def test_speaker_changes_the_decoded_output():
    m = small("gaussian_4").eval()
    enc = m.encode(torch.rand(1, 80, 40), torch.tensor([40]))
    a, _ = m.decode(enc.quantized, enc.lengths, torch.tensor([0]))
    b, _ = m.decode(enc.quantized, enc.lengths, torch.tensor([3]))
    assert (a - b).abs().max() > 1e-4
