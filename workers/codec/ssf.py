"""Scale-space flow (Agustsson et al., CVPR 2020): the base codec.

I-frame:   x --img_encoder--> y --img_hyperprior--> y_hat --img_decoder--> x_hat
P-frame:   cat(x, x_ref) --motion_encoder--> y_m --motion_hyperprior--> y_m_hat --motion_decoder-->
           (flow_x, flow_y, scale) --scale-space warp of x_ref--> x_pred
           x - x_pred --res_encoder--> y_r --res_hyperprior--> y_r_hat
           cat(y_r_hat, y_m_hat) --res_decoder--> r_hat;   x_hat = x_pred + r_hat

Frames are RGB (N, 3, H, W) in [0, 1] with H and W multiples of 16 (see :func:`pad_frame`): the
autoencoders downsample by 16 and the scale-space volume halves the frame 4 times; each hyperprior pads its
latent to a multiple of 8 itself (workers/codec/hyperprior.py). :class:`FramePadding` also offers what
CompressAI's video eval runs instead (zeros, centred, to multiples of 128).
Module names match CompressAI's ``ScaleSpaceFlow`` so an official ``ssf2020`` state dict loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from schemas.codec import PADDING_MODES, SSFArchitecture
from workers.codec.entropy_coding import FactorizedTable, GaussianTable, gaussian_table
from workers.codec.hyperprior import HYPER_FACTOR, CodedLatent, Hyperprior
from workers.codec.layers import conv, deconv, gaussian_volume, pad_to_multiple, scale_space_warp
from workers.device import on_cpu

LATENT_FACTOR = 16  # 4 stride-2 layers in each autoencoder
PAD_MULTIPLE = LATENT_FACTOR  # frames are padded to this; the hyperpriors pad their latents to x8 themselves


class Encoder(nn.Sequential):
    """(N, in, H, W) -> (N, latent, H/16, W/16)."""

    def __init__(self, in_channels: int, mid_channels: int, latent_channels: int):
        super().__init__(
            conv(in_channels, mid_channels), nn.ReLU(inplace=True),
            conv(mid_channels, mid_channels), nn.ReLU(inplace=True),
            conv(mid_channels, mid_channels), nn.ReLU(inplace=True),
            conv(mid_channels, latent_channels),
        )


class Decoder(nn.Sequential):
    """(N, in, h, w) -> (N, out, 16h, 16w)."""

    def __init__(self, out_channels: int, in_channels: int, mid_channels: int):
        super().__init__(
            deconv(in_channels, mid_channels), nn.ReLU(inplace=True),
            deconv(mid_channels, mid_channels), nn.ReLU(inplace=True),
            deconv(mid_channels, mid_channels), nn.ReLU(inplace=True),
            deconv(mid_channels, out_channels),
        )


def pad_frame(x: torch.Tensor) -> torch.Tensor:
    """Replicate-pad a frame batch (N, 3, H, W) on the right and bottom to multiples of PAD_MULTIPLE."""
    return pad_to_multiple(x, PAD_MULTIPLE)


def padded_size(height: int, width: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int]:
    return height + (-height) % multiple, width + (-width) % multiple


COMPRESSAI_PAD_MULTIPLE = LATENT_FACTOR * HYPER_FACTOR  # 128: every latent is then a multiple of 8


@dataclass(frozen=True)
class FramePadding:
    """How frames of ``height`` x ``width`` are padded to what the network divides evenly, and cropped back.

    ``mode`` "adaptjobs" (default, format 2 on): replicate-padded on the right and bottom to multiples of
    16; each hyperprior pads its latent to x8 itself, so fewer latent elements are coded on small frames.
    ``mode`` "compressai": what CompressAI's video eval runs (compressai/utils/video/eval_model/__main__.py
    ``pad``/``crop`` with compressai.ops.compute_padding(min_div=128)): zeros, centred (the odd pixel goes
    right/bottom), to multiples of 128, so every latent is a multiple of 8 and the hyperpriors pad nothing.
    Both keep the padded reconstruction as the next frame's reference, as CompressAI's eval does.
    """

    mode: str
    height: int
    width: int

    def __post_init__(self):
        if self.mode not in PADDING_MODES:
            raise ValueError(f"padding mode must be one of {PADDING_MODES}, got {self.mode!r}")

    @classmethod
    def of(cls, mode: str | None, height: int, width: int) -> "FramePadding":
        """``mode`` None is "adaptjobs" (a header without the field)."""
        return cls(mode or "adaptjobs", height, width)

    @property
    def padded(self) -> tuple[int, int]:
        """(padded height, padded width)."""
        multiple = COMPRESSAI_PAD_MULTIPLE if self.mode == "compressai" else PAD_MULTIPLE
        return padded_size(self.height, self.width, multiple)

    @property
    def top_left(self) -> tuple[int, int]:
        """Where the frame sits inside the padded one: (rows above, columns to the left)."""
        if self.mode == "adaptjobs":
            return 0, 0
        padded_height, padded_width = self.padded
        return (padded_height - self.height) // 2, (padded_width - self.width) // 2

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 3, *padded)."""
        if self.mode == "adaptjobs":
            return pad_frame(x)
        (padded_height, padded_width), (top, left) = self.padded, self.top_left
        return F.pad(x, (left, padded_width - self.width - left, top, padded_height - self.height - top),
                     mode="constant", value=0.0)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, *padded) -> (N, 3, H, W)."""
        top, left = self.top_left
        return x[..., top: top + self.height, left: left + self.width]


@dataclass
class EntropyTables:
    """Coding tables of the three hyperpriors, built once per set of weights."""

    intra: FactorizedTable
    motion: FactorizedTable
    residual: FactorizedTable
    latents: GaussianTable = field(default_factory=gaussian_table)  # y of all three: escapes (format 4)


class ScaleSpaceFlow(nn.Module):
    def __init__(self, architecture: SSFArchitecture | None = None):
        super().__init__()
        self.architecture = architecture or SSFArchitecture()
        mid, latent, hyper = (self.architecture.mid_channels, self.architecture.latent_channels,
                              self.architecture.hyper_channels)
        filters = self.architecture.bottleneck_filters
        self.img_encoder = Encoder(3, mid, latent)
        self.img_decoder = Decoder(3, latent, mid)
        self.img_hyperprior = Hyperprior(latent, hyper, filters)
        self.res_encoder = Encoder(3, mid, latent)
        self.res_decoder = Decoder(3, 2 * latent, mid)
        self.res_hyperprior = Hyperprior(latent, hyper, filters)
        self.motion_encoder = Encoder(2 * 3, mid, latent)
        self.motion_decoder = Decoder(2 + 1, latent, mid)
        self.motion_hyperprior = Hyperprior(latent, hyper, filters)

    # ------------------------------------------------------------------ shared by every path
    def predict(self, x_ref: torch.Tensor, y_motion_hat: torch.Tensor) -> torch.Tensor:
        """Warp the reference with the decoded scale-space flow: (N, 3, H, W)."""
        flow, scale = self.motion_decoder(y_motion_hat).split([2, 1], dim=1)
        volume = gaussian_volume(x_ref, self.architecture.sigma0, self.architecture.num_levels)
        return scale_space_warp(volume, flow, scale)

    def reconstruct_inter(self, x_pred: torch.Tensor, y_res_hat: torch.Tensor, y_motion_hat: torch.Tensor) -> torch.Tensor:
        return x_pred + self.res_decoder(torch.cat((y_res_hat, y_motion_hat), dim=1))

    # ------------------------------------------------------------------ training
    def forward_intra(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        y_hat, likelihoods = self.img_hyperprior(self.img_encoder(x))
        return self.img_decoder(y_hat), {"intra": likelihoods}

    def forward_inter(self, x: torch.Tensor, x_ref: torch.Tensor) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        y_motion_hat, motion_likelihoods = self.motion_hyperprior(self.motion_encoder(torch.cat((x, x_ref), dim=1)))
        x_pred = self.predict(x_ref, y_motion_hat)
        y_res_hat, res_likelihoods = self.res_hyperprior(self.res_encoder(x - x_pred))
        x_hat = self.reconstruct_inter(x_pred, y_res_hat, y_motion_hat)
        return x_hat, {"motion": motion_likelihoods, "residual": res_likelihoods}

    def forward(self, frames: list[torch.Tensor]) -> dict[str, list]:
        """Likelihoods for training: the first frame is intra, the others predicted from the previous
        reconstruction (detached, as in the paper)."""
        x_hat, likelihoods = self.forward_intra(frames[0])
        reconstructions, frame_likelihoods = [x_hat], [likelihoods]
        for x in frames[1:]:
            x_hat, likelihoods = self.forward_inter(x, x_hat.detach())
            reconstructions.append(x_hat)
            frame_likelihoods.append(likelihoods)
        return {"x_hat": reconstructions, "likelihoods": frame_likelihoods}

    def aux_loss(self) -> torch.Tensor:
        return sum(h.entropy_bottleneck.aux_loss() for h in
                   (self.img_hyperprior, self.motion_hyperprior, self.res_hyperprior))

    # ------------------------------------------------------------------ real bits
    @torch.no_grad()
    def entropy_tables(self) -> EntropyTables:
        """Built from CPU copies of the bottlenecks (the parse path, workers/device.py), whatever the device."""
        return EntropyTables(intra=FactorizedTable.build(on_cpu(self.img_hyperprior.entropy_bottleneck)),
                             motion=FactorizedTable.build(on_cpu(self.motion_hyperprior.entropy_bottleneck)),
                             residual=FactorizedTable.build(on_cpu(self.res_hyperprior.entropy_bottleneck)))

    @staticmethod
    def latent_size(padded_height: int, padded_width: int) -> tuple[int, int]:
        """(H/16, W/16): the spatial size of every latent y of a padded frame."""
        return padded_height // LATENT_FACTOR, padded_width // LATENT_FACTOR

    def hyper_latent_shape(self, padded_height: int, padded_width: int) -> tuple[int, int, int, int]:
        """Shape (1, hyper, ceil(H/128), ceil(W/128)) of z for a padded frame: derivable, so never sent."""
        height, width = self.latent_size(padded_height, padded_width)
        return (1, self.architecture.hyper_channels, -(-height // HYPER_FACTOR), -(-width // HYPER_FACTOR))

    @torch.no_grad()
    def encode_intra(self, x: torch.Tensor, tables: EntropyTables) -> tuple[torch.Tensor, CodedLatent]:
        coded = self.img_hyperprior.compress(self.img_encoder(x), tables.intra, tables.latents)
        return self.img_decoder(coded.y_hat).clamp_(0.0, 1.0), coded

    @torch.no_grad()
    def decode_intra(self, y_stream: bytes, z_stream: bytes, padded: tuple[int, int], tables: EntropyTables) -> torch.Tensor:
        y_hat = self.img_hyperprior.decompress(y_stream, z_stream, self.hyper_latent_shape(*padded),
                                               self.latent_size(*padded), tables.intra, tables.latents, what="I-frame")
        return self.img_decoder(y_hat).clamp_(0.0, 1.0)

    @torch.no_grad()
    def encode_inter(self, x: torch.Tensor, x_ref: torch.Tensor, tables: EntropyTables) -> tuple[torch.Tensor, CodedLatent, CodedLatent]:
        motion = self.motion_hyperprior.compress(self.motion_encoder(torch.cat((x, x_ref), dim=1)), tables.motion,
                                                 tables.latents)
        x_pred = self.predict(x_ref, motion.y_hat)
        residual = self.res_hyperprior.compress(self.res_encoder(x - x_pred), tables.residual, tables.latents)
        x_hat = self.reconstruct_inter(x_pred, residual.y_hat, motion.y_hat)
        return x_hat.clamp_(0.0, 1.0), motion, residual

    @torch.no_grad()
    def decode_inter(self, x_ref: torch.Tensor, streams: list[bytes], padded: tuple[int, int],
                     tables: EntropyTables) -> torch.Tensor:
        """``streams`` = [motion y, motion z, residual y, residual z]."""
        z_shape, y_size = self.hyper_latent_shape(*padded), self.latent_size(*padded)
        y_motion_hat = self.motion_hyperprior.decompress(streams[0], streams[1], z_shape, y_size, tables.motion,
                                                         tables.latents, what="motion")
        x_pred = self.predict(x_ref, y_motion_hat)
        y_res_hat = self.res_hyperprior.decompress(streams[2], streams[3], z_shape, y_size, tables.residual,
                                                   tables.latents, what="residual")
        return self.reconstruct_inter(x_pred, y_res_hat, y_motion_hat).clamp_(0.0, 1.0)
