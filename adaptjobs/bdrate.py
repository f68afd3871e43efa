"""Bjontegaard-delta rate: the average rate difference at equal quality between two RD curves.

Piecewise cubic (PCHIP) interpolation of log rate over the distortion metric, integrated over the
interval where the curves overlap, as in the JVET common test conditions. The computation is the
``bjontegaard`` package's (``bd_rate(..., method='pchip')``, which matches the JVET sheet); this module
adds the checks a report needs: enough points, monotone curves, and how much the curves overlap.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

MIN_POINTS = 4
MIN_OVERLAP = 0.75


@dataclass
class BDRate:
    """``percent`` < 0 means the test curve needs less rate than the anchor for the same quality."""

    percent: float | None
    overlap: float
    warning: str | None = None


def _sorted_curve(points: Sequence[tuple[float, float]], label: str) -> tuple[list[float], list[float]]:
    ordered = sorted(points)
    rates, dists = [float(r) for r, _ in ordered], [float(d) for _, d in ordered]
    if any(r <= 0 for r in rates):
        raise ValueError(f"{label}: rates must be positive")
    if any(b <= a for a, b in zip(dists, dists[1:])):
        raise ValueError(f"{label}: quality does not increase with rate ({dists})")
    return rates, dists


def bd_rate(anchor: Sequence[tuple[float, float]], test: Sequence[tuple[float, float]],
            min_points: int = MIN_POINTS, min_overlap: float = MIN_OVERLAP) -> BDRate:
    """BD-rate in percent of ``test`` against ``anchor``; each a list of (rate, distortion) points
    (rate in any unit, e.g. bpp; distortion higher-is-better, e.g. PSNR dB)."""
    import bjontegaard

    anchor_rates, anchor_dists = _sorted_curve(anchor, "anchor")
    test_rates, test_dists = _sorted_curve(test, "test")
    low, high = max(anchor_dists[0], test_dists[0]), min(anchor_dists[-1], test_dists[-1])
    span = max(anchor_dists[-1], test_dists[-1]) - min(anchor_dists[0], test_dists[0])
    overlap = max(0.0, high - low) / span if span > 0 else 1.0
    notes = []
    if min(len(anchor_rates), len(test_rates)) < min_points:
        notes.append(f"fewer than {min_points} points")
    if overlap <= 0:
        return BDRate(None, 0.0, "; ".join(notes + ["the curves do not overlap"]))
    if overlap < min_overlap:
        notes.append(f"the curves overlap on only {100 * overlap:.0f}% of their quality range")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overlap is reported above, in our own words
        value = bjontegaard.bd_rate(anchor_rates, anchor_dists, test_rates, test_dists, method="pchip",
                                    require_matching_points=False, min_overlap=0.0)
    return BDRate(float(value), overlap, "; ".join(notes) or None)
