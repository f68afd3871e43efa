"""Architecture and checkpoint metadata of the scale-space-flow (SSF) base codec."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SSFArchitecture(BaseModel):
    """Widths of the SSF autoencoders.

    ``mid_channels`` is the width of the inner conv layers of the image, motion and residual
    autoencoders, ``latent_channels`` the channels of each latent y, ``hyper_channels`` the channels of
    each hyper-latent z. The paper and CompressAI's ``ssf2020`` use 128 / 192 / 192 ("full").
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str = Field("ssf", pattern="^ssf$")
    mid_channels: int = Field(128, ge=1, le=1024)
    latent_channels: int = Field(192, ge=1, le=1024)
    hyper_channels: int = Field(192, ge=1, le=1024)
    num_levels: int = Field(5, ge=1, le=8, description="levels of the scale-space Gaussian volume")
    sigma0: float = Field(1.5, gt=0, description="std of the first blur level, in pixels")
    scale_field_shift: float = Field(1.0, description="stored for CompressAI compatibility; unused")
    bottleneck_filters: tuple[int, ...] = Field(
        (3, 3, 3), min_length=1, max_length=8,
        description="hidden widths of each EntropyBottleneck's density network: part of the architecture, "
                    "since they decide its parameters; adaptjobs models keep (3, 3, 3), CompressAI's "
                    "EntropyBottleneck defaults to (3, 3, 3, 3) (5 matrices, 4 factors)")

    @field_validator("bottleneck_filters")
    @classmethod
    def _positive_filters(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 1 <= width <= 64 for width in value):
            raise ValueError("every filter width must be in 1..64")
        return value


ARCHITECTURE_PRESETS: dict[str, SSFArchitecture] = {
    "full": SSFArchitecture(),
    # What ships (issue 3): trains at ~0.6 s per 8x3-frame 128x128 step on 2 CPU cores, 3.6 M parameters.
    "compact": SSFArchitecture(mid_channels=48, latent_channels=96, hyper_channels=48),
    # For unit tests and smoke runs only: fast, and useless for compression.
    "tiny": SSFArchitecture(mid_channels=16, latent_channels=16, hyper_channels=16),
}


# How frames are padded to what the network divides evenly (workers/codec/ssf.py, FramePadding):
# "adaptjobs": replicate-padded on the right and bottom to multiples of 16, each latent padded to x8 for
# its hyperprior; "compressai": zero-padded, centred, to multiples of 128, as CompressAI's video eval does.
PaddingMode = Literal["adaptjobs", "compressai"]
PADDING_MODES: tuple[str, ...] = ("adaptjobs", "compressai")


# CompressAI's MSE lambdas for qualities 1, 2, 3, ... (training loss = lambda * 255^2 * MSE + bpp)
MSE_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)


class Provenance(BaseModel):
    """Where a set of weights came from (shown in model cards and `adaptjobs info`)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="'random-init', 'adaptjobs-pretrain', 'compressai-import', ...")
    seed: int | None = None
    training_data: str | None = None
    notes: str | None = None


class CheckpointMetadata(BaseModel):
    """Metadata stored in the safetensors header of an adaptjobs checkpoint (one quality each)."""

    model_config = ConfigDict(extra="forbid")

    format: str = Field("adaptjobs-ssf", pattern="^adaptjobs-ssf$")
    format_version: int = Field(1, ge=1, le=1)
    model_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.+-]+$")
    architecture: SSFArchitecture
    quality: int = Field(ge=1, le=64)
    lmbda: float | None = Field(None, gt=0, description="the MSE lambda the weights were trained for")
    provenance: Provenance
    weights_sha256: str = Field(pattern="^[0-9a-f]{64}$")
