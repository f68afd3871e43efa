"""x264 and x265 anchors through PyAV (design.md section 8).

Settings: yuv420p, ``preset`` medium by default, tune zerolatency, no B-frames, keyint equal to our
intra period (0 = one I-frame, then infinite GoP), scene-cut off, rate control by CRF; x265 without its
informational settings SEI. Rate = every packet's bytes + the extradata. The packets are decoded again with FFmpeg and measured exactly as our
reconstructions are: PSNR-RGB on RGB converted with workers.colour, PSNR-YUV on the planes, MS-SSIM-RGB.

PyAV silently ignores option names the encoder does not know, so every option is checked against the
encoder's own AVOption table (and x26N-params keys against the set we allow) before encoding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from schemas.anchors import AnchorPoint
from workers.errors import InputError
from workers.metrics import ms_ssim_rgb, psnr_rgb, psnr_yuv
from workers.colour import yuv420_to_rgb
from workers.video_io import SourceFrames, Video, yuv420_frame, yuv420_planes

ENCODERS = {"x264": ("libx264", "h264", "x264-params"), "x265": ("libx265", "hevc", "x265-params")}
DEFAULT_CRFS = (22.0, 27.0, 32.0, 37.0, 42.0, 47.0, 51.0)  # wide, so that low-rate curves overlap
DEFAULT_PRESET = "medium"
# keys of x264-params / x265-params that adaptjobs sets or lets users set
_PARAM_KEYS = {"keyint", "min-keyint", "scenecut", "bframes", "log-level", "ref", "rc-lookahead", "aq-mode",
               "psy-rd", "deblock", "me", "subme", "qcomp", "ipratio", "no-scenecut", "open-gop", "info"}


def encoder_option_names(codec: str) -> set[str]:
    """Every option name the encoder accepts (private and generic AVOptions)."""
    import av

    context = av.CodecContext.create(ENCODERS[codec][0], "w")
    options = context.supported_options
    return {o.name for o in options.private} | {o.name for o in options.generic}


def validate_options(codec: str, options: dict[str, str]) -> None:
    """Refuse option names the encoder would ignore silently, and unknown x26N-params keys."""
    if codec not in ENCODERS:
        raise InputError(None, f"unknown anchor codec {codec!r} (known: {', '.join(ENCODERS)})")
    known = encoder_option_names(codec)
    unknown = sorted(name for name in options if name not in known)
    if unknown:
        raise InputError(None, f"{ENCODERS[codec][0]} has no option {', '.join(unknown)}")
    params = options.get(ENCODERS[codec][2], "")
    bad = sorted(k.split("=")[0] for k in params.split(":") if k and k.split("=")[0] not in _PARAM_KEYS)
    if bad:
        raise InputError(None, f"{ENCODERS[codec][2]} key(s) {', '.join(bad)} are not allowed here")


def anchor_options(codec: str, crf: float, intra_period: int, frames: int, preset: str,
                   extra: dict[str, str] | None = None) -> dict[str, str]:
    keyint = intra_period if intra_period > 0 else ("infinite" if codec == "x264" else "-1")
    params = [f"keyint={keyint}", f"min-keyint={intra_period if intra_period > 0 else 1}", "scenecut=0", "bframes=0"]
    if codec == "x265":  # info=0: no SEI with x265's settings string (1-2 KB, not needed to decode)
        params += ["log-level=error", "info=0"]
    options = {"preset": preset, "tune": "zerolatency", "crf": f"{crf:g}", ENCODERS[codec][2]: ":".join(params)}
    if codec == "x264":
        options["sc_threshold"] = "0"
    options.update(extra or {})
    validate_options(codec, options)
    return options


def encode_anchor(video: Video, codec: str, crf: float, intra_period: int, preset: str = DEFAULT_PRESET,
                  extra_options: dict[str, str] | None = None) -> tuple[AnchorPoint, list[tuple[np.ndarray, ...]]]:
    """Encode all frames of ``video`` and decode them again. Returns the point and the decoded planes."""
    import av

    if codec not in ENCODERS:
        raise InputError(None, f"unknown anchor codec {codec!r} (known: {', '.join(ENCODERS)})")
    encoder_name, decoder_name, _ = ENCODERS[codec]
    options = anchor_options(codec, crf, intra_period, len(video), preset, extra_options)
    encoder = av.CodecContext.create(encoder_name, "w")
    encoder.width, encoder.height, encoder.pix_fmt = video.width, video.height, "yuv420p"
    encoder.framerate = video.fps
    encoder.time_base = 1 / video.fps
    encoder.gop_size = intra_period if intra_period > 0 else max(len(video), 1) + 1
    encoder.max_b_frames = 0
    encoder.options = options
    packets = []
    for index in range(len(video)):
        frame = yuv420_frame(*video.frame_yuv420(index))
        frame.pts = index
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    total = sum(packet.size for packet in packets) + len(encoder.extradata or b"")
    decoder = av.CodecContext.create(decoder_name, "r")
    if encoder.extradata:
        decoder.extradata = encoder.extradata
    decoded = []
    for packet in [*packets, None]:
        for frame in decoder.decode(packet):
            decoded.append(yuv420_planes(frame))
    if len(decoded) != len(video):
        raise RuntimeError(f"{codec} at crf {crf}: decoded {len(decoded)} frames of {len(video)}")
    return _measure(video, codec, crf, preset, intra_period, total, decoded), decoded


def _measure(video: Video, codec: str, crf: float, preset: str, intra_period: int, total: int,
             decoded: list[tuple[np.ndarray, ...]]) -> AnchorPoint:
    originals = SourceFrames(video)  # RGB converted on access, like the decoded frames below
    reconstructions = _DecodedFrames(decoded)
    return AnchorPoint(
        codec=codec, crf=crf, preset=preset, intra_period=intra_period, frames=len(video), width=video.width,
        height=video.height, bytes=total, bpp=total * 8 / (video.width * video.height * len(video)),
        psnr_rgb=sum(psnr_rgb(originals[i], reconstructions[i]) for i in range(len(video))) / len(video),
        psnr_yuv=sum(psnr_yuv(video.frame_yuv420(i), planes) for i, planes in enumerate(decoded)) / len(video),
        ms_ssim_rgb=ms_ssim_rgb(originals, reconstructions))


class _DecodedFrames(Sequence):
    """Decoded 4:2:0 planes seen as RGB float frames (3, H, W), converted on access."""

    def __init__(self, planes: list[tuple[np.ndarray, ...]]):
        self.planes = planes

    def __len__(self) -> int:
        return len(self.planes)

    def __getitem__(self, index: int) -> torch.Tensor:
        return yuv420_to_rgb(*self.planes[index])


def anchor_curve(video: Video, codec: str, intra_period: int, crfs: Iterable[float] = DEFAULT_CRFS,
                 preset: str = DEFAULT_PRESET) -> list[AnchorPoint]:
    """One point per CRF, sorted by rate."""
    points = [encode_anchor(video, codec, crf, intra_period, preset)[0] for crf in crfs]
    return sorted(points, key=lambda p: p.bpp)
