"""What a standard-codec stream tells adaptjobs' decoder (see workers/standard/side_info.py for the bytes).

Every field has hard limits, so a hostile record cannot make the decoder allocate or loop without
bound: the decoder trusts nothing it did not validate here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_UPDATE_BYTES = 4 << 20  # a coded filter update is tens of KB; 4 MiB bounds what a reader accepts
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
_SHA256 = r"^[0-9a-f]{64}$"


class FilterRef(BaseModel):
    """The shipped post-filter the stream was made with, bound by the sha256 of its weights (the file's
    bytes) so that another filter under the same name is refused rather than applied."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=_NAME)
    weights_sha256: str = Field(pattern=_SHA256)


class UpdateRef(BaseModel):
    """The coded filter update that follows the JSON header in the record: how it was made, its exact
    length and its sha256 (both checked against the bytes present)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    method: str = Field(pattern=_NAME)
    bytes: int = Field(ge=1, le=MAX_UPDATE_BYTES)
    sha256: str = Field(pattern=_SHA256)


class StandardSideInfo(BaseModel):
    """Side information of a standard-codec (x264/x265) stream with a learned post-filter.

    ``threads``: torch intra-op threads of the encoder's filter run; the decoder runs the filter with
    the same count, because CPU kernels split their sums by thread and the last bit of a filtered pixel
    depends on the split (the same rule as BitstreamHeader.threads).
    ``filter_enabled`` False: the encoder measured that the filter does not help this video at this CRF,
    so the decoder outputs the plain decoded frames (the filter is still named, for the record).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    codec: Literal["x264", "x265"]
    crf: float = Field(ge=0, le=51)
    width: int = Field(ge=2, le=16384)
    height: int = Field(ge=2, le=16384)
    frame_count: int = Field(ge=1, le=1_000_000)
    intra_period: int = Field(ge=0, le=1_000_000, description="frames per I-frame; 0 = only the first frame")
    threads: int = Field(ge=1, le=4096)
    filter: FilterRef | None = None
    filter_enabled: bool = False
    update: UpdateRef | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "StandardSideInfo":
        if self.width % 2 or self.height % 2:
            raise ValueError("width and height must be even (4:2:0 video)")
        if self.filter is None and (self.filter_enabled or self.update is not None):
            raise ValueError("filter_enabled and update need a filter")
        return self
