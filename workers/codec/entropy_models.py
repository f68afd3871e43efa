"""Probability models of the latents, for training (likelihoods) and for coding (tables).

Two models, as in Balle et al. 2018 and CompressAI:
- :class:`EntropyBottleneck`: a learned, fully factorized density per channel for the hyper-latents z.
- :class:`GaussianConditional`: a Gaussian per element for the latents y, whose mean and scale come from
  the hyper-decoders; for coding, the scale is snapped to a fixed 64-entry log-spaced table so that the
  decoder derives bit-identical probabilities from an integer index.

Coding tables are built by :mod:`workers.codec.entropy_coding` in float64 on the CPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from workers.codec.layers import lower_bound

LIKELIHOOD_BOUND = 1e-9
# constriction's models are fixed point with 24-bit precision and "leaky": every symbol of a table's range gets at
# least one of the 2^24 units, so the coder's probability of a symbol is about p + 2^-24 (a far-tail symbol costs
# ~24 bits, not the ~31 the float density charges it). Training against the coder adds it (``coder_floor``).
CODER_PROBABILITY_FLOOR = 2.0**-24
SCALE_TABLE_MIN, SCALE_TABLE_MAX, SCALE_TABLE_LEVELS = 0.11, 256.0, 64
CODING_TAIL_STDS, CODING_MIN_RANGE = 8.0, 4  # latent symbols are coded within +- max(4, ceil(8 std))


def scale_table() -> np.ndarray:
    """The 64 log-spaced std values 0.11 .. 256 (float64) that latent scales are snapped to."""
    return np.exp(np.linspace(math.log(SCALE_TABLE_MIN), math.log(SCALE_TABLE_MAX), SCALE_TABLE_LEVELS))


def add_quantization_noise(x: torch.Tensor) -> torch.Tensor:
    """Training proxy of rounding: x + U(-0.5, 0.5), from torch's global generator (seeded by callers)."""
    return x + torch.empty_like(x).uniform_(-0.5, 0.5)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


class EntropyBottleneck(nn.Module):
    """Fully factorized density of ``channels`` channels (Balle et al. 2018, appendix 6.1).

    The cumulative c(x) of each channel is a small monotone network: softplus'd matrices keep it
    increasing. Parameter names (``matrices.i``, ``biases.i``, ``factors.i``, ``quantiles``) match
    CompressAI so its checkpoints load directly. ``quantiles[:, 0, 1]`` is the median the symbols are
    centred on (z_hat = round(z - median) + median), as in CompressAI.
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        self.channels = channels
        self.filters = tuple(filters)
        widths = (1, *self.filters, 1)
        scale = init_scale ** (1.0 / (len(self.filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(self.filters) + 1):
            init = math.log(math.expm1(1.0 / scale / widths[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, widths[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(self.filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))
        self.quantiles = nn.Parameter(torch.tensor([-init_scale, 0.0, init_scale]).repeat(channels, 1, 1))
        tail_mass = 1e-9
        self.register_buffer("target", torch.tensor([-math.log(2 / tail_mass - 1), 0.0,
                                                     math.log(2 / tail_mass - 1)]), persistent=False)

    def logits_cumulative(self, x: torch.Tensor, stop_gradient: bool = False) -> torch.Tensor:
        """Logit of the cumulative c(x) for x of shape (C, 1, M); computed in x's dtype."""
        logits = x
        for i, matrix in enumerate(self.matrices):
            matrix = matrix.detach() if stop_gradient else matrix
            bias = self.biases[i].detach() if stop_gradient else self.biases[i]
            logits = torch.matmul(F.softplus(matrix.to(x.dtype)), logits) + bias.to(x.dtype)
            if i < len(self.factors):
                factor = self.factors[i].detach() if stop_gradient else self.factors[i]
                logits = logits + torch.tanh(factor.to(x.dtype)) * torch.tanh(logits)
        return logits

    def medians(self) -> torch.Tensor:
        """(C,) centre of each channel's symbols."""
        return self.quantiles[:, 0, 1].detach()

    def likelihood(self, z: torch.Tensor, coder_floor: bool | None = None) -> torch.Tensor:
        """P(bin of width 1 around z) for z (N, C, H, W); same shape. ``coder_floor`` (default: the module's
        setting) adds the coder's probability floor."""
        n, c, h, w = z.shape
        values = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.logits_cumulative(values - 0.5)
        upper = self.logits_cumulative(values + 0.5)
        sign = -torch.sign(lower + upper).detach()  # evaluate on the side where sigmoid is accurate
        likelihood = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        likelihood = lower_bound(likelihood, LIKELIHOOD_BOUND)
        if self.coder_floor if coder_floor is None else coder_floor:
            likelihood = likelihood + CODER_PROBABILITY_FLOOR
        return likelihood.reshape(c, n, h, w).permute(1, 0, 2, 3)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: noisy z and its likelihood; eval: z rounded around the medians (straight-through
        gradient, so adaptation can train through the exact quantization the coder uses), and clamped to
        the coding table's range when :meth:`match_coder` was called."""
        if self.training:
            z_hat = add_quantization_noise(z)
        else:
            medians = self.medians().view(1, -1, 1, 1)
            offsets = round_ste(z - medians)
            if self.coding_range is not None:  # zero gradient where the coder clamps
                low, high = self.coding_range
                offsets = torch.clamp(offsets, low.view(1, -1, 1, 1), high.view(1, -1, 1, 1))
            z_hat = offsets + medians
            if self.rate_noise:  # the rate's gradient from the noisy proxy, the decoder sees z_hat
                return z_hat, self.likelihood(add_quantization_noise(z))
        return z_hat, self.likelihood(z_hat)

    coding_range: tuple[torch.Tensor, torch.Tensor] | None = None
    rate_noise: bool = False
    coder_floor: bool = False  # likelihoods + CODER_PROBABILITY_FLOOR, as the coder's fixed-point tables give

    def match_coder(self, low: torch.Tensor, high: torch.Tensor, rate_noise: bool = False,
                    coder_floor: bool = False) -> None:
        """Clamp eval-mode symbols (offsets from the medians) to [low, high] per channel, as the coding
        table does. Training that changes what reaches this bottleneck (encoder adapters) needs it: without
        it, an encoder learns to use values the coder clamps, and what was trained is not what is coded.
        ``rate_noise``: evaluate the likelihood at z + U(-0.5, 0.5) instead of at the rounded value (the
        usual training proxy, whose gradient is informative where the rounded one is not). ``coder_floor``: add
        the coder's probability floor (CODER_PROBABILITY_FLOOR) to the likelihoods."""
        self.coding_range = (low.to(torch.float32), high.to(torch.float32))
        self.rate_noise, self.coder_floor = rate_noise, coder_floor

    def aux_loss(self) -> torch.Tensor:
        """Pulls ``quantiles`` to the tail-mass quantiles of the density (CompressAI's auxiliary loss)."""
        logits = self.logits_cumulative(self.quantiles, stop_gradient=True)
        return (logits - self.target.view(1, 1, 3)).abs().sum()


class GaussianConditional(nn.Module):
    """y ~ N(mean, scale^2) per element, integrated over bins of width 1 (no parameters)."""

    def __init__(self):
        super().__init__()
        table = torch.from_numpy(scale_table()).float()
        self.register_buffer("scale_table", table, persistent=False)
        # +- the largest symbol the coder codes under each table entry (workers/codec/entropy_coding.py)
        bounds = np.maximum(CODING_MIN_RANGE, np.ceil(CODING_TAIL_STDS * scale_table()))
        self.register_buffer("coding_bounds", torch.from_numpy(bounds).float(), persistent=False)

    @staticmethod
    def _standardized_cumulative(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.erfc(-(2**-0.5) * x)

    def likelihood(self, y: torch.Tensor, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """P(bin of width 1 around y) under N(means, scales^2), as this module is configured (``snap_scales``,
        ``coder_floor``); same shape as y."""
        return self.priced(y, scales, means, self.snap_scales, self.coder_floor)

    def coder_likelihood(self, y: torch.Tensor, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """The probability the coder gives y: under the scale-table entry it picks, with its floor."""
        return self.priced(y, scales, means, snap_scales=True, coder_floor=True)

    def priced(self, y: torch.Tensor, scales: torch.Tensor, means: torch.Tensor, snap_scales: bool,
               coder_floor: bool) -> torch.Tensor:
        scales = lower_bound(scales, SCALE_TABLE_MIN)
        if snap_scales:  # the coder's scale (the table entry :meth:`indexes` picks), straight-through
            scales = scales + (self.scale_table[self.indexes(scales)] - scales).detach()
        values = (y - means).abs()
        upper = self._standardized_cumulative((0.5 - values) / scales)
        lower = self._standardized_cumulative((-0.5 - values) / scales)
        likelihood = lower_bound(upper - lower, LIKELIHOOD_BOUND)
        return likelihood + CODER_PROBABILITY_FLOOR if coder_floor else likelihood

    def forward(self, y: torch.Tensor, scales: torch.Tensor, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: likelihood of y + noise; eval: likelihood of :meth:`quantize` (straight-through)."""
        if self.training:
            y_tilde = add_quantization_noise(y)
            return y_tilde, self.likelihood(y_tilde, scales, means)
        y_hat = self.quantize(y, scales, means)
        rate_at = add_quantization_noise(y) if self.rate_noise else y_hat
        return y_hat, self.likelihood(rate_at, scales, means)

    clamp_like_coder: bool = False
    rate_noise: bool = False  # eval mode: likelihood at y + U(-0.5, 0.5) (see EntropyBottleneck.match_coder)
    # likelihoods under the scale-table entry the coder uses (snapped up to the next entry, up to 13% wider)
    # instead of the hyper-decoder's continuous scale; the gradient passes straight through to the scale
    snap_scales: bool = False
    coder_floor: bool = False  # likelihoods + CODER_PROBABILITY_FLOOR (see EntropyBottleneck.coder_floor)

    def quantize(self, y: torch.Tensor, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """round(y - mean) + mean with a straight-through gradient; with ``clamp_like_coder`` the rounded
        residual is also clamped to the range the coder gives the element's scale-table entry (zero
        gradient where it clamps), so training sees exactly the values the decoder will."""
        offsets = round_ste(y - means)
        if self.clamp_like_coder:
            bound = self.coding_bounds[self.indexes(scales)]
            offsets = torch.maximum(torch.minimum(offsets, bound), -bound)
        return offsets + means

    def indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """Index of the smallest table entry >= scale (the last entry for larger scales), int64."""
        return torch.bucketize(scales.detach().float().contiguous(), self.scale_table[:-1], right=False)
