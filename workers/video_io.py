"""Reading videos into memory and writing reconstructions.

Supported inputs (design.md section 3):
- any container or elementary stream PyAV opens (mp4, mkv, avi, .h264/.hevc, y4m, ...);
- raw planar 8-bit 4:2:0 ``.yuv`` with ``WxH`` in the file name (fps from ``_NNfps`` or ``WxH_NN``);
- a folder of PNG frames, sorted by name.

Frames are kept as 8-bit source planes (4:2:0 YUV or RGB) and turned into RGB float tensors one frame at
a time, so a long 720p clip costs 1.5 bytes per pixel in memory, not 12.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from workers.atomic import atomic_write
from workers.colour import rgb_to_yuv420, to_uint8, yuv420_to_rgb
from workers.errors import InputError, exception_line
from workers.limits import check_frame_size, check_regular_file

MIN_SIDE = 16
# File suffixes taken as videos when a folder is scanned (pretraining data, `adaptjobs submit VIDEO_DIR`);
# a single path given by the user is tried whatever its suffix. Folders of PNG frames count too.
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".flv", ".ivf",
                            ".y4m", ".yuv", ".h264", ".264", ".avc", ".hevc", ".265", ".h265"})
DEFAULT_FPS = Fraction(30, 1)
_RGB_FORMATS = {"rgb24", "bgr24", "rgba", "bgra", "argb", "abgr", "gbrp", "rgb48be", "rgb48le", "rgba64be",
                "rgba64le", "gbrp16le", "gbrp16be", "pal8", "gray", "gray16be", "gray16le", "ya8", "monob"}
_SIZE_IN_NAME = re.compile(r"(?<![0-9])(\d{2,5})x(\d{2,5})(?![0-9])")
_FPS_IN_NAME = re.compile(r"_(\d+(?:\.\d+)?)fps", re.IGNORECASE)


@dataclass
class Video:
    """A decoded video held as 8-bit source planes.

    ``yuv`` holds (Y (H, W), U (H/2, W/2), V (H/2, W/2)) uint8 tuples for YUV sources; ``rgb`` holds
    (H, W, 3) uint8 arrays for RGB sources (PNG, RGB containers). Exactly one of them is non-empty.
    """

    path: Path
    width: int
    height: int
    fps: Fraction
    source_format: str
    yuv: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    rgb: list[np.ndarray] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The file or folder name without its extension(s)."""
        return self.path.name.split(".")[0] if self.path.is_file() else self.path.name

    def __len__(self) -> int:
        return len(self.yuv) or len(self.rgb)

    def frame_rgb(self, index: int) -> torch.Tensor:
        """Frame ``index`` as RGB float32 (3, H, W) in [0, 1]."""
        if self.yuv:
            return yuv420_to_rgb(*self.yuv[index])
        return torch.from_numpy(self.rgb[index]).permute(2, 0, 1).float().div_(255.0)

    def frame_yuv420(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame ``index`` as 8-bit 4:2:0 planes (RGB sources go through the fixed conversion)."""
        if self.yuv:
            return self.yuv[index]
        return rgb_to_yuv420(self.frame_rgb(index))

    def frames_rgb(self) -> Iterator[torch.Tensor]:
        for index in range(len(self)):
            yield self.frame_rgb(index)


class SourceFrames(Sequence):
    """A video's frames as RGB float32 (3, H, W) in [0, 1], converted from the 8-bit planes on each access,
    optionally transformed (e.g. padded for the codec). Indexing with a slice gives another lazy view.

    Long videos are held as 8-bit planes (1.5 bytes per pixel for 4:2:0); a list of float frames would
    take 12. Code that visits frames several times (training epochs, metrics) uses this instead of a list.
    """

    def __init__(self, video: Video, transform=None, indices: range | None = None):
        self.video, self.transform = video, transform
        self.indices = indices if indices is not None else range(len(video))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return SourceFrames(self.video, self.transform, self.indices[item])
        frame = self.video.frame_rgb(self.indices[item])
        return frame if self.transform is None else self.transform(frame)


def read_video(path: str | Path, max_frames: int | None = None) -> Video:
    """Read ``path`` (see module docstring for the kinds) into a :class:`Video`.

    Raises :class:`InputError` with a one-line reason for anything that is not a usable 4:2:0-able
    video: unreadable file, zero frames, odd or tiny sizes, frames of different sizes, a raw file whose
    length is not a whole number of frames.
    """
    path = Path(path)
    if max_frames is not None and max_frames < 1:
        raise InputError(path, f"--frames must be at least 1, got {max_frames}")
    if not path.exists():
        raise InputError(path, "no such file or directory")
    if path.is_dir():
        video = _read_png_folder(path, max_frames)
        return _non_empty(video, path)
    check_regular_file(path, "video")  # a FIFO would hang FFmpeg, a device would feed it forever
    if path.suffix.lower() == ".yuv":
        video = _read_raw_yuv(path, max_frames)
    else:
        video = _read_container(path, max_frames)
    return _non_empty(video, path)


def _non_empty(video: Video, path: Path) -> Video:
    if len(video) == 0:
        raise InputError(path, "the video has no frames")
    return video


def _check_size(path: Path, width: int, height: int) -> None:
    check_frame_size(path, width, height)
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InputError(path, f"frame size {width}x{height} is too small (each side must be >= {MIN_SIDE})")
    if width % 2 or height % 2:
        raise InputError(path, f"frame size {width}x{height} has an odd side; 4:2:0 video needs even sizes")


def _read_container(path: Path, max_frames: int | None) -> Video:
    import av  # imported here: PyAV loads FFmpeg's libraries

    _check_y4m_size(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, f"not a video PyAV can open ({_ffmpeg_reason(exc)})") from None
    with container:
        if not container.streams.video:
            raise InputError(path, "the file has no video stream")
        stream = container.streams.video[0]
        context = stream.codec_context
        if context is None:  # a truncated mp4 can announce a stream FFmpeg has no decoder set up for
            raise InputError(path, "FFmpeg has no decoder for its video stream (damaged or unsupported file)")
        if context.width and context.height:
            check_frame_size(path, context.width, context.height)
        rate = stream.average_rate or stream.guessed_rate
        video = Video(path=path, width=0, height=0, fps=_fps_or_default(rate), source_format=context.pix_fmt or "unknown")
        try:
            for frame in container.decode(stream):
                _append_frame(video, frame)
                if max_frames is not None and len(video) >= max_frames:
                    break
        except av.error.FFmpegError as exc:
            if len(video) == 0:
                raise InputError(path, f"cannot decode any frame ({_ffmpeg_reason(exc)})") from None
            raise InputError(path, f"decoding failed after {len(video)} frames ({_ffmpeg_reason(exc)})") from None
    return video


def _fps_or_default(rate) -> Fraction:
    """The stream's frame rate if it is a usable positive rational, else DEFAULT_FPS."""
    try:
        fps = Fraction(rate) if rate else DEFAULT_FPS
    except (TypeError, ValueError, ZeroDivisionError):
        return DEFAULT_FPS
    return fps if 0 < fps <= 1000 else DEFAULT_FPS


_Y4M_MAGIC = b"YUV4MPEG2"


def _check_y4m_size(path: Path) -> None:
    """Refuse a Y4M whose header declares a frame beyond the size limit, before FFmpeg allocates for it
    (issue 11: 100000x100000 ended in FFmpeg's 'Device or resource busy')."""
    try:
        with open(path, "rb") as handle:
            first_line = handle.read(256).split(b"\n", 1)[0]
    except OSError as exc:
        raise InputError(path, f"cannot read the video ({exc.strerror})") from None
    if not first_line.startswith(_Y4M_MAGIC):
        return
    fields = {token[:1]: token[1:] for token in first_line.split()[1:] if token}
    try:
        width, height = int(fields.get(b"W", b"0")), int(fields.get(b"H", b"0"))
    except ValueError:
        raise InputError(path, "the Y4M header has no valid W/H fields") from None
    if width <= 0 or height <= 0:
        raise InputError(path, "the Y4M header has no valid W/H fields")
    check_frame_size(path, width, height)


def _append_frame(video: Video, frame) -> None:
    """Append one PyAV frame, keeping YUV sources as 4:2:0 planes and RGB sources as RGB."""
    if len(video) == 0:
        _check_size(video.path, frame.width, frame.height)
        video.width, video.height = frame.width, frame.height
        video.source_format = frame.format.name
    elif (frame.width, frame.height) != (video.width, video.height):
        raise InputError(video.path, f"frame {len(video)} is {frame.width}x{frame.height}, "
                                     f"the first frame was {video.width}x{video.height}")
    if frame.format.name in _RGB_FORMATS and not video.yuv:
        video.rgb.append(frame.to_ndarray(format="rgb24"))
        return
    if video.rgb:
        raise InputError(video.path, f"frame {len(video)} switches from RGB to {frame.format.name}")
    video.yuv.append(yuv420_planes(frame))


def yuv420_planes(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y, U, V planes of a frame as 8-bit 4:2:0 arrays (code values kept as they are)."""
    if frame.format.name not in ("yuv420p", "yuvj420p"):  # yuvj420p: same planes, only the range flag differs
        frame = frame.reformat(format="yuv420p")
    planes = []
    for plane in frame.planes[:3]:
        rows = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)
        planes.append(rows[: plane.height, : plane.width].copy())
    return planes[0], planes[1], planes[2]


def yuv420_frame(y: np.ndarray, u: np.ndarray, v: np.ndarray):
    """8-bit 4:2:0 planes -> a PyAV yuv420p VideoFrame (handles line padding and odd chroma heights)."""
    import av

    frame = av.VideoFrame(y.shape[1], y.shape[0], "yuv420p")
    for plane, data in zip(frame.planes, (y, u, v)):
        buffer = np.zeros((plane.height, plane.line_size), dtype=np.uint8)
        buffer[: data.shape[0], : data.shape[1]] = data
        plane.update(buffer.tobytes())
    return frame


def _ffmpeg_reason(exc: Exception) -> str:
    message = getattr(exc, "strerror", None) or str(exc)
    return exception_line(Exception(message), 200) if message else type(exc).__name__


def _read_raw_yuv(path: Path, max_frames: int | None) -> Video:
    match = _SIZE_IN_NAME.search(path.name)
    if not match:
        raise InputError(path, "raw .yuv needs its size in the file name, e.g. foreman_352x288.yuv")
    width, height = int(match.group(1)), int(match.group(2))
    _check_size(path, width, height)
    fps_match = _FPS_IN_NAME.search(path.name) or re.search(
        rf"{width}x{height}_(\d+(?:\.\d+)?)(?=[_.]|$)", path.name)
    fps = Fraction(fps_match.group(1)).limit_denominator(1001) if fps_match else DEFAULT_FPS
    frame_bytes = width * height * 3 // 2
    size = path.stat().st_size
    if size == 0:
        raise InputError(path, "the video has no frames (empty file)")
    if size % frame_bytes:
        raise InputError(path, f"file length {size} is not a whole number of {width}x{height} 4:2:0 frames "
                               f"({frame_bytes} bytes each)")
    count = size // frame_bytes
    if max_frames is not None:
        count = min(count, max_frames)
    data = np.fromfile(path, dtype=np.uint8, count=count * frame_bytes).reshape(count, frame_bytes)
    video = Video(path=path, width=width, height=height, fps=fps, source_format="yuv420p")
    luma, chroma = width * height, width * height // 4
    for row in data:
        video.yuv.append((row[:luma].reshape(height, width).copy(),
                          row[luma:luma + chroma].reshape(height // 2, width // 2).copy(),
                          row[luma + chroma:].reshape(height // 2, width // 2).copy()))
    return video


def _read_png_folder(path: Path, max_frames: int | None) -> Video:
    import av

    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise InputError(path, "the folder holds no .png frames")
    if max_frames is not None:
        files = files[:max_frames]
    video = Video(path=path, width=0, height=0, fps=DEFAULT_FPS, source_format="png")
    for file in files:
        check_regular_file(file, "PNG frame")
        try:
            with av.open(str(file)) as container:
                frame = next(container.decode(video=0))
        except (av.error.FFmpegError, StopIteration) as exc:
            raise InputError(file, f"not a readable PNG ({_ffmpeg_reason(exc)})") from None
        if video.yuv:  # a folder is always treated as RGB
            raise InputError(file, "mixed frame formats")
        if len(video) == 0:
            _check_size(file, frame.width, frame.height)
            video.width, video.height = frame.width, frame.height
        elif (frame.width, frame.height) != (video.width, video.height):
            raise InputError(file, f"is {frame.width}x{frame.height}, the first frame was "
                                   f"{video.width}x{video.height}")
        video.rgb.append(frame.to_ndarray(format="rgb24"))
    return video


# --------------------------------------------------------------------------------------------- writing


def y4m_bytes(frames_rgb: list[torch.Tensor] | torch.Tensor, fps: Fraction) -> bytes:
    """Encode RGB frames (each (3, H, W) in [0, 1]) as a 4:2:0 Y4M file, bytes in memory.

    The bytes depend only on the frames and fps, so encoder and decoder write identical files.
    """
    frames = list(frames_rgb)
    height, width = frames[0].shape[-2:]
    fps = Fraction(fps)
    parts = [f"YUV4MPEG2 W{width} H{height} F{fps.numerator}:{fps.denominator} Ip A1:1 C420jpeg\n".encode()]
    for rgb in frames:
        y, u, v = rgb_to_yuv420(rgb)
        parts += [b"FRAME\n", y.tobytes(), u.tobytes(), v.tobytes()]
    return b"".join(parts)


def png_bytes(rgb: torch.Tensor) -> bytes:
    """Encode one RGB frame (3, H, W) in [0, 1] as PNG bytes (8-bit, deterministic)."""
    import av

    array = np.ascontiguousarray(to_uint8(rgb).transpose(1, 2, 0))
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = array.shape[1], array.shape[0], "rgb24"
    frame = av.VideoFrame.from_ndarray(array, format="rgb24")
    return b"".join(bytes(packet) for packet in [*codec.encode(frame), *codec.encode(None)])


def write_reconstruction(path: str | Path, frames_rgb: list[torch.Tensor], fps: Fraction) -> None:
    """Write frames as ``path`` (.y4m) or as a folder of PNGs ``path/00001.png, ...`` (any other name).

    Each file is written atomically.
    """
    path = Path(path)
    if path.suffix.lower() == ".y4m":
        data = y4m_bytes(frames_rgb, fps)
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
        return
    path.mkdir(parents=True, exist_ok=True)
    for index, rgb in enumerate(frames_rgb, start=1):
        data = png_bytes(rgb)
        atomic_write(path / f"{index:05d}.png", lambda tmp, data=data: tmp.write_bytes(data))
