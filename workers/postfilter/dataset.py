"""Training pairs for the post-filter: source frames and their x264/x265 decodes at many CRFs, cached.

What one cache item is:
- videos: clips of ``clip_frames`` (12) frames spread evenly over the first ``max_frames_per_video``
  frames, each clip coded as its own stream with intra period 12 (the eval's), so frame 0 is an I-frame
  and the others are P-frames at growing distance from it; only the frames ``keep_frames`` (0, 3, 7, 11)
  are stored, a quarter of the bytes for most of the variety;
- images: one frame, converted with :func:`workers.colour.rgb_to_yuv420` and coded as a single I-frame.
Large sources are area-downscaled by an integer factor so the short side is near 360 px (the eval-dev
sequences are CIF/QCIF/576p, and halving a 720p web video removes most of its own coding artefacts), then
cropped to even sizes. Every item is coded with x264 and x265 at every CRF of ``crfs`` (17..51, covering
the eval CRFs 22..51) with the PSNR-tuned settings of :mod:`workers.standard.encoder`, and decoded.

On disk (``cache_dir``), everything uint8 ``.npy`` (read with ``allow_pickle=False``, opened memory-mapped)::

    cache.json            the DatasetConfig the cache was built with (another config is refused)
    item-NNN-K.npy        (V, T, 3H/2, W): version v (0 = original, then codec-major, CRF-minor as in
                          ``versions``) of stored frame t in I420 layout: rows [0, H) are Y, rows [H, 3H/2)
                          hold U (columns [0, W/2)) beside V (columns [W/2, W))
    index.json            items (file, source, size, frame types) and the versions list, written last

Each item file is written atomically once its encodes are done, so a killed build resumes at the next
item; the encoder is single-threaded and seeded by nothing, so the same sources and config give the same
bytes (checked by a test).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workers.atomic import atomic_write, atomic_write_text
from workers.errors import InputError
from workers.postfilter.i420 import pack_i420
from workers.pretrain.dataset import find_sources
from workers.standard.encoder import decode_stream, encode_planes
from workers.video_io import read_video

log = logging.getLogger(__name__)

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]
CACHE_FORMAT = "adaptjobs-postfilter-pairs-1"
TARGET_SHORT_SIDE = 360


@dataclass(frozen=True)
class DatasetConfig:
    codecs: tuple[str, ...] = ("x264", "x265")
    crfs: tuple[int, ...] = (17, 22, 27, 32, 37, 42, 47, 51)
    intra_period: int = 12
    clip_frames: int = 12
    keep_frames: tuple[int, ...] = (0, 3, 7, 11)
    clips_per_video: int = 4
    max_frames_per_video: int = 240
    min_side: int = 64
    max_items: int | None = None  # tests: stop after this many items

    def versions(self) -> list[tuple[str, int] | None]:
        """None (the original), then (codec, crf) codec-major."""
        return [None] + [(codec, crf) for codec in self.codecs for crf in self.crfs]

    def to_json(self) -> dict:
        return {"format": CACHE_FORMAT, **asdict(self)}


def downscale_planes(planes: Planes, factor: int) -> Planes:
    """Area-downscale 4:2:0 planes by an integer ``factor`` (Y and chroma alike), cropping first so every
    output side is even."""
    y, u, v = planes
    h = (y.shape[0] // (2 * factor)) * 2 * factor
    w = (y.shape[1] // (2 * factor)) * 2 * factor
    if factor == 1:
        return y[:h, :w], u[: h // 2, : w // 2], v[: h // 2, : w // 2]

    def pool(plane: np.ndarray, rows: int, cols: int) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(plane[:rows, :cols])).float()[None, None]
        return torch.round(F.avg_pool2d(t, factor)[0, 0]).clamp(0, 255).to(torch.uint8).numpy()

    return pool(y, h, w), pool(u, h // 2, w // 2), pool(v, h // 2, w // 2)


def downscale_factor(width: int, height: int) -> int:
    return max(1, min(width, height) // TARGET_SHORT_SIDE)


def code_versions(frames: list[Planes], config: DatasetConfig, keep: list[int]) -> np.ndarray:
    """(V, len(keep), 3H/2, W): the originals of ``keep`` and their decodes for every (codec, crf)."""
    height, width = frames[0][0].shape
    out = [np.stack([pack_i420(frames[t]) for t in keep])]
    for codec, crf in config.versions()[1:]:
        data = encode_planes(frames, width, height, Fraction(25), codec, crf, config.intra_period)
        decoded = decode_stream(data, codec)
        if len(decoded) != len(frames):
            raise RuntimeError(f"{codec} at CRF {crf} decoded {len(decoded)} of {len(frames)} frames")
        out.append(np.stack([pack_i420(decoded[t]) for t in keep]))
    return np.stack(out)


def _video_clips(path: Path, config: DatasetConfig) -> list[list[Planes]]:
    """Downscaled clips of ``clip_frames`` frames (fewer for short videos) spread over the video."""
    video = read_video(path, config.max_frames_per_video)
    length = min(config.clip_frames, len(video))
    count = min(config.clips_per_video, len(video) - length + 1)
    starts = dict.fromkeys(int(s) for s in np.linspace(0, len(video) - length, num=count).round())
    factor = downscale_factor(video.width, video.height)
    return [[downscale_planes(video.frame_yuv420(s + t), factor) for t in range(length)] for s in starts]


def _image_frame(path: Path) -> list[Planes]:
    from workers.colour import rgb_to_yuv420
    from workers.pretrain.dataset import _read_still

    rgb = _read_still(path)
    factor = downscale_factor(rgb.shape[-1], rgb.shape[-2])
    if factor > 1:
        rgb = F.avg_pool2d(rgb, factor)
    h, w = (rgb.shape[-2] // 2) * 2, (rgb.shape[-1] // 2) * 2
    return [rgb_to_yuv420(rgb[0, :, :h, :w])]


@dataclass
class _Build:
    config: DatasetConfig
    cache_dir: Path
    items: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, key: str, source: Path, frames: list[Planes]) -> None:
        """Code and store one item, unless a complete file of it is already there (resume)."""
        if min(frames[0][0].shape) < self.config.min_side:
            self.skipped.append(f"{source}: smaller than {self.config.min_side} px after downscaling")
            return
        keep = [t for t in self.config.keep_frames if t < len(frames)] if len(frames) > 1 else [0]
        name = f"{key}.npy"
        if not (self.cache_dir / name).exists():
            array = code_versions(frames, self.config, keep)

            def write(tmp: Path) -> None:
                with open(tmp, "wb") as handle:
                    np.save(handle, array, allow_pickle=False)

            atomic_write(self.cache_dir / name, write)
        height, width = frames[0][0].shape
        types = ["I" if t % self.config.intra_period == 0 else "P" for t in keep]
        self.items.append({"file": name, "source": str(source), "height": height, "width": width, "frame_types": types})

    def full(self) -> bool:
        return self.config.max_items is not None and len(self.items) >= self.config.max_items


def _check_config(cache_dir: Path, config: DatasetConfig) -> None:
    path = cache_dir / "cache.json"
    if path.exists():
        if json.loads(path.read_text()) != json.loads(json.dumps(config.to_json())):
            raise InputError(path, "this cache was built with another dataset config; use another folder")
    else:
        atomic_write_text(path, json.dumps(config.to_json(), indent=1))


def build_cache(folders: list[Path], cache_dir: Path, config: DatasetConfig = DatasetConfig()) -> dict:
    """Build (or finish building) the pair cache in ``cache_dir`` from the videos and images under
    ``folders``; returns the index. Unreadable sources are skipped and listed in the index."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    _check_config(cache_dir, config)
    videos, images = find_sources(folders)
    build = _Build(config, cache_dir)
    started = time.monotonic()
    for number, path in enumerate(videos):
        if build.full():
            break
        try:
            clips = _video_clips(path, config)
        except InputError as exc:
            build.skipped.append(str(exc))
            continue
        for k, clip in enumerate(clips):
            if not build.full():
                build.add(f"item-{number:03d}-{k}", path, clip)
        log.info("%s: %d clips, %.0f s", path.name, len(clips), time.monotonic() - started)
    for number, path in enumerate(images):
        if build.full():
            break
        try:
            build.add(f"item-{len(videos) + number:03d}-0", path, _image_frame(path))
        except InputError as exc:
            build.skipped.append(str(exc))
    if not build.items:
        raise InputError(", ".join(map(str, folders)), f"no usable training source (skipped {len(build.skipped)})")
    index = {"format": CACHE_FORMAT, "versions": config.versions(), "items": build.items, "skipped": build.skipped}
    atomic_write_text(cache_dir / "index.json", json.dumps(index, indent=1))
    return index


@dataclass
class PairCache:
    """The cache opened for training: memory-mapped item arrays and their index."""

    index: dict
    arrays: list[np.ndarray]

    @property
    def versions(self) -> list:
        return self.index["versions"]


def open_cache(cache_dir: Path) -> PairCache:
    path = cache_dir / "index.json"
    if not path.exists():
        raise InputError(cache_dir, "no index.json: the pair cache was never completed (run build_cache)")
    index = json.loads(path.read_text())
    if index.get("format") != CACHE_FORMAT:
        raise InputError(path, f"not a post-filter pair cache of format {CACHE_FORMAT}")
    arrays = [np.load(cache_dir / item["file"], mmap_mode="r", allow_pickle=False) for item in index["items"]]
    return PairCache(index, arrays)
