"""adaptjobs' compact side-info record in the SEI of x264/x265 streams: golden bytes, the size of the
whole SEI NAL unit, round trips (plain and chunked), exact strip, standard decoders unaffected, no
record -> None, every kind of damage refused in one line, bounded work."""

from __future__ import annotations

import struct
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.side_info import MAX_UPDATE_BYTES, StandardSideInfo, UpdateMethod, UpdateRef, filter_id
from workers.errors import BitstreamError
from workers.standard.encoder import decode_stream, encode_planes, x264_settings
from workers.standard.sei import extract_user_data, insert_user_data
from workers.standard.side_info import (
    CHUNK_BYTES,
    MAX_CHUNKS,
    SIDE_INFO_UUID,
    attach_side_info,
    check_side_info_against_stream,
    join_chunks,
    pack_record,
    read_side_info,
    split_chunks,
    strip_side_info,
    unpack_record,
)

CODECS = ("x264", "x265")
SHA = "0123456789abcdef" * 4
FILTER = filter_id(SHA)
PROPERTY = settings(max_examples=40, deadline=None)


@pytest.fixture(scope="module")
def streams(carphone) -> dict[str, bytes]:
    return {codec: encode_planes(carphone.yuv, carphone.width, carphone.height, carphone.fps, codec, 37, 0)
            for codec in CODECS}


def side_info(blob: bytes = b"", method: UpdateMethod = UpdateMethod.SCALE_BIAS, **changes) -> StandardSideInfo:
    update = UpdateRef(method=method, bytes=len(blob)) if blob else None
    fields = dict(crf=37.0, threads=2, filter_id=FILTER, filter_enabled=True, update=update)
    return StandardSideInfo(**{**fields, **changes})


def record(flags: int = 1, crf: int = 3700, threads: int = 2, tail: bytes = b"", version: int = 2,
           magic: bytes = b"AJ") -> bytes:
    """A record with any field values and a valid CRC, to reach the checks behind the CRC."""
    body = struct.pack("<2sBBHH8s", magic, version, flags, crf, threads, FILTER) + tail
    return body + struct.pack("<I", zlib.crc32(body))


def carrying(stream: bytes, codec: str, chunks: list[bytes]) -> bytes:
    return insert_user_data(stream, codec, SIDE_INFO_UUID, chunks)


def refused(stream: bytes, codec: str, cause: str) -> str:
    with pytest.raises(BitstreamError, match=cause) as exc:
        read_side_info(stream, codec, "clip.bin")
    message = str(exc.value)
    assert "\n" not in message and message.startswith("clip.bin: "), message
    return message


# --- the layout -----------------------------------------------------------------------------------------

def test_record_golden_bytes():
    """The byte table of workers/standard/side_info.py, field by field."""
    info = side_info(crf=37.5, threads=3)
    assert pack_record(info).hex(" ") == ("41 4a 02 01 a6 0e 03 00 01 23 45 67 89 ab cd ef "
                                          + struct.pack("<I", zlib.crc32(bytes.fromhex("414a0201a60e0300")
                                                                         + FILTER)).hex(" "))
    assert len(pack_record(info)) == 20
    blob = b"\x00\x00\x01up"
    with_update = pack_record(side_info(blob, UpdateMethod.LORA), blob)
    assert with_update[:17].hex(" ") == "41 4a 02 03 74 0e 02 00 01 23 45 67 89 ab cd ef 02"
    assert with_update[17:21 + len(blob)] == b"\x05\x00\x00\x00" + blob
    assert with_update[-4:] == struct.pack("<I", zlib.crc32(with_update[:-4])) and len(with_update) == 25 + len(blob)
    assert split_chunks(pack_record(info)) == [b"\x00\x01" + pack_record(info)]
    # CRF offsets: flag bit 2 and one byte after the filter id (intra nibble high, inter low, 8 = unfiltered)
    shifted = pack_record(side_info(intra_crf_offset=-4, inter_crf_offset=None))
    assert shifted[:17].hex(" ") == "41 4a 02 05 74 0e 02 00 01 23 45 67 89 ab cd ef c8"
    assert len(shifted) == 21 and shifted[-4:] == struct.pack("<I", zlib.crc32(shifted[:-4]))
    both = pack_record(side_info(blob, UpdateMethod.LORA, intra_crf_offset=7, inter_crf_offset=-7), blob)
    assert both[16:22] == b"\x79\x02\x05\x00\x00\x00" and len(both) == 26 + len(blob)
    # residual scales: flag bit 3 and six bytes (intra Y U V, inter Y U V) after the offsets byte, if any
    scaled = pack_record(side_info(intra_crf_offset=-4, inter_crf_offset=None, intra_residual_scales=(12, 16, 32)))
    assert scaled[:23].hex(" ") == "41 4a 02 0d 74 0e 02 00 01 23 45 67 89 ab cd ef c8 0c 10 20 10 10 10"
    assert len(scaled) == 27 and scaled[-4:] == struct.pack("<I", zlib.crc32(scaled[:-4]))
    unshifted = pack_record(side_info(inter_residual_scales=(0, 17, 64)))
    assert unshifted[3] == 0x09 and unshifted[16:22] == b"\x10\x10\x10\x00\x11\x40" and len(unshifted) == 26


def test_update_method_ids_are_fixed():
    """The registry is by hand: these numbers are on the wire and must never change."""
    assert {m.name: m.value for m in UpdateMethod} == {"SCALE_BIAS": 1, "LORA": 2, "LAST_LAYER": 3, "CROSS_LINEAR": 4,
                                                      "CROSS_LINEAR_TIED": 5, "CLASSIFIED_LINEAR": 6,
                                                      "CLASSIFIED_LINEAR_ON_BASE": 7}


@pytest.mark.parametrize("codec,nal_bytes", [("x264", 46), ("x265", 47)])
def test_whole_sei_nal_unit_is_small(streams, codec, nal_bytes):
    """Start code 4 + NAL header 1|2 + payloadType 1 + payloadSize 1 + UUID 16 + chunk 2 + record 20 +
    trailing bits 1: what a record without update adds to a stream; CRF offsets add their one byte."""
    out = attach_side_info(streams[codec], codec, side_info())
    assert len(out) - len(streams[codec]) == nal_bytes
    shifted = attach_side_info(streams[codec], codec, side_info(intra_crf_offset=-2, inter_crf_offset=2))
    assert len(shifted) - len(streams[codec]) == nal_bytes + 1
    scaled = attach_side_info(streams[codec], codec, side_info(intra_crf_offset=-2, intra_residual_scales=(15, 18, 20)))
    assert len(scaled) - len(streams[codec]) == nal_bytes + 7


def test_filter_id_is_the_sha256_prefix_and_crf_is_in_hundredths():
    assert FILTER == bytes.fromhex("0123456789abcdef")
    odd = side_info(filter_id=bytes.fromhex("ff00112233445566"))  # not UTF-8: JSON carries it as hex
    assert '"filter_id":"ff00112233445566"' in odd.model_dump_json()
    assert StandardSideInfo.model_validate_json(odd.model_dump_json()) == odd
    with pytest.raises(ValueError, match="32 bytes"):
        filter_id("ab" * 8)
    assert side_info(crf=22.57).crf_steps == 2257 and side_info(crf=0.07).crf == 0.07
    with pytest.raises(ValueError, match="not a multiple of 1/100"):
        side_info(crf=37.123)
    with pytest.raises(ValueError, match="an update needs filter_enabled"):
        side_info(b"x", filter_enabled=False)


# --- round trips ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("blob_size", [0, 1, 2 * CHUNK_BYTES + 123])
def test_round_trip_strip_and_standard_decode(streams, codec, blob_size):
    """attach -> read gives back info and blob; strip gives back the stream byte for byte; FFmpeg decodes
    the carrying stream to the same frames; a 32 KiB+ update is split over 3 messages."""
    stream = streams[codec]
    blob = bytes((i * 7) % 4 for i in range(blob_size))  # full of 00 00 0x emulations
    info = side_info(blob)
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


offsets = st.one_of(st.none(), st.integers(-7, 7))
infos = st.builds(
    StandardSideInfo, crf=st.integers(0, 5100).map(lambda n: n / 100), threads=st.integers(1, 4096),
    filter_id=st.binary(min_size=8, max_size=8), filter_enabled=st.just(True), intra_crf_offset=offsets,
    inter_crf_offset=st.integers(-7, 7)) | st.builds(
    StandardSideInfo, crf=st.integers(0, 5100).map(lambda n: n / 100), threads=st.integers(1, 4096),
    filter_id=st.binary(min_size=8, max_size=8), filter_enabled=st.booleans()) | st.builds(
    StandardSideInfo, crf=st.integers(0, 5100).map(lambda n: n / 100), threads=st.integers(1, 4096),
    filter_id=st.binary(min_size=8, max_size=8), filter_enabled=st.just(True), intra_crf_offset=st.integers(-7, 7),
    intra_residual_scales=st.tuples(*[st.integers(0, 64)] * 3),
    inter_residual_scales=st.tuples(*[st.integers(0, 64)] * 3))


@PROPERTY
@given(info=infos, blob=st.binary(max_size=3 * CHUNK_BYTES // 2), method=st.sampled_from(UpdateMethod),
       flip=st.integers(0, 1 << 30), bit=st.integers(0, 7))
def test_record_round_trip_and_any_flipped_bit_is_refused(info, blob, method, flip, bit):
    if blob:  # residual scales never travel with an update
        info = StandardSideInfo(**{**info.model_dump(), "filter_enabled": True, "intra_residual_scales": (16,) * 3,
                                   "inter_residual_scales": (16,) * 3,
                                   "update": UpdateRef(method=method, bytes=len(blob))})
    packed = pack_record(info, blob)
    assert unpack_record(packed) == (info, blob)
    assert join_chunks(split_chunks(packed)) == packed
    position = flip % len(packed)
    damaged = packed[:position] + bytes([packed[position] ^ (1 << bit)]) + packed[position + 1:]
    with pytest.raises(BitstreamError):
        unpack_record(damaged, "x")


def test_pack_refuses_a_blob_that_does_not_match():
    with pytest.raises(ValueError, match="says 0 bytes, 3 given"):
        pack_record(side_info(), b"abc")
    with pytest.raises(ValueError, match="says 3 bytes, 2 given"):
        pack_record(side_info(b"abc"), b"ab")


# --- refusals -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
def test_damaged_chunks_are_refused(streams, codec):
    stream, blob = streams[codec], bytes(2 * CHUNK_BYTES)
    chunks = split_chunks(pack_record(side_info(blob), blob))
    assert len(chunks) == 3
    refused(carrying(stream, codec, chunks[:2]), codec, "chunks do not match: chunk 0 of 2 says 0 of 3")
    refused(carrying(stream, codec, [chunks[1], chunks[0], chunks[2]]), codec, "chunk 0 of 3 says 1 of 3")
    refused(carrying(stream, codec, [*chunks, chunks[2]]), codec, "chunks do not match")
    refused(carrying(stream, codec, [chunks[0][:-1], *chunks[1:]]), codec, "chunk 0 has 16383 bytes, expected 16384")
    refused(carrying(stream, codec, [*chunks[:2], chunks[2][:-1]]), codec, "CRC32 mismatch")
    refused(carrying(stream, codec, [b"\x00"]), codec, "chunk 0 is truncated")


@pytest.mark.parametrize("codec", CODECS)
def test_corrupted_or_truncated_record_is_refused(streams, codec):
    stream, packed = streams[codec], pack_record(side_info())
    flipped = packed[:9] + bytes([packed[9] ^ 1]) + packed[10:]
    refused(carrying(stream, codec, split_chunks(flipped)), codec, "CRC32 mismatch")
    refused(carrying(stream, codec, split_chunks(packed[:-1])), codec, "truncated")
    refused(carrying(stream, codec, split_chunks(packed + b"\x00")), codec, "CRC32 mismatch")


@pytest.mark.parametrize("make_record,cause", [
    (lambda: record(magic=b"AX"), "starts with b'AX', expected b'AJ'"),
    (lambda: record(version=1), "format version 1; this adaptjobs reads 2"),
    (lambda: b"AJSI\x01" + record()[5:], "format version 83"),  # format 1's magic and version
    (lambda: record(flags=0x11), "unknown flags 0x11"),
    (lambda: record(flags=0x80), "unknown flags 0x80"),
    (lambda: record(crf=5101), "crf: Input should be less than or equal to 51"),
    (lambda: record(threads=0), "threads: Input should be greater than or equal to 1"),
    (lambda: record(threads=4097), "threads: Input should be less than or equal to 4096"),
    (lambda: record(flags=0, tail=b"x"), "1 bytes after its fields and no update"),
    (lambda: record(flags=2, tail=struct.pack("<BI", 1, 1) + b"u"), "an update needs filter_enabled"),
    (lambda: record(flags=3, tail=struct.pack("<BI", 0, 1) + b"u"), "unknown update method 0 \\(known: 1 scale_bias"),
    (lambda: record(flags=3, tail=struct.pack("<BI", 8, 1) + b"u"), "unknown update method 8"),
    (lambda: record(flags=3, tail=struct.pack("<BI", 1, 0)), "update.bytes: Input should be greater than or equal to 1"),
    (lambda: record(flags=3, tail=struct.pack("<BI", 1, 2) + b"u"), "says the update has 2 bytes, 1 are present"),
    (lambda: record(flags=3, tail=struct.pack("<BI", 1, 1) + b"uv"), "says the update has 1 bytes, 2 are present"),
    (lambda: record(flags=3, tail=b"\x01\x01"), "truncated \\(22 bytes, at least 25 with an update\\)"),
    (lambda: record()[:19], "truncated \\(19 bytes, at least 20 needed\\)"),
    (lambda: record(flags=0x05), "truncated \\(20 bytes, at least 21 with CRF offsets\\)"),
    (lambda: record(flags=0x05, tail=b"\x00"), "CRF offsets byte that says 0 and 0"),
    (lambda: record(flags=0x04, tail=b"\x10"), "CRF offsets need filter_enabled"),
    (lambda: record(flags=0x05, tail=b"\x88"), "switched off for both frame types is filter_enabled false"),
    (lambda: record(flags=0x05, tail=b"\x1f\x00"), "1 bytes after its fields and no update"),
    (lambda: record(flags=0x07, tail=b"\x1f\x01"), "truncated \\(22 bytes, at least 26 with an update\\)"),
    (lambda: record(flags=0x09, tail=b"\x10" * 5), "truncated \\(25 bytes, at least 26 with residual scales\\)"),
    (lambda: record(flags=0x09, tail=b"\x10" * 6), "residual scales that are all 16"),
    (lambda: record(flags=0x09, tail=b"\x10" * 5 + b"\x41"),
     "inter_residual_scales.2: Input should be less than or equal to 64"),
    (lambda: record(flags=0x08, tail=b"\x10" * 5 + b"\x11"), "residual scales need filter_enabled"),
    (lambda: record(flags=0x0d, tail=b"\x8f" + b"\x11" + b"\x10" * 5), "intra frames are shown unfiltered"),
    (lambda: record(flags=0x0b, tail=b"\x11" + b"\x10" * 5 + struct.pack("<BI", 1, 1) + b"u"),
     "residual scales apply to the generic filter alone"),
])
@pytest.mark.parametrize("codec", CODECS)
def test_bad_fields_behind_a_valid_crc_are_refused(streams, codec, make_record, cause):
    refused(carrying(streams[codec], codec, split_chunks(make_record())), codec, cause)


def test_oversized_update_is_refused_by_the_model():
    with pytest.raises(ValueError, match="less than or equal to 1048576"):
        UpdateRef(method=UpdateMethod.LORA, bytes=MAX_UPDATE_BYTES + 1)


def test_claims_are_refused_without_work(streams):
    """A record claiming a 4 GiB update in 30 bytes, a chunk count of 255 with one chunk present, and more
    chunks than the limit: refused at once, nothing sized by a claim."""
    stream = streams["x264"]
    began = time.perf_counter()
    refused(carrying(stream, "x264", split_chunks(record(flags=3, tail=struct.pack("<BI", 1, 0xFFFFFFFF) + b"u"))),
            "x264", "says the update has 4294967295 bytes, 1 are present")
    refused(carrying(stream, "x264", [b"\x00\xff" + record()]), "x264", "chunk 0 of 1 says 0 of 255")
    refused(carrying(stream, "x264", [bytes([i % 256, 0]) for i in range(MAX_CHUNKS + 1)]), "x264",
            f"split over {MAX_CHUNKS + 1} chunks, at most {MAX_CHUNKS}")
    assert time.perf_counter() - began < 1.0


def test_attach_refuses_a_second_record(streams):
    once = attach_side_info(streams["x264"], "x264", side_info())
    with pytest.raises(BitstreamError, match="already carries"):
        attach_side_info(once, "x264", side_info())


# --- the encoder's consistency check ----------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
def test_check_against_stream(streams, carphone, codec):
    stream, info = streams[codec], side_info()
    check_side_info_against_stream(stream, codec, info, carphone.width, carphone.height, 4)
    with pytest.raises(ValueError, match="holds 4 frames, the encoder made 5"):
        check_side_info_against_stream(stream, codec, info, carphone.width, carphone.height, 5)
    with pytest.raises(ValueError, match="holds more than the 3 frames it declares \\(the encoder made 3\\)"):
        check_side_info_against_stream(stream, codec, info, carphone.width, carphone.height, 3)
    with pytest.raises(ValueError, match="is 176x144, the encoder made 352x288"):
        check_side_info_against_stream(stream, codec, info, 352, 288, 4)
    if codec == "x264":
        with pytest.raises(ValueError, match="crf 37.0, the side info says 32.0"):
            check_side_info_against_stream(stream, codec, side_info(crf=32), carphone.width, carphone.height, 4)
