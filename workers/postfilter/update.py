"""Per-video updates of a base post-filter: three parameterisations of "what changes" and how much it costs.

An update is a set of *coded tensors* (what the payload carries, quantized on the prior's grid, all zero
at the start) and a function ``weights(values)`` from those tensors to the filter's parameters. It follows
the protocol of the neural codec's decoder updates (workers/adapt/decoder_updates.py: ``coded``,
``weights``, ``apply_update``), so training evaluates ``functional_call(base, weights(quantize_ste(coded)))``
and the decoder applies ``weights`` to the dequantized payload: it runs exactly the weights that were
evaluated. With every coded tensor zero, ``weights`` returns the base filter's parameters exactly.

    scale-bias  (NNPF over-fitting, Nokia's JVET proposals): per output channel of every conv a multiplier
                and a bias, W' = (1 + s) W, b' = (1 + s) b + d.  2 x (7 x 32 + 6) = 460 numbers by default.
    lora        per conv W' = W + reshape(B A), A (r, C_in k k) starts from a generator seeded with
                (init_seed, layer), B (C_out, r) from zero; coded: B and A - A_init (the decoder rebuilds A_init).
    last-layer  the tail conv's weight and bias deltas (6 x (32 x 9 + 1) = 1734 numbers), solved in closed
                form by least squares on this video's features (workers/postfilter/adapt.py), then quantized.
    cross-linear a linear filter added to the base filter's output: out = base(x) + L(x - 0.5), L a 3x3 conv
                6 -> 6 with bias on the decoded planes at chroma resolution (4 luma phases, U, V), so luma
                guides chroma and vice versa; 6 x (54 + 1) = 330 numbers solved in closed form by least
                squares against original - base output (it composes with any base; zero L = the base).
    classified-linear  K of those L (full or tied form), one per group of ALF-style activity classes of 4x4 luma
                blocks (workers/postfilter/classes.py, workers/postfilter/classified.py): each position gets the
                filter of its block's group; the groups' class boundaries travel in the header.
    classified-linear-on-base  the same K filters reading the generic filter's output (rounded to 8 bits, as a
                decoder without the update shows it) instead of the decoded planes: out = b + L_group(g - 0.5) with
                b = base(Y, U, V) and g = b rounded to 8 bits (ALF's place in the loop, after the other filters);
                each group's filter full, tied or wide (layout bit 30: a 5x5 L, its luma rows one 9x9 luma kernel,
                its chroma rows 5x5 of their own plane; workers/postfilter/linear_taps.py WIDE_SHAPES).
    cross-linear-tied  the same L with its 4 luma rows tied: they are one 5x5 kernel on the full-resolution
                luma (each phase row of L holds every offset -2..2 exactly once), one 3x3 filter per chroma
                plane and one bias shared by the 4 phases; the chroma rows stay free. 25 + 18 + 1 + 2 x 55
                = 154 numbers instead of 330: the 4 phase rows of a solved cross-linear L are near-identical
                shifts of one kernel, so tying them keeps most of the gain at half the bytes.

Both linear parameterisations expose ``tap_map()``: (6, 55) int64, for every [weight taps in unfold order |
bias] entry of L the index into the flat concatenation of the coded tensors (-1: fixed zero); the
least-squares solve (workers/postfilter/adapt.py) works on that flat vector.

The payload identifies the parameterisation by a number assigned here by hand (never by dict order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from workers.adapt.decoder_updates import DecoderUpdate, apply_update
from workers.postfilter.linear_taps import LINEAR_TAPS, coded_offsets, dense_tap_map, tied_luma_tap_map  # noqa: F401
from workers.postfilter.network import INPUT_PLANES, PostFilter

Parameterisation = Literal["scale-bias", "lora", "last-layer", "cross-linear", "cross-linear-tied",
                           "classified-linear", "classified-linear-on-base"]
# payload ids, by hand: the next free number for a new one, never reused (schemas.side_info.UpdateMethod agrees)
PARAMETERISATION_IDS: dict[str, int] = {"scale-bias": 1, "lora": 2, "last-layer": 3, "cross-linear": 4,
                                        "cross-linear-tied": 5, "classified-linear": 6, "classified-linear-on-base": 7}
# the classified parameterisations: K linear filters, one per group of luma activity classes (same layout fields)
CLASSIFIED = ("classified-linear", "classified-linear-on-base")
ON_BASE = "classified-linear-on-base"  # the classified filters that read the generic output (and may be wide)
MAX_GROUPS = 8  # classified-linear: at most 8 filters (7 boundaries of 4 bits fit init_seed's 28 low bits)
_TIED_BIT = 1 << 31
_WIDE_BIT = 1 << 30  # classified-linear-on-base only, with the tied bit: the wide tied form (linear_taps.WIDE_SHAPES)
_BOUNDARY_BITS = 4


@dataclass(frozen=True)
class UpdateStructure:
    """What fixes the update's tensors (sent in the payload): the parameterisation, LoRA's rank and the seed
    of its A initialisation (both 0 and unused for the other parameterisations). classified-linear reuses the
    two fields (no extra header bytes): ``rank`` = number of filter groups K (1..MAX_GROUPS), ``init_seed`` =
    the layout: bit 31 set if every group uses the tied form, bit 30 (classified-linear-on-base only, with bit
    31) if every group uses the wide tied form (workers/postfilter/linear_taps.py WIDE_SHAPES), bits 4j..4j+3 the first activity class of group
    j + 1 (j < K - 1, strictly increasing in 1..15), every other bit zero. Use :func:`classified_structure`."""

    parameterisation: Parameterisation
    rank: int = 0
    init_seed: int = 0

    def __post_init__(self):
        if self.parameterisation not in PARAMETERISATION_IDS:
            raise ValueError(f"unknown post-filter update {self.parameterisation!r}")
        if self.parameterisation == "lora" and self.rank < 1:
            raise ValueError("a LoRA update needs rank >= 1")
        if not (0 <= self.rank < 256 and 0 <= self.init_seed < 2**32):
            raise ValueError("rank must fit a byte and init_seed 32 bits")
        if self.parameterisation in CLASSIFIED:
            _check_layout(self.rank, self.init_seed, self.parameterisation)

    @property
    def classified(self) -> bool:
        """One of the classified parameterisations (K filters, one per group of activity classes)."""
        return self.parameterisation in CLASSIFIED

    @property
    def on_base(self) -> bool:
        """classified-linear-on-base: the filters read the generic filter's 8-bit output, not the decoded planes."""
        return self.parameterisation == ON_BASE

    @property
    def boundaries(self) -> tuple[int, ...]:
        """classified-linear: the first activity class of groups 1..K-1."""
        mask = (1 << _BOUNDARY_BITS) - 1
        return tuple((self.init_seed >> (_BOUNDARY_BITS * j)) & mask for j in range(self.rank - 1))

    @property
    def tied(self) -> bool:
        """classified-linear: every group's filter in the tied form (cross-linear-tied) instead of the full one."""
        return bool(self.init_seed & _TIED_BIT)

    @property
    def wide(self) -> bool:
        """classified-linear-on-base: every group's filter in the wide tied form (5x5 on the working planes)."""
        return self.on_base and bool(self.init_seed & _WIDE_BIT)


def _check_layout(groups: int, layout: int, parameterisation: str = "classified-linear") -> None:
    """ValueError unless (groups, layout) is a valid layout of ``parameterisation`` (UpdateStructure's docstring;
    classified-linear-on-base may also set the wide bit 30, with the tied bit)."""
    from workers.postfilter.classes import ACTIVITY_CLASSES

    if not 1 <= groups <= MAX_GROUPS:
        raise ValueError(f"classified-linear needs 1..{MAX_GROUPS} groups, got {groups}")
    mask = (1 << _BOUNDARY_BITS) - 1
    boundaries = [(layout >> (_BOUNDARY_BITS * j)) & mask for j in range(groups - 1)]
    flags = _TIED_BIT
    if parameterisation == ON_BASE:
        flags |= _WIDE_BIT
        if layout & _WIDE_BIT and not layout & _TIED_BIT:
            raise ValueError(f"classified layout {layout:#010x} sets the wide form without the tied one")
    if (layout & ~flags) >> (_BOUNDARY_BITS * (groups - 1)):
        raise ValueError(f"classified-linear layout {layout:#010x} has bits set beyond its {groups - 1} boundaries")
    previous = 0
    for boundary in boundaries:
        if not previous < boundary < ACTIVITY_CLASSES:
            raise ValueError(f"classified-linear class boundaries {boundaries} are not increasing in 1..{ACTIVITY_CLASSES - 1}")
        previous = boundary


def classified_structure(boundaries: tuple[int, ...], tied: bool, parameterisation: str = "classified-linear",
                         wide: bool = False) -> UpdateStructure:
    """The classified structure (classified-linear or classified-linear-on-base) of K = len(boundaries) + 1
    groups (validated); ``wide`` (on-base only) implies the tied form."""
    layout = ((_TIED_BIT if tied or wide else 0) | (_WIDE_BIT if wide else 0)
              | sum(b << (_BOUNDARY_BITS * j) for j, b in enumerate(boundaries)))
    return UpdateStructure(parameterisation, len(boundaries) + 1, layout)


def filter_convs(model: PostFilter) -> list[tuple[str, nn.Conv2d]]:
    """(parameter prefix, conv) of every convolution of the filter, input side first."""
    return [("head", model.head), *[(f"body.{i}", conv) for i, conv in enumerate(model.body)], ("tail", model.tail)]


def _key(prefix: str, what: str) -> str:
    """ParameterDict keys may not contain dots: body.3 + scale -> body__3__scale."""
    return f"{prefix}.{what}".replace(".", "__")


class ScaleBiasUpdate(DecoderUpdate):
    """Per-output-channel multiplier (coded as s, the multiplier minus one) and bias delta on every conv."""

    def __init__(self, model: PostFilter):
        super().__init__()
        self.base = {prefix: (conv.weight.detach().clone(), conv.bias.detach().clone()) for prefix, conv in filter_convs(model)}
        coded = {}
        for prefix, (weight, _) in self.base.items():
            coded[_key(prefix, "scale")] = nn.Parameter(torch.zeros(weight.shape[0]))
            coded[_key(prefix, "shift")] = nn.Parameter(torch.zeros(weight.shape[0]))
        self.coded = nn.ParameterDict(coded)

    def weights(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, (weight, bias) in self.base.items():
            gain = 1.0 + values[_key(prefix, "scale")]
            out[f"{prefix}.weight"] = weight * gain[:, None, None, None]
            out[f"{prefix}.bias"] = bias * gain + values[_key(prefix, "shift")]
        return out


class LoraFilterUpdate(DecoderUpdate):
    """LoRA on every conv: dW = reshape(B A) with A (r, C_in k k), B (C_out, r); rank min(r, C_in k k, C_out)."""

    def __init__(self, model: PostFilter, rank: int, init_seed: int):
        super().__init__()
        self.base, self.a_init = {}, {}
        coded = {}
        for layer, (prefix, conv) in enumerate(filter_convs(model)):
            c_out, c_in, kh, kw = conv.weight.shape
            r = min(rank, c_in * kh * kw, c_out)
            generator = torch.Generator().manual_seed(init_seed * 1_000_003 + layer)
            bound = 1.0 / (c_in * kh * kw) ** 0.5  # kaiming_uniform_(a=sqrt(5)), as nn.Linear
            self.a_init[prefix] = (torch.rand((r, c_in * kh * kw), generator=generator) * 2 - 1) * bound
            self.base[prefix] = conv.weight.detach().clone()
            coded[_key(prefix, "lora_A_delta")] = nn.Parameter(torch.zeros(r, c_in * kh * kw))
            coded[_key(prefix, "lora_B")] = nn.Parameter(torch.zeros(c_out, r))
        self.coded = nn.ParameterDict(coded)

    def weights(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for prefix, weight in self.base.items():
            a = self.a_init[prefix] + values[_key(prefix, "lora_A_delta")]
            out[f"{prefix}.weight"] = weight + (values[_key(prefix, "lora_B")] @ a).reshape(weight.shape)
        return out


class LastLayerUpdate(DecoderUpdate):
    """Deltas of the tail conv's weight (6, C, 3, 3) and bias (6,): the layer the least-squares solve sets."""

    def __init__(self, model: PostFilter):
        super().__init__()
        self.base = {"tail.weight": model.tail.weight.detach().clone(), "tail.bias": model.tail.bias.detach().clone()}
        self.coded = nn.ParameterDict({_key(name, "delta"): nn.Parameter(torch.zeros_like(p)) for name, p in self.base.items()})

    def weights(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: base + values[_key(name, "delta")] for name, base in self.base.items()}

    def tap_map(self) -> torch.Tensor:
        return dense_tap_map(self.coded, "tail__weight__delta", "tail__bias__delta")


class CrossLinearUpdate(DecoderUpdate):
    """The cross-component linear filter L added to the base output: weight (6, 6, 3, 3) and bias (6,), both
    coded directly (they start at zero; there are no base parameters to change)."""

    def __init__(self, model: PostFilter):
        super().__init__()
        self.coded = nn.ParameterDict({"linear__weight": nn.Parameter(torch.zeros(INPUT_PLANES, INPUT_PLANES, 3, 3)),
                                       "linear__bias": nn.Parameter(torch.zeros(INPUT_PLANES))})

    def weights(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"weight": values["linear__weight"], "bias": values["linear__bias"]}

    def tap_map(self) -> torch.Tensor:
        return dense_tap_map(self.coded, "linear__weight", "linear__bias")


class CrossLinearTiedUpdate(DecoderUpdate):
    """cross-linear with the 4 luma rows tied (module docstring): coded luma__kernel (5, 5), luma__chroma
    (2, 3, 3), luma__bias (1,), chroma__weight (2, 6, 3, 3), chroma__bias (2,), in this (coding) order."""

    def __init__(self, model: PostFilter):
        super().__init__()
        shapes = {"luma__kernel": (5, 5), "luma__chroma": (2, 3, 3), "luma__bias": (1,),
                  "chroma__weight": (2, INPUT_PLANES, 3, 3), "chroma__bias": (2,)}
        self.coded = nn.ParameterDict({name: nn.Parameter(torch.zeros(shape)) for name, shape in shapes.items()})
        self.table = tied_luma_tap_map(coded_offsets(self.coded))

    def tap_map(self) -> torch.Tensor:
        return self.table

    def weights(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """L's weight (6, 6, 3, 3) and bias (6,): copies of the coded numbers (exact), zero where unmapped."""
        flat = torch.cat([values[name].reshape(-1) for name in self.coded] + [torch.zeros(1)])
        full = flat[torch.where(self.table < 0, flat.numel() - 1, self.table)]
        return {"weight": full[:, :-1].reshape(INPUT_PLANES, INPUT_PLANES, 3, 3).contiguous(),
                "bias": full[:, -1].contiguous()}


class CrossLinearFilter(nn.Module):
    """base(y, u, v) + L(x - 0.5) with x = cat(pixel_unshuffle(y, 2), u, v): the same forward signature as
    PostFilter, so ``filter_planes`` runs it unchanged. The centring makes the bias small (cheap to code)."""

    def __init__(self, base: nn.Module, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.base = base
        self.linear = nn.Conv2d(INPUT_PLANES, INPUT_PLANES, 3, padding=1)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        self.requires_grad_(False)

    def forward(self, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, crf, codec: str):
        yb, ub, vb = self.base(y, u, v, crf, codec)
        correction = self.linear(torch.cat([F.pixel_unshuffle(y, 2), u, v], dim=1) - 0.5)
        return yb + F.pixel_shuffle(correction[:, :4], 2), ub + correction[:, 4:5], vb + correction[:, 5:6]


def make_filter_update(model: PostFilter, structure: UpdateStructure) -> DecoderUpdate:
    """The zero update of ``structure`` for the base filter ``model`` (its tensors in coding order)."""
    if structure.classified:
        from workers.postfilter.classified import ClassifiedLinearUpdate

        return ClassifiedLinearUpdate(structure)
    if structure.parameterisation == "cross-linear":
        return CrossLinearUpdate(model)
    if structure.parameterisation == "cross-linear-tied":
        return CrossLinearTiedUpdate(model)
    if structure.parameterisation == "scale-bias":
        return ScaleBiasUpdate(model)
    if structure.parameterisation == "lora":
        return LoraFilterUpdate(model, structure.rank, structure.init_seed)
    return LastLayerUpdate(model)


def coded_shapes(update: DecoderUpdate) -> dict[str, tuple[int, ...]]:
    """Coded tensor name -> shape, in coding order (what the decoder rebuilds instead of receiving)."""
    return {name: tuple(value.shape) for name, value in update.coded.items()}


def adapted_filter(base: PostFilter, update: DecoderUpdate, values: dict[str, torch.Tensor]) -> PostFilter:
    """A copy of ``base`` with the parameters ``values`` (coded tensor values, e.g. index * grid) produce;
    for cross-linear, ``base`` followed by the linear filter (same forward signature); for classified-linear,
    ``base`` followed by one linear filter per group of block classes."""
    if getattr(update, "classified", False):
        from workers.postfilter.classified import ClassifiedLinearFilter

        weights = update.weights(values)
        return ClassifiedLinearFilter(base, weights["weight"], weights["bias"], update.structure.boundaries,
                                      on_base=update.structure.on_base).eval()
    if isinstance(update, (CrossLinearUpdate, CrossLinearTiedUpdate)):
        weights = update.weights(values)
        return CrossLinearFilter(base, weights["weight"], weights["bias"]).eval()
    adapted = apply_update(base, update, values)  # typed for the neural codec; works on any nn.Module
    adapted.eval()
    return adapted
