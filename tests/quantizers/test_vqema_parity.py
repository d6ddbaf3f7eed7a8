"""VQEMA's default against bshall/ZeroSpeech's VQEmbeddingEMA (model.py), re-implemented
here from its description: same seeded init, same inputs, several training steps, the
same codebook, EMA state, outputs and loss. Plus the dead-code reset on a collapsing setup."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sqvae_speech.quantizers import VQEMA

K, D = 16, 4


class ReferenceVQEMA:
    """The reference's forward + EMA update, in its order, on channels-first input [B, D, T].

    init: U(-1/K, 1/K) codebook, ema_count = 0, ema_weight = a clone of the codebook.
    step: counts -> EMA -> Laplace smoothing stored in ema_count; ema_weight EMA of the
    assigned sums; codebook = ema_weight / ema_count; loss = c * mean((x - q)^2).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, decay: float = 0.999, epsilon: float = 1e-5,
                 commitment_cost: float = 0.25) -> None:
        bound = 1 / num_embeddings
        self.embedding = torch.zeros(num_embeddings, embedding_dim).uniform_(-bound, bound)
        self.ema_count = torch.zeros(num_embeddings)
        self.ema_weight = self.embedding.clone()
        self.decay, self.epsilon, self.commitment_cost = decay, epsilon, commitment_cost

    def train_step(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m, d = self.embedding.shape
        x = x.transpose(1, 2)  # [B, T, D]
        flat = x.reshape(-1, d)
        dist = torch.addmm((self.embedding**2).sum(1) + (flat**2).sum(1, keepdim=True), flat, self.embedding.t(),
                           alpha=-2.0, beta=1.0)
        idx = dist.float().argmin(-1)
        onehot = F.one_hot(idx, m).float()
        quantized = F.embedding(idx, self.embedding).view_as(x)
        self.ema_count = self.decay * self.ema_count + (1 - self.decay) * onehot.sum(0)
        n = self.ema_count.sum()
        self.ema_count = (self.ema_count + self.epsilon) / (n + m * self.epsilon) * n
        self.ema_weight = self.decay * self.ema_weight + (1 - self.decay) * (onehot.t() @ flat)
        self.embedding = self.ema_weight / self.ema_count.unsqueeze(-1)
        loss = self.commitment_cost * F.mse_loss(x, quantized)
        out = x + (quantized - x).detach()
        return out, loss, idx.view(x.shape[:2])


def close(a: torch.Tensor, b: torch.Tensor, msg: str) -> None:
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=msg)


def batches(n: int, b: int = 3, t: int = 10, seed: int = 1) -> list[torch.Tensor]:
    """Channels-first [B, D, T] inputs on the codebook's scale, so several codes get data."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(b, D, t, generator=g) * 2 - 1) / K * 1.5 for _ in range(n)]


def test_init_matches_reference() -> None:
    torch.manual_seed(0)
    ref = ReferenceVQEMA(K, D)
    torch.manual_seed(0)
    q = VQEMA(K, D)
    assert torch.equal(q.codebook, ref.embedding)
    assert torch.equal(q.ema_count, ref.ema_count) and torch.equal(q.ema_weight, ref.ema_weight)
    assert q.decay == 0.999 and q.epsilon == 1e-5 and q.commitment_cost == 0.25
    assert q.codebook.abs().max() <= 1 / K


def test_five_training_steps_match_reference() -> None:
    torch.manual_seed(0)
    ref = ReferenceVQEMA(K, D)
    torch.manual_seed(0)
    q = VQEMA(K, D).train()
    used = set()
    for step, x in enumerate(batches(5)):
        want_out, want_loss, want_idx = ref.train_step(x)
        got = q(x.transpose(1, 2))
        assert torch.equal(got.indices, want_idx), step
        close(got.quantized, want_out, f"quantized, step {step}")
        close(got.loss / got.num_valid, want_loss, f"loss, step {step}")
        close(q.codebook, ref.embedding, f"codebook, step {step}")
        close(q.ema_count, ref.ema_count, f"ema_count, step {step}")
        close(q.ema_weight, ref.ema_weight, f"ema_weight, step {step}")
        used |= set(want_idx.flatten().tolist())
    assert len(used) > 1, "the test data must reach several codes"


def test_masked_rows_match_reference_on_valid_rows_only() -> None:
    torch.manual_seed(0)
    ref = ReferenceVQEMA(K, D)
    torch.manual_seed(0)
    q = VQEMA(K, D).train()
    lengths = torch.tensor([10, 6, 3])
    mask = torch.arange(10)[None, :] < lengths[:, None]
    for step, x in enumerate(batches(5, seed=2)):
        z = x.transpose(1, 2).clone()
        z[~mask] = 1e3  # padding far away: it must neither be quantized nor move a code
        valid = z[mask]  # [N, D]
        want_out, want_loss, want_idx = ref.train_step(valid.t().unsqueeze(0))
        got = q(z, mask=mask)
        assert torch.equal(got.indices[mask], want_idx[0]) and torch.all(got.indices[~mask] == -1), step
        close(got.quantized[mask], want_out[0], f"quantized, step {step}")
        close(got.loss / got.num_valid, want_loss, f"loss, step {step}")
        close(q.codebook, ref.embedding, f"codebook, step {step}")
        close(q.ema_count, ref.ema_count, f"ema_count, step {step}")


def test_gradient_is_straight_through_and_loss_is_commitment() -> None:
    torch.manual_seed(0)
    q = VQEMA(K, D).train()
    z = batches(1)[0].transpose(1, 2).clone().requires_grad_(True)
    out = q(z)
    g = torch.randn_like(z)
    (out.quantized * g).sum().backward()
    torch.testing.assert_close(z.grad, g)
    z.grad = None
    out = q(z)
    out.loss.backward()  # d/dz 0.25 * sum (z - q)^2 / D
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z - out.quantized).detach() / D)


def _used_codes(q: VQEMA, z: torch.Tensor) -> int:
    q.eval()
    n = len(set(q(z).indices.flatten().tolist()))
    q.train()
    return n


def test_dead_code_reset_fires_on_a_collapsing_setup() -> None:
    """Data far from the U(-1/K, 1/K) init: with the reference update one code takes every
    vector and every other code is thrown ~1e5 further out (count ~eps) - collapse. The
    reset (default threshold 0.1) re-seeds those codes from the batch at once."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(8, D, generator=g) * 3 + 5.0
    data = [(centers[torch.randint(8, (4, 32), generator=g)] + 0.3 * torch.randn(4, 32, D, generator=g))
            for _ in range(30)]
    torch.manual_seed(0)
    plain = VQEMA(K, D).train()
    torch.manual_seed(0)
    reset = VQEMA(K, D, reset_unused=True).train()
    assert reset.reset_threshold == 0.1
    for step, z in enumerate(data):
        plain(z)
        reset(z)
        if step == 0:
            assert reset.num_resets.item() >= K - 2, "dead codes must be reset after the first step"
    every = torch.cat(data[-5:])
    assert _used_codes(plain, every) <= 4
    assert _used_codes(reset, every) >= K // 2
    assert plain.num_resets.item() == 0
    # Every code is now close to the data (all reset codes came from encoder outputs).
    nearest = torch.cdist(reset.codebook, every.reshape(-1, D)).min(dim=1).values
    assert nearest.max() < 3.0


def test_legacy_options_keep_the_measured_variant() -> None:
    """init_count=1, store_smoothed_count=False: an unused code keeps its initial value."""
    torch.manual_seed(0)
    q = VQEMA(K, D, init_count=1.0, store_smoothed_count=False).train()
    before = q.codebook.clone()
    z = torch.full((1, 4, D), 5.0)  # all rows on one code
    out = q(z)
    used = int(out.indices[0, 0])
    others = [k for k in range(K) if k != used]
    # Unused: count 0.999, sum 0.999 * b; smoothed count ~0.999 -> b (up to the smoothing).
    torch.testing.assert_close(q.codebook[others], before[others], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(q.ema_count[others], torch.full((K - 1,), 0.999))
    torch.manual_seed(0)
    normal = VQEMA(K, D, init="normal")
    assert normal.codebook.abs().max() > 1 / K  # N(0, 1), not U(-1/K, 1/K)
