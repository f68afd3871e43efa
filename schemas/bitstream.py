"""The header of an adaptjobs bitstream (see workers/bitstream.py for the byte layout)."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.codec import PaddingMode

# Hard limits on what a header may ask a decoder to spend (workers/limits.py says why these values; the
# bytes-present checks live in workers/bitstream.py). They are part of the format: a stream beyond them
# is refused, not decoded.
MAX_SIDE = 8192
MAX_FRAME_PIXELS = 7680 * 4320  # 8K UHD
MAX_FRAMES = 1_000_000
MAX_FPS_TERM = 2**31 - 1  # containers store fps as int32 rationals
MAX_THREADS = 4096
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class BitstreamHeader(BaseModel):
    """What a decoder needs before the first frame: which model, what size, how many frames.

    ``weights_sha256`` binds the stream to the exact weights (and thus the exact entropy-coding
    tables) that produced it: decoding with other weights would return wrong symbols silently.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str = Field(min_length=1, max_length=128,
                          description="the model's name; matched against shipped names, never used as a path")
    weights_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    quality: int = Field(ge=1, le=64)
    width: int = Field(ge=16, le=MAX_SIDE)
    height: int = Field(ge=16, le=MAX_SIDE)
    frame_count: int = Field(ge=1, le=MAX_FRAMES)
    fps_num: int = Field(ge=1, le=MAX_FPS_TERM)
    fps_den: int = Field(ge=1, le=MAX_FPS_TERM)
    intra_period: int = Field(ge=0, le=MAX_FRAMES, description="frames per I-frame; 0 = only the first frame is intra")
    method: str = Field("none", min_length=1, max_length=64, pattern=r"^[a-z0-9+._-]+$",
                        description="the adaptation the frames were coded with ('none' when no update was sent)")
    payload_sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$",
                                       description="sha256 of the weight payload the decoder must apply; absent: none")
    threads: int | None = Field(None, ge=1, le=MAX_THREADS,
                                description="torch intra-op threads the encoder reconstructed with; the decoder runs "
                                            "with the same count, capped to its available cores, because CPU kernels "
                                            "split their sums by thread and the last bit of a reconstructed pixel "
                                            "depends on the split (so a decoder with fewer cores than this may differ "
                                            "in the last bit; workers/limits.capped_threads); absent in format 2: "
                                            "the decoder's own setting")

    padding: PaddingMode | None = Field(None, description="how frames were padded for the network (workers/codec/ssf.py, "
                                                          "FramePadding); absent: 'adaptjobs' (written only when "
                                                          "'compressai', so default streams keep their bytes)")
    device: Literal["cuda"] | None = Field(None, description="the device kind whose arithmetic made the "
                                           "reconstruction (workers/device.py); absent: cpu. Parsing is "
                                           "device-independent; a decoder on the same kind reproduces the "
                                           "frames bit for bit, another kind only parses exactly")

    @property
    def device_kind(self) -> str:
        """The device kind that coded the stream: "cpu" when the optional field is absent."""
        return self.device or "cpu"

    @field_validator("model_id")
    @classmethod
    def _printable_model_id(cls, value: str) -> str:
        # printed in messages and compared with names, never opened: a newline would split a message
        if _CONTROL_CHARACTERS.search(value):
            raise ValueError("must not contain control characters")
        return value

    @model_validator(mode="after")
    def _even_sizes(self) -> "BitstreamHeader":
        if self.width % 2 or self.height % 2:
            raise ValueError("width and height must be even (4:2:0 video)")
        if self.width * self.height > MAX_FRAME_PIXELS:
            raise ValueError(f"{self.width}x{self.height} is more than {MAX_FRAME_PIXELS} pixels per frame")
        return self

    @property
    def fps(self) -> Fraction:
        return Fraction(self.fps_num, self.fps_den)

    def is_intra(self, frame_index: int) -> bool:
        """True where frame ``frame_index`` is coded as an I-frame."""
        if frame_index == 0:
            return True
        return self.intra_period > 0 and frame_index % self.intra_period == 0
