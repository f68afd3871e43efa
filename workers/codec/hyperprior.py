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
from workers.device import module_device, on_cpu

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
    def __init__(self, latent_channels: int, hyper_channels: int, bottleneck_filters: tuple[int, ...] = (3, 3, 3)):
        super().__init__()
        self.hyper_encoder = HyperEncoder(latent_channels, hyper_channels)
        self.hyper_decoder_mean = HyperDecoder(latent_channels, hyper_channels)
        self.hyper_decoder_scale = HyperDecoderWithQReLU(latent_channels, hyper_channels)
        self.entropy_bottleneck = EntropyBottleneck(hyper_channels, bottleneck_filters)
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

    def match_coder(self, table: FactorizedTable, rate_noise: bool = False, snap_scales: bool = False,
                    coder_floor: bool = False) -> None:
        """Make eval-mode training quantize exactly as the coder does: z clamped to ``table``'s range,
        y rounded (escape-coded beyond its scale-table entry's range, so never clamped); with ``rate_noise`` the
        rates are estimated at the noisy proxies (see EntropyBottleneck.match_coder); with ``snap_scales`` y's
        likelihoods use the coding table's scales (GaussianConditional.snap_scales); with ``coder_floor`` the
        likelihoods of y and z carry the coder's probability floor (entropy_models.CODER_PROBABILITY_FLOOR)."""
        low = table.min_offset.to(torch.float32)
        high = low + torch.from_numpy(table.lengths - 1).to(torch.float32)
        device = module_device(self.entropy_bottleneck)  # the tables live on the CPU, training on the device
        self.entropy_bottleneck.match_coder(low.to(device), high.to(device), rate_noise, coder_floor)
        self.gaussian_conditional.clamp_like_coder = not gaussian_table().escapes  # format 4 escapes: no clamp
        self.gaussian_conditional.rate_noise = rate_noise
        self.gaussian_conditional.snap_scales = snap_scales
        self.gaussian_conditional.coder_floor = coder_floor

    def latent_parameters(self, z_hat: torch.Tensor, y_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Means (float) and scale-table indexes (int64) of y (cropped to ``y_size`` = (h, w)), from the
        decoded hyper-latents.

        Encoder and decoder both call exactly this, on identical z_hat, so they agree bit for bit. It is the
        parse path (workers/device.py): it always runs on the CPU in float32, on CPU copies of the modules
        when the model sits on another device, so a stream parses the same whatever device coded it.
        Both outputs are on the CPU.
        """
        height, width = y_size
        z_hat = z_hat.to("cpu", torch.float32)
        means = on_cpu(self.hyper_decoder_mean)(z_hat)[..., :height, :width]
        scales = on_cpu(self.hyper_decoder_scale)(z_hat)[..., :height, :width]
        return means, on_cpu(self.gaussian_conditional).indexes(scales)

    @torch.no_grad()
    def compress(self, y: torch.Tensor, table: FactorizedTable, latents: GaussianTable | None = None) -> CodedLatent:
        """Code y (on the transforms' device); the symbols and their probabilities are decided on the CPU
        (:meth:`latent_parameters`), and y_hat comes back on y's device. ``latents``: the y coding table
        (default: with escapes, bitstream format 4)."""
        z_symbols = table.quantize(self.hyper_encoder(pad_to_multiple(y, HYPER_FACTOR)).cpu())
        means, indexes = self.latent_parameters(table.dequantize(z_symbols), tuple(y.shape[-2:]))
        gaussian = latents or gaussian_table()
        y_symbols = gaussian.quantize(y.cpu() - means, indexes)
        y_hat = (y_symbols.to(torch.float32) + means).to(y.device)
        return CodedLatent(y_hat=y_hat, y_stream=gaussian.encode(y_symbols, indexes),
                           z_stream=table.encode(z_symbols), y_symbols=y_symbols, y_indexes=indexes,
                           z_symbols=z_symbols)

    @torch.no_grad()
    def decompress(self, y_stream: bytes, z_stream: bytes, z_shape: tuple[int, int, int, int],
                   y_size: tuple[int, int], table: FactorizedTable, latents: GaussianTable | None = None,
                   what: str = "latent") -> torch.Tensor:
        """y_hat of size ``y_size`` (h, w) from its two streams; ``z_shape`` is derived from the frame size.
        Parsing runs on the CPU (:meth:`parse`); y_hat goes to the device of the transforms."""
        y_symbols, means = self.parse(y_stream, z_stream, z_shape, y_size, table, latents, what)[:2]
        return (y_symbols.to(torch.float32) + means).to(module_device(self.hyper_encoder))

    def parse(self, y_stream: bytes, z_stream: bytes, z_shape: tuple[int, int, int, int], y_size: tuple[int, int],
              table: FactorizedTable, latents: GaussianTable | None = None,
              what: str = "latent") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(y symbols int64, means float32, scale-table indexes int64) of one latent, all on the CPU: what a
        decoder derives from the streams alone, whatever device the transforms sit on. ``latents``: the y
        coding table (default: with escapes, bitstream format 4)."""
        z_symbols = table.decode(z_stream, z_shape, what=f"{what} hyper-latents")
        means, indexes = self.latent_parameters(table.dequantize(z_symbols), y_size)
        y_symbols = (latents or gaussian_table()).decode(y_stream, indexes, what=f"{what} latents")
        return y_symbols, means, indexes
