"""adaptjobs' side-info record in the SEI of x264/x265 streams: round trips (plain and chunked), exact
strip, standard decoders unaffected, no record -> None, every kind of damage refused in one line."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.side_info import FilterRef, StandardSideInfo, UpdateRef
from workers.errors import BitstreamError
from workers.standard.encoder import decode_stream, encode_planes, x264_settings
from workers.standard.sei import extract_user_data, insert_user_data
from workers.standard.side_info import (
    CHUNK_BYTES,
    MAGIC,
    SIDE_INFO_UUID,
    attach_side_info,
    header_json,
    pack_record,
    read_side_info,
    split_chunks,
    strip_side_info,
    unpack_record,
)

CODECS = ("x264", "x265")
SHA = "0123456789abcdef" * 4
PROPERTY = settings(max_examples=40, deadline=None)


@pytest.fixture(scope="module")
def streams(carphone) -> dict[str, bytes]:
    return {codec: encode_planes(carphone.yuv, carphone.width, carphone.height, carphone.fps, codec, 37, 0)
            for codec in CODECS}


def side_info(codec: str, blob: bytes = b"", **changes) -> StandardSideInfo:
    update = UpdateRef(method="bias-scale", bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest()) if blob else None
    fields = dict(codec=codec, crf=37.0, width=176, height=144, frame_count=4, intra_period=0, threads=2,
                  filter=FilterRef(name=f"postfilter-{codec}", weights_sha256=SHA), filter_enabled=True, update=update)
    return StandardSideInfo(**{**fields, **changes})


def record_from_header(head: bytes, blob: bytes = b"", version: int = 1, magic: bytes = MAGIC) -> bytes:
    """A record with any header bytes and a valid CRC, to reach the checks behind the CRC."""
    body = struct.pack("<4sBH", magic, version, len(head)) + head + blob
    return body + struct.pack("<I", zlib.crc32(body))


def carrying(stream: bytes, codec: str, chunks: list[bytes]) -> bytes:
    return insert_user_data(stream, codec, SIDE_INFO_UUID, chunks)


def refused(stream: bytes, codec: str, cause: str) -> str:
    with pytest.raises(BitstreamError, match=cause) as exc:
        read_side_info(stream, codec, "clip.bin")
    message = str(exc.value)
    assert "\n" not in message and message.startswith("clip.bin: "), message
    return message


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("blob_size", [0, 1, 2 * CHUNK_BYTES + 123])
def test_round_trip_strip_and_standard_decode(streams, codec, blob_size):
    """attach -> read gives back info and blob; strip gives back the stream byte for byte; FFmpeg decodes
    the carrying stream to the same frames; a 32 KiB+ update is split over 3 messages."""
    stream = streams[codec]
    blob = bytes((i * 7) % 4 for i in range(blob_size))  # full of 00 00 0x emulations
    info = side_info(codec, blob)
    out = attach_side_info(stream, codec, info, blob)
    assert read_side_info(out, codec, "clip") == (info, blob)
    assert strip_side_info(out, codec) == stream
    assert len(extract_user_data(out, codec, SIDE_INFO_UUID)) == -(-(len(pack_record(info, blob))) // CHUNK_BYTES)
    for plain, decoded in zip(decode_stream(stream, codec), decode_stream(out, codec), strict=True):
        assert all(a.tobytes() == b.tobytes() for a, b in zip(plain, decoded))
    if codec == "x264":
        assert x264_settings(out) == x264_settings(stream) is not None


@pytest.mark.parametrize("codec", CODECS)
def test_stream_without_record_reads_none(streams, codec):
    assert read_side_info(streams[codec], codec, "plain") is None
    other = insert_user_data(streams[codec], codec, bytes(16), [b"someone else's"])
    assert read_side_info(other, codec, "plain") is None


def test_header_golden_bytes():
    """Canonical header: sorted keys, no spaces, floats as floats."""
    info = side_info("x264", filter_enabled=False)
    assert header_json(info) == (
        b'{"codec":"x264","crf":37.0,"filter":{"name":"postfilter-x264","weights_sha256":"' + SHA.encode()
        + b'"},"filter_enabled":false,"frame_count":4,"height":144,"intra_period":0,"threads":2,"update":null,'
        b'"width":176}')
    record = pack_record(info)
    assert record[:7] == MAGIC + b"\x01" + struct.pack("<H", len(header_json(info)))
    assert record[-4:] == struct.pack("<I", zlib.crc32(record[:-4]))


infos = st.builds(
    StandardSideInfo, codec=st.sampled_from(CODECS), crf=st.floats(0, 51), width=st.integers(1, 8192).map(lambda n: 2 * n),
    height=st.integers(1, 8192).map(lambda n: 2 * n), frame_count=st.integers(1, 1_000_000),
    intra_period=st.integers(0, 1_000_000), threads=st.integers(1, 4096),
    filter=st.builds(FilterRef, name=st.from_regex(r"[a-z][a-z0-9._-]{0,20}", fullmatch=True),
                     weights_sha256=st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
    filter_enabled=st.booleans())


@PROPERTY
@given(info=infos, blob=st.binary(max_size=3 * CHUNK_BYTES // 2))
def test_record_round_trip_and_any_flipped_byte_is_refused(info, blob):
    if blob:
        info = info.model_copy(update={"update": UpdateRef(method="m", bytes=len(blob),
                                                           sha256=hashlib.sha256(blob).hexdigest())})
    record = pack_record(info, blob)
    assert unpack_record(record) == (info, blob)
    position = len(blob) * 31 % len(record)
    damaged = record[:position] + bytes([record[position] ^ 0x41]) + record[position + 1:]
    with pytest.raises(BitstreamError):
        unpack_record(damaged, "x")


@pytest.mark.parametrize("codec", CODECS)
def test_damaged_chunks_are_refused(streams, codec):
    stream, blob = streams[codec], bytes(2 * CHUNK_BYTES)
    chunks = split_chunks(pack_record(side_info(codec, blob), blob))
    assert len(chunks) == 3
    refused(carrying(stream, codec, chunks[:2]), codec, "chunks do not match: chunk 0 of 2 says 0 of 3")
    refused(carrying(stream, codec, [chunks[1], chunks[0], chunks[2]]), codec, "chunk 0 of 3 says 1 of 3")
    refused(carrying(stream, codec, [*chunks, chunks[2]]), codec, "chunks do not match")
    refused(carrying(stream, codec, [chunks[0][:-1], *chunks[1:]]), codec, "chunk 0 has 16383 bytes, expected 16384")
    refused(carrying(stream, codec, [*chunks[:2], chunks[2][:-1]]), codec, "CRC32 mismatch")
    refused(carrying(stream, codec, [b"\x00"]), codec, "chunk 0 is truncated")


@pytest.mark.parametrize("codec", CODECS)
def test_corrupted_or_truncated_record_is_refused(streams, codec):
    stream = streams[codec]
    record = pack_record(side_info(codec))
    flipped = record[:20] + bytes([record[20] ^ 1]) + record[21:]
    refused(carrying(stream, codec, split_chunks(flipped)), codec, "CRC32 mismatch")
    refused(carrying(stream, codec, split_chunks(record[:-1])), codec, "truncated or corrupted|CRC32")
    refused(carrying(stream, codec, split_chunks(record[:9])), codec, "truncated")
    refused(carrying(stream, codec, split_chunks(record_from_header(b"{}", magic=b"XXXX"))), codec, "expected b'AJSI'")
    refused(carrying(stream, codec, split_chunks(record_from_header(header_json(side_info(codec)), version=2))),
            codec, "version 2 is not supported")
    other = "x265" if codec == "x264" else "x264"
    refused(carrying(stream, codec, split_chunks(pack_record(side_info(other)))), codec, f"is for {other}")


def _header(codec: str, **changes) -> dict:
    return {**json.loads(header_json(side_info(codec))), **changes}


def _canonical(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize("make_head,cause", [
    (lambda c: _canonical(_header(c))[:-1] + b',"crf":1.0}', "duplicate key"),
    (lambda c: _canonical(_header(c)).replace(b'"crf":37.0', b'"crf":NaN'), "NaN is not a JSON number"),
    (lambda c: _canonical(_header(c)).replace(b'"crf":37.0', b'"crf":Infinity'), "Infinity is not a JSON number"),
    (lambda c: _canonical(_header(c, extra=1)), "extra: Extra inputs are not permitted"),
    (lambda c: _canonical(_header(c, crf=51.5)), "crf: Input should be less than or equal to 51"),
    (lambda c: _canonical(_header(c, width=0)), "width: Input should be greater than or equal to 2"),
    (lambda c: _canonical(_header(c, height=145)), "must be even"),
    (lambda c: _canonical(_header(c, threads=0)), "threads"),
    (lambda c: _canonical(_header(c, frame_count=10**9)), "frame_count"),
    (lambda c: _canonical(_header(c, filter_enabled="true")), "filter_enabled"),
    (lambda c: _canonical(_header(c, filter=None)), "need a filter"),
    (lambda c: _canonical(_header(c, update={"method": "m", "bytes": 5, "sha256": SHA})), "says 5 bytes, 0 are present"),
    (lambda c: _canonical(_header(c)).replace(b",", b", "), "canonical form"),
    (lambda c: b"\xff" + _canonical(_header(c)), "invalid"),
    (lambda c: b"[1, 2", "invalid"),
])
@pytest.mark.parametrize("codec", CODECS)
def test_bad_header_behind_a_valid_crc_is_refused(streams, codec, make_head, cause):
    refused(carrying(streams[codec], codec, split_chunks(record_from_header(make_head(codec)))), codec, cause)


def test_update_must_match_the_blob(streams):
    blob = b"\x00\x00\x01update"
    head = _canonical(_header("x264", update={"method": "m", "bytes": len(blob), "sha256": SHA}))
    refused(carrying(streams["x264"], "x264", split_chunks(record_from_header(head, blob))), "x264", "sha256 mismatch")
    head = _canonical(_header("x264"))
    refused(carrying(streams["x264"], "x264", split_chunks(record_from_header(head, blob))), "x264",
            "no update but 9 update bytes")


def test_attach_refuses_a_second_record_and_a_codec_mismatch(streams):
    once = attach_side_info(streams["x264"], "x264", side_info("x264"))
    with pytest.raises(BitstreamError, match="already carries"):
        attach_side_info(once, "x264", side_info("x264"))
    with pytest.raises(ValueError, match="cannot go into a x265 stream"):
        attach_side_info(streams["x265"], "x265", side_info("x264"))
