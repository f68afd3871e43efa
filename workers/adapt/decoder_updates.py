"""Decoder-side weight updates: LoRA on the decoders' transposed convolutions, or every decoder weight.

An update is a set of *coded tensors* (what the payload carries, quantized on the prior's grid) and a
function from those tensors to the decoder weights they produce. Training evaluates the model with
``weights(quantize_ste(coded))``; the decoder calls the same ``weights`` on the dequantized payload, so
it runs exactly the weights that were evaluated. Everything else the decoder needs (the base weights,
LoRA's initial A from a seed in the payload) it rebuilds itself: it is never sent.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from schemas.adapt import DecoderLoraConfig, FullDecoderConfig
from workers.codec.ssf import ScaleSpaceFlow

DECODERS = ("img_decoder", "motion_decoder", "res_decoder")


def decoder_deconvs(model: ScaleSpaceFlow) -> list[tuple[str, int, nn.ConvTranspose2d]]:
    """(qualified name, index within its decoder, module) of every ConvTranspose2d of the three decoders."""
    found = []
    for decoder in DECODERS:
        deconvs = [(f"{decoder}.{n}", m) for n, m in getattr(model, decoder).named_children()
                   if isinstance(m, nn.ConvTranspose2d)]
        found += [(name, index, module) for index, (name, module) in enumerate(deconvs)]
    return found


class DecoderUpdate(nn.Module):
    """Base class: ``coded`` holds the trainable tensors (initialised to zero: the base model)."""

    coded: nn.ParameterDict
    first_stage: tuple[str, ...] = ()  # coded keys that train alone first (training.first_stage_fraction)

    def weights(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Model parameter name -> the weight to use, for coded tensor values ``values``."""
        raise NotImplementedError


class LoraUpdate(DecoderUpdate):
    """LoRA (variants ``extended`` and ``repeat``, PEVC section 3.3) on every decoder deconv of rank > 0,
    and with ``config.biases`` every deconv's per-output-channel bias.

    Coded tensors per layer L, in this order: ``L.lora_A_delta`` = A - A_init, where A_init is drawn from a
    CPU generator seeded with (init_seed, layer index): the decoder regenerates it; ``L.lora_B`` (starts
    at zero, so the update starts at exactly zero); ``L.bias_delta`` (C_out,) = bias - bias_base. A layer
    of rank 0 has no LoRA tensors; without biases the list is the one payload formats 2-4 coded.
    ``first_stage``: the coded keys training moves first (the biases: few numbers, each worth its bits).
    """

    def __init__(self, model: ScaleSpaceFlow, config: DecoderLoraConfig):
        super().__init__()
        self.variant = config.variant
        self.base: dict[str, torch.Tensor] = {}
        self.base_bias: dict[str, torch.Tensor] = {}
        self.a_init: dict[str, torch.Tensor] = {}
        coded: dict[str, nn.Parameter] = {}
        for layer_index, (name, index, deconv) in enumerate(decoder_deconvs(model)):
            rank = config.ranks[min(index, len(config.ranks) - 1)]
            if rank > 0:
                coded |= self._lora_tensors(name, layer_index, deconv, rank, config.init_seed)
            if config.biases:
                self.base_bias[name] = deconv.bias.detach().clone()
                coded[_key(name, "bias_delta")] = nn.Parameter(torch.zeros_like(self.base_bias[name]))
        self.coded = nn.ParameterDict(coded)
        self.first_stage = tuple(_key(name, "bias_delta") for name in self.base_bias)

    def _lora_tensors(self, name: str, layer_index: int, deconv: nn.ConvTranspose2d, rank: int,
                      init_seed: int) -> dict[str, nn.Parameter]:
        """The zero-initialised coded tensors of one deconv's LoRA; records its base weight and A_init."""
        c_in, c_out, k, _ = deconv.weight.shape
        rank = min(rank, c_in, c_out)
        if self.variant == "extended":
            a_shape, b_shape = (rank * k, c_in * k), (c_out * k, rank * k)
        else:
            a_shape, b_shape = (rank, c_in), (c_out, rank)
        generator = torch.Generator().manual_seed(init_seed * 1_000_003 + layer_index)
        bound = 1.0 / a_shape[1] ** 0.5  # kaiming_uniform_(a=sqrt(5)), as nn.Linear and PEVC
        a_init = (torch.rand(a_shape, generator=generator, dtype=torch.float32) * 2 - 1) * bound  # CPU draw
        self.a_init[name] = a_init.to(deconv.weight.device)  # then the model's device (issue 15)
        self.base[name] = deconv.weight.detach().clone()
        device = deconv.weight.device
        return {_key(name, "lora_A_delta"): nn.Parameter(torch.zeros(a_shape, device=device)),
                _key(name, "lora_B"): nn.Parameter(torch.zeros(b_shape, device=device))}

    def delta_weight(self, name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        shape = self.base[name].shape  # (C_in, C_out, K, K) for ConvTranspose2d
        if self.variant == "extended":
            return (b @ a).reshape(shape)
        return (b @ a).t()[:, :, None, None].expand(shape)

    def weights(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, base in self.base.items():
            a = self.a_init[name] + values[_key(name, "lora_A_delta")]
            out[f"{name}.weight"] = base + self.delta_weight(name, a, values[_key(name, "lora_B")])
        for name, bias in self.base_bias.items():
            out[f"{name}.bias"] = bias + values[_key(name, "bias_delta")]
        return out


class FullDecoderUpdate(DecoderUpdate):
    """Every weight and bias of the three decoders: coded tensor ``P.delta`` = P - P_base."""

    def __init__(self, model: ScaleSpaceFlow, config: FullDecoderConfig):
        super().__init__()
        self.base = {f"{decoder}.{n}": p.detach().clone() for decoder in DECODERS
                     for n, p in getattr(model, decoder).named_parameters()}
        self.coded = nn.ParameterDict({_key(n, "delta"): nn.Parameter(torch.zeros_like(p)) for n, p in self.base.items()})

    def weights(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: base + values[_key(name, "delta")] for name, base in self.base.items()}


def _key(name: str, what: str) -> str:
    """The coded tensor ``what`` of layer ``name``: img_decoder.0 + lora_B -> img_decoder__0__lora_B."""
    return coded_key(f"{name}.{what}")


def coded_key(name: str) -> str:
    """ParameterDict keys may not contain dots: the payload's img_decoder.0.lora_B -> img_decoder__0__lora_B.
    The one mapping between payload tensor names and coded keys (payload_name is its inverse)."""
    return name.replace(".", "__")


def payload_name(key: str) -> str:
    """img_decoder__0__lora_B -> img_decoder.0.lora_B: the tensor's name in the payload."""
    return key.replace("__", ".")


def make_update(model: ScaleSpaceFlow, config) -> DecoderUpdate:
    if isinstance(config, DecoderLoraConfig):
        return LoraUpdate(model, config)
    if isinstance(config, FullDecoderConfig):
        return FullDecoderUpdate(model, config)
    raise TypeError(f"no decoder update for {type(config).__name__}")


@torch.no_grad()
def apply_update(model: ScaleSpaceFlow, update: DecoderUpdate, values: dict[str, torch.Tensor]) -> ScaleSpaceFlow:
    """A copy of ``model`` with the decoder weights that ``values`` (coded tensor values) produce."""
    adapted = copy.deepcopy(model)
    parameters = dict(adapted.named_parameters())
    for name, weight in update.weights(values).items():
        parameters[name].copy_(weight)
    return adapted
