"""classified-linear: ALF's classified linear filters on top of the post-filter's output.

    decoded Y --activity_classes--> class (0..15) per chroma position --class_groups(boundaries)--> group g
    x = cat(pixel_unshuffle(Y), U, V) - 0.5 --K convs 3x3 6->6 (one per group)--> (K, 6, H/2, W/2)
    out = base(Y, U, V) + the correction of each position's own group

The update codes K cross-linear filters (each full, 330 numbers, or tied, 154: workers/postfilter/update.py),
group after group in coding order; K and the class boundaries are in the payload's structure fields
(UpdateStructure.rank and .init_seed), so the decoder rebuilds the class map from the decoded luma it holds.
classified-linear-on-base (wire id 7) is the same with x = the base output rounded to 8 bits (what the decoder
would show without the update) and out = base(Y, U, V) + the correction (ALF's place, after the other filters),
and a third form besides full and tied: wide (layout bit 30), a 5x5 L on the working planes whose luma rows are
one 9x9 kernel on the full-resolution luma and whose chroma rows read 5x5 of their own plane (242 numbers per
group, workers/postfilter/linear_taps.py WIDE_SHAPES). Measured: benchmarks/RESULTS.md, section luma-classified.
Tried and dropped (the solve's predicted RD cost change in % of the stream's rate, x264, base hi-step13500,
/tmp-only scripts): on foreman CRF 32, against -4.74% for the 16 activity classes merged along activity: ALF's
5 directions x 16 or x 5 activities with a greedy merge over any pair (-4.21%, -4.22%, class map bytes counted),
3 directions x 8 activities (-4.27%), a separate class set for intra frames (-4.70%), any-pair merge of the 16
activities (-4.28%), a point-symmetric 5x5 luma kernel (-4.41%; carphone CRF 27: -2.51% against -2.58%), classes
from the generic output (no change). Foreman CRF 42 chose one group in every variant (-1.66%).
Why classes: one linear filter averages what flat areas, edges and texture need; VVC's ALF gets most of its
gain by giving each activity (and direction) class its own filter, with adjacent classes merged into groups
when a separate filter does not pay for its bits.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from workers.adapt.decoder_updates import DecoderUpdate
from workers.postfilter.classes import activity_classes, class_groups
from workers.postfilter.network import INPUT_PLANES
from workers.postfilter.linear_taps import WIDE_SHAPES, coded_offsets, dense_tap_map, tied_luma_tap_map, wide_tied_tap_map

_TIED_SHAPES = {"luma__kernel": (5, 5), "luma__chroma": (2, 3, 3), "luma__bias": (1,),
                "chroma__weight": (2, INPUT_PLANES, 3, 3), "chroma__bias": (2,)}
_FULL_SHAPES = {"linear__weight": (INPUT_PLANES, INPUT_PLANES, 3, 3), "linear__bias": (INPUT_PLANES,)}


def group_shapes(tied: bool, wide: bool = False) -> dict[str, tuple[int, ...]]:
    """Coded tensors of one group's filter, in coding order (the cross-linear, cross-linear-tied or wide tied ones)."""
    if wide:
        return WIDE_SHAPES
    return _TIED_SHAPES if tied else _FULL_SHAPES


def group_tap_map(tied: bool, wide: bool = False) -> torch.Tensor:
    """(6, 55) tap map (wide: (6, 151), a 5x5 L) of one group's filter into that group's own flat coded numbers
    (offsets from 0)."""
    coded = nn.ParameterDict({name: nn.Parameter(torch.zeros(shape)) for name, shape in group_shapes(tied, wide).items()})
    if wide:
        return wide_tied_tap_map(coded_offsets(coded))
    if tied:
        return tied_luma_tap_map(coded_offsets(coded))
    return dense_tap_map(coded, "linear__weight", "linear__bias")


class ClassifiedLinearUpdate(DecoderUpdate):
    """``structure``: a classified-linear workers.postfilter.update.UpdateStructure. K groups' filters: coded tensors g{j}__<name> of :func:`group_shapes`, group 0 first. ``weights`` gives
    the stacked weight (K, 6, 6, 3, 3) and bias (K, 6) (exact copies of the coded numbers, zero where unmapped)."""

    classified = True

    def __init__(self, structure):
        super().__init__()
        if not structure.classified:
            raise ValueError(f"not a classified structure: {structure}")
        self.structure = structure
        shapes = group_shapes(structure.tied, structure.wide)
        self.coded = nn.ParameterDict({f"g{j}__{name}": nn.Parameter(torch.zeros(shape))
                                       for j in range(structure.rank) for name, shape in shapes.items()})
        self.table = group_tap_map(structure.tied, structure.wide)  # (6, 55) or (6, 151) into one group's numbers
        self.kernel = 5 if structure.wide else 3
        self.per_group = sum(torch.Size(shape).numel() for shape in shapes.values())

    def tap_map(self) -> torch.Tensor:
        """(K, 6, 55) (wide: (K, 6, 151)): group j's tap map into the update's flat coded numbers."""
        return torch.stack([torch.where(self.table < 0, -1, self.table + j * self.per_group)
                            for j in range(self.structure.rank)])

    def weights(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        flat = torch.cat([values[name].reshape(-1) for name in self.coded] + [torch.zeros(1)])
        table = self.tap_map()
        full = flat[torch.where(table < 0, flat.numel() - 1, table)]  # (K, 6, 55) or (K, 6, 151)
        k, side = self.structure.rank, self.kernel
        return {"weight": full[..., :-1].reshape(k, INPUT_PLANES, INPUT_PLANES, side, side).contiguous(),
                "bias": full[..., -1].contiguous()}


def on_8_bits(plane: torch.Tensor) -> torch.Tensor:
    """A float plane in [0, 1] as the 8-bit frame a decoder shows (network.tensors_to_planes' rounding), / 255:
    exactly the generic output planes the encoder solves on."""
    return plane.mul(255.0).clamp(0, 255).round().div(255.0)


class ClassifiedLinearFilter(nn.Module):
    """base(y, u, v) + the correction L_g(x - 0.5) of each position's group g (module docstring): the same
    forward signature as PostFilter. ``weight`` (K, 6, 6, 3, 3) (the wide form: (K, 6, 6, 5, 5)), ``bias`` (K, 6), ``boundaries`` as in
    workers.postfilter.classes.class_groups. The K convs run as one conv with 6 K outputs (K <= 8).
    ``on_base`` (classified-linear-on-base): x is the base output rounded to 8 bits (:func:`on_8_bits`, the frame
    the encoder solved on); the correction is added to the unrounded output, as classified-linear's (rounding twice
    lost ~0.02 dB, about the 1/12 code value^2 of a second rounding, on foreman x264 CRF 32-42); the classes still
    come from the decoded luma."""

    def __init__(self, base: nn.Module, weight: torch.Tensor, bias: torch.Tensor, boundaries: tuple[int, ...],
                 on_base: bool = False):
        super().__init__()
        self.base = base
        self.on_base = on_base
        self.groups, side = weight.shape[0], weight.shape[-1]
        self.linear = nn.Conv2d(INPUT_PLANES, INPUT_PLANES * self.groups, side, padding=side // 2)
        with torch.no_grad():
            self.linear.weight.copy_(weight.reshape(-1, INPUT_PLANES, side, side))
            self.linear.bias.copy_(bias.reshape(-1))
        self.register_buffer("group_of_class", class_groups(boundaries))
        self.requires_grad_(False)

    def forward(self, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, crf, codec: str):
        yb, ub, vb = self.base(y, u, v, crf, codec)
        samples = torch.round(y[:, 0] * 255.0).to(torch.int32)  # y = uint8 / 255 exactly: the decoded samples
        groups = self.group_of_class[activity_classes(samples)]  # (B, H/2, W/2)
        if self.on_base:  # reads the 8-bit generic frame; adds to the unrounded output (one rounding, not two)
            x = torch.cat([F.pixel_unshuffle(on_8_bits(yb), 2), on_8_bits(ub), on_8_bits(vb)], dim=1) - 0.5
        else:
            x = torch.cat([F.pixel_unshuffle(y, 2), u, v], dim=1) - 0.5
        every = self.linear(x).unflatten(1, (self.groups, INPUT_PLANES))  # (B, K, 6, H/2, W/2)
        index = groups[:, None, None].expand(-1, 1, INPUT_PLANES, -1, -1)
        correction = torch.gather(every, 1, index)[:, 0]
        return yb + F.pixel_shuffle(correction[:, :4], 2), ub + correction[:, 4:5], vb + correction[:, 5:6]

