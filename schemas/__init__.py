"""Pydantic contracts shared by the driver (adaptjobs/) and the per-video workers (workers/).

Every model forbids unknown fields, so a typo in a config or a header from a newer format is an error
rather than a silently ignored value.
"""

from schemas.bitstream import BitstreamHeader
from schemas.codec import ARCHITECTURE_PRESETS, CheckpointMetadata, Provenance, SSFArchitecture
from schemas.results import EncodeResult, FrameTypeBits

__all__ = [
    "ARCHITECTURE_PRESETS",
    "BitstreamHeader",
    "CheckpointMetadata",
    "EncodeResult",
    "FrameTypeBits",
    "Provenance",
    "SSFArchitecture",
]
