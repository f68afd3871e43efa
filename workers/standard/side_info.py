"""adaptjobs' side information inside a standard stream: a record in user_data_unregistered SEI messages.

The record (all integers little-endian)::

    magic     4 bytes  b"AJSI"
    version   u8       FORMAT_VERSION
    hlen      u16      length of the header (<= MAX_HEADER_BYTES)
    header    hlen     UTF-8 JSON of schemas.side_info.StandardSideInfo, keys sorted, no spaces
    blob      the coded filter update: exactly header.update.bytes bytes (none when update is null)
    crc       u32      CRC32 of everything above

It travels under SIDE_INFO_UUID in the first access unit (workers/standard/sei.py puts it after the
parameter sets, before the first slice). A record longer than CHUNK_BYTES is cut into chunks, one
user_data_unregistered message each, every chunk prefixed by ``index u16, count u16``; the reader wants
indexes 0..count-1 in order with one count, joins them and checks the CRC.

Decision on damage: a stream with no record of ours decodes plainly (read_side_info returns None), but a
record that is present and damaged (bad chunks, truncation, CRC, JSON that is not strict, a field out of
its limits, an update whose length or sha256 does not match) is REFUSED with a one-line BitstreamError
naming the file and the cause. Decoding it plainly with a warning would give frames other than the
encoder's reconstruction (the filter it claims would be skipped) while looking like a success.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections import Counter
from pathlib import Path

from pydantic import ValidationError

from schemas.side_info import MAX_UPDATE_BYTES, StandardSideInfo
from workers.errors import BitstreamError
from workers.standard.sei import extract_user_data, insert_user_data, strip_user_data

# Our user_data_unregistered UUID: 6ff60dd1-5050-4ec8-ac91-cc69244f4ec0, drawn once with uuid.uuid4()
# (2026-11-29) and fixed for good: changing it makes every stream written before unreadable.
SIDE_INFO_UUID = bytes.fromhex("6ff60dd150504ec8ac91cc69244f4ec0")
MAGIC = b"AJSI"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 4096
CHUNK_BYTES = 16384  # record bytes per SEI message
_PREFIX = struct.Struct("<4sBH")  # magic, version, hlen
_CHUNK = struct.Struct("<HH")  # index, count
_CRC = struct.Struct("<I")
MAX_CHUNKS = -(-(_PREFIX.size + MAX_HEADER_BYTES + MAX_UPDATE_BYTES + _CRC.size) // CHUNK_BYTES)


def header_json(info: StandardSideInfo) -> bytes:
    """The canonical header bytes: the only spelling a reader accepts, so equal records are equal bytes."""
    return json.dumps(info.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode("utf-8")


def _check_blob(info: StandardSideInfo, blob: bytes, source: str | Path | None) -> None:
    if info.update is None:
        if blob:
            raise BitstreamError(source, f"side info has no update but {len(blob)} update bytes are present")
        return
    if len(blob) != info.update.bytes:
        raise BitstreamError(source, f"side info update: the header says {info.update.bytes} bytes, "
                                     f"{len(blob)} are present")
    if hashlib.sha256(blob).hexdigest() != info.update.sha256:
        raise BitstreamError(source, "side info update: sha256 mismatch")


def pack_record(info: StandardSideInfo, blob: bytes = b"") -> bytes:
    """Serialise a record (see the module docstring). ``blob`` must match ``info.update``."""
    _check_blob(info, blob, None)
    head = header_json(info)
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError(f"side info header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}")
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)) + head + blob
    return body + _CRC.pack(zlib.crc32(body))


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    duplicates = sorted(key for key, seen in Counter(key for key, _ in pairs).items() if seen > 1)
    if duplicates:
        raise ValueError(f"duplicate key(s) {', '.join(duplicates)}")
    return dict(pairs)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_header(head: bytes, source: str | Path | None = None) -> StandardSideInfo:
    """Strict JSON -> StandardSideInfo: no duplicate keys, no NaN/Infinity, no unknown fields, every
    limit checked, and the bytes must be the canonical spelling of what they say."""
    try:
        json.loads(head.decode("utf-8"), object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
        info = StandardSideInfo.model_validate_json(head, strict=True)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError and ValidationError are ValueErrors
        cause = f"{exc.error_count()} invalid field(s), first: {_first_error(exc)}" if isinstance(
            exc, ValidationError) else str(exc).splitlines()[0]
        raise BitstreamError(source, f"side info header is invalid ({cause})") from None
    if header_json(info) != head:
        raise BitstreamError(source, "side info header is not in canonical form (sorted keys, no spaces)")
    return info


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "header"
    return f"{where}: {error['msg']}"


def unpack_record(record: bytes, source: str | Path | None = None) -> tuple[StandardSideInfo, bytes]:
    """Parse and check a whole record; the inverse of :func:`pack_record`."""
    if len(record) < _PREFIX.size + _CRC.size:
        raise BitstreamError(source, f"side info record is truncated ({len(record)} bytes)")
    magic, version, length = _PREFIX.unpack_from(record)
    if magic != MAGIC:
        raise BitstreamError(source, f"side info record starts with {magic!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise BitstreamError(source, f"side info format version {version} is not supported "
                                     f"(this adaptjobs reads {FORMAT_VERSION})")
    if length > min(MAX_HEADER_BYTES, len(record) - _PREFIX.size - _CRC.size):
        raise BitstreamError(source, f"side info record is truncated or corrupted (header length {length}, "
                                     f"record {len(record)} bytes)")
    (crc,) = _CRC.unpack_from(record, len(record) - _CRC.size)
    if crc != zlib.crc32(record[: -_CRC.size]):
        raise BitstreamError(source, "side info record is corrupted (CRC32 mismatch)")
    info = parse_header(record[_PREFIX.size: _PREFIX.size + length], source)
    blob = record[_PREFIX.size + length: -_CRC.size]
    _check_blob(info, blob, source)
    return info, blob


def split_chunks(record: bytes) -> list[bytes]:
    """The SEI message data of a record: ``index u16, count u16`` + at most CHUNK_BYTES record bytes."""
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
        if len(chunk) - _CHUNK.size > CHUNK_BYTES or (position < count - 1 and len(chunk) - _CHUNK.size != CHUNK_BYTES):
            raise BitstreamError(source, f"side info chunk {position} has {len(chunk) - _CHUNK.size} bytes, "
                                         f"expected {CHUNK_BYTES}{' at most' if position == count - 1 else ''}")
    return b"".join(chunk[_CHUNK.size:] for chunk in chunks)


def attach_side_info(stream: bytes, codec: str, info: StandardSideInfo, blob: bytes = b"") -> bytes:
    """``stream`` (Annex B, from workers.standard.encoder.encode_planes) with the record of ``info`` and
    ``blob`` in its first access unit. Refuses a stream that already carries a record of ours."""
    if info.codec != codec:
        raise ValueError(f"side info for {info.codec} cannot go into a {codec} stream")
    if extract_user_data(stream, codec, SIDE_INFO_UUID):
        raise BitstreamError(None, "the stream already carries adaptjobs side info (strip it first)")
    return insert_user_data(stream, codec, SIDE_INFO_UUID, split_chunks(pack_record(info, blob)))


def read_side_info(stream: bytes, codec: str, source: str | Path | None = None) -> tuple[StandardSideInfo, bytes] | None:
    """(info, update blob) from the first access unit of ``stream``; None when it holds no record of ours
    (a plain stream: decode it without a filter). A damaged record raises BitstreamError (see the module
    docstring for why it is not decoded plainly)."""
    chunks = extract_user_data(stream, codec, SIDE_INFO_UUID, source)
    if not chunks:
        return None
    info, blob = unpack_record(join_chunks(chunks, source), source)
    if info.codec != codec:
        raise BitstreamError(source, f"side info is for {info.codec}, the stream is decoded as {codec}")
    return info, blob


def strip_side_info(stream: bytes, codec: str, source: str | Path | None = None) -> bytes:
    """``stream`` without our record: byte for byte the stream :func:`attach_side_info` was given."""
    return strip_user_data(stream, codec, SIDE_INFO_UUID, source)
