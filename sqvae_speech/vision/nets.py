"""ResNet encoders and decoders of the image experiments (docs/PROTOCOL.md, "Vision experiments").

The layer structure follows the authors' code, sony/sqvae vision/networks/net_28.py,
net_32.py and net_64.py (with vision/networks/util.py for the residual block):

==========  ==================  ===================================  ==============  =========
net         input               encoder convs                        latents         decoder
                                                                                     res blocks
==========  ==================  ===================================  ==============  =========
``28``      [B, 1, 28, 28]      2 x (4x4, stride 2)                  [B, D, 7, 7]    num_rb
``32``      [B, 3, 32, 32]      2 x (4x4, stride 2), 3x3, BN + ReLU  [B, D, 8, 8]    num_rb
``64``      [B, 3, 64, 64]      2 x (4x4, stride 2), 3x3             [B, D, 16, 16]  num_rb - 1
``64label`` [B, 64, 64] classes 3 x (4x4, stride 2), one-hot in      [B, D, 8, 8]    num_rb - 1
==========  ==================  ===================================  ==============  =========

The first conv has D/2 channels, every later one D; BatchNorm + ReLU between convs (and,
for ``32`` only, after the 3x3 conv too, as net_32.py has it). Then ``num_rb - 1`` shared
residual blocks and one residual block per head: the mean head and, when the quantizer
reads variances (Gaussian SQ-VAE II-IV, the VAE), a separate log-variance head with D
channels (the quantizer reduces it per variant). The decoder: residual blocks (``num_rb`` for 28 / 32 px, ``num_rb - 1`` for
64 px, as net_64.py has it), a 3x3 transposed conv (32 / 64), stride-2 4x4 transposed
convs with BatchNorm + ReLU between them, and a sigmoid for images. Label maps end in a
softplus: the authors' CelebAMask-HQ config (sony/sqvae vision/configs/celebamask_vmf.yaml)
sets ``act_decoder: "exp"``, which net_64.py maps to ``nn.Softplus``. Weights start as in
the authors' code (sony/sqvae vision/model.py, ``weights_init``): conv weights N(0, 0.02),
BatchNorm scales N(1, 0.02) and BatchNorm shifts 0 (conv biases keep PyTorch's default).

One difference remains: the authors pad the class count of a label map to an even number
(20 channels for CelebAMask-HQ's 19 classes); here the label nets have exactly
``channels`` class channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class NetSpec:
    """Geometry of one network size (sony/sqvae vision/networks/net_<size>.py)."""

    size: int  # input height = width
    n_down: int  # stride-2 4x4 convs
    conv3x3: bool  # an extra 3x3 conv after the downsampling convs
    label: bool  # input is a class map (one-hot inside the encoder)
    conv3x3_bn_relu: bool = False  # BatchNorm + ReLU after the encoder's 3x3 conv (net_32.py)
    decoder_rb_offset: int = 0  # decoder residual blocks = num_rb - offset (net_64.py: 1)

    @property
    def latent_size(self) -> int:
        return self.size // 2**self.n_down

    def decoder_blocks(self, num_rb: int) -> int:
        """Residual blocks of the decoder for ``num_rb`` (the config's count)."""
        return max(num_rb - self.decoder_rb_offset, 0)


NET_SPECS: dict[str, NetSpec] = {
    "28": NetSpec(28, 2, False, False),
    "32": NetSpec(32, 2, True, False, conv3x3_bn_relu=True),
    "64": NetSpec(64, 2, True, False, decoder_rb_offset=1),
    "64label": NetSpec(64, 3, False, True, decoder_rb_offset=1),
}


class ResBlock(nn.Module):
    """x + BN(1x1 conv(ReLU(BN(3x3 conv(ReLU(x)))))) on [B, C, H, W] -> [B, C, H, W]
    (sony/sqvae vision/networks/util.py, ``ResBlock`` with ReLU)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim),
            nn.ReLU(), nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _bn_relu(ch: int) -> list[nn.Module]:
    """BatchNorm2d(ch) + ReLU on [B, ch, H, W]."""
    return [nn.BatchNorm2d(ch), nn.ReLU()]


def init_weights(module: nn.Module) -> None:
    """The authors' initialization (sony/sqvae vision/model.py, ``weights_init``): conv and
    transposed-conv weights N(0, 0.02), BatchNorm scale N(1, 0.02), BatchNorm shift 0.

    It sets the starting scale of the latents against the N(0, 1) codebook, which the
    initial sigma^2 (10 or 20) was tuned for.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class VisionEncoder(nn.Module):
    """[B, C, H, W] images (or [B, H, W] int64 class maps for ``64label``) ->
    (mean [B, D, h, w], log-variance [B, D, h, w] or None).

    Follows ``EncoderVqResnet28`` / ``EncoderVqResnet32`` / ``EncoderVqResnet64`` /
    ``EncoderVqResnet64Label`` of sony/sqvae vision/networks/net_28.py, net_32.py, net_64.py.
    """

    def __init__(self, net: str, channels: int, dim: int, num_rb: int, var_head: bool) -> None:
        super().__init__()
        self.spec = NET_SPECS[net]
        self.channels = channels
        layers: list[nn.Module] = []
        in_ch = channels
        for i in range(self.spec.n_down):
            out_ch = dim // 2 if i == 0 else dim
            if i > 0:
                layers += _bn_relu(in_ch)
            layers.append(nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1))
            in_ch = out_ch
        if self.spec.conv3x3:
            layers += _bn_relu(dim) + [nn.Conv2d(dim, dim, 3, padding=1)]
            if self.spec.conv3x3_bn_relu:
                layers += _bn_relu(dim)
        self.conv = nn.Sequential(*layers)
        self.res = nn.Sequential(*[ResBlock(dim) for _ in range(num_rb - 1)])
        self.res_mean = ResBlock(dim)
        self.res_log_var = ResBlock(dim) if var_head else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.spec.label:
            # [B, H, W] class indices -> one-hot channels [B, classes, H, W]
            x = F.one_hot(x.long(), self.channels).permute(0, 3, 1, 2).to(self.conv[0].weight.dtype)
        h = self.res(self.conv(x))
        return self.res_mean(h), (self.res_log_var(h) if self.res_log_var is not None else None)


class VisionDecoder(nn.Module):
    """Quantized latents [B, D, h, w] -> images [B, C, H, W] in (0, 1) (sigmoid), or for
    ``64label`` positive per-class outputs [B, classes, H, W] (softplus).

    Follows ``DecoderVqResnet28`` / ``DecoderVqResnet32`` / ``DecoderVqResnet64`` /
    ``DecoderVqResnet64Label`` (with ``act="exp"``, i.e. softplus) of sony/sqvae
    vision/networks/net_28.py, net_32.py, net_64.py. The 64 px decoders have
    ``num_rb - 1`` residual blocks, the 28 / 32 px ones ``num_rb``.
    """

    def __init__(self, net: str, channels: int, dim: int, num_rb: int) -> None:
        super().__init__()
        self.spec = NET_SPECS[net]
        layers: list[nn.Module] = [ResBlock(dim) for _ in range(self.spec.decoder_blocks(num_rb))]
        if self.spec.conv3x3:
            layers += [nn.ConvTranspose2d(dim, dim, 3, padding=1), *_bn_relu(dim)]
        in_ch = dim
        for i in range(self.spec.n_down):
            last = i == self.spec.n_down - 1
            out_ch = channels if last else (dim // 2 if i == self.spec.n_down - 2 else dim)
            layers.append(nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1))
            if not last:
                layers += _bn_relu(out_ch)
            in_ch = out_ch
        # sony/sqvae vision/configs/celebamask_vmf.yaml: act_decoder "exp" -> nn.Softplus in net_64.py
        layers.append(nn.Softplus() if self.spec.label else nn.Sigmoid())
        self.net = nn.Sequential(*layers)

    def forward(self, zq: Tensor) -> Tensor:
        return self.net(zq)


def latent_shape(net: str) -> tuple[int, int]:
    """(h, w) of the latent grid of a net."""
    s = NET_SPECS[net].latent_size
    return s, s


def check_input(net: str, channels: int, x: Tensor) -> None:
    """Raise ValueError unless ``x`` has the shape the net expects."""
    spec = NET_SPECS[net]
    want = (spec.size, spec.size) if spec.label else (channels, spec.size, spec.size)
    if tuple(x.shape[1:]) != want:
        kind = "class maps [B, H, W]" if spec.label else "images [B, C, H, W]"
        raise ValueError(f"net {net} takes {kind} of shape [B, {', '.join(map(str, want))}], got {tuple(x.shape)}")
    if spec.label and (x.dtype.is_floating_point or x.dtype == torch.bool):
        raise ValueError(f"net {net} takes integer class maps, got dtype {x.dtype}")
