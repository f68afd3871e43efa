"""Crafted inputs for the hostile-input tests and the long fuzz run (tests/test_fuzz_*.py,
benchmarks/fuzz_long.py), and the rule that judges what a reader did with them.

Random bytes die at the magic or a CRC; to reach the semantic checks behind them, the builders here
frame arbitrary header JSON, frame records and payload streams with every length and CRC recomputed,
exactly as an attacker who read workers/bitstream.py and workers/adapt/payload.py would.

The rule (issue 11): every case ends in a decode or in an InputError (BitstreamError, ModelError) whose
message is one line; anything else is a crash, reported with its type and first line.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from workers.bitstream import MAGIC as BITS_MAGIC
from workers.errors import InputError


@dataclass
class FrameRecord:
    """One frame record as bytes on disk; ``lengths`` default to the streams' own lengths."""

    frame_type: int
    streams: list[bytes]
    count: int | None = None
    lengths: list[int] | None = None

    def to_bytes(self) -> bytes:
        count = len(self.streams) if self.count is None else self.count
        lengths = [len(s) for s in self.streams] if self.lengths is None else self.lengths
        chunk = struct.pack("<BB", self.frame_type & 0xFF, count & 0xFF)
        chunk += b"".join(struct.pack("<I", n & 0xFFFFFFFF) for n in lengths) + b"".join(self.streams)
        return chunk + struct.pack("<I", zlib.crc32(chunk))


def frame_bitstream(header_json: bytes, frames: list[FrameRecord] | bytes, version: int | None = None) -> bytes:
    """A bitstream with ``header_json`` as its header and a correct header CRC; ``frames`` are records
    (each with its CRC recomputed) or raw bytes appended as they are. ``version``: the current format."""
    from workers.bitstream import FORMAT_VERSION

    version = FORMAT_VERSION if version is None else version
    prefix = struct.pack("<BI", version, len(header_json)) + header_json
    body = frames if isinstance(frames, bytes) else b"".join(f.to_bytes() for f in frames)
    return BITS_MAGIC + prefix + struct.pack("<I", zlib.crc32(prefix)) + body


def split_bitstream(data: bytes) -> tuple[bytes, list[FrameRecord]]:
    """(header JSON, frame records) of a valid bitstream: the raw material for mutations."""
    from workers.bitstream import unpack, unpack_header

    _, offset = unpack_header(data)
    hlen = struct.unpack_from("<I", data, 5)[0]
    _, chunks = unpack(data)
    assert offset == 13 + hlen
    return data[9: 9 + hlen], [FrameRecord(c.frame_type, list(c.streams)) for c in chunks]


def frame_payload(header_json: bytes, stream: bytes, version: int = 3) -> bytes:
    """A weight payload with ``header_json`` as its header and a correct CRC."""
    from workers.adapt.payload import MAGIC as PAYLOAD_MAGIC

    body = struct.pack("<BI", version, len(header_json)) + header_json + struct.pack("<I", len(stream)) + stream
    return PAYLOAD_MAGIC + body + struct.pack("<I", zlib.crc32(body))


def split_payload(data: bytes) -> tuple[bytes, bytes]:
    """(header JSON, stream) of a valid payload."""
    hlen = struct.unpack_from("<I", data, 5)[0]
    slen = struct.unpack_from("<I", data, 9 + hlen)[0]
    return data[9: 9 + hlen], data[13 + hlen: 13 + hlen + slen]


class Crash(AssertionError):
    """A case ended in something other than a decode or a one-line InputError."""


def judge(action: Callable[[], object]) -> str:
    """Run ``action``; return "ok" or "refused" (a one-line InputError). Raise :class:`Crash` otherwise."""
    try:
        action()
    except InputError as exc:
        message = str(exc)
        if "\n" in message or "\r" in message or not message.strip():
            raise Crash(f"multi-line or empty refusal: {message!r}") from None
        return "refused"
    except BaseException as exc:  # constriction panics are BaseExceptions; KeyboardInterrupt must stop us
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        first = (str(exc).splitlines() or [""])[0][:200]
        raise Crash(f"{type(exc).__module__}.{type(exc).__name__}: {first}") from exc
    return "ok"


# ----------------------------------------------------------------- seed material (valid streams to mutate)
def sample_stream(loaded, frames: int = 3, size: tuple[int, int] = (64, 48), intra_period: int = 2) -> bytes:
    """A valid bitstream of a smooth synthetic clip (``size`` = (width, height)) coded with ``loaded``."""
    import torch

    from schemas.bitstream import BitstreamHeader
    from workers.video_codec import encode_sequence

    width, height = size
    ramp = torch.linspace(0, 1, width).view(1, 1, -1) * torch.linspace(0.2, 0.8, height).view(1, -1, 1)
    clip = [torch.cat([ramp, ramp.roll(t + 1, -1), 1 - ramp]).clamp(0, 1) for t in range(frames)]
    meta = loaded.metadata
    header = BitstreamHeader(model_id=meta.model_id, weights_sha256=meta.weights_sha256, quality=meta.quality,
                             width=width, height=height, frame_count=frames, fps_num=30, fps_den=1,
                             intra_period=intra_period)
    return encode_sequence(loaded.model, loaded.model.entropy_tables(), clip, header).data


SAMPLE_LORA_STRUCTURE = {"variant": "extended", "ranks": [2, 1], "init_seed": 7}


def sample_payload(loaded, seed: int = 0) -> bytes:
    """A valid decoder-lora payload for ``loaded`` with sparse seeded indices (what training leaves)."""
    import torch

    from schemas.adapt import DecoderLoraConfig, WeightPrior
    from workers.adapt.decoder_updates import make_update, payload_name
    from workers.adapt.payload import WeightUpdate, encode_payload, make_header

    config = DecoderLoraConfig(**SAMPLE_LORA_STRUCTURE)
    template = make_update(loaded.model, config)
    generator = torch.Generator().manual_seed(seed)
    indices = {}
    for key, tensor in template.coded.items():
        values = torch.randint(-3, 4, tuple(tensor.shape), generator=generator)
        keep = torch.rand(tuple(tensor.shape), generator=generator) < 0.1
        indices[payload_name(key)] = torch.where(keep, values, torch.zeros_like(values))
    header = make_header(loaded.metadata.weights_sha256, "decoder-lora", dict(SAMPLE_LORA_STRUCTURE),
                         WeightPrior(grid=0.002), indices)
    return encode_payload(WeightUpdate(header, indices))


def decode_stream_action(data: bytes, loaded, source: str = "case.bits") -> Callable[[], object]:
    """What `adaptjobs decode --model M` does with bytes ``data``, minus the file writing."""
    from workers.decoder import checked_model
    from workers.video_codec import decode_sequence

    return lambda: decode_sequence(data, lambda h: checked_model(loaded, h, source), source)


def decode_payload_action(data: bytes, loaded, source: str = "case.payload") -> Callable[[], object]:
    """What the decoder does with a payload: rebuild the adapted model from ``loaded`` + ``data``."""
    from workers.decoder import decoder_model

    return lambda: decoder_model(loaded, data, source)
