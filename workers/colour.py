"""The one YUV <-> RGB conversion adaptjobs uses everywhere (reading, writing, metrics).

It is CompressAI's video-evaluation convention: 8-bit code values are divided by 255 and treated as
full range; the matrix is ITU-R BT.709 (Kr = 0.2126, Kb = 0.0722); chroma 4:2:0 -> 4:4:4 is bicubic
interpolation (align_corners=False) and 4:4:4 -> 4:2:0 is a 2x2 average. RGB is clamped to [0, 1].
Because reader and writer share the convention, the code values of a written Y4M are directly
comparable with those of the source.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

KR, KG, KB = 0.2126, 0.7152, 0.0722


def yuv420_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> torch.Tensor:
    """8-bit planes Y (H, W), U and V (H/2, W/2) -> RGB float32 tensor (3, H, W) in [0, 1]."""
    luma = torch.from_numpy(np.ascontiguousarray(y)).float().div_(255.0)
    chroma = torch.from_numpy(np.stack([u, v])).float().div_(255.0).sub_(0.5)
    chroma = F.interpolate(chroma[None], size=luma.shape, mode="bicubic", align_corners=False)[0]
    cb, cr = chroma[0], chroma[1]
    r = luma + 2.0 * (1.0 - KR) * cr
    b = luma + 2.0 * (1.0 - KB) * cb
    g = (luma - KR * r - KB * b) / KG
    return torch.stack([r, g, b]).clamp_(0.0, 1.0)


def rgb_to_yuv420_float(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB (..., 3, H, W) in [0, 1] -> Y (..., H, W), U and V (..., H/2, W/2) as floats in [0, 1]."""
    r, g, b = rgb.unbind(-3)
    y = KR * r + KG * g + KB * b
    cb = 0.5 * (b - y) / (1.0 - KB) + 0.5
    cr = 0.5 * (r - y) / (1.0 - KR) + 0.5
    chroma = torch.stack([cb, cr], dim=-3)
    lead = chroma.shape[:-3]
    chroma = F.avg_pool2d(chroma.reshape(-1, 2, *chroma.shape[-2:]), kernel_size=2, stride=2)
    chroma = chroma.reshape(*lead, 2, *chroma.shape[-2:])
    return y, chroma[..., 0, :, :], chroma[..., 1, :, :]


def to_uint8(plane: torch.Tensor) -> np.ndarray:
    """Float plane in [0, 1] -> uint8 array (round half to even, as torch.round does)."""
    return torch.round(plane.clamp(0.0, 1.0) * 255.0).to(torch.uint8).numpy()


def rgb_to_yuv420(rgb: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB (3, H, W) in [0, 1] -> 8-bit planes Y (H, W), U and V (H/2, W/2)."""
    y, u, v = rgb_to_yuv420_float(rgb)
    return to_uint8(y), to_uint8(u), to_uint8(v)
