"""Payload formats 2 and 3 (read only): their UTF-8 JSON header, parsed strictly.

Byte layout (integers little-endian)::

    magic    4 bytes  b"AJWP"
    version  u8       2 or 3
    hlen     u32      length of the header
    header   hlen     UTF-8 JSON of schemas.adapt.JsonPayloadHeader (keys sorted, no spaces; ~300 bytes)
    slen     u32      length of the constriction stream
    stream   slen     ANS words (uint32, little-endian) of all grid indices, one Categorical table
    crc      u32      CRC32 of everything from version to the end of the stream

Format 3's ``tensors_sha256`` fingerprints the method and structure with the tensor list; format 2's the
tensor list alone. The header is strict JSON (no duplicate keys, no NaN/Infinity) and its ``structure`` is
checked (:func:`check_structure`) before any tensor is built from it.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from pydantic import ValidationError

from schemas.adapt import JsonPayloadHeader, PayloadHeader
from workers.errors import BitstreamError, validation_line
from workers.limits import MAX_HEADER_BYTES, MAX_LORA_RANK, MAX_STRUCTURE_ITEMS
from workers.strict_json import StrictJsonError, loads_strict

MAGIC = b"AJWP"
VERSIONS = (2, 3)
MAX_STRUCTURE_STRING = 64


def split_json_payload(data: bytes, source: str | Path | None) -> tuple[PayloadHeader, bytes, int]:
    """(header, stream bytes, format version) of a format 2/3 payload after every framing check; the caller
    has checked the magic."""
    if len(data) < 4 + 5 + 4 + 4:
        raise BitstreamError(source, "truncated payload (shorter than its fixed fields)")
    version, hlen = struct.unpack_from("<BI", data, 4)
    if hlen > MAX_HEADER_BYTES:
        raise BitstreamError(source, f"the payload header claims {hlen} bytes, more than the limit of {MAX_HEADER_BYTES}")
    header_end = 9 + hlen
    if len(data) < header_end + 4:
        raise BitstreamError(source, "truncated payload (header cut off)")
    (slen,) = struct.unpack_from("<I", data, header_end)
    stream_end = header_end + 4 + slen
    if len(data) < stream_end + 4:
        raise BitstreamError(source, f"truncated payload ({len(data)} bytes, the header announces {stream_end + 4})")
    if len(data) > stream_end + 4:
        raise BitstreamError(source, f"{len(data) - stream_end - 4} unexpected bytes after the payload")
    (crc,) = struct.unpack_from("<I", data, stream_end)
    if zlib.crc32(data[4:stream_end]) != crc:
        raise BitstreamError(source, "payload CRC mismatch (corrupted)")
    try:
        header = JsonPayloadHeader.model_validate(loads_strict(data[9:header_end]))
    except StrictJsonError as exc:
        raise BitstreamError(source, f"invalid payload header ({exc})") from None
    except ValidationError as exc:
        raise BitstreamError(source, f"invalid payload header ({validation_line(exc)})") from None
    check_structure(header.structure, source)
    return header.parsed(), data[header_end + 4: stream_end], version


def check_structure(structure: dict, source: str | Path | None = None) -> None:
    """Refuse structure options that could not come from a method config, before anything is built from
    them: at most MAX_STRUCTURE_ITEMS keys and list items, short strings, every integer a non-negative
    int32 (sizes, seeds), every rank in 1..MAX_LORA_RANK (issue 11: ``ranks: [-1]`` crashed tensor
    construction). Nested objects are refused: no method's structure has them."""
    if len(structure) > MAX_STRUCTURE_ITEMS:
        raise BitstreamError(source, f"invalid payload header (structure has {len(structure)} options)")
    for key, value in structure.items():
        items = value if isinstance(value, list) else [value]
        if len(key) > MAX_STRUCTURE_STRING or len(items) > MAX_STRUCTURE_ITEMS:
            raise BitstreamError(source, "invalid payload header (structure option too long)")
        for item in items:
            _check_structure_item(key, item, source)


def _check_structure_item(key: str, item: object, source: str | Path | None) -> None:
    what = f"invalid payload header (structure.{key[:MAX_STRUCTURE_STRING]}"
    if isinstance(item, bool) or (isinstance(item, str) and len(item) <= MAX_STRUCTURE_STRING):
        return
    if not isinstance(item, int):
        raise BitstreamError(source, f"{what} holds a {type(item).__name__}, not a number, string or flag)")
    if not 0 <= item < 2**31:
        raise BitstreamError(source, f"{what} = {item} is outside 0..2^31-1)")
    if key == "ranks" and not 1 <= item <= MAX_LORA_RANK:
        raise BitstreamError(source, f"{what}: rank {item} is outside 1..{MAX_LORA_RANK})")
