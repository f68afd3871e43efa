"""A latent's hyperprior: hyper-encoder, hyper-decoders for mean and scale, and the two entropy models.

    y --hyper_encoder--> z --Q--> z_hat --hyper_decoder_mean--> mean
                                   \\---hyper_decoder_scale--> scale --snap to table--> index
    y --Q(y - mean) + mean--> y_hat

Module names follow CompressAI's ``ScaleSpaceFlow.Hyperprior`` so its checkpoints load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from workers.codec.entropy_coding import FactorizedTable, gaussian_table
from workers.codec.entropy_models import EntropyBottleneck, GaussianConditional, round_ste
from workers.codec.layers import conv, deconv, qrelu


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
        z = self.hyper_encoder(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales = self.hyper_decoder_scale(z_hat)
        means = self.hyper_decoder_mean(z_hat)
        _, y_likelihoods = self.gaussian_conditional(y, scales, means)
        y_hat = round_ste(y - means) + means
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}

    def latent_parameters(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Means (float) and scale-table indexes (int64) of y, from the decoded hyper-latents.

        Encoder and decoder both call exactly this, on identical z_hat, so they agree bit for bit.
        """
        means = self.hyper_decoder_mean(z_hat)
        indexes = self.gaussian_conditional.indexes(self.hyper_decoder_scale(z_hat))
        return means, indexes

    @torch.no_grad()
    def compress(self, y: torch.Tensor, table: FactorizedTable) -> CodedLatent:
        z_symbols = table.quantize(self.hyper_encoder(y))
        means, indexes = self.latent_parameters(table.dequantize(z_symbols))
        gaussian = gaussian_table()
        y_symbols = gaussian.quantize(y - means, indexes)
        y_hat = y_symbols.to(torch.float32) + means
        return CodedLatent(y_hat=y_hat, y_stream=gaussian.encode(y_symbols, indexes),
                           z_stream=table.encode(z_symbols), y_symbols=y_symbols, y_indexes=indexes,
                           z_symbols=z_symbols)

    @torch.no_grad()
    def decompress(self, y_stream: bytes, z_stream: bytes, z_shape: tuple[int, int, int, int],
                   table: FactorizedTable, what: str) -> torch.Tensor:
        z_symbols = table.decode(z_stream, z_shape, what=f"{what} hyper-latents")
        means, indexes = self.latent_parameters(table.dequantize(z_symbols))
        y_symbols = gaussian_table().decode(y_stream, indexes, what=f"{what} latents")
        return y_symbols.to(torch.float32) + means
