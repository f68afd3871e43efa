"""Configuration of a pretraining run (written once to OUT/pretrain.json)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.codec import MSE_LAMBDAS, SSFArchitecture


class PretrainConfig(BaseModel):
    """Everything that determines the trained weights (with the data itself).

    Schedule: ``intra_steps`` of I-frame training (stills and video frames) then ``inter_steps`` of clip
    training (I-frame + P-frames on the reference chain) at the highest quality; then every lower quality
    is fine-tuned for ``finetune_steps`` from the next higher one. Each phase runs its last
    ``lr_decay_fraction`` at a tenth of the learning rate.
    """

    model_config = ConfigDict(extra="forbid")

    data: list[str] = Field(min_length=1)
    architecture: SSFArchitecture
    qualities: list[int] = Field(min_length=1)
    model_id: str = Field("ssf-compact", pattern=r"^[A-Za-z0-9_.+-]+$")
    seed: int = 0
    crop: int = Field(128, ge=128, description="square crop side, a multiple of 128")
    batch: int = Field(8, ge=1)
    clip_frames: int = Field(3, ge=2, le=8)
    intra_steps: int = Field(2000, ge=0)
    inter_steps: int = Field(4000, ge=1)
    finetune_steps: int = Field(1000, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    aux_learning_rate: float = Field(1e-3, gt=0)
    clip_grad_norm: float = Field(1.0, gt=0)
    lr_decay_fraction: float = Field(0.2, ge=0, lt=1)
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(20, ge=1)
    clips_per_video: int = Field(24, ge=1)
    max_frames_per_video: int = Field(300, ge=2)
    storage_dtype: Literal["float32", "float16"] = "float16"
    lambdas: dict[int, float] | None = Field(
        None, description="quality -> MSE lambda; default CompressAI's table (MSE_LAMBDAS) for every quality")
    init_from: str | None = Field(None, description="checkpoint whose weights start the first phase (else random)")
    init_sha256: str | None = Field(None, description="sha256 of init_from's weights, so a resumed run checks them")

    def lambda_for(self, quality: int) -> float:
        """The MSE lambda this run trains ``quality`` with."""
        if self.lambdas is not None:
            return self.lambdas[quality]
        return MSE_LAMBDAS[quality - 1]

    @field_validator("crop")
    @classmethod
    def _crop_multiple(cls, value: int) -> int:
        if value % 128:
            raise ValueError("crop must be a multiple of 128 (the hyperprior downsamples by 128)")
        return value

    @field_validator("qualities")
    @classmethod
    def _qualities(cls, value: list[int]) -> list[int]:
        if any(not 1 <= q <= len(MSE_LAMBDAS) for q in value):
            raise ValueError(f"qualities must be in 1..{len(MSE_LAMBDAS)}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _lambdas_cover_qualities(self) -> "PretrainConfig":
        if self.lambdas is not None:
            if sorted(self.lambdas) != self.qualities:
                raise ValueError("lambdas must give exactly one lambda per quality")
            ordered = [self.lambdas[q] for q in self.qualities]
            if any(value <= 0 for value in ordered) or ordered != sorted(set(ordered)):
                raise ValueError("lambdas must be positive and increase with the quality")
        return self
