"""Config of method ``postfilter-adapt``: the shipped post-filter updated per (video, codec, CRF), the coded
update in the stream's SEI. The fields mirror workers.postfilter.adapt.FilterAdaptConfig (schemas import no
workers; tests/test_postfilter_method.py checks that both declare the same fields and defaults)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.methods._shared import SEND_UPDATE_HELP, SendUpdate, WeightPrior
from schemas.methods.postfilter import (CRF_OFFSETS_HELP, DEFAULT_CRF_OFFSETS, DEFAULT_RESIDUAL_SCALE_GRID,
                                        RESIDUAL_SCALE_GRID_HELP, check_crf_offsets, check_residual_scale_grid)
from schemas.methods.registry import register_method_config


class UpdateTrainingOptions(BaseModel):
    """Gradient training of the scale-bias and LoRA updates (CPU-sized: tens of steps on small crops)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int = Field(40, ge=0)
    batch: int = Field(4, ge=1, description="crops per step, each from a frame drawn at random")
    crop: int = Field(96, ge=8, description="luma crop side in px (even); whole frame if smaller")
    learning_rate: float = Field(2e-3, gt=0)
    adam_eps: float = Field(1e-6, gt=0, description="of the order of the weak gradients: keeps them in the zero bin")
    eval_every: int = Field(10, ge=1, description="steps between RD measurements that pick the best state")
    eval_frames: int = Field(4, ge=1, description="evenly spaced whole frames the RD measurement uses")
    checkpoint_every: int = Field(10, ge=1)


class ClassifiedSearchOptions(BaseModel):
    """The RD search of classified-linear: a pruned form of cross-linear's."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    groups: tuple[int, ...] = Field((1, 2, 3, 4, 6, 8), min_length=1, description=(
        "numbers of filter groups tried (1..8), each the greedy merge of adjacent activity classes"))
    masks: tuple[Literal["all", "luma-from-luma", "luma-from-luma,chroma-from-own"], ...] = Field(
        ("all", "luma-from-luma"), min_length=1, description="tap masks tried per group")
    ridge: tuple[float, ...] = Field((1e-5, 1e-4, 1e-3), min_length=1, description="ridge strengths tried per group")
    merge_ridge: float = Field(1e-3, gt=0, description="ridge strength of the gains that order the class merges")
    grid_scales: tuple[float, ...] = Field((0.25, 0.5, 1.0), min_length=1,
                                           description="multiples of the prior's grid (and spike) tried")
    slab_scales: tuple[float, ...] = Field((1.0,), min_length=1, description="multiples of the prior's slab std tried")
    spike_weights: tuple[float, ...] = Field((0.1, 0.3, 3.0), min_length=1, description="the prior's alpha values tried")
    wide: bool = Field(True, description=(
        "classified-linear-on-base: also try the wide tied form (a 5x5 L on the working planes: one 9x9 luma "
        "kernel, the chroma rows' own plane 5x5)"))


@register_method_config
class PostFilterAdaptConfig(BaseModel):
    """x264/x265 plus the shipped post-filter with a per-video update coded into the SEI; none, the generic
    filter and the adapted one compete at the codec's RD trade-off (update bytes counted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["postfilter-adapt"] = "postfilter-adapt"
    send_update: SendUpdate = Field("if-better", description=SEND_UPDATE_HELP)
    parameterisation: Literal["scale-bias", "lora", "last-layer", "cross-linear", "cross-linear-tied",
                              "classified-linear", "classified-linear-on-base"] = Field(
        "classified-linear-on-base", description="classified-linear-on-base (default, the best on eval-dev): "
                                    "classified-linear's filters reading the generic filter's 8-bit output, each "
                                    "group's filter full, tied, or wide (one 9x9 luma kernel, 5x5 own-plane chroma "
                                    "taps), chosen by RD per unit; classified-linear: one cross-linear filter "
                                    "per group of ALF-style luma activity classes (1..8 groups, merged by RD); "
                                    "cross-linear: a 3x3 cross-component "
                                    "linear filter on the decoded planes solved by least squares, its 4 luma rows "
                                    "free or tied to one 5x5 luma kernel, whichever costs less per unit; "
                                    "cross-linear-tied: always tied; last-layer: the filter's last conv solved the "
                                    "same way; scale-bias, lora: trained by Adam")
    rank: int = Field(2, ge=1, lt=256, description="LoRA rank per conv (lora only)")
    init_seed: int = Field(0, ge=0, lt=2**32, description="seed of LoRA's A initialisation (lora only)")
    prior: WeightPrior | None = Field(None, description="default: the parameterisation's default prior")
    training: UpdateTrainingOptions = UpdateTrainingOptions()
    ridge: tuple[float, ...] = Field((1e-4, 1e-3, 1e-2, 1e-1), min_length=1,
                                     description="last-layer: ridge strengths tried (relative to the features' energy)")
    least_squares_frames: int = Field(32, ge=1, description="last-layer: evenly spaced frames the solve uses")
    grid_scales: tuple[float, ...] = Field((0.5, 1.0, 2.0, 4.0), min_length=1,
                                           description="last-layer: multiples of the prior's grid tried")
    slab_scales: tuple[float, ...] = Field((0.5, 1.0, 2.0), min_length=1, description=(
        "last-layer, cross-linear: multiples of the prior's slab std tried (the payload carries the chosen one)"))
    spike_weights: tuple[float, ...] = Field((0.3, 3.0, 30.0, 1000.0), min_length=1, description=(
        "last-layer, cross-linear: the prior's alpha (spike weight) values tried (the payload carries the chosen one)"))
    rd_measure: Literal["psnr-yuv", "wmse"] = Field("psnr-yuv", description=(
        "psnr-yuv: the update is sent when it pays in PSNR-YUV against log_rate_per_db x the stream's bpp per dB "
        "(BD-rate's own trade-off), and the unit loop then checks it at the codec's lambda; wmse: the codec's "
        "QP-lambda relation on wMSE alone"))
    log_rate_per_db: float = Field(0.2, gt=0, description="psnr-yuv: d ln(rate) / d PSNR-YUV of the codec's curve")
    classified: ClassifiedSearchOptions = ClassifiedSearchOptions()
    seed: int = Field(0, ge=0)
    crf_offsets: tuple[int, ...] = Field(DEFAULT_CRF_OFFSETS, description=CRF_OFFSETS_HELP + "; the update is "
                                         "adapted on the generic filter at the chosen offsets and travels with them")
    residual_scale_grid: tuple[int, ...] = Field(DEFAULT_RESIDUAL_SCALE_GRID, description=(
        RESIDUAL_SCALE_GRID_HELP + "; for the generic filter's candidate only: the update is adapted on the "
        "residual as trained, at the offsets chosen without scales"))

    @field_validator("crf_offsets")
    @classmethod
    def _candidates(cls, offsets: tuple[int, ...]) -> tuple[int, ...]:
        return check_crf_offsets(offsets)

    @field_validator("residual_scale_grid")
    @classmethod
    def _scales(cls, grid: tuple[int, ...]) -> tuple[int, ...]:
        return check_residual_scale_grid(grid)
