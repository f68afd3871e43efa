"""The adaptjobs bitstream: a container of per-frame entropy-coded streams.

Byte layout (all integers little-endian)::

    magic      4 bytes  b"AJVB"
    version    u8       FORMAT_VERSION
    hlen       u32      length of the header
    header     hlen     UTF-8 JSON of schemas.BitstreamHeader (keys sorted, no spaces)
    hcrc       u32      CRC32 of version | hlen | header
    then, frame_count times:
      type     u8       0 = I-frame (2 streams: y, z), 1 = P-frame (4 streams: motion y, motion z,
                        residual y, residual z)
      count    u8       number of streams (must match the type)
      lengths  u32 * count
      streams  the stream bytes, concatenated
      crc      u32      CRC32 of type | count | lengths | streams

The file ends right after the last frame's CRC. Shapes are not stored: they follow from the header's
width and height. Nothing here is pickled; a reader checks every length before it slices.

A reader trusts nothing in a header (issue 11): the header is strict JSON (no duplicate keys, no
NaN/Infinity) of at most MAX_HEADER_BYTES, its fields are within the schema's hard limits, and what it
asks for must fit the bytes present: ``frame_count`` frame records need at least their framing bytes,
and a frame of W*H pixels must carry at least W*H / MAX_PIXELS_PER_FRAME_BYTE bytes of streams, so
decode time and memory grow with the file, not with what a header claims. Every stream length is a whole
number of 32-bit words and a frame with no coded bytes at all is refused.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from schemas.bitstream import BitstreamHeader
from workers.errors import BitstreamError, validation_line
from workers.limits import (I_FRAME_FRAMING_BYTES, MAX_HEADER_BYTES, MAX_PIXELS_PER_FRAME_BYTE,
                            P_FRAME_FRAMING_BYTES)
from workers.strict_json import StrictJsonError, loads_strict

MAGIC = b"AJVB"
FORMAT_VERSION = 4  # 4: latent symbols beyond the tables are escape-coded, not clamped (issue 14)
READABLE_VERSIONS = (2, 3, 4)  # 3: the header records the encoder's thread count; 2 lacks it; both clamp
ESCAPED_LATENTS_SINCE = 4
FRAME_INTRA, FRAME_INTER = 0, 1
STREAMS_PER_FRAME_TYPE = {FRAME_INTRA: 2, FRAME_INTER: 4}
FRAME_TYPE_NAMES = {FRAME_INTRA: "I", FRAME_INTER: "P"}


@dataclass
class FrameChunk:
    frame_type: int
    streams: list[bytes]


def header_json(header: BitstreamHeader) -> bytes:
    return json.dumps(header.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":")).encode("utf-8")


def pack(header: BitstreamHeader, frames: list[FrameChunk]) -> bytes:
    """Serialise a header and its frames (``len(frames)`` must equal ``header.frame_count``)."""
    if len(frames) != header.frame_count:
        raise ValueError(f"header says {header.frame_count} frames, got {len(frames)}")
    head = header_json(header)
    prefix = struct.pack("<BI", FORMAT_VERSION, len(head)) + head
    parts = [MAGIC, prefix, struct.pack("<I", zlib.crc32(prefix))]
    for frame in frames:
        if len(frame.streams) != STREAMS_PER_FRAME_TYPE[frame.frame_type]:
            raise ValueError(f"frame type {frame.frame_type} needs {STREAMS_PER_FRAME_TYPE[frame.frame_type]} streams")
        chunk = struct.pack(f"<BB{len(frame.streams)}I", frame.frame_type, len(frame.streams),
                            *(len(s) for s in frame.streams)) + b"".join(frame.streams)
        parts += [chunk, struct.pack("<I", zlib.crc32(chunk))]
    return b"".join(parts)


class _Reader:
    """Bounds-checked cursor over the bytes of one file."""

    def __init__(self, data: bytes, source: str | Path | None):
        self.data, self.pos, self.source = data, 0, source

    def take(self, size: int, what: str) -> bytes:
        if size > len(self.data) - self.pos:
            raise BitstreamError(self.source, f"truncated: {what} needs {size} bytes, "
                                              f"{len(self.data) - self.pos} left at offset {self.pos}")
        chunk = self.data[self.pos: self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))


def unpack_header(data: bytes, source: str | Path | None = None) -> tuple[BitstreamHeader, int]:
    """Parse and check magic, version, header and header CRC. Returns (header, offset of frame 0)."""
    if not data:
        raise BitstreamError(source, "the bitstream is empty (0 bytes)")
    reader = _Reader(data, source)
    magic = reader.take(len(MAGIC), "the magic bytes") if len(data) >= len(MAGIC) else data
    if magic != MAGIC:
        raise BitstreamError(source, f"not an adaptjobs bitstream (starts with {bytes(magic[:4])!r}, expected {MAGIC!r})")
    version, length = reader.unpack("<BI", "the header")
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise BitstreamError(source, f"bitstream format version {version} is not supported (this adaptjobs reads {readable})")
    if length > MAX_HEADER_BYTES:
        raise BitstreamError(source, f"the header claims {length} bytes, more than the limit of {MAX_HEADER_BYTES}")
    head = reader.take(length, "the header")
    (crc,) = reader.unpack("<I", "the header CRC")
    if crc != zlib.crc32(data[len(MAGIC): reader.pos - 4]):
        raise BitstreamError(source, "the header is corrupted (CRC32 mismatch)")
    try:
        header = BitstreamHeader.model_validate(loads_strict(head))
    except StrictJsonError as exc:
        raise BitstreamError(source, f"invalid header ({exc})") from None
    except ValidationError as exc:
        raise BitstreamError(source, f"invalid header ({validation_line(exc)})") from None
    _check_fits(header, len(data) - reader.pos, source)
    return header, reader.pos


def latents_escaped(data: bytes) -> bool:
    """Whether a bitstream that :func:`unpack_header` accepted codes out-of-range latents with escapes
    (format 4) or clamped them (formats 2, 3): the decoder must use the matching latent tables."""
    return data[len(MAGIC)] >= ESCAPED_LATENTS_SINCE


def minimum_frame_bytes(header: BitstreamHeader) -> int:
    """The fewest bytes ``header.frame_count`` frame records can take (framing only, empty streams)."""
    intra = 1 if header.intra_period == 0 else 1 + (header.frame_count - 1) // header.intra_period
    return intra * I_FRAME_FRAMING_BYTES + (header.frame_count - intra) * P_FRAME_FRAMING_BYTES


def minimum_stream_bytes(header: BitstreamHeader) -> int:
    """The fewest stream bytes one frame of the header's size must carry (see module docstring)."""
    return -(-header.width * header.height // MAX_PIXELS_PER_FRAME_BYTE)


def _check_fits(header: BitstreamHeader, available: int, source: str | Path | None) -> None:
    needed = minimum_frame_bytes(header) + header.frame_count * minimum_stream_bytes(header)
    if needed > available:
        raise BitstreamError(source, f"the header declares {header.frame_count} frames of {header.width}x{header.height}, "
                                     f"which need at least {needed} bytes; {available} are present")


def _check_streams(lengths: tuple[int, ...], header: BitstreamHeader, index: int, source: str | Path | None) -> None:
    if any(n % 4 for n in lengths):
        raise BitstreamError(source, f"frame {index} is corrupted (stream lengths {list(lengths)} are not whole 32-bit words)")
    if sum(lengths) < max(1, minimum_stream_bytes(header)):
        raise BitstreamError(source, f"frame {index} carries {sum(lengths)} bytes of coded data; a {header.width}x"
                                     f"{header.height} frame needs at least {max(1, minimum_stream_bytes(header))}")


def unpack(data: bytes, source: str | Path | None = None) -> tuple[BitstreamHeader, list[FrameChunk]]:
    """Parse a whole bitstream, checking every length and CRC; the inverse of :func:`pack`."""
    header, offset = unpack_header(data, source)
    reader = _Reader(data, source)
    reader.pos = offset
    frames = []
    for index in range(header.frame_count):
        start = reader.pos
        frame_type, count = reader.unpack("<BB", f"frame {index}")
        expected = STREAMS_PER_FRAME_TYPE.get(frame_type)
        if expected is None or count != expected:
            raise BitstreamError(source, f"frame {index} is corrupted (type {frame_type} with {count} streams)")
        lengths = reader.unpack(f"<{count}I", f"frame {index} stream lengths")
        _check_streams(lengths, header, index, source)
        streams = [reader.take(n, f"frame {index} stream {k}") for k, n in enumerate(lengths)]
        (crc,) = reader.unpack("<I", f"frame {index} CRC")
        if crc != zlib.crc32(data[start: reader.pos - 4]):
            raise BitstreamError(source, f"frame {index} is corrupted (CRC32 mismatch)")
        if frame_type != (FRAME_INTRA if header.is_intra(index) else FRAME_INTER):
            raise BitstreamError(source, f"frame {index} has type {FRAME_TYPE_NAMES[frame_type]}, "
                                         f"but the intra period {header.intra_period} says otherwise")
        frames.append(FrameChunk(frame_type, streams))
    if reader.pos != len(data):
        raise BitstreamError(source, f"{len(data) - reader.pos} unexpected bytes after the last frame")
    return header, frames
