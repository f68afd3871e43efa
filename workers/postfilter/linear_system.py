"""The least-squares machinery the linear post-filter updates share (cross-linear, its tied form, classified-linear).

A linear correction's RD cost is a quadratic in its coded numbers q: lambda * change of weighted MSE =
q^T A q - 2 q^T b (:class:`LinearSystem`), built from the normal equations G = sum p p^T, H = sum p r^T of
3x3 patches p of the 6 working planes and residuals r (workers/postfilter/adapt.py ``linear_statistics``,
workers/postfilter/classified_solve.py per activity class). Ridge solutions per tap mask, rounded on the
prior's grid by the callers, are what the RD searches compare.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]
PLANE_WEIGHTS = (6.0 / 8.0, 1.0 / 8.0, 1.0 / 8.0)  # PSNR-YUV's (6Y + U + V) / 8


def _tensor(plane: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(plane)).float().div(255.0)[None, None]


def _unshuffled(planes: Planes) -> torch.Tensor:
    """(1, 6, H/2, W/2): the filter's working representation (4 luma phases, U, V) in [0, 1]."""
    y, u, v = (_tensor(p) for p in planes)
    return torch.cat([F.pixel_unshuffle(y, 2), u, v], dim=1)


def _channel_weights(weights: Sequence[float] = PLANE_WEIGHTS) -> torch.Tensor:
    """Distortion weight of each of the 6 working channels: Y's weight shared by its 4 phases, then U and V."""
    return torch.tensor([weights[0] / 4] * 4 + [weights[1], weights[2]], dtype=torch.float64)


def tap_masks(parameterisation: str, dim: int) -> dict[str, torch.Tensor]:
    """Which taps (columns of the (6, D) [weight | bias] rows of L or of the tail) each output channel may use,
    by name. The cross-linear filters also try sparser patterns, coded as exact zeros (a zero costs a fraction
    of a bit under the spike), so fewer coefficients need no other payload: luma phases from luma taps only
    (36 + bias), and in addition each chroma plane from luma and its own taps (45 + bias)."""
    every = torch.ones(6, dim, dtype=torch.bool)
    if not parameterisation.startswith("cross-linear"):
        return {"all": every}
    area = (dim - 1) // 6  # taps per plane: 9 (3x3 L) or 25 (the wide 5x5 L)
    luma_only = every.clone()
    luma_only[:4, 4 * area: 6 * area] = False
    own_chroma = luma_only.clone()
    own_chroma[4, 5 * area: 6 * area] = False
    own_chroma[5, 4 * area: 5 * area] = False
    return {"all": every, "luma-from-luma": luma_only, "luma-from-luma,chroma-from-own": own_chroma}


@dataclass
class LinearSystem:
    """The RD cost's distortion term as a quadratic in the flat coded numbers q of one structure (its tap map):
    lambda * change of wMSE = q^T A q - 2 q^T b, A = sum_c s_c M_c^T G M_c, b = sum_c s_c M_c^T H_c, where M_c is
    the one-hot (D, n) matrix of row c's tap map and s_c = lambda w_c 255^2 / positions (w_c: :func:`_channel_weights`).
    ``groups``: the coded numbers of each set of rows that share numbers (each row alone, the tied luma rows
    together); they are solved, and kept or dropped, together. float64."""

    structure: str
    table: torch.Tensor  # (6, D) int64 tap map
    a: torch.Tensor  # (n, n)
    b: torch.Tensor  # (n,)
    groups: list[torch.Tensor]  # int64 indices into q

    @classmethod
    def build(cls, structure: str, table: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor,
              scales: torch.Tensor) -> "LinearSystem":
        count = int(table.max()) + 1
        a, b = torch.zeros(count, count, dtype=torch.float64), torch.zeros(count, dtype=torch.float64)
        for c, s in enumerate(scales):
            used = (table[c] >= 0).nonzero().flatten()
            m = torch.zeros(len(table[c]), count, dtype=torch.float64)
            m[used, table[c, used]] = 1.0
            a += s * (m.t() @ gram @ m)
            b += s * (m.t() @ cross[:, c])
        return cls(structure, table, a, b, _row_groups(table))

    def allowed(self, mask: torch.Tensor) -> torch.Tensor:
        """(n,) bool: the coded numbers every one of whose taps the (6, D) ``mask`` allows."""
        ok = torch.ones(self.a.shape[0], dtype=torch.bool)
        ok[self.table[(self.table >= 0) & ~mask]] = False
        return ok

    def distortion(self, q: torch.Tensor) -> float:
        return float(q @ self.a @ q - 2 * q @ self.b)

    @functools.cached_property
    def blocks(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(numbers, A block, b block) of every group, built once: the RD searches score each group alone for
        every solution and prior (indexing A anew each time took a third of classified-linear's search)."""
        return [(rows, self.a[rows][:, rows], self.b[rows]) for rows in self.groups]


def _row_groups(table: torch.Tensor) -> list[torch.Tensor]:
    """Coded-number sets of the rows of ``table``, rows that share a number merged (in row order)."""
    groups: list[set] = []
    for row in table:
        numbers = set(row[row >= 0].tolist())
        for group in [g for g in groups if g & numbers]:
            numbers |= group
            groups.remove(group)
        groups.append(numbers)
    return [torch.tensor(sorted(g), dtype=torch.int64) for g in groups]


def ridge_solution(system: LinearSystem, rho: float, allowed: torch.Tensor) -> torch.Tensor:
    """(n,) float64: per group, (A_g + mu_g I)^-1 b_g on its allowed numbers (zero elsewhere), mu_g = rho
    trace(A_g) / |g|: the ridge stands in for the prior's rate."""
    q = torch.zeros(system.a.shape[0], dtype=torch.float64)
    for group in system.groups:
        taps = group[allowed[group]]
        if len(taps) == 0:
            continue
        a = system.a[taps][:, taps]
        a = a + rho * float(torch.trace(a)) / len(taps) * torch.eye(len(taps), dtype=torch.float64)
        q[taps] = torch.linalg.solve(a, system.b[taps])
    return q


def _split_coded(update, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Flat coded numbers (coding order) -> the update's coded tensors."""
    out, offset = {}, 0
    for name, p in update.coded.items():
        out[name] = flat[offset: offset + p.numel()].reshape(p.shape).contiguous()
        offset += p.numel()
    return out
