"""Image SQ-VAE: ResNet encoder -> shared quantizer -> ResNet decoder.

Variants: ``gaussian_1`` .. ``gaussian_4`` (Gaussian SQ-VAE I-IV, variances added in
linear space), ``vmf`` (vMF SQ-VAE) and ``vqvae_ema`` (VQ-VAE with EMA codebook updates,
optional dead-code reset). The quantizers are the ones the speech model uses
(``sqvae_speech.quantizers``); the [B, D, h, w] latent grid is handed to them as a
sequence [B, h*w, D] with every position valid (no mask).

Loss per item, averaged over the batch: reconstruction term (see ``likelihoods``) +
latent term, the quantizer's loss summed over the h*w positions. VQ-VAE: MSE + the
commitment term averaged over positions (commitment_cost * mean (z - z_q)^2).

``forward`` trains and returns losses; ``encode`` / ``decode`` / ``reconstruct`` serve
evaluation (deterministic quantization: call ``model.eval()`` first).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..quantizers import VMFSQ, VQEMA, GaussianSQ, QuantizerOutput
from .config import VisionModelConfig
from .likelihoods import image_recon, label_recon
from .nets import NET_SPECS, VisionDecoder, VisionEncoder, check_input, init_weights

_SQ_VARIANT = {"gaussian_1": "I", "gaussian_2": "II", "gaussian_3": "III", "gaussian_4": "IV"}


class VisionLoss(NamedTuple):
    loss: Tensor  # scalar to minimize
    recon: Tensor  # reconstruction term (per item)
    latent: Tensor  # latent term (per item; VQ: commitment)
    mse: Tensor  # MSE per element (images); NaN for label maps
    accuracy: Tensor  # pixel accuracy (label maps); NaN for images
    kl_continuous: Tensor  # per item
    kl_discrete: Tensor  # per item
    perplexity: Tensor  # batch perplexity
    log_var_mean: Tensor  # mean log sigma^2 (vMF: -log kappa; VQ: NaN)


class VisionEncoded(NamedTuple):
    z: Tensor  # [B, D, h, w] encoder means (vMF: not yet normalized)
    log_var: Tensor | None  # [B, D, h, w] raw log-variance head (II-IV), else None
    quantized: Tensor  # [B, D, h, w] z_q
    indices: Tensor  # [B, h, w] int64 code indices


def _to_seq(x: Tensor) -> Tensor:
    """[B, C, h, w] -> [B, h*w, C] (channels last, the quantizers' layout)."""
    return x.flatten(2).transpose(1, 2)


def _to_grid(x: Tensor, h: int, w: int) -> Tensor:
    """[B, h*w, C] -> [B, C, h, w]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


class VisionSQVAE(nn.Module):
    """SQ-VAE / VQ-VAE for 28x28 grey, 32x32 and 64x64 colour images and 64x64 label maps."""

    def __init__(self, config: VisionModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.dim = c.embedding_dim
        self.spec = NET_SPECS[c.net]
        self.label = self.spec.label
        var_head = c.variant in ("gaussian_2", "gaussian_3", "gaussian_4")
        self.encoder = VisionEncoder(c.net, c.channels, c.embedding_dim, c.num_rb, var_head)
        self.decoder = VisionDecoder(c.net, c.channels, c.embedding_dim, c.num_rb)
        init_weights(self)
        if c.variant == "vqvae_ema":
            self.quantizer: nn.Module = VQEMA(c.num_embeddings, c.embedding_dim, decay=c.ema_decay,
                                              epsilon=c.ema_epsilon, commitment_cost=c.commitment_cost,
                                              reset_unused=c.reset_unused, reset_threshold=c.reset_threshold)
        elif c.variant == "vmf":
            self.quantizer = VMFSQ(c.num_embeddings, c.embedding_dim, init_log_kappa=c.init_log_kappa,
                                   min_kappa=c.min_kappa)
        else:
            self.quantizer = GaussianSQ(c.num_embeddings, c.embedding_dim, variant=_SQ_VARIANT[c.variant],
                                        var_space="linear", init_log_var=c.init_log_var)
        self.recon_kind = c.recon_kind
        if self.recon_kind == "learned":
            self.log_var_x = nn.Parameter(torch.tensor(float(c.init_log_var_x)))
        elif self.recon_kind == "vmf":
            self.log_kappa_inv_x = nn.Parameter(torch.tensor(float(c.init_log_kappa_inv_x)))

    # -- pieces --------------------------------------------------------------------
    def _quantize(self, x: Tensor, temperature: float) -> tuple[Tensor, Tensor | None, QuantizerOutput]:
        check_input(self.config.net, self.config.channels, x)
        z, log_var = self.encoder(x)
        q = self.quantizer(_to_seq(z), None if log_var is None else _to_seq(log_var), temperature=temperature)
        return z, log_var, q

    # -- training ------------------------------------------------------------------
    def forward(self, x: Tensor, temperature: float = 1.0) -> VisionLoss:
        """x: images [B, C, H, W] in [0, 1], or class maps [B, H, W] int64 -> losses.

        In training mode z_q is a Gumbel-softmax sample at ``temperature``; in eval mode the
        most probable code (the validation loss of the authors' scheduler).
        """
        return self.step(x, temperature)[0]

    def step(self, x: Tensor, temperature: float = 1.0) -> tuple[VisionLoss, Tensor, Tensor]:
        """One pass: (losses, decoder output [B, C or classes, H, W], code indices [B, h, w])."""
        z, _, q = self._quantize(x, temperature)
        out = self.decoder(_to_grid(q.quantized, z.shape[2], z.shape[3]))
        return self.losses(out, x, q), out, q.indices.reshape(-1, z.shape[2], z.shape[3])

    def losses(self, out: Tensor, x: Tensor, q: QuantizerOutput) -> VisionLoss:
        """Loss terms from the decoder output and the quantizer output."""
        batch = x.shape[0]
        nan = out.new_full((), math.nan)
        if self.label:
            recon, accuracy = label_recon(self.recon_kind, out, x, getattr(self, "log_kappa_inv_x", None))
            mse = nan
        else:
            recon, mse = image_recon(self.recon_kind, out, x, getattr(self, "log_var_x", None))
            accuracy = nan
        if isinstance(self.quantizer, VQEMA):
            latent = q.loss / q.num_valid.clamp_min(1)
        else:
            latent = q.loss / batch
        return VisionLoss(
            loss=recon + latent, recon=recon.detach(), latent=latent.detach(), mse=mse.detach(),
            accuracy=accuracy.detach(), kl_continuous=(q.kl_continuous / batch).detach(),
            kl_discrete=(q.kl_discrete / batch).detach(), perplexity=q.perplexity.detach(),
            log_var_mean=q.log_var_mean.detach(),
        )

    # -- inference -----------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> VisionEncoded:
        """Images [B, C, H, W] (or class maps [B, H, W]) -> latents and codes (deterministic in eval mode)."""
        z, log_var, q = self._quantize(x, temperature=1.0)
        h, w = z.shape[2], z.shape[3]
        return VisionEncoded(z, log_var, _to_grid(q.quantized, h, w), q.indices.reshape(-1, h, w))

    @torch.no_grad()
    def decode(self, quantized: Tensor) -> Tensor:
        """[B, D, h, w] -> images [B, C, H, W] in (0, 1), or per-class outputs [B, classes, H, W]."""
        return self.decoder(quantized)

    @torch.no_grad()
    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code indices [B, h, w] -> decoder output (as :meth:`decode`)."""
        codes = self.codebook()
        if isinstance(self.quantizer, VMFSQ):
            codes = self.quantizer.normalized_codebook().detach()
        return self.decode(codes[indices].permute(0, 3, 1, 2))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(decoder output, code indices [B, h, w]) with deterministic quantization."""
        enc = self.encode(x)
        return self.decode(enc.quantized), enc.indices

    def codebook(self) -> Tensor:
        """[K, D] current code vectors."""
        return self.quantizer.codebook.detach()


def describe(model: VisionSQVAE) -> str:
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    h = model.spec.latent_size
    return (f"VisionSQVAE {c.variant} net {c.net}, K={c.num_embeddings}, D={c.embedding_dim}, num_rb={c.num_rb}, "
            f"latents {h}x{h}, recon {model.recon_kind}, {n / 1e6:.2f} M parameters")
