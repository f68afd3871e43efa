"""What a standard-codec stream tells adaptjobs' decoder beyond what the stream itself says (see
workers/standard/side_info.py for the bytes).

Only what the decoder cannot regenerate is here. The codec, the frame size, the frame count and the
intra period are in the elementary stream (parameter sets, slices): the decoder takes them from the
stream, and the encoder checks they agree with what it meant (side_info.check_side_info_against_stream).

Every field has hard limits, so a hostile record cannot make the decoder allocate or loop without
bound: the decoder trusts nothing it did not validate here.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A coded filter update is a part of the post-filter's weights: the whole default filter
# (workers/postfilter/network.py, 8 layers x 32 channels) has 59,558 parameters, 238,232 bytes in fp32
# (`python -c "from workers.postfilter.network import PostFilter; print(sum(p.numel() for p in
# PostFilter().parameters()))"`). 1 MiB is four times that, and bounds what a reader accepts.
MAX_UPDATE_BYTES = 1 << 20
MAX_THREADS = 4096  # the same bound as schemas.bitstream.BitstreamHeader.threads
FILTER_ID_BYTES = 8
CRF_STEPS = 100  # crf travels in hundredths (u16)
MAX_CRF_OFFSET = 7  # a frame type's CRF offset travels in a signed 4-bit field whose -8 means "unfiltered"
# A residual scale travels as a u8 numerator over RESIDUAL_SCALE_ONE: RESIDUAL_SCALE_ONE is the filter as trained
RESIDUAL_SCALE_ONE = 16
MAX_RESIDUAL_SCALE = 4 * RESIDUAL_SCALE_ONE  # 4x the trained residual: more is never useful, and is refused
UNIT_SCALES = (RESIDUAL_SCALE_ONE,) * 3
ResidualScales = tuple[int, int, int]  # numerators for Y, U, V


class UpdateMethod(IntEnum):
    """How a coded filter update was made; the value is its id on the wire.

    A hand-kept registry, never derived from dict or enum order: a new method gets the next free
    number, and a number is never reused or renumbered (that would make old streams decode with the
    wrong update decoder). 0 is not a method (a zeroed byte is refused, not read as a method)."""

    SCALE_BIAS = 1  # per-channel multipliers and biases of the shipped filter
    LORA = 2  # low-rank updates of the conv weights
    LAST_LAYER = 3  # the tail conv's weights and biases replaced
    CROSS_LINEAR = 4  # a 3x3 linear filter 6 -> 6 (luma phases, U, V) added to the filter's output
    CROSS_LINEAR_TIED = 5  # the same with its 4 luma rows tied to one 5x5 full-resolution luma kernel
    CLASSIFIED_LINEAR = 6  # K of those filters (full or tied), one per group of ALF-style luma activity classes
    CLASSIFIED_LINEAR_ON_BASE = 7  # the same K filters on the generic filter's 8-bit output instead of the decoded planes


def filter_id(weights_sha256: str) -> bytes:
    """The wire identity of a shipped post-filter: the first FILTER_ID_BYTES bytes of the sha256 of its
    weights file. 8 bytes bind a stream to one filter among the few adaptjobs ships: two different
    weight files share a 64-bit prefix with probability about n^2 / 2^65 (n = filters ever shipped; for
    n = 1000 that is 3e-14). A forger who wants a collision gains nothing: the decoder only ever runs
    filters it ships (trusted weights), looked up by this id, so a forged id picks another trusted
    filter, which the forger could get by writing its id anyway."""
    digest = bytes.fromhex(weights_sha256)
    if len(digest) != 32:
        raise ValueError(f"a sha256 has 32 bytes, got {len(digest)}")
    return digest[:FILTER_ID_BYTES]


class UpdateRef(BaseModel):
    """The coded filter update that follows in the record: how it was made and its exact length
    (checked against the bytes present; its integrity is covered by the record's CRC32)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: UpdateMethod
    bytes: int = Field(ge=1, le=MAX_UPDATE_BYTES)


Scale = Annotated[int, Field(ge=0, le=MAX_RESIDUAL_SCALE)]


class StandardSideInfo(BaseModel):
    """Side information of a standard-codec (x264/x265) stream with a learned post-filter.

    ``crf``: the encoder's CRF (the filter is conditioned on it), a multiple of 0.01.
    ``threads``: torch intra-op threads of the encoder's filter run. The decoder runs the filter under
    ``workers.video_codec.torch_threads(threads)``: the count fixes how CPU kernels split their sums,
    not how many cores run them, and the last bit of a filtered pixel depends on the split, so a stream
    filtered with 2 threads is filtered exactly on a 1-core decoder too (the same rule as
    BitstreamHeader.threads).
    ``filter_id``: :func:`filter_id` of the shipped filter's weights.
    ``filter_enabled`` False: the encoder measured that the filter does not help this video at this CRF,
    so the decoder outputs the plain decoded frames (the filter is still named, for the record).
    ``update``: an update of that filter, sent with the record (needs ``filter_enabled``).
    ``intra_crf_offset`` / ``inter_crf_offset``: what the filter is told, per frame type: it runs on an intra
    frame (FFmpeg's picture type I) conditioned on ``crf + intra_crf_offset`` and on every other frame on
    ``crf + inter_crf_offset`` (whole CRF steps, -7..7); None: frames of that type are shown unfiltered. The
    encoder picks them per video by measuring (workers/postfilter/frame_offsets.py): x264 and x265 code I
    frames at a lower QP than P frames at the same CRF, and the filter, conditioned on the CRF alone, cannot
    tell them apart. Both 0: the filter sees the CRF on every frame (all a record without the offsets byte
    can say).
    ``intra_residual_scales`` / ``inter_residual_scales``: per frame type, the numerators (over
    RESIDUAL_SCALE_ONE) by which the decoder scales the filter's residual on Y, U and V: a plane is shown as
    x + (s / RESIDUAL_SCALE_ONE) (f(x) - x), rounded, where x is the decoded plane and f(x) the filter's
    (unrounded) output; 0 shows that plane unfiltered. The encoder measures them per video
    (workers/postfilter/frame_offsets.py), as JVET's NN loop filters signal a residual scaling factor: how
    strongly the filter should act differs from one video and plane to the next, and one filter pass serves
    every scale. All RESIDUAL_SCALE_ONE: the residual as trained (all a record without the scales can say).
    They scale the generic filter only: a record with an update keeps unit scales.
    """

    # bytes as hex in JSON (`adaptjobs info`, logs): a filter id is rarely valid UTF-8
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, ser_json_bytes="hex",
                              val_json_bytes="hex")

    crf: float = Field(ge=0, le=51)
    threads: int = Field(ge=1, le=MAX_THREADS)
    filter_id: bytes = Field(min_length=FILTER_ID_BYTES, max_length=FILTER_ID_BYTES)
    filter_enabled: bool = False
    update: UpdateRef | None = None
    intra_crf_offset: int | None = Field(0, ge=-MAX_CRF_OFFSET, le=MAX_CRF_OFFSET)
    inter_crf_offset: int | None = Field(0, ge=-MAX_CRF_OFFSET, le=MAX_CRF_OFFSET)
    intra_residual_scales: tuple[Scale, Scale, Scale] = UNIT_SCALES
    inter_residual_scales: tuple[Scale, Scale, Scale] = UNIT_SCALES

    @field_validator("crf")
    @classmethod
    def _hundredths(cls, crf: float) -> float:
        steps = round(crf * CRF_STEPS)
        if abs(crf * CRF_STEPS - steps) > 1e-6:
            raise ValueError(f"crf {crf} is not a multiple of 1/{CRF_STEPS}")
        return steps / CRF_STEPS  # the value the wire gives back, so records round-trip exactly

    @model_validator(mode="after")
    def _update_needs_the_filter(self) -> "StandardSideInfo":
        if self.update is not None and not self.filter_enabled:
            raise ValueError("an update needs filter_enabled")
        if self.has_crf_offsets and not self.filter_enabled:
            raise ValueError("CRF offsets need filter_enabled")
        if self.filter_enabled and self.intra_crf_offset is None and self.inter_crf_offset is None:
            raise ValueError("a filter switched off for both frame types is filter_enabled false")
        if self.has_residual_scales:
            if not self.filter_enabled:
                raise ValueError("residual scales need filter_enabled")
            if self.update is not None:
                raise ValueError("residual scales apply to the generic filter alone, not with an update")
            for kind in ("intra", "inter"):
                unfiltered = getattr(self, f"{kind}_crf_offset") is None
                if unfiltered and getattr(self, f"{kind}_residual_scales") != UNIT_SCALES:
                    raise ValueError(f"{kind} frames are shown unfiltered, so their residual scales stay "
                                     f"{RESIDUAL_SCALE_ONE}")
        return self

    @property
    def has_residual_scales(self) -> bool:
        """Whether the record needs its residual scales bytes (any scale but RESIDUAL_SCALE_ONE)."""
        return (self.intra_residual_scales, self.inter_residual_scales) != (UNIT_SCALES, UNIT_SCALES)

    def residual_scales(self, intra: bool) -> ResidualScales:
        """The Y, U, V residual scale numerators for a frame of this type."""
        return self.intra_residual_scales if intra else self.inter_residual_scales

    @property
    def has_crf_offsets(self) -> bool:
        """Whether the record needs its offsets byte (anything but 0 and 0)."""
        return (self.intra_crf_offset, self.inter_crf_offset) != (0, 0)

    def filter_crf(self, intra: bool) -> float | None:
        """The CRF the filter is conditioned on for a frame of this type; None: shown unfiltered."""
        offset = self.intra_crf_offset if intra else self.inter_crf_offset
        return None if not self.filter_enabled or offset is None else self.crf + offset

    @property
    def crf_steps(self) -> int:
        """crf in hundredths, as it travels."""
        return round(self.crf * CRF_STEPS)
