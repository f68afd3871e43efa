"""The spike-and-slab weight prior: differentiable bits for training, a constriction table for coding.

p(d) = [N(d | 0, slab^2) + alpha N(d | 0, spike^2)] / (1 + alpha), integrated over the quantization bin
[k t - t/2, k t + t/2] of every grid index k. Training and coding use the same bin probabilities: during
training the rate is evaluated at the straight-through-quantized update (its value is the exact coded
cost, its gradient the slope of the continuous bin probability), and the coder normalises the same
probabilities over the table range [-K, K].
"""

from __future__ import annotations

import math

import numpy as np
import torch

from schemas.adapt import WeightPrior

_MIN_PROBABILITY = 1e-300  # float64: bins further out than ~37 slab stds cost ~997 bits, not infinity


def _upper_tail(x: torch.Tensor, std: float) -> torch.Tensor:
    """P(X > x) for X ~ N(0, std^2), accurate far into the tail (erfc, not 1 - cdf)."""
    return 0.5 * torch.erfc(x / (std * math.sqrt(2.0)))


def bin_probability(prior: WeightPrior, centre: torch.Tensor) -> torch.Tensor:
    """Prior mass of the bins [c - t/2, c + t/2] (float64, same shape as ``centre``, in weight units).

    Uses the symmetry of the prior: the mass of [a, b] with 0 <= a is tail(a) - tail(b), which keeps
    full relative precision where 1 - cdf would round to 0.
    """
    c = centre.to(torch.float64).abs()
    half = prior.grid / 2.0
    low, high = (c - half).clamp_min(0.0), c + half
    straddles = c < half  # the zero bin: mass of [-(h - c), h + c] = 1 - tail(h - c) - tail(h + c)

    def component(std: float) -> torch.Tensor:
        inner = _upper_tail(low, std) - _upper_tail(high, std)
        central = 1.0 - _upper_tail(half - c, std) - _upper_tail(high, std)
        return torch.where(straddles, central, inner)

    mass = (component(prior.slab_std) + prior.alpha * component(prior.spike)) / (1.0 + prior.alpha)
    return mass.clamp_min(_MIN_PROBABILITY)


def quantize_ste(update: torch.Tensor, grid: float) -> torch.Tensor:
    """Round ``update`` to the grid in the forward pass, identity gradient in the backward pass."""
    scaled = update / grid
    return (scaled + (torch.round(scaled) - scaled).detach()) * grid


def weight_bits(prior: WeightPrior, quantized: torch.Tensor) -> torch.Tensor:
    """-log2 prior mass of every (straight-through quantized) update, summed: scalar float32 with
    gradients. Its value is the ideal cost of coding these grid indices under the untruncated prior."""
    return (-torch.log2(bin_probability(prior, quantized))).sum().to(torch.float32)


def grid_indices(update: torch.Tensor, grid: float) -> torch.Tensor:
    """The integer grid index of every update (int64), what the payload codes."""
    return torch.round(update.detach() / grid).to(torch.int64)


def coding_probabilities(prior: WeightPrior, bound: int) -> np.ndarray:
    """Probabilities (float64, length 2 * bound + 1, summing to 1) of the indices -bound..bound."""
    indices = torch.arange(-bound, bound + 1, dtype=torch.float64)
    mass = bin_probability(prior, indices * prior.grid)
    return (mass / mass.sum()).numpy()


def ideal_bits(prior: WeightPrior, indices: torch.Tensor, bound: int) -> float:
    """Information content of ``indices`` under the table the coder uses (the truncated prior)."""
    probabilities = coding_probabilities(prior, bound)
    return float(-np.log2(probabilities[indices.reshape(-1).numpy() + bound]).sum())
