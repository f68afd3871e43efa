"""Results of standard-codec anchors (x264, x265) at one rate point."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AnchorPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    codec: str = Field(description="x264 or x265")
    crf: float
    preset: str
    intra_period: int
    frames: int
    width: int
    height: int
    bytes: int = Field(ge=0, description="all packet bytes + extradata")
    bpp: float
    psnr_rgb: float
    psnr_yuv: float
    ms_ssim_rgb: float
