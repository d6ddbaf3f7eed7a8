"""Image SQ-VAE: ResNet encoder -> quantizer -> ResNet decoder.

The quantizer is whichever registry entry ``model.variant`` names
(:func:`sqvae_speech.quantizers.get_quantizer`), built from ``model.quantizer``: the
paper's Gaussian SQ-VAE I-IV (``gaussian_1`` .. ``gaussian_4``, variances added in linear
space), vMF SQ-VAE (``vmf``) and VQ-VAE with EMA (``vqvae_ema``, ``vqvae_ema_reset``), and
also ``gaussian_fixed``, ``vq_kmeans``, ``fsq`` and the continuous ``vae``. The
[B, D, h, w] latent grid is handed to it as a sequence [B, h*w, D] with every position
valid (no mask). The encoder gets a log-variance head (D channels, the quantizer reduces
them per variant) when the quantizer reads variances, i.e. when its
``encoder_channels`` exceed D (Gaussian II-IV, VAE).

Gaussian SQ-VAE I follows the authors' code (sony/sqvae vision/model.py): no variance head,
sigma^2 = exp(0) + exp(s) = 1 + exp(s) (``GaussianSQ(variant="I", var_space="linear")``).

Loss per item, averaged over the batch: reconstruction term (see ``likelihoods``) +
latent term. SQ and VAE: the quantizer's loss summed over the h*w positions. VQ families
(registry recon "mse": VQ-EMA, k-means VQ, FSQ): averaged over positions instead, so a
VQ-VAE's latent term is commitment_cost * mean (z - z_q)^2 as in the reference.

``forward`` trains and returns losses; ``encode`` / ``decode`` / ``reconstruct`` serve
evaluation (deterministic quantization: call ``model.eval()`` first).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..quantizers import QuantizerOutput, get_quantizer
from .config import VisionModelConfig
from .likelihoods import image_recon, label_recon
from .nets import NET_SPECS, VisionDecoder, VisionEncoder, check_input, init_weights


class VisionLoss(NamedTuple):
    loss: Tensor  # scalar to minimize
    recon: Tensor  # reconstruction term (per item)
    latent: Tensor  # latent term (per item; VQ: commitment)
    mse: Tensor  # MSE per element (images); NaN for label maps
    accuracy: Tensor  # pixel accuracy (label maps); NaN for images
    kl_continuous: Tensor  # per item
    kl_discrete: Tensor  # per item
    perplexity: Tensor  # batch perplexity
    log_var_mean: Tensor  # mean log sigma^2 (vMF: -log kappa; VQ, FSQ: NaN)


class VisionEncoded(NamedTuple):
    z: Tensor  # [B, D, h, w] encoder means (vMF: not yet normalized)
    log_var: Tensor | None  # [B, D, h, w] raw log-variance head (Gaussian II-IV, VAE), else None
    quantized: Tensor  # [B, D, h, w] z_q (VAE: the mean in eval mode)
    indices: Tensor  # [B, h, w] int64 code indices (VAE: -1)


def _to_seq(x: Tensor) -> Tensor:
    """[B, C, h, w] -> [B, h*w, C] (channels last, the quantizers' layout)."""
    return x.flatten(2).transpose(1, 2)


def _to_grid(x: Tensor, h: int, w: int) -> Tensor:
    """[B, h*w, C] -> [B, C, h, w]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


class VisionSQVAE(nn.Module):
    """SQ-VAE / VQ-VAE for 28x28 grey, 32x32 and 64x64 colour images and 64x64 label maps.

    Modules: ``encoder`` (:class:`VisionEncoder`), ``quantizer`` (the registry's class for
    ``config.variant``), ``decoder`` (:class:`VisionDecoder`); ``log_var_x`` (recon
    learned) or ``log_kappa_inv_x`` (recon vmf) when the likelihood has a parameter.
    """

    def __init__(self, config: VisionModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        spec = get_quantizer(c.variant)
        self.dim = c.embedding_dim
        self.spec = NET_SPECS[c.net]
        self.label = self.spec.label
        # The vision nets emit D log-variance channels in a head of their own whenever the
        # quantizer reads variances (Gaussian II-IV: D + 1 or 2D channels; VAE: 2D).
        var_head = spec.encoder_channels(**c.quantizer) > c.embedding_dim
        self.encoder = VisionEncoder(c.net, c.channels, c.embedding_dim, c.num_rb, var_head)
        self.decoder = VisionDecoder(c.net, c.channels, c.embedding_dim, c.num_rb)
        init_weights(self)
        self.quantizer: nn.Module = spec.build(**c.quantizer)
        # VQ families (registry recon "mse"): latent term averaged over positions
        self.latent_per_position = spec.recon == "mse"
        self.recon_kind = c.recon_kind
        if self.recon_kind == "learned":
            self.log_var_x = nn.Parameter(torch.tensor(float(c.init_log_var_x)))
        elif self.recon_kind == "vmf":
            self.log_kappa_inv_x = nn.Parameter(torch.tensor(float(c.init_log_kappa_inv_x)))

    @property
    def num_codes(self) -> int:
        """K, the quantizer's codebook size (FSQ: prod(levels); VAE: 0, no codes)."""
        return int(self.quantizer.num_embeddings)

    # -- pieces --------------------------------------------------------------------
    def quantize(self, x: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor | None, QuantizerOutput]:
        """x (as :meth:`forward`) -> (encoder means z [B, D, h, w], raw log-variance head
        [B, D, h, w] or None, the quantizer's output on the [B, h*w, D] sequence)."""
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
        z, _, q = self.quantize(x, temperature)
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
        if self.latent_per_position:
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
        z, log_var, q = self.quantize(x, temperature=1.0)
        h, w = z.shape[2], z.shape[3]
        return VisionEncoded(z, log_var, _to_grid(q.quantized, h, w), q.indices.reshape(-1, h, w))

    @torch.no_grad()
    def decode(self, quantized: Tensor) -> Tensor:
        """[B, D, h, w] -> images [B, C, H, W] in (0, 1), or per-class outputs [B, classes, H, W]."""
        return self.decoder(quantized)

    @torch.no_grad()
    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code indices [B, h, w] -> decoder output (as :meth:`decode`), from the codes the
        quantizer hands the decoder (vMF: unit norm). The continuous VAE has none and raises."""
        return self.decode(self.quantizer.lookup(indices).permute(0, 3, 1, 2))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(decoder output, code indices [B, h, w]) with deterministic quantization."""
        enc = self.encode(x)
        return self.decode(enc.quantized), enc.indices

    def codebook(self) -> Tensor:
        """[K, D] current code vectors (FSQ: the implicit grid after its projection)."""
        book = getattr(self.quantizer, "codebook", None)
        if book is None:
            raise NotImplementedError(f"quantizer '{self.config.variant}' has no codebook (continuous latents)")
        return book.detach()


def describe(model: VisionSQVAE) -> str:
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    h = model.spec.latent_size
    return (f"VisionSQVAE {c.variant} net {c.net}, K={model.num_codes}, D={c.embedding_dim}, num_rb={c.num_rb}, "
            f"latents {h}x{h}, recon {model.recon_kind}, {n / 1e6:.2f} M parameters")
