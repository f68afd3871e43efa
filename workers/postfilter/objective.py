"""The post-filter's training objective, shared by the CPU trainer (workers/postfilter/pretrain.py) and the
GPU trainer (workers/postfilter/train_gpu.py); torch only, so it imports where pydantic is absent.

``planes_loss`` (see pretrain.py's docstring for why a ratio): per plane, the filtered MSE over the decoded
MSE, both summed over every crop of the call (all crops at one CRF), weighted like PSNR-YUV (6 Y + U + V) / 8.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workers.postfilter.linear_system import PLANE_WEIGHTS

MSE_FLOOR = (0.5 / 255.0) ** 2  # a crop set whose decode is (near) perfect: no division by ~0


def planes_loss(filtered: Sequence[torch.Tensor], original: Sequence[torch.Tensor], decoded: Sequence[torch.Tensor],
                loss: str = "relative") -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, relative error (1,)) of one call's crops: planes (N,1,h,w) for Y, U, V, in [0, 1].
    ``loss`` "relative" (the ratio above) or "mse" (the weighted MSE itself); the relative error is the ratio
    either way (10 log10 of it is the negated dB gain of the crops)."""
    total, relative = 0.0, 0.0
    for weight, out, ref, dec in zip(PLANE_WEIGHTS, filtered, original, decoded):
        mse = (out - ref).pow(2).mean()
        base = (dec - ref).pow(2).mean().clamp_min(MSE_FLOOR)
        relative = relative + weight * (mse / base)
        total = total + weight * (mse / base if loss == "relative" else mse)
    return total, relative.detach().reshape(1)
