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


def plane_mses(original: tuple[np.ndarray, ...], reconstruction: tuple[np.ndarray, ...]) -> list[float]:
    """MSE of each 8-bit plane pair (Y, U, V), in code values squared."""
    return [float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)) for a, b in zip(original, reconstruction)]


def plane_psnrs(original: tuple[np.ndarray, ...], reconstruction: tuple[np.ndarray, ...]) -> list[float]:
    """PSNR in dB of each 8-bit plane pair (Y, U, V), peak 255."""
    return [psnr_from_mse(mse, 255.0) for mse in plane_mses(original, reconstruction)]


def psnr_yuv(original: tuple[np.ndarray, ...], reconstruction: tuple[np.ndarray, ...]) -> float:
    """(6 Y + U + V) / 8 of the per-plane PSNRs of 8-bit planes."""
    values = plane_psnrs(original, reconstruction)
    return (6.0 * values[0] + values[1] + values[2]) / 8.0


def mean_mse_rgb(originals: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor]) -> float:
    """MSE on RGB in [0, 1] (unclamped: what the codec's training loss sees), mean over frames: the distortion
    of an RD cost lambda * 255^2 * MSE + bpp."""
    return sum(float(torch.mean((originals[i] - r) ** 2)) for i, r in enumerate(reconstructions)) / len(reconstructions)


def mean_mse_yuv(originals: Sequence[tuple[np.ndarray, ...]], reconstructions: Sequence[tuple[np.ndarray, ...]]) -> float:
    """(6 MSE_Y + MSE_U + MSE_V) / 8 on planes scaled to [0, 1], mean over frames: the distortion of a
    standard codec's RD cost (the same weighting as PSNR-YUV)."""
    total = 0.0
    for i, planes in enumerate(reconstructions):
        y, u, v = plane_mses(originals[i], planes)
        total += (6.0 * y + u + v) / 8.0 / 255.0**2
    return total / len(reconstructions)


def sequence_metrics(originals_rgb: Sequence[torch.Tensor], originals_yuv: Sequence[tuple[np.ndarray, ...]],
                     rgb: Sequence[torch.Tensor], yuv: Sequence[tuple[np.ndarray, ...]]) -> dict[str, float]:
    """Every reported metric of a reconstruction, each the mean of its per-frame values: psnr_rgb, psnr_yuv,
    psnr_y, psnr_u, psnr_v and ms_ssim_rgb. ``rgb`` / ``yuv`` are the same reconstructed frames seen as RGB
    (3, H, W) in [0, 1] and as 8-bit 4:2:0 planes (sequences that may convert on access); the originals
    likewise. The one place where metrics are averaged over frames."""
    count = len(rgb)
    planes = [plane_psnrs(originals_yuv[i], yuv[i]) for i in range(count)]
    means = [sum(p[k] for p in planes) / count for k in range(3)]
    return {"psnr_rgb": sum(psnr_rgb(originals_rgb[i], rgb[i]) for i in range(count)) / count,
            "psnr_yuv": sum((6.0 * p[0] + p[1] + p[2]) / 8.0 for p in planes) / count,
            "psnr_y": means[0], "psnr_u": means[1], "psnr_v": means[2],
            "ms_ssim_rgb": ms_ssim_rgb(originals_rgb[:count], rgb)}


def ms_ssim_settings(height: int, width: int) -> tuple[int, int]:
    """(window size, number of scales) used for a frame of this size."""
    side = min(height, width)
    window = 11
    while window > 3 and side <= (window - 1) * 16:
        window -= 2
    if side <= (window - 1) * 16:
        return 3, 1
    return window, len(_MSSSIM_WEIGHTS)


MS_SSIM_BATCH = 4  # frames per call: 4 ran faster than 1 or 12 at 720x576 on one thread (channels-last)


def ms_ssim_rgb(originals: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor]) -> float:
    """Mean MS-SSIM over frames: (T, 3, H, W) tensors, or sequences of (3, H, W) frames in [0, 1] (a list,
    or a lazy sequence that converts each frame on access). Frames are stacked MS_SSIM_BATCH at a time, so a long
    sequence never needs a stacked float copy of itself."""
    from pytorch_msssim import ms_ssim, ssim

    window, scales = ms_ssim_settings(*originals[0].shape[-2:])
    values = []
    for start in range(0, len(originals), MS_SSIM_BATCH):
        end = min(start + MS_SSIM_BATCH, len(originals))
        # channels-last and 4 frames per call: pytorch_msssim's grouped 1-D Gaussian convs are far faster on
        # CPU so (12 random 720x576 frames, one thread: 1.6-2.1 s instead of 11-13 s, the same value to the
        # last digit; ms_ssim alone on one frame moved in the 7th digit). It was 90% of an x264 unit's time.
        a = torch.stack([originals[i] for i in range(start, end)]).float().contiguous(memory_format=torch.channels_last)
        b = (torch.stack([reconstructions[i] for i in range(start, end)]).clamp(0, 1).float()
             .contiguous(memory_format=torch.channels_last))
        if scales == 1:
            values.append(ssim(a, b, data_range=1.0, size_average=False, win_size=window))
        else:
            values.append(ms_ssim(a, b, data_range=1.0, size_average=False, win_size=window,
                                  weights=list(_MSSSIM_WEIGHTS)))
    return float(torch.cat(values).double().mean())
