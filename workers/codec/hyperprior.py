"""A latent's hyperprior: hyper-encoder, hyper-decoders for mean and scale, and the two entropy models.

    y --pad to x8--> --hyper_encoder--> z --Q--> z_hat --hyper_decoder_mean--> mean  --crop to y-->
                                                  \\---hyper_decoder_scale--> scale --crop--> --snap to table--> index
    y --Q(y - mean) + mean--> y_hat

The hyper-encoder downsamples by 8, so y is replicate-padded (right, bottom) to a multiple of 8 for it and
the hyper-decoders' outputs are cropped back to y's size: frames need only be padded to multiples of 16
(the autoencoders' own factor), and no latent is coded for padding beyond that. Only z covers the
latent-space padding (an eighth of the size in each direction).

Module names follow CompressAI's ``ScaleSpaceFlow.Hyperprior`` so its checkpoints load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from workers.codec.entropy_coding import FactorizedTable, GaussianTable, gaussian_table
from workers.codec.entropy_models import EntropyBottleneck, GaussianConditional, round_ste
from workers.codec.layers import conv, deconv, pad_to_multiple, qrelu

HYPER_FACTOR = 8  # the hyper-encoder's downsampling (3 stride-2 convs)


class HyperEncoder(nn.Sequential):
    """(N, latent, H, W) -> (N, hyper, H/8, W/8)."""

    def __init__(self, latent_channels: int, hyper_channels: int):
        super().__init__(
            conv(latent_channels, hyper_channels), nn.ReLU(inplace=True),
            conv(hyper_channels, hyper_channels), nn.ReLU(inplace=True),
            conv(hyper_channels, hyper_channels),
        )


class HyperDecoder(nn.Sequential):
    """(N, hyper, h, w) -> (N, latent, 8h, 8w): the mean of y."""

    def __init__(self, latent_channels: int, hyper_channels: int):
        super().__init__(
            deconv(hyper_channels, hyper_channels), nn.ReLU(inplace=True),
            deconv(hyper_channels, hyper_channels), nn.ReLU(inplace=True),
            deconv(hyper_channels, latent_channels),
        )


class HyperDecoderWithQReLU(nn.Module):
    """(N, hyper, h, w) -> (N, latent, 8h, 8w): the scale of y, kept in [0, 255] by QReLU."""

    def __init__(self, latent_channels: int, hyper_channels: int):
        super().__init__()
        self.deconv1 = deconv(hyper_channels, hyper_channels)
        self.deconv2 = deconv(hyper_channels, hyper_channels)
        self.deconv3 = deconv(hyper_channels, latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = qrelu(self.deconv1(x))
        x = qrelu(self.deconv2(x))
        return qrelu(self.deconv3(x))


@dataclass
class CodedLatent:
    """One latent after coding: its reconstruction, its two streams and the symbols behind them."""

    y_hat: torch.Tensor
    y_stream: bytes
    z_stream: bytes
    y_symbols: torch.Tensor
    y_indexes: torch.Tensor
    z_symbols: torch.Tensor


class Hyperprior(nn.Module):
    def __init__(self, latent_channels: int, hyper_channels: int):
        super().__init__()
        self.hyper_encoder = HyperEncoder(latent_channels, hyper_channels)
        self.hyper_decoder_mean = HyperDecoder(latent_channels, hyper_channels)
        self.hyper_decoder_scale = HyperDecoderWithQReLU(latent_channels, hyper_channels)
        self.entropy_bottleneck = EntropyBottleneck(hyper_channels)
        self.gaussian_conditional = GaussianConditional()

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training/evaluation pass: y_hat (rounded around the mean, straight-through) and likelihoods."""
        z = self.hyper_encoder(pad_to_multiple(y, HYPER_FACTOR))
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        height, width = y.shape[-2:]
        scales = self.hyper_decoder_scale(z_hat)[..., :height, :width]
        means = self.hyper_decoder_mean(z_hat)[..., :height, :width]
        y_tilde, y_likelihoods = self.gaussian_conditional(y, scales, means)  # eval: y_tilde is already quantized
        y_hat = round_ste(y - means) + means if self.training else y_tilde
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}

    def match_coder(self, table: FactorizedTable, rate_noise: bool = False) -> None:
        """Make eval-mode training quantize exactly as the coder does: z clamped to ``table``'s range,
        y rounded (escape-coded beyond its scale-table entry's range, so never clamped); with ``rate_noise`` the rates are estimated at the
        noisy proxies (see EntropyBottleneck.match_coder)."""
        low = table.min_offset.to(torch.float32)
        self.entropy_bottleneck.match_coder(low, low + torch.from_numpy(table.lengths - 1).to(torch.float32),
                                            rate_noise)
        self.gaussian_conditional.clamp_like_coder = not gaussian_table().escapes  # format 4 escapes: no clamp
        self.gaussian_conditional.rate_noise = rate_noise

    def latent_parameters(self, z_hat: torch.Tensor, y_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Means (float) and scale-table indexes (int64) of y (cropped to ``y_size`` = (h, w)), from the
        decoded hyper-latents.

        Encoder and decoder both call exactly this, on identical z_hat, so they agree bit for bit.
        """
        height, width = y_size
        means = self.hyper_decoder_mean(z_hat)[..., :height, :width]
        indexes = self.gaussian_conditional.indexes(self.hyper_decoder_scale(z_hat)[..., :height, :width])
        return means, indexes

    @torch.no_grad()
    def compress(self, y: torch.Tensor, table: FactorizedTable, latents: GaussianTable | None = None) -> CodedLatent:
        """``latents``: the y coding table (default: with escapes, bitstream format 4)."""
        z_symbols = table.quantize(self.hyper_encoder(pad_to_multiple(y, HYPER_FACTOR)))
        means, indexes = self.latent_parameters(table.dequantize(z_symbols), tuple(y.shape[-2:]))
        gaussian = latents or gaussian_table()
        y_symbols = gaussian.quantize(y - means, indexes)
        y_hat = y_symbols.to(torch.float32) + means
        return CodedLatent(y_hat=y_hat, y_stream=gaussian.encode(y_symbols, indexes),
                           z_stream=table.encode(z_symbols), y_symbols=y_symbols, y_indexes=indexes,
                           z_symbols=z_symbols)

    @torch.no_grad()
    def decompress(self, y_stream: bytes, z_stream: bytes, z_shape: tuple[int, int, int, int],
                   y_size: tuple[int, int], table: FactorizedTable, latents: GaussianTable | None = None,
                   what: str = "latent") -> torch.Tensor:
        """y_hat of size ``y_size`` (h, w) from its two streams; ``z_shape`` is derived from the frame size."""
        z_symbols = table.decode(z_stream, z_shape, what=f"{what} hyper-latents")
        means, indexes = self.latent_parameters(table.dequantize(z_symbols), y_size)
        y_symbols = (latents or gaussian_table()).decode(y_stream, indexes, what=f"{what} latents")
        return y_symbols.to(torch.float32) + means
