"""x264 and x265 through PyAV: PSNR-tuned encoder settings, Annex B elementary streams, decoding.

One set of settings serves both the base codecs of standard-codec units and the anchors, so method
``none`` on ``x264`` is the x264 anchor point for point (design.md sections 8 and 9):

- yuv420p, ``preset`` medium by default, tune zerolatency, no B-frames, keyint = our intra period
  (0 = one I-frame then an infinite GoP), scene-cut off, rate control by CRF;
- **PSNR-tuned**: psycho-visual optimisations and adaptive quantisation off (x264 ``tune=psnr``, x265
  ``psy-rd=0:psy-rdoq=0:aq-mode=0``). Their defaults trade PSNR away on purpose, and a PSNR-trained
  post-filter that wins that back would report a gain that is not one;
- **one encoder thread**: x264 under zerolatency uses sliced threads, one slice per thread, so the bytes
  would depend on the machine's core count; x265 gets ``frame-threads=1`` for the same reason. The same
  input and settings give the same bytes on every machine (checked by a golden-bytes test);
- x265 without its informational settings SEI (``info=0``, 1-2 KB not needed to decode).

PyAV silently ignores option names the encoder does not know, so every option name is checked against
the encoder's own AVOption table, and x26N-params keys against the set we allow, before encoding.

Planes are 8-bit 4:2:0 numpy arrays ``(Y (H, W), U (H/2, W/2), V (H/2, W/2))``, code values as they are
(never through RGB).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from itertools import chain

import numpy as np

from workers.errors import InputError

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class StandardCodecInfo:
    """PyAV names of one standard codec and the suffix of its Annex B elementary stream."""

    encoder: str
    decoder: str
    params_option: str
    suffix: str


CODECS: dict[str, StandardCodecInfo] = {
    "x264": StandardCodecInfo("libx264", "h264", "x264-params", ".h264"),
    "x265": StandardCodecInfo("libx265", "hevc", "x265-params", ".hevc"),
}
DEFAULT_CRFS = (22.0, 27.0, 32.0, 37.0, 42.0, 47.0, 51.0)  # wide, so that low-rate curves overlap
DEFAULT_PRESET = "medium"
PARSE_CHUNK_BYTES = 1 << 20  # Annex B bytes handed to FFmpeg's parser at a time (see access_units)
# keys of x264-params / x265-params that adaptjobs sets or lets users set
_PARAM_KEYS = {"keyint", "min-keyint", "scenecut", "bframes", "log-level", "ref", "rc-lookahead", "aq-mode",
               "psy-rd", "psy-rdoq", "deblock", "me", "subme", "qcomp", "ipratio", "no-scenecut", "open-gop", "info",
               "threads", "frame-threads", "pools"}


def codec_info(codec: str) -> StandardCodecInfo:
    if codec not in CODECS:
        raise InputError(None, f"unknown standard codec {codec!r} (known: {', '.join(CODECS)})")
    return CODECS[codec]


def encoder_option_names(codec: str) -> set[str]:
    """Every option name the encoder accepts (private and generic AVOptions)."""
    import av

    context = av.CodecContext.create(codec_info(codec).encoder, "w")
    options = context.supported_options
    return {o.name for o in options.private} | {o.name for o in options.generic}


def validate_options(codec: str, options: dict[str, str]) -> None:
    """Refuse option names the encoder would ignore silently, and unknown x26N-params keys."""
    info = codec_info(codec)
    known = encoder_option_names(codec)
    unknown = sorted(name for name in options if name not in known)
    if unknown:
        raise InputError(None, f"{info.encoder} has no option {', '.join(unknown)}")
    params = options.get(info.params_option, "")
    bad = sorted(k.split("=")[0] for k in params.split(":") if k and k.split("=")[0] not in _PARAM_KEYS)
    if bad:
        raise InputError(None, f"{info.params_option} key(s) {', '.join(bad)} are not allowed here")


def encoder_options(codec: str, crf: float, intra_period: int, preset: str = DEFAULT_PRESET,
                    extra: dict[str, str] | None = None) -> dict[str, str]:
    """The PyAV options of a PSNR-tuned, single-threaded encode (see the module docstring)."""
    info = codec_info(codec)
    if not 0 <= crf <= 51:
        raise InputError(None, f"CRF must be within 0..51, got {crf:g}")
    keyint = intra_period if intra_period > 0 else ("infinite" if codec == "x264" else "-1")
    params = [f"keyint={keyint}", f"min-keyint={intra_period if intra_period > 0 else 1}", "scenecut=0", "bframes=0"]
    if codec == "x264":
        options = {"preset": preset, "tune": "psnr,zerolatency", "crf": f"{crf:g}", "threads": "1",
                   "sc_threshold": "0"}
    else:
        params += ["psy-rd=0", "psy-rdoq=0", "aq-mode=0", "frame-threads=1", "log-level=error", "info=0"]
        options = {"preset": preset, "tune": "zerolatency", "crf": f"{crf:g}"}
    options[info.params_option] = ":".join(params)
    options.update(extra or {})
    validate_options(codec, options)
    return options


def encode_planes(frames: Iterable[Planes], width: int, height: int, fps: Fraction, codec: str, crf: float,
                  intra_period: int, preset: str = DEFAULT_PRESET,
                  extra_options: dict[str, str] | None = None) -> bytes:
    """Encode 8-bit 4:2:0 frames into one Annex B elementary stream (parameter sets in-band, every packet
    concatenated; nothing is kept out of band, so the stream's size is its rate)."""
    import av

    from workers.video_io import yuv420_frame

    info = codec_info(codec)
    options = encoder_options(codec, crf, intra_period, preset, extra_options)
    encoder = av.CodecContext.create(info.encoder, "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.framerate = fps
    encoder.time_base = 1 / fps
    encoder.gop_size = intra_period if intra_period > 0 else 1 << 30
    encoder.max_b_frames = 0
    encoder.thread_count = 1
    encoder.options = options
    chunks: list[bytes] = []
    for index, planes in enumerate(frames):
        frame = yuv420_frame(*planes)
        frame.pts = index
        chunks += [bytes(packet) for packet in encoder.encode(frame)]
    chunks += [bytes(packet) for packet in encoder.encode(None)]
    if encoder.extradata:  # only with a global-header flag, which we never set; kept for safety
        chunks.insert(0, bytes(encoder.extradata))
    return b"".join(chunks)


def decode_stream(data: bytes, codec: str, source: str | None = None, max_frames: int | None = None) -> list[Planes]:
    """Decode an Annex B elementary stream with FFmpeg into 8-bit 4:2:0 planes, in display order
    (no B-frames: the same as coding order). ``max_frames`` bounds the work on untrusted input; the frames
    held are bounded by workers.limits.MAX_DECODED_FRAME_BYTES (see :func:`decode_stream_and_rate`)."""
    return decode_stream_and_rate(data, codec, source, max_frames)[0]


def decode_stream_and_rate(data: bytes, codec: str, source: str | None = None,
                           max_frames: int | None = None) -> tuple[list[Planes], Fraction | None]:
    """:func:`decode_stream` plus the frame rate the stream's VUI timing gives (x264 and x265 write the
    encoder's; None when the stream has none), so a decoded .y4m carries the source's rate."""
    decoded = decode_stream_typed(data, codec, source, max_frames)
    return decoded.frames, decoded.rate


@dataclass
class DecodedStream:
    """What FFmpeg decodes from a stream: ``frames`` (planes, display order), ``intra`` (per frame: FFmpeg's
    picture type is I, the stream's own word for it: the post-filter's per-frame-type CRF offsets key on it)
    and ``rate`` (VUI timing; None when the stream has none)."""

    frames: list[Planes]
    intra: list[bool]
    rate: Fraction | None


def decode_stream_typed(data: bytes, codec: str, source: str | None = None,
                        max_frames: int | None = None) -> DecodedStream:
    """:func:`decode_stream_and_rate` plus each frame's picture type.

    Memory is bounded frame by frame, because a few bytes of stream can stand for a whole frame (a flat
    720p x264 frame: ~45 bytes, 1.4 MB decoded). At the first frame, the stream's access units times that
    frame's size must fit MAX_DECODED_FRAME_BYTES (a stream that cannot fit is refused before any more
    decoding: one frame per access unit, no B-frames); then every frame is counted before it is kept,
    so a stream whose frames grow midway is refused at the first frame that would cross the limit."""
    import av

    from workers.limits import check_decoded_frame_bytes

    decoder = av.CodecContext.create(codec_info(codec).decoder, "r")
    decoder.thread_count = 1
    frames: list[Planes] = []
    intra: list[bool] = []
    held = 0
    try:
        units = count_access_units(data, codec)
        for planes, is_intra in _decoded_planes(decoder, access_units(decoder, data)):
            size = sum(plane.nbytes for plane in planes)
            shape = f"{planes[0].shape[1]}x{planes[0].shape[0]}"
            if not frames:
                check_decoded_frame_bytes(source, size * units, f"{units} access units of {shape}")
            held += size
            check_decoded_frame_bytes(source, held, f"frame {len(frames)} is {shape}")
            frames.append(planes)
            intra.append(is_intra)
            if max_frames is not None and len(frames) > max_frames:
                raise InputError(source, f"the {codec} stream holds more than the {max_frames} frames it declares")
    except av.FFmpegError as exc:
        raise InputError(source, f"not a decodable {codec} stream ({exc.__class__.__name__})") from None
    rate = decoder.framerate
    return DecodedStream(frames, intra, Fraction(rate.numerator, rate.denominator) if rate and rate.numerator > 0
                         else None)


def access_units(context, data: bytes) -> Iterator:
    """The Annex B stream's access units as PyAV packets, split by ``context``'s parser PARSE_CHUNK_BYTES
    at a time, then flushed: never all at once, because a packet costs ~580 bytes of memory for a ~45-byte
    access unit (measured: 140,000 packets of a flat 720p stream, 5.9 MB of stream, 81 MB of packets)."""
    for start in range(0, len(data), PARSE_CHUNK_BYTES):
        yield from context.parse(data[start: start + PARSE_CHUNK_BYTES])
    yield from context.parse(None)  # parse(None) flushes the parser


def count_access_units(data: bytes, codec: str) -> int:
    """How many access units (one frame each: no B-frames) ``data`` holds, found by a parser of its own
    (cheap: no decoding), so a decoder can refuse a stream that cannot fit before holding its frames."""
    import av

    parser = av.CodecContext.create(codec_info(codec).decoder, "r")
    return sum(1 for _ in access_units(parser, data))


def _decoded_planes(decoder, packets: Iterable) -> Iterator[tuple[Planes, bool]]:
    """Each frame FFmpeg decodes from ``packets`` (then the flush), as (planes, picture type is I), one at a
    time: a frame is converted only when the caller asks for it, so nothing is materialised before the
    caller's checks."""
    import av

    from workers.video_io import yuv420_planes

    for packet in chain(packets, [None]):
        for frame in decoder.decode(packet):
            yield yuv420_planes(frame), frame.pict_type == av.video.frame.PictureType.I


def x264_settings(data: bytes) -> str | None:
    """The settings string x264 writes into a user_data_unregistered SEI of the first access unit
    ("... options: cabac=1 ref=3 ... psy=0 ... aq=0"), to check what PyAV really set; None if absent."""
    start = data.find(b"x264 - core")
    if start < 0:
        return None
    end = data.find(b"\x00", start)
    return data[start: end if end > 0 else None].decode("ascii", errors="replace")
