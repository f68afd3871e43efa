"""x264 and x265 as base codecs: PSNR-tuned encodes of workers/standard/encoder.py, Annex B streams.

Quality is the CRF; the stream is the plain Annex B elementary stream (``<name>.h264`` / ``<name>.hevc``),
decoded by FFmpeg; reconstructions stay 8-bit 4:2:0 planes (never through RGB on their way to a .y4m).
Method ``none`` on x264 is the x264 anchor point for point: the same settings (encoder.py). A codec with a
learned post-filter subclasses :class:`StandardCodec` (its encode filters the decoded planes; its
``load`` checks the filter's weights) and registers its own name and suffix.

lambda: the H.264 reference encoder's mode-decision multiplier for QP q is 0.85 * 2^((q - 12) / 3) in
squared code values (0..255) per bit; taking the CRF for the QP and dividing by 255^2 gives the lmbda of
our RD cost lmbda * 255^2 * MSE + bpp: 1 / (0.85 * 2^((crf - 12) / 3)). It is an approximation (CRF is
not a constant QP) used only to compare candidates of the same unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from schemas.job import CodecPoint, CodecRun
from workers.codecs.base import BaseCodec, Encoded, register_codec
from workers.errors import BitstreamError, InputError

MAX_STREAM_FRAMES = 1_000_000  # decoding bound for streams that say nothing of their length
DEFAULT_CRF = 32
SETTINGS = {"preset", "filter"}  # --codec-set keys; "filter": a post-filter file (default: the shipped one)


class StandardCodec(BaseCodec):
    """One CRF point of x264 or x265 (``encoder_name``: the key in workers.standard.encoder.CODECS)."""

    encoder_name: ClassVar[str]
    quality_name: ClassVar[str] = "CRF"
    primary_metric: ClassVar[str] = "psnr-yuv"

    def __init__(self, crf: int | float | None, preset: str | None = None, postfilter=None,
                 shipped_filter_sha256: str | None = None):
        """``postfilter``: a LoadedFilter the user named (settings ``filter``, or `decode --model`); None: the
        shipped one, looked up when a method or a stream needs it. ``shipped_filter_sha256``: the shipped
        filter's weights hash a run recorded; the shipped filter must still be that one (another release's
        filter would mix two filters in one run's units)."""
        from workers.standard.encoder import DEFAULT_PRESET

        self.quality = crf
        self.preset = preset or DEFAULT_PRESET
        self.model_id = f"{self.name} {self.preset}"
        self.weights_sha256 = None
        self.user_filter = postfilter
        self.shipped_filter_sha256 = shipped_filter_sha256
        self._plain: tuple[tuple, Encoded] | None = None  # the last plain encode, shared by a unit's candidates
        # the frames stream_info decoded, handed once to the decode of the same bytes (decode them once)
        self._decoded: tuple[bytes, Any] | None = None  # (bytes, workers.standard.encoder.DecodedStream)

    # ---------------------------------------------------------------- opening
    @classmethod
    def _check(cls, model: str | None, qualities, settings: dict[str, str]) -> None:
        if model is not None:
            raise InputError(None, f"codec {cls.name} uses no model (--model is for ssf)")
        unknown = sorted(set(settings) - SETTINGS)
        if unknown:
            raise InputError(None, f"codec {cls.name} takes the settings {', '.join(sorted(SETTINGS))} only "
                                   f"(got {', '.join(unknown)})")
        bad = [q for q in qualities or () if not 0 <= q <= 51]
        if bad:
            raise InputError(None, f"{cls.name} CRFs lie within 0..51, got {bad}")

    @classmethod
    def resolve(cls, model: str | None, qualities: Sequence[int | float] | None, settings: dict[str, str]) -> CodecRun:
        from workers.standard.encoder import DEFAULT_CRFS

        cls._check(model, qualities, settings)
        chosen = tuple(sorted(qualities)) if qualities else tuple(_number(q) for q in DEFAULT_CRFS)
        return CodecRun(codec=cls.name, qualities=chosen, settings=_with_filter_hash(settings), methods=("none",),
                        primary_metric=cls.primary_metric)

    @classmethod
    def single_point(cls, model: str | None, quality: int | float | None, settings: dict[str, str]) -> CodecPoint:
        cls._check(model, None if quality is None else [quality], settings)
        return CodecPoint(codec=cls.name, quality=DEFAULT_CRF if quality is None else quality,
                          settings=_with_filter_hash(settings))

    @classmethod
    def load(cls, point: CodecPoint) -> "StandardCodec":
        """One CRF point; a post-filter named in the settings must still hash to what the run recorded."""
        loaded = None
        if "filter" in point.settings:
            from workers.postfilter.checkpoint import load_filter

            loaded = load_filter(point.settings["filter"])
            recorded = point.settings.get("filter_sha256")
            if recorded is not None and loaded.metadata.weights_sha256 != recorded:
                raise InputError(point.settings["filter"], f"post-filter weights sha256 "
                                 f"{loaded.metadata.weights_sha256[:12]} are not the {recorded[:12]} the run recorded")
            return cls(point.quality, point.settings.get("preset"), loaded)
        return cls(point.quality, point.settings.get("preset"), shipped_filter_sha256=point.settings.get("filter_sha256"))

    @classmethod
    def for_stream(cls, data: bytes, source: str | Path | None, model: str | None) -> "StandardCodec":
        """``model``: a post-filter file to use when the stream's side info names it (else the shipped ones)."""
        if model is None:
            return cls(None)
        from workers.postfilter.checkpoint import load_filter

        return cls(None, postfilter=load_filter(model))

    def postfilter(self):
        """The filter methods use at the encoder: the user's, else the shipped one (ModelError if none ships)."""
        from workers.postfilter.checkpoint import SHIPPED_FILTERS_DIR, shipped_filter

        if self.user_filter is None:
            loaded = shipped_filter()
            recorded = self.shipped_filter_sha256
            if recorded is not None and loaded.metadata.weights_sha256 != recorded:
                raise InputError(SHIPPED_FILTERS_DIR, f"the run recorded the shipped post-filter {recorded[:12]}; this "
                                 f"installation ships {loaded.metadata.name} ({loaded.metadata.weights_sha256[:12]}): "
                                 "start a new run, or name the recorded weights with the codec setting filter=PATH")
            self.user_filter = loaded
        return self.user_filter

    # ---------------------------------------------------------------- coding
    @property
    def lmbda(self) -> float:
        if self.quality is None:
            raise ValueError("a decoder-side codec has no CRF")
        return 1.0 / (0.85 * 2.0 ** ((self.quality - 12.0) / 3.0))

    def encode(self, video, intra_period: int, postfilter=None, **options: Any) -> Encoded:
        """Encode every frame's planes, then decode the stream with FFmpeg: that is the reconstruction.
        ``postfilter`` (workers.postfilter.stream.FilterSignal): put its side info (and update) in the first
        access unit's SEI; the reconstruction is then the filtered frames when the filter is enabled."""
        if options:
            raise TypeError(f"{type(self).__name__}.encode: unknown options {sorted(options)}")
        plain = self.plain_encode(video, intra_period)
        if postfilter is None:
            return plain
        from workers.postfilter.stream import encoder_threads, filter_frames
        from workers.standard.side_info import attach_side_info

        threads = encoder_threads()
        info = postfilter.side_info(self.quality, threads)
        data = attach_side_info(plain.data, self.encoder_name, info, postfilter.blob)
        frames = plain.reconstruction
        if postfilter.enabled:
            frames = postfilter.filtered
            if frames is None:
                from workers.postfilter.stream import frame_crfs, rebuild_update

                model = rebuild_update(postfilter.loaded, info, postfilter.blob, None)
                frames = filter_frames(model, plain.reconstruction, frame_crfs(info, plain.intra), self.encoder_name,
                                       threads)
        return Encoded(data, list(frames), None, plain.intra)

    def plain_encode(self, video, intra_period: int) -> Encoded:
        """The plain stream and its decoded frames (kept for the unit's other candidates: same bytes anyway)."""
        from workers.standard.encoder import decode_stream_typed, encode_planes

        key = (id(video), str(getattr(video, "path", "")), len(video), intra_period)
        if self._plain is not None and self._plain[0] == key:
            return self._plain[1]
        data = encode_planes((video.frame_yuv420(i) for i in range(len(video))), video.width, video.height,
                             video.fps, self.encoder_name, self.quality, intra_period, self.preset)
        decoded = decode_stream_typed(data, self.encoder_name, max_frames=len(video))
        if len(decoded.frames) != len(video):
            raise RuntimeError(f"{self.describe()}: decoded {len(decoded.frames)} frames of {len(video)}")
        self._plain = (key, Encoded(data, decoded.frames, None, decoded.intra))
        return self._plain[1]

    def decode(self, data: bytes, source: str | Path | None = None, payload: bytes | None = None,
               payload_source: str | Path | None = None) -> list:
        """FFmpeg's frames, through the post-filter the stream's side info names (none: plain frames)."""
        from workers.postfilter.stream import decode_filtered
        from workers.standard.side_info import read_side_info

        if payload is not None:
            raise BitstreamError(payload_source, f"{source} is a {self.name} stream; it takes no payload")
        side = read_side_info(data, self.encoder_name, source)  # a damaged record is refused before decoding
        decoded = self._plain_decode(data, source)
        self._decoded = None  # handed out: the caller owns them now (decode_filtered replaces them in place)
        return decode_filtered(decoded.frames, decoded.intra, side, self.encoder_name, self.user_filter, source)

    def _plain_decode(self, data: bytes, source):
        """FFmpeg's frames of ``data``, their picture types and its frame rate (a DecodedStream). Kept for the
        next call with the same bytes object (`decode_file` asks stream_info, then decode: one decode, not two;
        the frames were held anyway)."""
        from workers.standard.encoder import decode_stream_typed

        if self._decoded is not None and self._decoded[0] is data:
            return self._decoded[1]
        self._decoded = None  # drop another stream's frames before decoding this one
        decoded = decode_stream_typed(data, self.encoder_name, source, max_frames=MAX_STREAM_FRAMES)
        if not decoded.frames:
            raise BitstreamError(source, f"holds no decodable {self.name} frame")
        self._decoded = (data, decoded)
        return decoded

    def stream_info(self, data: bytes, source: str | Path | None = None) -> dict:
        """Frames, size, bytes and the side info (filter id, CRF, threads, update), without filtering."""
        from workers.postfilter.stream import describe_side_info
        from workers.standard.side_info import read_side_info

        side = read_side_info(data, self.encoder_name, source)
        decoded = self._plain_decode(data, source)
        frames, rate = decoded.frames, decoded.rate
        height, width = frames[0][0].shape
        timing = {} if rate is None else {"fps_num": rate.numerator, "fps_den": rate.denominator}
        return {"codec": self.name, "frames": len(frames), "width": width, "height": height, **timing,
                "bytes": len(data), "side_info": describe_side_info(side)}

    # ---------------------------------------------------------------- frames and measures
    def rgb(self, frames: list) -> Sequence:
        return _AsRgb(frames)

    def yuv(self, frames: list) -> Sequence:
        return frames

    def distortion(self, video, frames: list) -> float:
        from workers.metrics import mean_mse_yuv

        return mean_mse_yuv([video.frame_yuv420(i) for i in range(len(frames))], frames)

    def same(self, a: list, b: list) -> bool:
        return len(a) == len(b) and all(np.array_equal(p, q) for x, y in zip(a, b) for p, q in zip(x, y))

    def write_reconstruction(self, path: str | Path, frames: list, fps: Fraction) -> None:
        """.y4m: the planes as they are, written frame by frame (no second copy of the clip in memory);
        anything else (a PNG folder): through RGB."""
        from workers.atomic import atomic_write
        from workers.video_io import write_reconstruction

        path = Path(path)
        if path.suffix.lower() != ".y4m":
            write_reconstruction(path, list(self.rgb(frames)), fps)
            return
        height, width = frames[0][0].shape
        head = f"YUV4MPEG2 W{width} H{height} F{fps.numerator}:{fps.denominator} Ip A1:1 C420jpeg\n".encode()

        def write_y4m(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                handle.write(head)
                for planes in frames:
                    handle.write(b"FRAME\n")
                    for plane in planes:
                        handle.write(np.ascontiguousarray(plane).data)

        atomic_write(path, write_y4m)


class _AsRgb(Sequence):
    """Decoded planes seen as RGB float frames (3, H, W), converted on access (workers.colour)."""

    def __init__(self, frames: list):
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index):
        from workers.colour import yuv420_to_rgb

        return yuv420_to_rgb(*self.frames[index])


def _with_filter_hash(settings: dict[str, str]) -> dict[str, str]:
    """The settings, plus ``filter_sha256`` of the post-filter the methods will use: the named one, else the
    shipped one (so a unit refuses other weights, and a run made with one release's filter is not resumed or
    extended with another's: the spec differs)."""
    from workers.postfilter.checkpoint import load_filter, shipped_filter, shipped_filter_names

    if "filter" not in settings:
        if not shipped_filter_names():
            return dict(settings)
        return {**settings, "filter_sha256": shipped_filter().metadata.weights_sha256}

    path = str(Path(settings["filter"]).resolve())
    return {**settings, "filter": path, "filter_sha256": load_filter(path).metadata.weights_sha256}


def _number(value: float) -> int | float:
    """22.0 -> 22, 22.5 -> 22.5 (qualities are recorded as the user would write them)."""
    return int(value) if float(value).is_integer() else float(value)


@register_codec
class X264Codec(StandardCodec):
    name: ClassVar[str] = "x264"
    suffix: ClassVar[str] = ".h264"
    encoder_name: ClassVar[str] = "x264"


@register_codec
class X265Codec(StandardCodec):
    name: ClassVar[str] = "x265"
    suffix: ClassVar[str] = ".hevc"
    encoder_name: ClassVar[str] = "x265"
