"""Encoder-side adapters (seed 002): only modules the decoder never runs change, so nothing is sent.

adapter(F) = W_zero x LeakyReLU(W_dw (*) LeakyReLU(W_pre x F)), W_zero zero-initialised, so an adapted
encoder starts as exactly the base encoder. Parallel adapters sit beside every conv of the motion and
residual encoders (F <- conv(F) + adapter(F), the depthwise conv carrying the conv's stride); serial
adapters follow the motion and residual hyper-encoders (F <- h(F) + adapter(h(F))). The I-frame path is
not adapted (as in the paper).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from schemas.adapt import GopAdaptersConfig
from workers.codec.ssf import ScaleSpaceFlow

ADAPTED_ENCODERS = ("motion_encoder", "res_encoder")
ADAPTED_HYPERPRIORS = ("motion_hyperprior", "res_hyperprior")


class Adapter(nn.Module):
    """(N, C_in, H, W) -> (N, C_out, H / stride, W / stride); outputs zeros until trained."""

    def __init__(self, c_in: int, c_out: int, hidden: int, kernel_size: int, stride: int):
        super().__init__()
        hidden = max(1, min(hidden, c_in, c_out))
        self.pre = nn.Conv2d(c_in, hidden, 1)
        self.depthwise = nn.Conv2d(hidden, hidden, kernel_size, stride=stride, padding=kernel_size // 2, groups=hidden)
        self.zero = nn.Conv2d(hidden, c_out, 1)
        nn.init.zeros_(self.zero.weight)
        nn.init.zeros_(self.zero.bias)
        self.activation = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.zero(self.activation(self.depthwise(self.activation(self.pre(x)))))


class ParallelAdapted(nn.Module):
    def __init__(self, conv: nn.Conv2d, adapter: Adapter):
        super().__init__()
        self.conv, self.adapter = conv, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.adapter(x)


class SerialAdapted(nn.Module):
    def __init__(self, block: nn.Module, adapter: Adapter):
        super().__init__()
        self.block, self.adapter = block, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + self.adapter(y)


def with_adapters(model: ScaleSpaceFlow, config: GopAdaptersConfig) -> tuple[ScaleSpaceFlow, list[nn.Parameter]]:
    """A copy of ``model`` with zero-output adapters inserted (deterministic initialisation from
    ``config.seed``), its base weights frozen, and its motion and residual entropy models quantizing as
    the coder does (Hyperprior.match_coder: z clamped to its tables, y rounded and escape-coded, never
    clamped); returns it and the adapter parameters."""
    adapted = copy.deepcopy(model)
    for p in adapted.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for encoder_name in ADAPTED_ENCODERS:
            encoder = getattr(adapted, encoder_name)
            for index, layer in enumerate(list(encoder)):
                if isinstance(layer, nn.Conv2d):
                    encoder[index] = ParallelAdapted(layer, Adapter(layer.in_channels, layer.out_channels,
                                                                    config.hidden_channels, config.kernel_size,
                                                                    layer.stride[0]))
        for hyperprior_name in ADAPTED_HYPERPRIORS:
            hyperprior = getattr(adapted, hyperprior_name)
            channels = model.architecture.hyper_channels
            hyperprior.hyper_encoder = SerialAdapted(hyperprior.hyper_encoder,
                                                     Adapter(channels, channels, config.hidden_channels, config.kernel_size, 1))
    adapted.to(next(model.parameters()).device)  # adapters are drawn on the CPU (seeded), trained on the model's device
    # adapters change what reaches the entropy models: train on exactly the symbols the coder will code
    tables = model.entropy_tables()
    for hyperprior, table in ((adapted.motion_hyperprior, tables.motion), (adapted.res_hyperprior, tables.residual)):
        hyperprior.match_coder(table, rate_noise=config.rate_proxy == "noise",
                               snap_scales=config.rate_proxy in ("table", "coder"), coder_floor=config.rate_proxy == "coder")
    parameters = [p for m in adapted.modules() if isinstance(m, Adapter) for p in m.parameters()]
    for p in parameters:
        p.requires_grad_(True)
    return adapted, parameters


def adapter_state(model: ScaleSpaceFlow) -> dict[str, torch.Tensor]:
    """The adapter tensors of an adapted model (for checkpoints)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".adapter." in n}
