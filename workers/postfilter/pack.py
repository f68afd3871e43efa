"""Pack the post-filter's training pairs small enough to travel to a GPU machine (64 MiB with the code).

The pair cache (workers/postfilter/dataset.py) holds decoded frames: 2.2 GB for 133 items, far too much to
send. Decoded frames are a function of their streams, so the pack holds, per cached item:

- ``NNN.png``: the original's stored frames, a fixed ``--crop`` x ``--crop`` luma window of each (the same
  window for every frame and version; the whole frame when it is smaller), packed I420 and stacked
  vertically, lossless PNG;
- ``NNN-<codec>-<crf>.<h264|hevc>``: the item's clip coded exactly as the cache coded it (same settings,
  single-threaded, deterministic), the stream the GPU machine decodes to get the decoded frames;
- in ``pack.json``: the cache's intra period; per item the window, the kept frames, their types, and the
  SHA-256 of each version's cropped decoded frames, so the far side can check that its decoder reproduced
  the cache (any mismatch stops it).

Every stream is decoded here too and compared with the cache before it is packed: a pack whose pairs differ
from the ones the CPU runs trained on is refused. Crop windows are drawn from a generator seeded with
``--seed``, so the same cache gives the same pack.

    python -m workers.postfilter.pack --cache CACHE --data ../shared/data/train --out PACK [--crop 256]

The sources must be the ones the cache was built from (the items name them) and the cache's own
DatasetConfig (cache.json) re-reads their clips. Measured 2026-11-30 on the 133-item cache: 30.6 MiB at
``--crop 256`` (33.7 MiB at 288: too much beside PyAV and the wheels, benchmarks/device/prepare.sh), 75 s on
2 idle cores. The GPU side is workers/postfilter/train_gpu.py.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from fractions import Fraction
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from workers.atomic import atomic_write_bytes, atomic_write_text
from workers.postfilter.dataset import DatasetConfig, _image_frame, _video_clips
from workers.postfilter.i420 import PACK_FORMAT, crop_packed, pack_i420
from workers.pretrain.dataset import find_sources
from workers.standard.encoder import codec_info, decode_stream, encode_planes


def cache_config(cache_dir: Path) -> DatasetConfig:
    """The DatasetConfig a cache was built with (its cache.json)."""
    stored = json.loads((cache_dir / "cache.json").read_text())
    return DatasetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k != "format"})


def pack_source(tasks: list[dict]) -> list[dict]:
    """The items of one source (its clips read once)."""
    first = tasks[0]
    if first["kind"] == "video":
        clips = _video_clips(Path(first["item"]["source"]), cache_config(Path(first["cache"])))
    else:
        clips = [_image_frame(Path(first["item"]["source"]))]
    return [pack_item(task, clips[task["clip"]]) for task in tasks]


def pack_item(task: dict, frames: list) -> dict:
    """Code one cached item's clip again, check its decodes against the cache, write its files."""
    cache, out = Path(task["cache"]), Path(task["out"])
    item = task["item"]
    cached = np.load(cache / item["file"], mmap_mode="r", allow_pickle=False)
    config = cache_config(cache)
    keep = [t for t in config.keep_frames if t < len(frames)] if len(frames) > 1 else [0]
    height, width = frames[0][0].shape
    if (height, width) != (item["height"], item["width"]):
        raise RuntimeError(f"{item['file']}: the source is {width}x{height} now, {item['width']}x{item['height']} in the cache")
    rng = np.random.default_rng([task["seed"], task["number"]])
    sy, sx = min(task["crop"], height), min(task["crop"], width)
    top = 2 * int(rng.integers((height - sy) // 2 + 1))
    left = 2 * int(rng.integers((width - sx) // 2 + 1))
    original = np.stack([pack_i420(frames[t]) for t in keep])
    if not np.array_equal(original, cached[0]):
        raise RuntimeError(f"{item['file']}: the source frames differ from the cache's originals")
    stem = f"{task['number']:03d}"
    window = np.concatenate([crop_packed(f, top, left, sy, sx) for f in original])
    from PIL import Image  # Pillow: a training-tool need only (the test extra names it)

    buffer = io.BytesIO()
    Image.fromarray(window).save(buffer, "PNG", optimize=True)
    atomic_write_bytes(out / f"{stem}.png", buffer.getvalue())
    versions = {}
    for codec, crf in task["versions"]:
        data = encode_planes(frames, width, height, Fraction(25), codec, crf, config.intra_period)
        decoded = decode_stream(data, codec)
        kept = np.stack([pack_i420(decoded[t]) for t in keep])
        index = task["cache_versions"].index([codec, crf])
        if not np.array_equal(kept, cached[index]):
            raise RuntimeError(f"{item['file']}: {codec} CRF {crf} decodes differently from the cache")
        name = f"{stem}-{codec}-{crf}{codec_info(codec).suffix}"
        atomic_write_bytes(out / name, data)
        window = np.concatenate([crop_packed(f, top, left, sy, sx) for f in kept])
        versions[f"{codec}-{crf}"] = {"stream": name, "window_sha256": hashlib.sha256(window.tobytes()).hexdigest()}
    return {"number": task["number"], "cache_file": item["file"], "source": item["source"], "height": height,
            "width": width, "keep": keep, "frame_types": item["frame_types"], "top": top, "left": left,
            "size_y": sy, "size_x": sx, "original": f"{stem}.png", "versions": versions}


def build_pack(cache_dir: Path, data: list[Path], out: Path, crop: int = 256, crfs: tuple[int, ...] = (32, 37, 42, 47, 51),
               codecs: tuple[str, ...] = ("x264", "x265"), seed: int = 0, processes: int = 2,
               progress: bool = False) -> dict:
    """Pack every item of the cache at ``cache_dir`` into ``out``; returns pack.json's content (written last)."""
    index = json.loads((cache_dir / "index.json").read_text())
    videos, images = find_sources(data)
    kinds = {str(p): "video" for p in videos} | {str(p): "image" for p in images}
    out.mkdir(parents=True, exist_ok=True)
    by_source: dict[str, list[dict]] = {}
    for number, item in enumerate(index["items"]):
        if item["source"] not in kinds:
            raise RuntimeError(f"{item['source']}: a source of the cache is not under {', '.join(map(str, data))}")
        clip = int(item["file"].rsplit("-", 1)[1].split(".")[0])
        by_source.setdefault(item["source"], []).append(
            {"cache": str(cache_dir), "out": str(out), "item": item, "kind": kinds[item["source"]], "clip": clip,
             "number": number, "seed": seed, "crop": crop, "versions": [(c, q) for c in codecs for q in crfs],
             "cache_versions": index["versions"]})
    items: list[dict] = []
    with Pool(processes) as pool:
        for done in pool.imap_unordered(pack_source, list(by_source.values())):
            items += done
            if progress:
                print(f"{len(items)}/{len(index['items'])} {done[0]['source']}", flush=True)
    items.sort(key=lambda item: item["number"])
    # intra_period: the cache's, which fixes the frame types and how often the trainer draws I-frames
    pack = {"format": PACK_FORMAT, "cache_versions": index["versions"], "crop": crop, "crfs": list(crfs),
            "codecs": list(codecs), "seed": seed, "intra_period": cache_config(cache_dir).intra_period, "items": items}
    atomic_write_text(out / "pack.json", json.dumps(pack, indent=1))  # last: the pack is complete
    return pack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--data", type=Path, nargs="+", default=[Path("../shared/data/train")])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--crfs", type=int, nargs="+", default=[32, 37, 42, 47, 51])
    parser.add_argument("--codecs", nargs="+", default=["x264", "x265"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    pack = build_pack(args.cache, args.data, args.out, args.crop, tuple(args.crfs), tuple(args.codecs), args.seed,
                      args.processes, progress=True)
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"pack: {len(pack['items'])} items, {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
