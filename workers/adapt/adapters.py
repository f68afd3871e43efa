"""Encoder-side adapters (seed 002): only modules the decoder never runs change, so nothing is sent.

adapter(F) = W_zero x LeakyReLU(W_dw (*) LeakyReLU(W_pre x F)), W_zero zero-initialised, so an adapted
encoder starts as exactly the base encoder. Parallel adapters sit beside every conv of an adapted encoder
(F <- conv(F) + adapter(F), the depthwise conv carrying the conv's stride); serial adapters follow its
hyper-encoder (F <- h(F) + adapter(h(F))).

- P-frames (the paper): the motion and residual encoders and hyper-encoders (:func:`with_adapters`).
- I-frames (beyond the paper, which adapts P-frames only, at an intra period of 32): the image encoder and
  hyper-encoder (:func:`with_intra_adapters`). At our intra period of 12 the I-frames are 20-46% of an
  eval-dev unit's bits, and the shipped image encoder leaves 10-32% of an I-frame's RD cost on the table
  (mean over a unit's GoPs; issue 14, benchmarks/RESULTS.md gopad-intra and gopad-runner). Nothing is sent for them either.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from schemas.adapt import GopAdaptersConfig
from workers.codec.ssf import EntropyTables, ScaleSpaceFlow

ADAPTED_ENCODERS = ("motion_encoder", "res_encoder")
ADAPTED_HYPERPRIORS = ("motion_hyperprior", "res_hyperprior")
INTRA_ENCODERS, INTRA_HYPERPRIORS = ("img_encoder",), ("img_hyperprior",)


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


def with_adapters(model: ScaleSpaceFlow, config: GopAdaptersConfig,
                  tables: EntropyTables | None = None) -> tuple[ScaleSpaceFlow, list[nn.Parameter]]:
    """A copy of ``model`` with zero-output adapters on its P-frame encoders (deterministic initialisation
    from ``config.seed``), its base weights frozen, and its motion and residual entropy models quantizing as
    the coder does (Hyperprior.match_coder: z clamped to its tables, y rounded and escape-coded, never
    clamped; rates priced by ``config.rate_proxy``); returns it and the adapter parameters. ``tables``: the
    model's coding tables, when the caller has them (built otherwise)."""
    return _adapted_copy(model, config, ADAPTED_ENCODERS, ADAPTED_HYPERPRIORS, tables)


def with_intra_adapters(model: ScaleSpaceFlow, config: GopAdaptersConfig,
                        tables: EntropyTables | None = None) -> tuple[ScaleSpaceFlow, list[nn.Parameter]]:
    """As :func:`with_adapters`, for the I-frame path: adapters on the image encoder and hyper-encoder."""
    return _adapted_copy(model, config, INTRA_ENCODERS, INTRA_HYPERPRIORS, tables)


def _adapted_copy(model: ScaleSpaceFlow, config: GopAdaptersConfig, encoder_names: tuple[str, ...],
                  hyperprior_names: tuple[str, ...],
                  tables: EntropyTables | None) -> tuple[ScaleSpaceFlow, list[nn.Parameter]]:
    adapted = copy.deepcopy(model)
    for p in adapted.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for encoder_name in encoder_names:
            encoder = getattr(adapted, encoder_name)
            for index, layer in enumerate(list(encoder)):
                if isinstance(layer, nn.Conv2d):
                    encoder[index] = ParallelAdapted(layer, Adapter(layer.in_channels, layer.out_channels,
                                                                    config.hidden_channels, config.kernel_size,
                                                                    layer.stride[0]))
        for hyperprior_name in hyperprior_names:
            hyperprior = getattr(adapted, hyperprior_name)
            channels = model.architecture.hyper_channels
            adapter = Adapter(channels, channels, config.hidden_channels, config.kernel_size, 1)
            hyperprior.hyper_encoder = SerialAdapted(hyperprior.hyper_encoder, adapter)
    adapted.to(next(model.parameters()).device)  # adapters are drawn on the CPU (seeded), trained on the model's device
    # adapters change what reaches the entropy models: train on exactly the symbols the coder will code
    tables = tables or model.entropy_tables()
    table_of = {"img_hyperprior": tables.intra, "motion_hyperprior": tables.motion, "res_hyperprior": tables.residual}
    for name in hyperprior_names:
        getattr(adapted, name).match_coder(table_of[name], rate_noise=config.rate_proxy == "noise",
                                           snap_scales=config.rate_proxy in ("table", "coder"),
                                           coder_floor=config.rate_proxy == "coder")
    parameters = [p for m in adapted.modules() if isinstance(m, Adapter) for p in m.parameters()]
    for p in parameters:
        p.requires_grad_(True)
    return adapted, parameters


def adapter_state(model: ScaleSpaceFlow) -> dict[str, torch.Tensor]:
    """The adapter tensors of an adapted model (for checkpoints)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".adapter." in n}
