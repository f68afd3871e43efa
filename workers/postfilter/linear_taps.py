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
