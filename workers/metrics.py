"""Distortion metrics (design.md section 8), all averaged per frame over a sequence.

- PSNR-RGB: on RGB scaled to [0, 255], the reconstruction clamped to [0, 1] (CompressAI's convention).
- PSNR-YUV: (6 PSNR_Y + PSNR_U + PSNR_V) / 8 on the 8-bit 4:2:0 planes: the source's planes against the
  planes written to the reconstruction file.
- MS-SSIM-RGB: pytorch_msssim on RGB in [0, 1], 5 scales. The standard 11x11 window needs a shorter side
  above 160 px; for smaller frames (QCIF is 144) the window shrinks to the largest odd size that fits
  ((window - 1) * 16 < side); frames with a side of 32 px or less get single-scale SSIM (3x3 window).
  :func:`ms_ssim_settings` says what is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

PSNR_CAP_DB = 100.0  # identical frames: report 100 dB instead of infinity (JSON has no inf)
_MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def psnr_from_mse(mse: float, peak: float) -> float:
    if mse <= 0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(peak * peak / mse))


def psnr_rgb(original: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """PSNR in dB of one RGB frame pair (3, H, W) in [0, 1], peak 255."""
    mse = torch.mean((original.double() * 255.0 - reconstruction.clamp(0, 1).double() * 255.0) ** 2).item()
    return psnr_from_mse(mse, 255.0)


def psnr_yuv(original: tuple[np.ndarray, ...], reconstruction: tuple[np.ndarray, ...]) -> float:
    """(6 Y + U + V) / 8 of the per-plane PSNRs of 8-bit planes."""
    values = [psnr_from_mse(float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)), 255.0)
              for a, b in zip(original, reconstruction)]
    return (6.0 * values[0] + values[1] + values[2]) / 8.0


def ms_ssim_settings(height: int, width: int) -> tuple[int, int]:
    """(window size, number of scales) used for a frame of this size."""
    side = min(height, width)
    window = 11
    while window > 3 and side <= (window - 1) * 16:
        window -= 2
    if side <= (window - 1) * 16:
        return 3, 1
    return window, len(_MSSSIM_WEIGHTS)


def ms_ssim_rgb(originals: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor]) -> float:
    """Mean MS-SSIM over frames: (T, 3, H, W) tensors, or sequences of (3, H, W) frames in [0, 1] (a list,
    or a lazy sequence that converts each frame on access). Frames are stacked 16 at a time, so a long
    sequence never needs a stacked float copy of itself."""
    from pytorch_msssim import ms_ssim, ssim

    window, scales = ms_ssim_settings(*originals[0].shape[-2:])
    values = []
    for start in range(0, len(originals), 16):
        end = min(start + 16, len(originals))
        a = torch.stack([originals[i] for i in range(start, end)]).float()
        b = torch.stack([reconstructions[i] for i in range(start, end)]).clamp(0, 1).float()
        if scales == 1:
            values.append(ssim(a, b, data_range=1.0, size_average=False, win_size=window))
        else:
            values.append(ms_ssim(a, b, data_range=1.0, size_average=False, win_size=window,
                                  weights=list(_MSSSIM_WEIGHTS)))
    return float(torch.cat(values).double().mean())
