"""Building blocks of the SSF codec: strided convs, the QReLU activation, a lower bound with a
pass-through gradient, and scale-space warping."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    """Conv2d that divides H and W by ``stride`` ("same" padding)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def deconv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    """ConvTranspose2d that multiplies H and W by ``stride`` exactly."""
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=stride,
                              output_padding=stride - 1, padding=kernel_size // 2)


class _QReLU(torch.autograd.Function):
    """Clamp to [0, 2**bit_depth - 1] in the forward pass; in the backward pass, outside the range,
    a smooth decaying gradient instead of zero (Duan et al. 2021, as used for SSF's scale decoder)."""

    ALPHA = 0.9943258522851727

    @staticmethod
    def forward(ctx, x: torch.Tensor, bit_depth: int, beta: float) -> torch.Tensor:
        ctx.max_value = 2**bit_depth - 1
        ctx.beta = beta
        ctx.save_for_backward(x)
        return x.clamp(min=0, max=ctx.max_value)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        decay = torch.exp(-(_QReLU.ALPHA**ctx.beta) * (2.0 * x / ctx.max_value - 1).abs() ** ctx.beta)
        outside = (x < 0) | (x > ctx.max_value)
        return torch.where(outside, decay * grad_output, grad_output), None, None


def qrelu(x: torch.Tensor, bit_depth: int = 8, beta: float = 100.0) -> torch.Tensor:
    return _QReLU.apply(x, bit_depth, beta)


class _LowerBound(torch.autograd.Function):
    """max(x, bound), letting gradients through where they push x up (as CompressAI's LowerBound)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp(min=bound)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        pass_through = (x >= ctx.bound) | (grad_output < 0)
        return pass_through.type_as(grad_output) * grad_output, None


def lower_bound(x: torch.Tensor, bound: float) -> torch.Tensor:
    return _LowerBound.apply(x, bound)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad (N, C, H, W) on the right and bottom up to multiples of ``multiple``."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def gaussian_kernel2d(kernel_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised separable Gaussian kernel (kernel_size, kernel_size)."""
    half = (kernel_size - 1) / 2.0
    x = torch.linspace(-half, half, steps=kernel_size, dtype=dtype, device=device)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel = pdf / pdf.sum()
    return kernel[:, None] * kernel[None, :]


def gaussian_blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise blur of (N, C, H, W) with replicate padding (output has the input's size)."""
    pad = kernel.shape[0] // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    weight = kernel.expand(x.shape[1], 1, *kernel.shape)
    return F.conv2d(x, weight, groups=x.shape[1])


def gaussian_volume(x: torch.Tensor, sigma0: float, num_levels: int) -> torch.Tensor:
    """Scale-space volume (N, C, num_levels + 1, H, W): x, then x blurred at growing scales.

    Level 0 is x itself, level 1 x blurred with sigma0, level i > 1 is built at 1/2**(i-1) resolution
    (2x2 average then blur) and upsampled back bilinearly, which approximates ever wider blurs cheaply.
    """
    size = 2 * int(math.ceil(3 * sigma0)) + 1
    kernel = gaussian_kernel2d(size, sigma0, dtype=x.dtype, device=x.device)
    levels = [x.unsqueeze(2)]
    x = gaussian_blur(x, kernel)
    levels.append(x.unsqueeze(2))
    for level in range(1, num_levels):
        x = F.avg_pool2d(x, kernel_size=2, stride=2)
        x = gaussian_blur(x, kernel)
        up = x
        for _ in range(level):
            up = F.interpolate(up, scale_factor=2, mode="bilinear", align_corners=False)
        levels.append(up.unsqueeze(2))
    return torch.cat(levels, dim=2)


def identity_grid(n: int, height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised sampling grid (N, H, W, 2) of the identity warp (x, y in [-1, 1], align_corners=False)."""
    theta = torch.eye(2, 3, dtype=dtype, device=device).unsqueeze(0).expand(n, 2, 3)
    return F.affine_grid(theta, [n, 1, height, width], align_corners=False)


def scale_space_warp(volume: torch.Tensor, flow: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Trilinear lookup into ``volume`` (N, C, D, H, W).

    ``flow`` (N, 2, H, W) is a displacement in normalised [-1, 1] image coordinates, ``scale``
    (N, 1, H, W) picks the blur level (-1 = sharpest, 1 = blurriest). Returns (N, C, H, W).
    """
    n, _, _, height, width = volume.shape
    grid = identity_grid(n, height, width, torch.float32, volume.device) + flow.permute(0, 2, 3, 1).float()
    grid = torch.cat((grid, scale.permute(0, 2, 3, 1).float()), dim=-1).unsqueeze(1)
    out = F.grid_sample(volume.float(), grid, padding_mode="border", align_corners=False)
    return out.squeeze(2)
