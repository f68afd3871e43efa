"""Tap maps of the linear corrections: which flat coded number each [weight taps | bias] entry of L uses.

L is a 3x3 conv 6 -> 6 with bias on the working planes (4 luma phases, U, V); a tap map (6, LINEAR_TAPS) int64
gives for every entry of L's rows the index into the flat concatenation of an update's coded tensors (-1:
fixed zero). Shared by cross-linear, cross-linear-tied (workers/postfilter/update.py) and classified-linear
(workers/postfilter/classified.py), and read by the least-squares solves.
"""

from __future__ import annotations

import torch
from torch import nn

from workers.postfilter.network import INPUT_PLANES

LINEAR_TAPS = INPUT_PLANES * 9 + 1  # one row of L: 6 planes x 3x3 taps (unfold order) and the bias


def coded_offsets(coded: nn.ParameterDict) -> dict[str, int]:
    """Where each coded tensor starts in the flat concatenation of the coded tensors, in coding order (the
    ParameterDict's iteration order, which the payload follows)."""
    offsets, offset = {}, 0
    for name, p in coded.items():
        offsets[name] = offset
        offset += p.numel()
    return offsets


def dense_tap_map(coded: nn.ParameterDict, weight: str, bias: str) -> torch.Tensor:
    """(rows, taps + 1) tap map of a dense [weight | bias] pair: entry (c, t < taps) is weight row c's tap t
    (unfold order), the last column bias c; as flat coded numbers."""
    offsets = coded_offsets(coded)
    rows = coded[weight].shape[0]
    taps = coded[weight][0].numel()
    weights = offsets[weight] + torch.arange(rows * taps).reshape(rows, taps)
    return torch.cat([weights, offsets[bias] + torch.arange(rows)[:, None]], dim=1)


def tied_luma_tap_map(offsets: dict[str, int]) -> torch.Tensor:
    """(6, 55) tap map of cross-linear-tied (module docstring), ``offsets`` from :func:`coded_offsets`: luma
    offset (oy, ox) is luma__kernel[oy + 2, ox + 2]. Luma phase p = (py, px) reads input phase q = (qy, qx) at
    chroma offset (dy, dx) from luma offset (2 dy + qy - py, 2 dx + qx - px); those outside -2..2 are zero."""
    kernel, chroma, bias = offsets["luma__kernel"], offsets["luma__chroma"], offsets["luma__bias"]
    table = torch.full((INPUT_PLANES, LINEAR_TAPS), -1, dtype=torch.int64)
    for p in range(4):
        py, px = divmod(p, 2)
        for q in range(4):
            qy, qx = divmod(q, 2)
            for dy in range(3):
                for dx in range(3):
                    oy, ox = 2 * (dy - 1) + qy - py, 2 * (dx - 1) + qx - px
                    if -2 <= oy <= 2 and -2 <= ox <= 2:
                        table[p, 9 * q + 3 * dy + dx] = kernel + 5 * (oy + 2) + ox + 2
        table[p, 36:54] = chroma + torch.arange(18)
        table[p, 54] = bias
    for row in range(2):
        table[4 + row, :54] = offsets["chroma__weight"] + 54 * row + torch.arange(54)
        table[4 + row, 54] = offsets["chroma__bias"] + row
    return table


WIDE_KERNEL = 5  # working-plane taps per side of the wide tied form (luma offsets -4..4 for every phase)
WIDE_TAPS = INPUT_PLANES * WIDE_KERNEL**2 + 1  # 151: one row of a 5x5 L (6 planes x 25 taps, unfold order) and the bias
WIDE_SHAPES = {"luma__kernel": (9, 9), "luma__chroma": (2, 3, 3), "luma__bias": (1,), "chroma__luma": (2, 4, 3, 3),
               "chroma__own": (2, 5, 5), "chroma__other": (2, 3, 3), "chroma__bias": (2,)}  # 242 numbers, coding order


def wide_tied_tap_map(offsets: dict[str, int]) -> torch.Tensor:
    """(6, WIDE_TAPS) tap map of the wide tied form, a 5x5 L on the working planes (column ch * 25 + 5 dy + dx,
    offsets dy - 2, dx - 2; the bias last), ``offsets`` from :func:`coded_offsets` of WIDE_SHAPES:

        luma phase rows   one 9x9 kernel on the full-resolution luma (offset (oy, ox) in -4..4 is
                          luma__kernel[oy + 4, ox + 4]; phase p reads input phase q at chroma offset (dy, dx) from
                          luma offset (2 dy + qy - py, 2 dx + qx - px)), the inner 3x3 of U and V, one bias
        chroma rows       the inner 3x3 of the 4 luma phases, 5x5 of the own chroma plane, inner 3x3 of the other

    Why: on foreman CRF 32 and carphone CRF 27 (x264) a 5x5 L's least-squares gain (no bits) was 1.5-1.9 points of
    rate above the 3x3 one's, most of it from luma rows reaching further and the chroma rows' own plane; the tied
    9x9 luma kernel takes the first for 81 numbers instead of 4 x 100."""
    k, area = WIDE_KERNEL, WIDE_KERNEL**2
    table = torch.full((INPUT_PLANES, WIDE_TAPS), -1, dtype=torch.int64)
    inner = [(dy, dx) for dy in range(1, 4) for dx in range(1, 4)]
    for p in range(4):
        py, px = divmod(p, 2)
        for q in range(4):
            qy, qx = divmod(q, 2)
            for dy in range(k):
                for dx in range(k):
                    oy, ox = 2 * (dy - 2) + qy - py, 2 * (dx - 2) + qx - px
                    if -4 <= oy <= 4 and -4 <= ox <= 4:
                        table[p, area * q + k * dy + dx] = offsets["luma__kernel"] + 9 * (oy + 4) + ox + 4
        for c in range(2):
            for i, (dy, dx) in enumerate(inner):
                table[p, area * (4 + c) + k * dy + dx] = offsets["luma__chroma"] + 9 * c + i
        table[p, -1] = offsets["luma__bias"]
    for r in range(2):
        row = 4 + r
        for q in range(4):
            for i, (dy, dx) in enumerate(inner):
                table[row, area * q + k * dy + dx] = offsets["chroma__luma"] + 36 * r + 9 * q + i
        table[row, area * row: area * (row + 1)] = offsets["chroma__own"] + area * r + torch.arange(area)
        for i, (dy, dx) in enumerate(inner):
            table[row, area * (5 - r) + k * dy + dx] = offsets["chroma__other"] + 9 * r + i
        table[row, -1] = offsets["chroma__bias"] + r
    return table
