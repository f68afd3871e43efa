"""Training material: short clips from videos and stills from images, cached as 8-bit RGB arrays.

Every input the reader supports counts (containers, raw .yuv, y4m, PNG folders); loose image files
(.png, .jpg, .jpeg, .bmp) are stills for I-frame training. Large sources are downscaled by an integer
factor (2x2, 3x3 ... average) so their short side is near 360 px: it removes most of the source's own
coding artefacts and gives motion of a few pixels per frame, as in SSF's training data.

The cache is a folder of ``.npy`` arrays (loaded with ``allow_pickle=False``) plus an index JSON;
building it is deterministic given the sources and the clip settings.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workers.atomic import atomic_write, atomic_write_text
from workers.errors import InputError
from workers.video_io import VIDEO_SUFFIXES, read_video

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
TARGET_SHORT_SIDE = 360
CACHE_VERSION = 1


@dataclass
class TrainingData:
    """Clips (each (T, H, W, 3) uint8, T = clip_frames) and stills ((H, W, 3) uint8)."""

    clips: list[np.ndarray]
    stills: list[np.ndarray]

    def sample_batch(self, generator: torch.Generator, batch: int, frames: int, crop: int) -> list[torch.Tensor]:
        """``frames`` tensors (batch, 3, crop, crop) in [0, 1]: random clips (or stills when frames == 1),
        random crop positions and horizontal flips, all drawn from ``generator``."""
        pool = self.clips if frames > 1 else self.clips + [s[None] for s in self.stills]
        out = []
        for _ in range(batch):
            item = pool[int(torch.randint(len(pool), (1,), generator=generator))]
            start = int(torch.randint(item.shape[0] - frames + 1, (1,), generator=generator))
            top = int(torch.randint(item.shape[1] - crop + 1, (1,), generator=generator))
            left = int(torch.randint(item.shape[2] - crop + 1, (1,), generator=generator))
            patch = torch.from_numpy(item[start:start + frames, top:top + crop, left:left + crop])
            if bool(torch.randint(2, (1,), generator=generator)):
                patch = patch.flip(2)
            out.append(patch)
        stacked = torch.stack(out).permute(1, 0, 4, 2, 3).float().div_(255.0)  # (frames, batch, 3, crop, crop)
        return list(stacked.unbind(0))


def _downscale(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> integer-factor area downscale so the short side is near TARGET_SHORT_SIDE."""
    factor = max(1, min(rgb.shape[-2:]) // TARGET_SHORT_SIDE)
    return F.avg_pool2d(rgb, factor) if factor > 1 else rgb


def _to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) [0, 1] -> (N, H, W, 3) uint8."""
    return torch.round(rgb.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def find_sources(folders: list[Path]) -> tuple[list[Path], list[Path]]:
    """(videos, images) under ``folders``; PNG folders of 2+ frames count as videos."""
    videos, images = [], []
    for folder in folders:
        if not folder.is_dir():
            raise InputError(folder, "not a directory")
        for path in sorted(folder.rglob("*")):
            if path.is_dir():
                pngs = sorted(path.glob("*.png"))
                if len(pngs) >= 2 and not any(p.is_dir() for p in path.iterdir()) and _looks_like_frames(pngs):
                    videos.append(path)
            elif path.suffix.lower() in VIDEO_SUFFIXES:
                videos.append(path)
            elif path.suffix.lower() in IMAGE_SUFFIXES and not _is_frame_of_png_folder(path):
                images.append(path)
    if not videos and not images:
        raise InputError(", ".join(map(str, folders)), "no videos or images found for training")
    return videos, images


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, without decoding it."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _looks_like_frames(pngs: list[Path]) -> bool:
    """Numbered PNGs of one size (001.png, 002.png, ...) are a video; photos of mixed sizes are stills."""
    return all(p.stem.isdigit() for p in pngs) and len({_png_size(p) for p in pngs}) == 1


def _is_frame_of_png_folder(path: Path) -> bool:
    return path.suffix.lower() == ".png" and path.stem.isdigit() and _looks_like_frames(sorted(path.parent.glob("*.png")))


def _read_still(path: Path) -> torch.Tensor:
    import av

    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
    except Exception as exc:  # noqa: BLE001 - PyAV raises several kinds; the message says which file
        raise InputError(path, f"not a readable image ({exc})") from None
    array = frame.to_ndarray(format="rgb24")
    return torch.from_numpy(array).permute(2, 0, 1)[None].float().div_(255.0)


def build_cache(folders: list[Path], cache_dir: Path, clip_frames: int, clips_per_video: int,
                max_frames_per_video: int, min_side: int) -> dict:
    """Decode the sources once into ``cache_dir``; returns the index. Unreadable files are skipped
    and listed in the index (a folder with nothing usable is an error)."""
    videos, images = find_sources(folders)
    index = {"version": CACHE_VERSION, "clip_frames": clip_frames, "clips": [], "stills": [], "skipped": []}
    cache_dir.mkdir(parents=True, exist_ok=True)

    def store(name: str, array: np.ndarray) -> str:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)

        atomic_write(cache_dir / name, write)
        return name

    for number, path in enumerate(videos):
        try:
            video = read_video(path, max_frames_per_video)
        except InputError as exc:
            index["skipped"].append(str(exc))
            log.warning("skipping %s", exc)
            continue
        if len(video) < clip_frames:
            index["skipped"].append(f"{path}: only {len(video)} frames")
            continue
        starts = np.linspace(0, len(video) - clip_frames, num=min(clips_per_video, len(video) - clip_frames + 1)).round()
        for k, start in enumerate(dict.fromkeys(int(s) for s in starts)):
            rgb = _downscale(torch.stack([video.frame_rgb(start + t) for t in range(clip_frames)]))
            if min(rgb.shape[-2:]) < min_side:
                index["skipped"].append(f"{path}: smaller than {min_side} px after downscaling")
                break
            index["clips"].append({"file": store(f"clip-{number:03d}-{k:03d}.npy", _to_uint8(rgb)), "source": str(path)})
    for number, path in enumerate(images):
        try:
            rgb = _downscale(_read_still(path))
        except InputError as exc:
            index["skipped"].append(str(exc))
            continue
        if min(rgb.shape[-2:]) < min_side:
            index["skipped"].append(f"{path}: smaller than {min_side} px")
            continue
        index["stills"].append({"file": store(f"still-{number:03d}.npy", _to_uint8(rgb)[0]), "source": str(path)})
    if not index["clips"]:
        raise InputError(", ".join(map(str, folders)), f"no readable video with {clip_frames}+ frames of at least "
                                                       f"{min_side} px (skipped: {len(index['skipped'])})")
    atomic_write_text(cache_dir / "index.json", json.dumps(index, indent=1))
    return index


def load_cache(cache_dir: Path) -> TrainingData:
    index = json.loads((cache_dir / "index.json").read_text())
    load = lambda entry: np.load(cache_dir / entry["file"], allow_pickle=False)  # noqa: E731
    return TrainingData(clips=[load(e) for e in index["clips"]], stills=[load(e) for e in index["stills"]])
