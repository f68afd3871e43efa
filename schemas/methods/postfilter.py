"""Config of method ``postfilter``: the standard stream plus the shipped post-filter, named in its SEI."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.methods._shared import SEND_UPDATE_HELP, SendUpdate
from schemas.methods.registry import register_method_config
from schemas.side_info import MAX_CRF_OFFSET, MAX_RESIDUAL_SCALE, RESIDUAL_SCALE_ONE

# measured on eval-dev with pf-yuv-l8c44-w6 (every integer -7..7 gained 0.02 BD-rate points more than these
# six, -8 and +6 nothing): benchmarks/RESULTS.md section postfilter-crf-offsets
DEFAULT_CRF_OFFSETS = (-6, -4, -2, 0, 2, 4)
CRF_OFFSETS_HELP = (
    "candidate CRF offsets of the filter's conditioning, tried on every frame; the encoder keeps the best per frame "
    "type (intra, inter), or no filter for a type it does not help, and signals them in the SEI "
    f"(each within -{MAX_CRF_OFFSET}..{MAX_CRF_OFFSET}; one filter pass per candidate)")


# numerators over RESIDUAL_SCALE_ONE (16): 0 to 2 in steps of 1/16 (benchmarks/RESULTS.md section
# postfilter-residual-scales)
DEFAULT_RESIDUAL_SCALE_GRID = tuple(range(0, 2 * RESIDUAL_SCALE_ONE + 1))
RESIDUAL_SCALE_GRID_HELP = (
    f"residual scales (numerators over {RESIDUAL_SCALE_ONE}: {RESIDUAL_SCALE_ONE} is the filter as trained, 0 no "
    "filter) the encoder tries on each plane (Y, U, V) of each frame type at every candidate CRF offset; it keeps "
    "the best and signals them in the SEI (6 bytes, none when all are one); () scales nothing")


def check_crf_offsets(offsets: tuple[int, ...]) -> tuple[int, ...]:
    """Candidates: at least one, distinct, each signalable."""
    if not offsets or len(set(offsets)) != len(offsets):
        raise ValueError("crf_offsets needs at least one candidate, each once")
    outside = [o for o in offsets if abs(o) > MAX_CRF_OFFSET]
    if outside:
        raise ValueError(f"crf_offsets {outside} lie outside -{MAX_CRF_OFFSET}..{MAX_CRF_OFFSET}")
    return offsets


def check_residual_scale_grid(grid: tuple[int, ...]) -> tuple[int, ...]:
    """Scales: distinct, each signalable (() is allowed: no scales)."""
    outside = [scale for scale in grid if not 0 <= scale <= MAX_RESIDUAL_SCALE]
    if outside:
        raise ValueError(f"residual_scale_grid {outside} lie outside 0..{MAX_RESIDUAL_SCALE}")
    if len(set(grid)) != len(grid):
        raise ValueError("residual_scale_grid names a scale twice")
    return grid


@register_method_config
class PostFilterConfig(BaseModel):
    """x264/x265 plus the shipped learned post-filter (no update): sent only where it lowers the RD cost."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["postfilter"] = "postfilter"
    send_update: SendUpdate = Field("if-better", description=SEND_UPDATE_HELP.replace("update", "filtered stream"))
    crf_offsets: tuple[int, ...] = Field(DEFAULT_CRF_OFFSETS, description=CRF_OFFSETS_HELP)
    residual_scale_grid: tuple[int, ...] = Field(DEFAULT_RESIDUAL_SCALE_GRID, description=RESIDUAL_SCALE_GRID_HELP)

    @field_validator("crf_offsets")
    @classmethod
    def _candidates(cls, offsets: tuple[int, ...]) -> tuple[int, ...]:
        return check_crf_offsets(offsets)

    @field_validator("residual_scale_grid")
    @classmethod
    def _scales(cls, grid: tuple[int, ...]) -> tuple[int, ...]:
        return check_residual_scale_grid(grid)
