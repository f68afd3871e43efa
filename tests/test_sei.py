"""user_data_unregistered SEI in real x264/x265 Annex B streams: round trips, exact strip, standard
decoders unaffected, emulation prevention under hostile payloads, malformed syntax refused in one line."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.errors import BitstreamError
from workers.standard.encoder import decode_stream, encode_planes, x264_settings
from workers.standard.sei import (
    H264,
    HEVC,
    START_CODE,
    add_emulation_prevention,
    extract_user_data,
    first_access_unit_prefix,
    insert_user_data,
    iter_nal_spans,
    parse_sei_rbsp,
    remove_emulation_prevention,
    sei_message,
    sei_nal_unit,
    strip_user_data,
    user_data_unregistered,
)

CODECS = ("x264", "x265")
UUID = bytes(range(0xA0, 0xB0))
X264_UUID = bytes.fromhex("dc45e9bde6d948b7962cd820d923eeef")  # x264's own, from x264's encoder/set.c
START_CODE_EMULATIONS = [b"\x00\x00\x00", b"\x00\x00\x01", b"\x00\x00\x02", b"\x00\x00\x03"]
# payload sizes at the 0xFF-run boundaries of payloadSize (UUID + data = 254, 255, 256 bytes) and of the data
SIZES = (0, 1, 238, 239, 240, 254, 255, 256, 65536 + 7)
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def streams(carphone) -> dict[str, bytes]:
    """carphone's 4 frames, intra period 2 (two access units start with an I-frame), CRF 32."""
    return {codec: encode_planes(carphone.yuv, carphone.width, carphone.height, carphone.fps, codec, 32, 2)
            for codec in CODECS}


def hostile(size: int, seed: int = 0) -> bytes:
    """``size`` bytes made of start-code emulations, zero runs and a counter, so every escape case occurs."""
    parts = [START_CODE_EMULATIONS[(i + seed) % 4] + bytes([i % 251]) + b"\x00" * (i % 5) for i in range(size)]
    return b"".join(parts)[:size]


payloads = st.lists(st.sampled_from([*START_CODE_EMULATIONS, b"\x00", b"\x03", b"\x80", b"\xff", b"\x01\x02"]),
                    max_size=120).map(b"".join) | st.binary(max_size=600)


def one_line(exc: pytest.ExceptionInfo, source: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{source}: "), message
    return message


# --- emulation prevention and SEI syntax ----------------------------------------------------------------

@PROPERTY
@given(payloads)
def test_emulation_prevention_round_trips_and_leaves_no_start_code(rbsp):
    escaped = add_emulation_prevention(rbsp)
    assert remove_emulation_prevention(escaped) == rbsp
    assert re.search(b"\x00\x00[\x00-\x02]", escaped) is None
    # an emulation-prevention 03 only ever precedes a byte <= 3, so no 00 00 03 ends the unit
    assert all(m.end() < len(escaped) and escaped[m.end()] <= 3 for m in re.finditer(b"\x00\x00\x03", escaped))


def test_emulation_prevention_golden_bytes():
    assert add_emulation_prevention(b"\x00\x00\x00\x00\x00\x00") == b"\x00\x00\x03\x00\x00\x03\x00\x00"
    assert add_emulation_prevention(b"\x00\x00\x01\x00\x00\x02\x00\x00\x03\x00\x00\x04") == \
        b"\x00\x00\x03\x01\x00\x00\x03\x02\x00\x00\x03\x03\x00\x00\x04"


@pytest.mark.parametrize("size,coded", [(0, b"\x00"), (254, b"\xfe"), (255, b"\xff\x00"), (256, b"\xff\x01"),
                                        (255 * 3 + 7, b"\xff\xff\xff\x07")])
def test_payload_size_is_coded_as_ff_runs(size, coded):
    assert sei_message(5, bytes(size)) == b"\x05" + coded + bytes(size)


def test_sei_nal_unit_layout_golden():
    """H.264 header 06, HEVC header 4E 01; one message 05 | size | UUID | data; trailing 80."""
    assert sei_nal_unit("x264", [user_data_unregistered(UUID, b"ab")]) == b"\x06\x05\x12" + UUID + b"ab\x80"
    assert sei_nal_unit("x265", [user_data_unregistered(UUID, b"")]) == b"\x4e\x01\x05\x10" + UUID + b"\x80"


@pytest.mark.parametrize("rbsp,cause", [
    (b"\x05\x20" + UUID + b"\x80", "payloadSize 32 exceeds the 16 bytes left"),
    (b"\x05" + b"\xff" * 200 + b"\x80", "payloadSize runs past the end"),
    (b"\x05\x10" + UUID, "instead of the rbsp trailing bits"),
    (b"\x80", "without any message"),
    (b"", "ends with nothing"),
])
def test_malformed_sei_is_refused_in_one_line(rbsp, cause):
    with pytest.raises(BitstreamError, match=cause) as exc:
        parse_sei_rbsp(rbsp, "bad.h264")
    one_line(exc, "bad.h264")


def test_nal_spans_tile_the_stream_with_3_and_4_byte_start_codes():
    stream = b"\x00\x00\x00\x01\x67\x01\x00\x00\x01\x68\x02\x00\x00\x00\x01\x65\x03\x00"
    spans = list(iter_nal_spans(stream))
    assert [(s.start, s.body, s.end) for s in spans] == [(0, 4, 6), (6, 9, 11), (11, 15, 18)]
    assert [stream[s.body] & 0x1F for s in spans] == [7, 8, 5]


# --- real streams ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
@PROPERTY
@given(messages=st.lists(payloads, min_size=1, max_size=4))
def test_insert_extract_strip_round_trip(streams, codec, messages):
    stream = streams[codec]
    carrying = insert_user_data(stream, codec, UUID, messages)
    assert extract_user_data(carrying, codec, UUID) == messages
    assert extract_user_data(carrying, codec, bytes(16)) == []
    assert strip_user_data(carrying, codec, UUID) == stream


def _first_slice_type(stream: bytes, codec: str) -> int:
    syntax = H264 if codec == "x264" else HEVC
    types = [syntax.nal_type(stream[s.body: s.body + 1]) for s in iter_nal_spans(stream)]
    return next(t for t in types if t in syntax.vcl_types)


@pytest.mark.parametrize("codec", CODECS)
def test_standard_decoder_ignores_the_sei_under_hostile_payloads(streams, codec):
    """PyAV (FFmpeg) decodes the SEI-carrying stream to exactly the frames of the plain stream, with every
    start-code emulation and the 0xFF-run boundaries in the payloads, and a 64 KiB+ message."""
    stream = streams[codec]
    messages = [hostile(size, seed) for seed, size in enumerate(SIZES)]
    carrying = insert_user_data(stream, codec, UUID, messages)
    assert extract_user_data(carrying, codec, UUID) == messages
    assert strip_user_data(carrying, codec, UUID) == stream
    assert carrying.index(START_CODE + (b"\x06" if codec == "x264" else b"\x4e\x01")) < len(stream)
    plain, decoded = decode_stream(stream, codec), decode_stream(carrying, codec)
    assert len(plain) == len(decoded) == 4
    for frame_plain, frame_decoded in zip(plain, decoded):
        for a, b in zip(frame_plain, frame_decoded):
            assert a.tobytes() == b.tobytes()
    assert _first_slice_type(carrying, codec) == _first_slice_type(stream, codec)


def ffmpeg_user_data(stream: bytes, codec: str) -> list[bytes]:
    """UUID + data of every user_data_unregistered message FFmpeg's own SEI parser attached to the first
    decoded frame (frame side data SEI_UNREGISTERED)."""
    import av

    decoder = av.CodecContext.create({"x264": "h264", "x265": "hevc"}[codec], "r")
    for packet in [*decoder.parse(stream), *decoder.parse(None), None]:
        for frame in decoder.decode(packet):
            return [bytes(side) for side in frame.side_data if str(side.type).endswith("SEI_UNREGISTERED")]
    return []


@pytest.mark.parametrize("codec", CODECS)
def test_ffmpeg_parses_our_messages_exactly(streams, codec):
    """Interop from the other side: FFmpeg's SEI parser finds each of our messages, unescaped, with the
    hostile payloads and the payloadSize boundaries (x264's settings message comes first)."""
    messages = [hostile(size, seed) for seed, size in enumerate(SIZES)]
    found = ffmpeg_user_data(insert_user_data(streams[codec], codec, UUID, messages), codec)
    ours = [data for data in found if data[:16] == UUID]
    assert ours == [UUID + data for data in messages]
    assert [data[:16] for data in found if data[:16] != UUID] == ([X264_UUID] if codec == "x264" else [])


def test_x264_settings_sei_is_kept_and_still_readable(streams):
    """Interop from the other side: x264's own user_data_unregistered SEI (its UUID, its settings text)
    is parsed by our reader and survives insert and strip."""
    stream = streams["x264"]
    carrying = insert_user_data(stream, "x264", UUID, [b"\x00\x00\x01ours"])
    (settings_data,) = extract_user_data(carrying, "x264", X264_UUID)
    assert settings_data.startswith(b"x264 - core") and b"psy=0" in settings_data and b"aq=0" in settings_data
    assert x264_settings(carrying) == x264_settings(stream) is not None
    assert carrying.index(settings_data) < carrying.index(b"ours")


@pytest.mark.parametrize("codec", CODECS)
def test_only_the_first_access_unit_is_read(streams, codec):
    """A message of ours after the first slice is not found, and a malformed SEI there is never parsed
    (bounded work: the reader stops at the first slice)."""
    stream = streams[codec]
    syntax = H264 if codec == "x264" else HEVC
    slices = [s for s in iter_nal_spans(stream) if syntax.nal_type(stream[s.body: s.body + 1]) in syntax.vcl_types]
    later = slices[1].start
    ours = START_CODE + sei_nal_unit(codec, [user_data_unregistered(UUID, b"late")])
    broken = START_CODE + syntax.sei_header + b"\x05\xff\xff\x80"
    tampered = stream[:later] + ours + broken + stream[later:]
    assert extract_user_data(tampered, codec, UUID) == []
    assert strip_user_data(tampered, codec, UUID) == tampered


@pytest.mark.parametrize("codec", CODECS)
def test_huge_claimed_payload_size_is_refused_quickly(streams, codec):
    """A payloadSize of 255 * 4000 + 200 (about 1 MB) in a short stream: refused before anything is sized
    by it."""
    stream = streams[codec]
    syntax = H264 if codec == "x264" else HEVC
    first_slice = first_access_unit_prefix(stream, syntax)[1].start
    claim = START_CODE + syntax.sei_header + b"\x05" + b"\xff" * 4000 + b"\xc8" + UUID + b"\x80"
    hostile_stream = stream[:first_slice] + claim + stream[first_slice:]
    began = time.perf_counter()
    with pytest.raises(BitstreamError, match="payloadSize 1020200 exceeds") as exc:
        extract_user_data(hostile_stream, codec, UUID, source="huge.bin")
    assert time.perf_counter() - began < 0.5
    one_line(exc, "huge.bin")


def test_mixed_sei_unit_keeps_the_other_messages(streams):
    """An SEI NAL unit holding someone else's message and ours: strip rewrites it with theirs only."""
    stream = streams["x265"]
    first_slice = first_access_unit_prefix(stream, HEVC)[1].start
    theirs = user_data_unregistered(X264_UUID, b"\x00\x00\x00theirs")
    unit = START_CODE + sei_nal_unit("x265", [theirs, user_data_unregistered(UUID, b"ours")])
    mixed = stream[:first_slice] + unit + stream[first_slice:]
    stripped = strip_user_data(mixed, "x265", UUID)
    assert extract_user_data(stripped, "x265", UUID) == []
    assert extract_user_data(stripped, "x265", X264_UUID) == [b"\x00\x00\x00theirs"]
    assert stripped == stream[:first_slice] + START_CODE + sei_nal_unit("x265", [theirs]) + stream[first_slice:]


def test_stream_without_slice_is_refused_for_insert():
    with pytest.raises(BitstreamError, match="no slice"):
        insert_user_data(b"\x00\x00\x00\x01\x67\x42", "x264", UUID, [b"x"])
    assert extract_user_data(b"not a stream at all", "x264", UUID) == []
