"""The header of an adaptjobs bitstream (see workers/bitstream.py for the byte layout)."""

from __future__ import annotations

from fractions import Fraction

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BitstreamHeader(BaseModel):
    """What a decoder needs before the first frame: which model, what size, how many frames.

    ``weights_sha256`` binds the stream to the exact weights (and thus the exact entropy-coding
    tables) that produced it: decoding with other weights would return wrong symbols silently.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str = Field(min_length=1, max_length=128)
    weights_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    quality: int = Field(ge=1, le=64)
    width: int = Field(ge=16, le=16384)
    height: int = Field(ge=16, le=16384)
    frame_count: int = Field(ge=1, le=1_000_000)
    fps_num: int = Field(ge=1)
    fps_den: int = Field(ge=1)
    intra_period: int = Field(ge=0, description="frames per I-frame; 0 = only the first frame is intra")
    method: str = Field("none", min_length=1, max_length=64,
                        description="the adaptation the frames were coded with ('none' when no update was sent)")
    payload_sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$",
                                       description="sha256 of the weight payload the decoder must apply; absent: none")
    threads: int | None = Field(None, ge=1, le=4096,
                                description="torch intra-op threads the encoder reconstructed with; the decoder runs "
                                            "with the same count, because CPU kernels split their sums by thread and "
                                            "the last bit of a reconstructed pixel depends on the split (absent in "
                                            "format 2: the decoder's own setting)")

    @model_validator(mode="after")
    def _even_sizes(self) -> "BitstreamHeader":
        if self.width % 2 or self.height % 2:
            raise ValueError("width and height must be even (4:2:0 video)")
        return self

    @property
    def fps(self) -> Fraction:
        return Fraction(self.fps_num, self.fps_den)

    def is_intra(self, frame_index: int) -> bool:
        """True where frame ``frame_index`` is coded as an I-frame."""
        if frame_index == 0:
            return True
        return self.intra_period > 0 and frame_index % self.intra_period == 0
