"""Solving a classified-linear update for one unit: per-class normal equations, class merging, RD search.

    every frame: patches p (55 per chroma position), residual r = original - generic output (6), class c
        -> G_c = sum p p^T, H_c = sum p r^T per activity class (one sort + one matmul per class and frame)
    merge_path: adjacent classes merged greedily (ALF's way) by the least loss of least-squares gain, giving
        one partition of the 16 classes into K contiguous groups for every K
    for each K in the search, full and tied form, each prior: every group solved by ridge least squares on
        its own G_g = sum of its classes' G_c, rounded on the grid, rows that do not pay alone zeroed, the best
        (mask, ridge) per group kept; the predicted RD cost (distortion change + ideal bits + fixed bytes)
        decides the whole update

The search is a pruned form of cross-linear's (workers/postfilter/adapt.py ``solve_least_squares``, 1,152
settings per unit): groups are independent given the prior, so masks and ridges are chosen per group (their
count adds, it does not multiply), and the priors, ridges and masks kept are those that won cross-linear's
search on eval-dev units (ClassifiedSearch's field descriptions give the measurement).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from schemas.adapt import WeightPrior
from workers.adapt.prior import coding_probabilities
from workers.adapt.state import load_state, save_state
from workers.postfilter.classes import ACTIVITY_CLASSES, activity_classes
from workers.postfilter.classified import group_tap_map
from workers.postfilter.linear_system import LinearSystem, _channel_weights, _unshuffled, ridge_solution, tap_masks
from workers.postfilter.update import MAX_GROUPS, ON_BASE, classified_structure, make_filter_update
from workers.postfilter.update_payload import FIXED_BYTES, transmitted_prior


def narrow_columns() -> torch.Tensor:
    """(55,) int64: where each column of a 3x3 L's patch (plane * 9 + 3 dy + dx, then the bias) sits in a 5x5 L's
    (plane * 25 + 5 (dy + 1) + dx + 1, then the bias): the inner taps of the wide patch are the narrow patch
    exactly (both zero-padded), so one set of wide statistics serves both forms."""
    taps = [plane * 25 + 5 * (dy + 1) + dx + 1 for plane in range(6) for dy in range(3) for dx in range(3)]
    return torch.tensor(taps + [150], dtype=torch.int64)


def narrow(gram: torch.Tensor, cross: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, H) of the 3x3 L from those of the 5x5 one (:func:`narrow_columns`); unchanged if already narrow."""
    if gram.shape[-1] == 55:
        return gram, cross
    columns = narrow_columns()
    return gram[:, columns][:, :, columns], cross[:, columns]


def wide_search(unit) -> bool:
    """Whether the search tries the wide tied form (classified-linear-on-base with ClassifiedSearch.wide)."""
    return unit.config.parameterisation == ON_BASE and unit.config.classified.wide


@torch.no_grad()
def class_statistics(unit, frames: Sequence[int], side: int = 3) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per activity class c the normal equations of a cross-linear filter (adapt.linear_statistics'): G (16, D,
    D) and H (16, D, 6), D = 6 side^2 + 1 (55, or 151 for the wide form's 5x5 L), float64, over the positions of
    class c in ``frames``; and the number of positions of
    all classes (the distortion is a mean over all of them). Classes from the decoded luma, as the decoder's; the
    patches from the decoded planes (classified-linear) or from the generic filter's output (classified-linear-on-base,
    the 8-bit planes its decoder filters)."""
    inputs = unit.generic if unit.config.parameterisation == ON_BASE else unit.decoded
    dim = 6 * side * side + 1
    gram = torch.zeros(ACTIVITY_CLASSES, dim, dim, dtype=torch.float64)
    cross = torch.zeros(ACTIVITY_CLASSES, dim, 6, dtype=torch.float64)
    positions = 0
    for index in frames:
        x = _unshuffled(inputs[index]).to(torch.float64) - 0.5
        patches = F.unfold(x, side, padding=side // 2)[0]  # (D - 1, L)
        patches = torch.cat([patches, torch.ones(1, patches.shape[1], dtype=torch.float64)])
        residual = (_unshuffled(unit.originals[index]) - _unshuffled(unit.generic[index])).flatten(2)[0].to(torch.float64)
        classes = activity_classes(torch.from_numpy(np.ascontiguousarray(unit.decoded[index][0]))).reshape(-1)
        order = torch.argsort(classes, stable=True)
        patches, residual = patches[:, order], residual[:, order]
        counts = torch.bincount(classes, minlength=ACTIVITY_CLASSES).tolist()
        start = 0
        for c, count in enumerate(counts):
            if count:
                p = patches[:, start: start + count]
                gram[c] += p @ p.t()
                cross[c] += p @ residual[:, start: start + count].t()
            start += count
        positions += patches.shape[1]
    return gram, cross, positions


def least_squares_gain(gram: torch.Tensor, cross: torch.Tensor, scales: torch.Tensor, rho: float) -> float:
    """Predicted RD gain (distortion units) of the unquantized full-form filter on (G, H): sum over the 6
    output rows of s_c b^T (G + mu I)^-1 b with b = H[:, c], mu = rho trace(G) / 55 (adapt.ridge_solution's)."""
    trace = float(torch.trace(gram))
    if trace <= 0:
        return 0.0
    a = gram + rho * trace / gram.shape[0] * torch.eye(gram.shape[0], dtype=torch.float64)
    solution = torch.linalg.solve(a, cross)  # (55, 6)
    return float((scales * (cross * solution).sum(0)).sum())


def merge_path(gram: torch.Tensor, cross: torch.Tensor, scales: torch.Tensor, rho: float) -> dict[int, tuple[int, ...]]:
    """Group count K -> class boundaries (UpdateStructure.boundaries), K = 1..min(16, MAX_GROUPS): start from one
    group per class and repeatedly merge the two adjacent groups whose merge loses the least least-squares
    gain (:func:`least_squares_gain`), as ALF merges its classes."""
    groups = [[c] for c in range(ACTIVITY_CLASSES)]
    stats = [(gram[c], cross[c]) for c in range(ACTIVITY_CLASSES)]
    gains = [least_squares_gain(g, h, scales, rho) for g, h in stats]
    path = {}
    while True:
        if len(groups) <= MAX_GROUPS:
            path[len(groups)] = tuple(group[0] for group in groups[1:])
        if len(groups) == 1:
            return path
        merged = [(stats[i][0] + stats[i + 1][0], stats[i][1] + stats[i + 1][1]) for i in range(len(groups) - 1)]
        merged_gains = [least_squares_gain(g, h, scales, rho) for g, h in merged]
        i = min(range(len(merged)), key=lambda j: gains[j] + gains[j + 1] - merged_gains[j])
        groups[i: i + 2] = [groups[i] + groups[i + 1]]
        stats[i: i + 2] = [merged[i]]
        gains[i: i + 2] = [merged_gains[i]]


class _BitTables:
    """-log2 of the coding table's probabilities per (prior, bound), built once per solve (float64)."""

    def __init__(self):
        self.cache: dict = {}

    def bits(self, prior: WeightPrior, k: torch.Tensor) -> torch.Tensor:
        bound = max(1, int(k.abs().max()))
        key = (prior.grid, prior.slab_std, prior.spike, prior.alpha, bound)
        if key not in self.cache:
            self.cache[key] = torch.from_numpy(-np.log2(coding_probabilities(prior, bound)))
        return self.cache[key][k + bound]


def candidate_priors(unit) -> list[WeightPrior]:
    """The classified search's priors (config.classified), as transmitted (float32)."""
    base, search = unit.config.coding_prior(), unit.config.classified
    return [transmitted_prior(WeightPrior(grid=base.grid * g, slab_std=base.slab_std * s, spike_std=base.spike * g,
                                          alpha=alpha))
            for g in search.grid_scales for s in search.slab_scales for alpha in search.spike_weights]


def _best_for_group(unit, system, solutions: Sequence[torch.Tensor], prior: WeightPrior,
                    tables: _BitTables) -> tuple[float, torch.Tensor]:
    """(predicted cost, grid indices) of the best of ``solutions`` for one group under ``prior``: each rounded on
    the grid, its rows (or tied rows) that do not pay alone zeroed (adapt._groups_that_pay's rule); the all-zero
    filter (its zeros still cost bits) is the fallback."""
    zero = torch.zeros(system.a.shape[0], dtype=torch.int64)
    best = (float(tables.bits(prior, zero).sum()) / unit.pixels, zero)
    for solution in solutions:
        k = torch.round(solution / prior.grid).clamp(-(1 << 15), 1 << 15).to(torch.int64)
        if not bool(k.any()):
            continue
        bits = tables.bits(prior, k)
        q = k.to(torch.float64) * prior.grid
        for rows, a, b in system.blocks:
            qg = q[rows]
            change = float(qg @ a @ qg - 2 * qg @ b)
            if bool(k[rows].any()) and change + float(bits[rows].sum()) / unit.pixels >= 0:
                k[rows] = 0
        q = k.to(torch.float64) * prior.grid
        cost = system.distortion(q) + float(tables.bits(prior, k).sum()) / unit.pixels
        if cost < best[0]:
            best = (cost, k)
    return best


def _group_solutions(unit, system, masks: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Ridge solutions of one group's system for every (tap mask, ridge) of the search."""
    return [ridge_solution(system, rho, system.allowed(mask)) for mask in masks.values()
            for rho in unit.config.classified.ridge]


def solve_classified(unit, gram: torch.Tensor, cross: torch.Tensor, positions: int):
    """(structure, flat grid indices in coding order, info) of the classified update with the least predicted RD
    cost over the search (module docstring); the zero update scores 0 (then indices are all zero)."""
    search = unit.config.classified
    scales = _channel_weights(unit.plane_weights) * unit.lmbda * 255.0**2 / positions
    wide_stats = (gram, cross) if gram.shape[-1] == 151 else None
    gram, cross = narrow(gram, cross)
    paths = merge_path(gram, cross, scales, search.merge_ridge)
    priors, tables = candidate_priors(unit), _BitTables()
    fixed = 8.0 * FIXED_BYTES / unit.pixels
    best = (None, None, 0.0, None, None)
    scores = {}
    forms = [(False, False), (True, False)] + ([(True, True)] if wide_stats is not None else [])
    for tied, wide in forms:
        table = group_tap_map(tied, wide)
        g_all, h_all = wide_stats if wide else (gram, cross)
        masks = {name: mask for name, mask in tap_masks("cross-linear", table.shape[1]).items() if name in search.masks}
        for groups in [k for k in search.groups if k in paths]:
            boundaries = paths[groups]
            edges = [0, *boundaries, ACTIVITY_CLASSES]
            systems = [LinearSystem.build("cross-linear", table, g_all[lo:hi].sum(0), h_all[lo:hi].sum(0), scales)
                       for lo, hi in zip(edges[:-1], edges[1:])]
            solutions = [_group_solutions(unit, system, masks) for system in systems]
            for prior in priors:
                chosen = [_best_for_group(unit, s, sols, prior, tables) for s, sols in zip(systems, solutions)]
                cost = fixed + sum(c for c, _ in chosen)
                form = "wide" if wide else "tied" if tied else "full"
                scores[f"{form}:K{groups}:{prior.grid:g}x{prior.slab_std:g}x{prior.alpha:g}"] = cost
                if cost < best[2] and any(bool(k.any()) for _, k in chosen):
                    best = (classified_structure(boundaries, tied, unit.config.parameterisation, wide),
                            [k for _, k in chosen], cost, prior, systems)
    structure, k, cost, prior = best[:4]
    if structure is not None:  # the chosen update scored again under the one table the coder uses (bound of all groups)
        k, systems = torch.cat(k), best[4]
        distortion = sum(s.distortion(q.to(torch.float64) * prior.grid) for s, q in zip(systems, best[1]))
        cost = fixed + distortion + float(tables.bits(prior, k).sum()) / unit.pixels
    else:
        structure, prior = classified_structure((), False, unit.config.parameterisation), unit.config.coding_prior()
        k = torch.zeros(sum(p.numel() for p in make_filter_update(unit.base, structure).coded.values()), dtype=torch.int64)
    return structure, k, {"structure": structure.parameterisation, "groups": structure.rank,
                          "layout": structure.init_seed, "predicted_cost_change": cost, "prior": prior.model_dump(),
                          "scores": scores}


def fit_classified(unit, state_path: Path | None, config_json: str,
                   log: Callable[[dict], None] | None = None) -> tuple[torch.Tensor, dict, bool]:
    """(flat grid indices, info, resumed) of classified-linear for ``unit`` (an adapt._Unit): solved by
    :func:`solve_classified` on :func:`class_statistics`, or read back from ``state_path`` (a resumed unit does
    not solve again). info holds the chosen prior, groups and layout (UpdateStructure.rank, .init_seed)."""
    saved = None if state_path is None else load_state(state_path, config_json)
    if saved is not None:
        tensors, info = saved
        return tensors["best.indices"], info, True
    from workers.video_codec import torch_threads

    gram, cross, positions = class_statistics(unit, range(len(unit.decoded)), 5 if wide_search(unit) else 3)
    # one thread: the search is thousands of small float64 ops, which a busy 2-core machine ran 35x slower
    # with 2 OpenMP threads (foreman x264 CRF 32: 140 s against 4.0 s, same choice); it also makes the
    # choice independent of the caller's thread count
    with torch_threads(1):
        structure, indices, info = solve_classified(unit, gram, cross, positions)
    info = {**info, "step": 1, "best_cost": info["predicted_cost_change"]}
    if state_path is not None:
        save_state(state_path, {"best.indices": indices},
                   {"config": config_json, **{key: info[key] for key in ("step", "best_cost", "prior", "structure",
                                                                          "groups", "layout")}})
    if log is not None:
        log({"step": 1, **info})
    return indices, info, False
