"""user_data_unregistered SEI messages in H.264 / HEVC Annex B elementary streams.

Generic: this module knows NAL units, SEI syntax and UUIDs, nothing of what adaptjobs puts inside (that
is workers/standard/side_info.py). Facts it relies on (H.264 7.3-7.4 and Annex B, HEVC 7.3-7.4; design.md
section 9):

- Annex B: every NAL unit follows a start code ``00 00 01``, optionally preceded by more zero bytes
  (``00 00 00 01``, or trailing zeros of the previous unit). A NAL unit never ends with ``00`` and never
  holds ``00 00 00/01/02`` (emulation prevention), so a maximal run of zeros before ``01`` belongs to the
  start code. Here a unit's *span* runs from the first byte of that zero run to the first zero of the next
  start code: spans tile the stream, so cutting one out or pasting one in is exact.
- NAL header: H.264 1 byte, type = byte & 0x1F (SEI 6, SPS 7, PPS 8, AUD 9, slices 1-5); HEVC 2 bytes,
  type = (byte0 >> 1) & 0x3F (VPS/SPS/PPS 32/33/34, AUD 35, prefix SEI 39, VCL 0-31: slices 0-21 plus
  reserved VCL types).
- SEI payload (the RBSP, after removing emulation-prevention bytes): one or more sei_message() =
  payloadType and payloadSize, each coded as ``FF`` bytes (255 each) plus a last byte < 255, then
  payloadSize bytes; then rbsp_trailing_bits, one ``80`` byte (messages are byte aligned).
  user_data_unregistered is payloadType 5: a 16-byte UUID, then the data.
- Emulation prevention: inside a NAL unit, ``00 00`` followed by a byte <= 3 gets an ``03`` inserted
  after the two zeros; a reader removes every ``03`` that follows ``00 00``.

Our SEI NAL units go right before the first slice of the first access unit: after the parameter sets and
after any SEI the encoder wrote (x264 puts its settings there), which is where both standards allow a
prefix SEI. Standard decoders skip user_data_unregistered messages whose UUID they do not know.

Reading is bounded: only the NAL units before the first slice are looked at, every length is checked
against the bytes present before anything is sliced, and nothing is allocated from a claimed size.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from workers.errors import BitstreamError

USER_DATA_UNREGISTERED = 5
UUID_BYTES = 16
START_CODE = b"\x00\x00\x00\x01"  # 4-byte form for the units we write (the first unit of an AU uses it)
_TRAILING_BITS = 0x80
_EMULATED = re.compile(b"\x00\x00(?=[\x00-\x03])")
_ESCAPED = re.compile(b"\x00\x00\x03")


@dataclass(frozen=True)
class NalSyntax:
    """How one standard spells NAL headers, and which unit types matter to us."""

    name: str
    header_bytes: int
    sei_type: int
    sei_header: bytes  # the header of the SEI units we write (nal_ref_idc 0 / layer 0, temporal id 0)
    vcl_types: frozenset[int]

    def nal_type(self, unit: bytes) -> int:
        return unit[0] & 0x1F if self.header_bytes == 1 else (unit[0] >> 1) & 0x3F


H264 = NalSyntax("H.264", 1, 6, bytes([0x06]), frozenset(range(1, 6)))
HEVC = NalSyntax("HEVC", 2, 39, bytes([39 << 1, 0x01]), frozenset(range(0, 32)))
_SYNTAX = {"x264": H264, "h264": H264, "x265": HEVC, "hevc": HEVC}


def nal_syntax(codec: str) -> NalSyntax:
    """The NAL syntax of a codec named as adaptjobs does (``x264``, ``x265``) or as FFmpeg does."""
    if codec not in _SYNTAX:
        raise ValueError(f"no NAL syntax for codec {codec!r} (known: {', '.join(_SYNTAX)})")
    return _SYNTAX[codec]


@dataclass(frozen=True)
class NalSpan:
    """One NAL unit of an Annex B stream: ``stream[start:end]`` is its start code (with any zeros
    before it) and its bytes; ``stream[body:end]`` is the NAL unit itself (header + payload, still
    with emulation-prevention bytes)."""

    start: int
    body: int
    end: int


def iter_nal_spans(stream: bytes) -> Iterator[NalSpan]:
    """Split an Annex B stream into NAL units, lazily (a caller that stops early does no more work).
    Bytes before the first start code are not a NAL unit and are not yielded."""
    found = stream.find(b"\x00\x00\x01")
    while found >= 0:
        start = found
        while start > 0 and stream[start - 1] == 0:
            start -= 1
        body = found + 3
        following = stream.find(b"\x00\x00\x01", body)
        end = len(stream) if following < 0 else following
        if following >= 0:
            while end > body and stream[end - 1] == 0:
                end -= 1
        yield NalSpan(start, body, end)
        found = following


def first_access_unit_prefix(stream: bytes, syntax: NalSyntax) -> tuple[list[NalSpan], NalSpan | None]:
    """The NAL units before the first slice, and that slice (None when the stream has no slice)."""
    before: list[NalSpan] = []
    for span in iter_nal_spans(stream):
        if span.end - span.body < syntax.header_bytes:
            before.append(span)  # an empty or cut unit: not a slice, nothing to parse
            continue
        if syntax.nal_type(stream[span.body: span.body + 1]) in syntax.vcl_types:
            return before, span
        before.append(span)
    return before, None


def add_emulation_prevention(rbsp: bytes) -> bytes:
    """RBSP -> NAL payload: an ``03`` after every ``00 00`` that a byte <= 3 follows."""
    return _EMULATED.sub(b"\x00\x00\x03", rbsp)


def remove_emulation_prevention(payload: bytes) -> bytes:
    """NAL payload -> RBSP: drop the ``03`` of every ``00 00 03``."""
    return _ESCAPED.sub(b"\x00\x00", payload)


def _ff_coded(value: int) -> bytes:
    """payloadType / payloadSize coding: value // 255 bytes of FF, then value % 255."""
    return b"\xff" * (value // 255) + bytes([value % 255])


def sei_message(payload_type: int, payload: bytes) -> bytes:
    """One sei_message() in RBSP form (no trailing bits)."""
    return _ff_coded(payload_type) + _ff_coded(len(payload)) + payload


def user_data_unregistered(uuid: bytes, data: bytes) -> bytes:
    """One user_data_unregistered sei_message(): payloadType 5, the UUID, then the data."""
    _check_uuid(uuid)
    return sei_message(USER_DATA_UNREGISTERED, uuid + data)


def sei_nal_unit(codec: str, messages: list[bytes]) -> bytes:
    """A whole SEI NAL unit (header + escaped payload, no start code) holding sei_message()s in RBSP
    form, e.g. from :func:`user_data_unregistered`."""
    if not messages:
        raise ValueError("an SEI NAL unit needs at least one message")
    syntax = nal_syntax(codec)
    return syntax.sei_header + add_emulation_prevention(b"".join(messages) + bytes([_TRAILING_BITS]))


@dataclass(frozen=True)
class SeiMessage:
    """One parsed sei_message(): its type and its payload bytes (RBSP, unescaped)."""

    payload_type: int
    payload: bytes


def _read_ff_coded(rbsp: bytes, pos: int, limit: int, what: str, source: str | Path | None) -> tuple[int, int]:
    """Read one FF-run value from ``rbsp[pos:limit]``: (value, position after it)."""
    value = 0
    while pos < limit and rbsp[pos] == 0xFF:
        value, pos = value + 255, pos + 1
    if pos >= limit:
        raise BitstreamError(source, f"malformed SEI: the {what} runs past the end of the NAL unit")
    return value + rbsp[pos], pos + 1


def parse_sei_rbsp(rbsp: bytes, source: str | Path | None = None) -> list[SeiMessage]:
    """Every sei_message() of an SEI RBSP (NAL header removed, emulation prevention removed).

    Raises BitstreamError on a payloadSize larger than the bytes left, on a missing or wrong
    rbsp_trailing_bits byte, and on an SEI with no message. Trailing zero bytes (cabac_zero_words are
    not allowed here, but some muxers pad) are ignored."""
    end = len(rbsp)
    while end > 0 and rbsp[end - 1] == 0:
        end -= 1
    if end == 0 or rbsp[end - 1] != _TRAILING_BITS:
        last = f"0x{rbsp[end - 1]:02x}" if end else "nothing"
        raise BitstreamError(source, f"malformed SEI: ends with {last} instead of the rbsp trailing bits 0x80")
    messages, pos = [], 0
    while pos < end - 1:
        payload_type, pos = _read_ff_coded(rbsp, pos, end - 1, "payloadType", source)
        size, pos = _read_ff_coded(rbsp, pos, end - 1, "payloadSize", source)
        if size > end - 1 - pos:
            raise BitstreamError(source, f"malformed SEI: payloadSize {size} exceeds the {end - 1 - pos} bytes left "
                                         f"in the NAL unit")
        messages.append(SeiMessage(payload_type, rbsp[pos: pos + size]))
        pos += size
    if not messages:
        raise BitstreamError(source, "malformed SEI: a SEI NAL unit without any message")
    return messages


def _check_uuid(uuid: bytes) -> None:
    if len(uuid) != UUID_BYTES:
        raise ValueError(f"a user_data_unregistered UUID has {UUID_BYTES} bytes, got {len(uuid)}")


def _sei_messages(stream: bytes, span: NalSpan, syntax: NalSyntax, source: str | Path | None) -> list[SeiMessage]:
    rbsp = remove_emulation_prevention(stream[span.body + syntax.header_bytes: span.end])
    return parse_sei_rbsp(rbsp, source)


def _is_ours(message: SeiMessage, uuid: bytes) -> bool:
    return (message.payload_type == USER_DATA_UNREGISTERED and len(message.payload) >= UUID_BYTES
            and message.payload[:UUID_BYTES] == uuid)


def _prefix_seis(stream: bytes, codec: str, source: str | Path | None):
    """(span, messages) of every SEI NAL unit before the first slice, and that slice's span."""
    syntax = nal_syntax(codec)
    before, slice_span = first_access_unit_prefix(stream, syntax)
    seis = [(span, _sei_messages(stream, span, syntax, source)) for span in before
            if span.end - span.body >= syntax.header_bytes
            and syntax.nal_type(stream[span.body: span.body + 1]) == syntax.sei_type]
    return seis, slice_span


def extract_user_data(stream: bytes, codec: str, uuid: bytes, source: str | Path | None = None) -> list[bytes]:
    """The data (UUID removed) of every user_data_unregistered message with ``uuid`` in the SEI NAL units
    of the first access unit, in stream order; [] when there is none. Other SEI messages (x264's
    settings, ...) are parsed, so malformed syntax is noticed, and skipped."""
    _check_uuid(uuid)
    seis, _ = _prefix_seis(stream, codec, source)
    return [m.payload[UUID_BYTES:] for _, messages in seis for m in messages if _is_ours(m, uuid)]


def insert_user_data(stream: bytes, codec: str, uuid: bytes, messages: list[bytes]) -> bytes:
    """``stream`` with one SEI NAL unit holding one user_data_unregistered message per item of
    ``messages`` (each under ``uuid``), inserted right before the first slice of the first access unit.
    The inserted bytes are ``00 00 00 01`` + the NAL unit, so :func:`strip_user_data` gives back the
    exact input."""
    if not messages:
        return stream
    _, slice_span = first_access_unit_prefix(stream, nal_syntax(codec))
    if slice_span is None:
        raise BitstreamError(None, f"no slice in the {codec} stream: nowhere to put an SEI")
    unit = sei_nal_unit(codec, [user_data_unregistered(uuid, data) for data in messages])
    return stream[: slice_span.start] + START_CODE + unit + stream[slice_span.start:]


def strip_user_data(stream: bytes, codec: str, uuid: bytes, source: str | Path | None = None) -> bytes:
    """``stream`` without the user_data_unregistered messages under ``uuid`` in its first access unit.
    An SEI NAL unit holding only such messages is cut out whole (exact inverse of
    :func:`insert_user_data`); one that also holds other messages is rewritten without ours."""
    _check_uuid(uuid)
    seis, _ = _prefix_seis(stream, codec, source)
    pieces, kept_from = [], 0
    for span, messages in seis:
        others = [m for m in messages if not _is_ours(m, uuid)]
        if len(others) == len(messages):
            continue
        pieces.append(stream[kept_from: span.start])
        if others:
            unit = sei_nal_unit(codec, [sei_message(m.payload_type, m.payload) for m in others])
            pieces.append(stream[span.start: span.body] + unit)
        kept_from = span.end
    return b"".join(pieces) + stream[kept_from:]
