"""adaptjobs' side information inside a standard stream: a compact binary record in
user_data_unregistered SEI messages.

The record (format 2; every integer little-endian)::

    offset size  field
     0     2     magic    b"AJ"
     2     1     version  u8, FORMAT_VERSION
     3     1     flags    u8: bit 0 filter enabled, bit 1 update present, bit 2 CRF offsets present,
                          bit 3 residual scales present, bits 4-7 zero
     4     2     crf      u16, hundredths (0..5100)
     6     2     threads  u16, torch intra-op threads of the filter run (1..4096)
     8     8     filter   first 8 bytes of the sha256 of the filter's weights (schemas.side_info.filter_id)
    only with flag bit 2 (k = 1, else k = 0):
    16     1     offsets  u8: high nibble intra frames, low nibble the others, each a signed 4-bit CRF offset
                          (-7..7, two's complement) or 8 (-8): frames of that type are shown unfiltered
    only with flag bit 3 (j = 6, else j = 0):
    16+k   6     scales   u8 x 6: residual scale numerators (over schemas.side_info.RESIDUAL_SCALE_ONE) of intra
                          Y, U, V, then of the other frames' Y, U, V (0..MAX_RESIDUAL_SCALE)
    only with flag bit 1 (never with bit 3):
    16+k+j 1     method   u8, schemas.side_info.UpdateMethod (1 scale-bias, 2 lora, 3 last-layer, 4 cross-linear, ...)
    17+k+j 4     length   u32, update bytes (1..MAX_UPDATE_BYTES)
    21+k+j n     update   the coded filter update
    always last:
    -4     4     crc      u32, CRC32 (zlib) of every byte before it

A record is 20 bytes without an update and 25 + n with one, one more with CRF offsets, six more with residual
scales. Nothing the stream
already says is in it (codec, frame size, frame count, intra period, each frame's picture type: the decoder
reads them from the stream; the encoder can check them with :func:`check_side_info_against_stream`).

The CRF offsets came after the first streams were written, behind a flag rather than a new version: every
record written before reads as it did (offsets 0 and 0), a record with offsets 0 and 0 is written exactly as
before, and a reader that predates the flag refuses a record that has it ("unknown flags") instead of
filtering with the wrong conditioning.
The residual scales came later still, behind flag bit 3 for the same reasons: a record without them reads as
scales of one, a record whose scales are all one is written without the bytes, and an older reader refuses
the flag.

Format 1 (magic ``AJSI``, a JSON header with two sha256 hex strings: 261 bytes without an update, 291 added
to an x264 stream) never left the ``sei`` branch; it is not read (its version byte reads as 83).

The update has no hash of its own: the CRC32 covers it, and a sha256 stored next to the bytes it hashes
proves nothing that the CRC does not (whoever can change the bytes can recompute either); the update's
decoder validates what it reads in any case.

It travels under SIDE_INFO_UUID in the first access unit (workers/standard/sei.py puts it after the
parameter sets, before the first slice), cut into chunks of at most CHUNK_BYTES record bytes, one
user_data_unregistered message each, every chunk prefixed by ``index u8, count u8``; the reader wants
indexes 0..count-1 in order with one count, joins them and checks the CRC. Without an update that is a
single 22-byte message, and the whole SEI NAL unit (start code 4, NAL header 1 | 2, payloadType 1,
payloadSize 1, UUID 16, chunk 2, record 20, trailing bits 1) is 46 bytes in H.264 and 47 in HEVC (one more
with CRF offsets), one more when the record's bytes need an emulation-prevention byte (8 of 20,000 random records). On carphone
(176x144, 120 frames, CRF 51) that is 1.07% of the x264 stream (4,296 bytes) and 1.27% of the x265 one
(3,701 bytes); format 1 added 6.8% and 7.9% (the commit introducing format 2 gives the script).

Decision on damage: a stream with no record of ours decodes plainly (read_side_info returns None), but a
record that is present and damaged (bad chunks, truncation, CRC, a field out of its limits, unknown
flags or update method, a length that does not match the bytes present) is REFUSED with a one-line
BitstreamError naming the file and the cause. Decoding it plainly with a warning would give frames other
than the encoder's reconstruction (the filter it claims would be skipped) while looking like a success.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

from pydantic import ValidationError

from schemas.side_info import (CRF_STEPS, MAX_UPDATE_BYTES, RESIDUAL_SCALE_ONE, UNIT_SCALES, StandardSideInfo,
                               UpdateMethod)
from workers.errors import BitstreamError, InputError
from workers.standard.encoder import decode_stream, x264_settings
from workers.standard.sei import extract_user_data, insert_user_data, strip_user_data

# Our user_data_unregistered UUID: 6ff60dd1-5050-4ec8-ac91-cc69244f4ec0, drawn once with uuid.uuid4()
# (2026-11-29) and fixed for good: changing it makes every stream written before unreadable.
SIDE_INFO_UUID = bytes.fromhex("6ff60dd150504ec8ac91cc69244f4ec0")
MAGIC = b"AJ"  # short: the 16-byte UUID already says whose message it is; the magic guards the layout
FORMAT_VERSION = 2
FLAG_FILTER_ENABLED = 0x01
FLAG_UPDATE = 0x02
FLAG_CRF_OFFSETS = 0x04
FLAG_RESIDUAL_SCALES = 0x08
KNOWN_FLAGS = FLAG_FILTER_ENABLED | FLAG_UPDATE | FLAG_CRF_OFFSETS | FLAG_RESIDUAL_SCALES
UNFILTERED_NIBBLE = 0x8  # -8 in a signed nibble: that frame type is shown unfiltered
CHUNK_BYTES = 16384  # record bytes per SEI message
_FIXED = struct.Struct("<2sBBHH8s")  # magic, version, flags, crf hundredths, threads, filter id
_OFFSETS = struct.Struct("<B")  # intra nibble, inter nibble
_SCALES = struct.Struct("<6B")  # intra Y, U, V, inter Y, U, V
_UPDATE = struct.Struct("<BI")  # method, length
_CRC = struct.Struct("<I")
_CHUNK = struct.Struct("<BB")  # index, count
MAX_RECORD_BYTES = _FIXED.size + _OFFSETS.size + _SCALES.size + _UPDATE.size + MAX_UPDATE_BYTES + _CRC.size
MAX_CHUNKS = -(-MAX_RECORD_BYTES // CHUNK_BYTES)
assert MAX_CHUNKS <= 255, "chunk index and count are u8"


def pack_record(info: StandardSideInfo, blob: bytes = b"") -> bytes:
    """Serialise a record (see the module docstring). ``blob`` must match ``info.update``."""
    expected = 0 if info.update is None else info.update.bytes
    if len(blob) != expected:
        raise ValueError(f"side info update: the record says {expected} bytes, {len(blob)} given")
    flags = ((FLAG_FILTER_ENABLED if info.filter_enabled else 0) | (FLAG_UPDATE if info.update else 0)
             | (FLAG_CRF_OFFSETS if info.has_crf_offsets else 0)
             | (FLAG_RESIDUAL_SCALES if info.has_residual_scales else 0))
    body = _FIXED.pack(MAGIC, FORMAT_VERSION, flags, info.crf_steps, info.threads, info.filter_id)
    if info.has_crf_offsets:
        body += _OFFSETS.pack(_nibble(info.intra_crf_offset) << 4 | _nibble(info.inter_crf_offset))
    if info.has_residual_scales:
        body += _SCALES.pack(*info.intra_residual_scales, *info.inter_residual_scales)
    if info.update is not None:
        body += _UPDATE.pack(int(info.update.method), info.update.bytes) + blob
    return body + _CRC.pack(zlib.crc32(body))


def _nibble(offset: int | None) -> int:
    """A frame type's CRF offset as its signed nibble (None: UNFILTERED_NIBBLE)."""
    return UNFILTERED_NIBBLE if offset is None else offset & 0xF


def _offset(nibble: int) -> int | None:
    """The inverse of :func:`_nibble`."""
    return None if nibble == UNFILTERED_NIBBLE else nibble - 16 if nibble & 0x8 else nibble


def _fail(source: str | Path | None, cause: str) -> BitstreamError:
    return BitstreamError(source, f"side info record {cause}")


def _check_frame(record: bytes, source: str | Path | None) -> int:
    """Size, magic, version, CRC and reserved flags: the checks before any field is read. Returns the flags."""
    if len(record) < _FIXED.size + _CRC.size:
        raise _fail(source, f"is truncated ({len(record)} bytes, at least {_FIXED.size + _CRC.size} needed)")
    magic, version, flags = record[:2], record[2], record[3]
    if magic != MAGIC:
        raise _fail(source, f"starts with {magic!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise _fail(source, f"has format version {version}; this adaptjobs reads {FORMAT_VERSION}")
    if len(record) > MAX_RECORD_BYTES:
        raise _fail(source, f"has {len(record)} bytes, at most {MAX_RECORD_BYTES} allowed")
    (crc,) = _CRC.unpack_from(record, len(record) - _CRC.size)
    if crc != zlib.crc32(record[: -_CRC.size]):
        raise _fail(source, "is corrupted (CRC32 mismatch)")
    if flags & ~KNOWN_FLAGS:
        raise _fail(source, f"has unknown flags 0x{flags:02x}")
    return flags


def _read_update(record: bytes, at: int, source: str | Path | None) -> tuple[dict, bytes]:
    """(update fields, blob) of a record whose flags say it has an update, its fields at ``at``; lengths
    checked first."""
    start = at + _UPDATE.size
    if len(record) < start + _CRC.size:
        raise _fail(source, f"is truncated ({len(record)} bytes, at least {start + _CRC.size} with an update)")
    method, length = _UPDATE.unpack_from(record, at)
    present = len(record) - start - _CRC.size
    if length != present:
        raise _fail(source, f"says the update has {length} bytes, {present} are present")
    if method not in UpdateMethod._value2member_map_:
        known = ", ".join(f"{m.value} {m.name.lower()}" for m in UpdateMethod)
        raise _fail(source, f"has unknown update method {method} (known: {known})")
    return {"method": method, "bytes": length}, record[start: start + length]


def unpack_record(record: bytes, source: str | Path | None = None) -> tuple[StandardSideInfo, bytes]:
    """Parse and check a whole record; the inverse of :func:`pack_record`."""
    flags = _check_frame(record, source)
    _, _, _, crf_steps, threads, filter_id_bytes = _FIXED.unpack_from(record)
    at, offsets = _FIXED.size, (0, 0)
    if flags & FLAG_CRF_OFFSETS:
        if len(record) < at + _OFFSETS.size + _CRC.size:
            raise _fail(source, f"is truncated ({len(record)} bytes, at least {at + _OFFSETS.size + _CRC.size} "
                                "with CRF offsets)")
        (packed,) = _OFFSETS.unpack_from(record, at)
        offsets, at = (_offset(packed >> 4), _offset(packed & 0xF)), at + _OFFSETS.size
        if offsets == (0, 0):
            raise _fail(source, "has a CRF offsets byte that says 0 and 0 (written without the byte)")
    scales = (UNIT_SCALES, UNIT_SCALES)
    if flags & FLAG_RESIDUAL_SCALES:
        if len(record) < at + _SCALES.size + _CRC.size:
            raise _fail(source, f"is truncated ({len(record)} bytes, at least {at + _SCALES.size + _CRC.size} "
                                "with residual scales)")
        values = _SCALES.unpack_from(record, at)
        scales, at = (values[:3], values[3:]), at + _SCALES.size
        if scales == (UNIT_SCALES, UNIT_SCALES):
            raise _fail(source, f"has residual scales that are all {RESIDUAL_SCALE_ONE} (written without them)")
    update, blob = None, b""
    if flags & FLAG_UPDATE:
        update, blob = _read_update(record, at, source)
    elif len(record) != at + _CRC.size:
        raise _fail(source, f"has {len(record) - at - _CRC.size} bytes after its fields and no update")
    fields = {"crf": crf_steps / CRF_STEPS, "threads": threads, "filter_id": filter_id_bytes,
              "filter_enabled": bool(flags & FLAG_FILTER_ENABLED), "update": update,
              "intra_crf_offset": offsets[0], "inter_crf_offset": offsets[1],
              "intra_residual_scales": scales[0], "inter_residual_scales": scales[1]}
    try:
        info = StandardSideInfo.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "record"
        raise _fail(source, f"is invalid ({where}: {error['msg']})") from None
    return info, blob


def split_chunks(record: bytes) -> list[bytes]:
    """The SEI message data of a record: ``index u8, count u8`` + at most CHUNK_BYTES record bytes."""
    pieces = [record[at: at + CHUNK_BYTES] for at in range(0, len(record), CHUNK_BYTES)]
    if len(pieces) > MAX_CHUNKS:
        raise ValueError(f"side info record of {len(record)} bytes needs more than {MAX_CHUNKS} chunks")
    return [_CHUNK.pack(index, len(pieces)) + piece for index, piece in enumerate(pieces)]


def join_chunks(chunks: list[bytes], source: str | Path | None = None) -> bytes:
    """Reassemble :func:`split_chunks`' output, refusing missing, extra, reordered or oversized chunks."""
    if len(chunks) > MAX_CHUNKS:
        raise BitstreamError(source, f"side info is split over {len(chunks)} chunks, at most {MAX_CHUNKS} allowed")
    for position, chunk in enumerate(chunks):
        if len(chunk) < _CHUNK.size:
            raise BitstreamError(source, f"side info chunk {position} is truncated ({len(chunk)} bytes)")
        index, count = _CHUNK.unpack_from(chunk)
        if index != position or count != len(chunks):
            raise BitstreamError(source, f"side info chunks do not match: chunk {position} of {len(chunks)} says "
                                         f"{index} of {count}")
        size, last = len(chunk) - _CHUNK.size, position == count - 1
        if size > CHUNK_BYTES or (not last and size != CHUNK_BYTES):
            raise BitstreamError(source, f"side info chunk {position} has {size} bytes, "
                                         f"expected {CHUNK_BYTES}{' at most' if last else ''}")
    return b"".join(chunk[_CHUNK.size:] for chunk in chunks)


def attach_side_info(stream: bytes, codec: str, info: StandardSideInfo, blob: bytes = b"") -> bytes:
    """``stream`` (Annex B, from workers.standard.encoder.encode_planes) with the record of ``info`` and
    ``blob`` in its first access unit. Refuses a stream that already carries a record of ours."""
    if extract_user_data(stream, codec, SIDE_INFO_UUID):
        raise BitstreamError(None, "the stream already carries adaptjobs side info (strip it first)")
    return insert_user_data(stream, codec, SIDE_INFO_UUID, split_chunks(pack_record(info, blob)))


def read_side_info(stream: bytes, codec: str,
                   source: str | Path | None = None) -> tuple[StandardSideInfo, bytes] | None:
    """(info, update blob) from the first access unit of ``stream``; None when it holds no record of ours
    (a plain stream: decode it without a filter). A damaged record raises BitstreamError (see the module
    docstring for why it is not decoded plainly). Frame size and count come from the stream itself."""
    chunks = extract_user_data(stream, codec, SIDE_INFO_UUID, source)
    if not chunks:
        return None
    return unpack_record(join_chunks(chunks, source), source)


def strip_side_info(stream: bytes, codec: str, source: str | Path | None = None) -> bytes:
    """``stream`` without our record: byte for byte the stream :func:`attach_side_info` was given."""
    return strip_user_data(stream, codec, SIDE_INFO_UUID, source)


def check_side_info_against_stream(stream: bytes, codec: str, info: StandardSideInfo, width: int, height: int,
                                   frame_count: int) -> None:
    """For the encoder, before it ships a stream: the stream decodes to ``frame_count`` frames of
    ``width`` x ``height`` (what the decoder will take from it, since the record no longer says it), and
    for x264 the CRF in x264's own settings SEI is ``info.crf`` (x264 prints it with one decimal; x265's
    streams carry no settings). Raises ValueError, in one line, naming the first mismatch."""
    try:
        frames = decode_stream(stream, codec, max_frames=frame_count)
    except InputError as exc:
        raise ValueError(f"{exc.cause} (the encoder made {frame_count})") from None
    if len(frames) != frame_count:
        raise ValueError(f"the {codec} stream holds {len(frames)} frames, the encoder made {frame_count}")
    if frames and frames[0][0].shape != (height, width):
        shape = frames[0][0].shape
        raise ValueError(f"the {codec} stream is {shape[1]}x{shape[0]}, the encoder made {width}x{height}")
    settings = x264_settings(stream) if codec == "x264" else None
    found = re.search(r"\bcrf=([0-9.]+)", settings or "")
    if found and abs(float(found.group(1)) - info.crf) > 0.05 + 1e-9:
        raise ValueError(f"x264 coded the stream at crf {found.group(1)}, the side info says {info.crf}")
