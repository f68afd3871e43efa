"""Rate-distortion objective used for training (estimated entropies: for training only; reported rates
always come from written bytes)."""

from __future__ import annotations

import math

import torch

from schemas.codec import MSE_LAMBDAS


def lambda_for_quality(quality: int) -> float:
    if not 1 <= quality <= len(MSE_LAMBDAS):
        raise ValueError(f"quality must be in 1..{len(MSE_LAMBDAS)}, got {quality}")
    return MSE_LAMBDAS[quality - 1]


def likelihood_bits(likelihoods) -> torch.Tensor:
    """Sum of -log2 p over a (nested) dict or list of likelihood tensors: the estimated bits."""
    if isinstance(likelihoods, torch.Tensor):
        return -torch.log(likelihoods).sum() / math.log(2)
    values = likelihoods.values() if isinstance(likelihoods, dict) else likelihoods
    return sum(likelihood_bits(v) for v in values)


def rate_distortion(frames: list[torch.Tensor], reconstructions: list[torch.Tensor], likelihoods: list,
                    lmbda: float) -> dict[str, torch.Tensor]:
    """Mean over frames of lambda * 255^2 * MSE + bpp; frames are (N, 3, H, W) in [0, 1].

    Returns loss, mse, bpp (estimated) and psnr (dB, of the mean MSE) for logging.
    """
    pixels = frames[0].shape[0] * frames[0].shape[-2] * frames[0].shape[-1]
    mse = torch.stack([torch.mean((x - x_hat) ** 2) for x, x_hat in zip(frames, reconstructions)]).mean()
    bpp = likelihood_bits(likelihoods) / (pixels * len(frames))
    loss = lmbda * 255.0**2 * mse + bpp
    psnr = -10.0 * torch.log10(mse.detach().clamp_min(1e-10))
    return {"loss": loss, "mse": mse, "bpp": bpp, "psnr": psnr}
