"""Pack the post-filter's training pairs small enough to travel to a GPU machine (64 MiB with the code).

The pair cache (workers/postfilter/dataset.py) holds decoded frames: 2.2 GB for 133 items, far too much to
send. Decoded frames are a function of their streams, so the pack holds, per cached item:

- ``NNN.png``: the original's stored frames, a fixed ``--crop`` x ``--crop`` luma window of each (the same
  window for every frame and version; the whole frame when it is smaller), packed I420 and stacked
  vertically, lossless PNG;
- ``NNN-<codec>-<crf>.<h264|hevc>``: the item's clip coded exactly as the cache coded it (same settings,
  single-threaded, deterministic), the stream the GPU machine decodes to get the decoded frames;
- in ``pack.json``: the window, the kept frames, their types, and the SHA-256 of each version's cropped
  decoded frames, so the far side can check that its decoder reproduced the cache (any mismatch stops it).

Every stream is decoded here too and compared with the cache before it is packed: a pack whose pairs differ
from the ones the CPU runs trained on is refused. Crop windows are drawn from a generator seeded with
``--seed``, so the same cache gives the same pack.

    python scripts/filter_pack.py --cache /root/pf-run/cache --out PACK [--crop 288] [--crfs 32 37 42 47 51]
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
from PIL import Image

from workers.postfilter.dataset import DatasetConfig, _image_frame, _video_clips, pack_i420
from workers.pretrain.dataset import find_sources
from workers.standard.encoder import decode_stream, encode_planes

SUFFIX = {"x264": "h264", "x265": "hevc"}


def crop_packed(packed: np.ndarray, height: int, top: int, left: int, size_y: int, size_x: int) -> np.ndarray:
    """The (3*sy/2, sx) packed I420 window of a (3H/2, W) packed frame."""
    width = packed.shape[1]
    y = packed[:height]
    u, v = packed[height:, : width // 2], packed[height:, width // 2:]
    return pack_i420((y[top:top + size_y, left:left + size_x],
                      u[top // 2:(top + size_y) // 2, left // 2:(left + size_x) // 2],
                      v[top // 2:(top + size_y) // 2, left // 2:(left + size_x) // 2]))


def pack_source(tasks: list[dict]) -> list[dict]:
    """The items of one source (its clips read once)."""
    first = tasks[0]
    if first["kind"] == "video":
        clips = _video_clips(Path(first["item"]["source"]), DatasetConfig())
    else:
        clips = [_image_frame(Path(first["item"]["source"]))]
    return [pack_item(task, clips[task["clip"]]) for task in tasks]


def pack_item(task: dict, frames: list) -> dict:
    """Code one cached item's clip again, check its decodes against the cache, write its files."""
    cache, out = Path(task["cache"]), Path(task["out"])
    item = task["item"]
    cached = np.load(cache / item["file"], mmap_mode="r")
    config = DatasetConfig()
    keep = [t for t in config.keep_frames if t < len(frames)] if len(frames) > 1 else [0]
    height, width = frames[0][0].shape
    assert (height, width) == (item["height"], item["width"]), item["file"]
    rng = np.random.default_rng([task["seed"], task["number"]])
    sy, sx = min(task["crop"], height), min(task["crop"], width)
    top = 2 * int(rng.integers((height - sy) // 2 + 1))
    left = 2 * int(rng.integers((width - sx) // 2 + 1))
    original = np.stack([pack_i420(frames[t]) for t in keep])
    if not np.array_equal(original, cached[0]):
        raise RuntimeError(f"{item['file']}: the source frames differ from the cache's originals")
    stem = f"{task['number']:03d}"
    window = np.concatenate([crop_packed(f, height, top, left, sy, sx) for f in original])
    buffer = io.BytesIO()
    Image.fromarray(window).save(buffer, "PNG", optimize=True)
    (out / f"{stem}.png").write_bytes(buffer.getvalue())
    versions = {}
    for codec, crf in task["versions"]:
        data = encode_planes(frames, width, height, Fraction(25), codec, crf, config.intra_period)
        decoded = decode_stream(data, codec)
        kept = np.stack([pack_i420(decoded[t]) for t in keep])
        index = task["cache_versions"].index([codec, crf])
        if not np.array_equal(kept, cached[index]):
            raise RuntimeError(f"{item['file']}: {codec} CRF {crf} decodes differently from the cache")
        name = f"{stem}-{codec}-{crf}.{SUFFIX[codec]}"
        (out / name).write_bytes(data)
        window = np.concatenate([crop_packed(f, height, top, left, sy, sx) for f in kept])
        versions[f"{codec}-{crf}"] = {"stream": name, "window_sha256": hashlib.sha256(window.tobytes()).hexdigest()}
    return {"number": task["number"], "cache_file": item["file"], "source": item["source"], "height": height,
            "width": width, "keep": keep, "frame_types": item["frame_types"], "top": top, "left": left,
            "size_y": sy, "size_x": sx, "original": f"{stem}.png", "versions": versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--crop", type=int, default=288)
    parser.add_argument("--crfs", type=int, nargs="+", default=[32, 37, 42, 47, 51])
    parser.add_argument("--codecs", nargs="+", default=["x264", "x265"])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/train"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    index = json.loads((args.cache / "index.json").read_text())
    videos, images = find_sources([args.data])
    kinds = {str(p): "video" for p in videos} | {str(p): "image" for p in images}
    args.out.mkdir(parents=True, exist_ok=True)
    tasks = []
    for number, item in enumerate(index["items"]):
        clip = int(item["file"].rsplit("-", 1)[1].split(".")[0])
        tasks.append({"cache": str(args.cache), "out": str(args.out), "item": item, "kind": kinds[item["source"]],
                      "clip": clip, "number": number, "seed": args.seed, "crop": args.crop,
                      "versions": [(c, q) for c in args.codecs for q in args.crfs],
                      "cache_versions": index["versions"]})
    by_source: dict[str, list[dict]] = {}
    for task in tasks:
        by_source.setdefault(task["item"]["source"], []).append(task)
    with Pool(args.processes) as pool:
        items = []
        for done in pool.imap_unordered(pack_source, list(by_source.values())):
            items += done
            print(f"{len(items)}/{len(tasks)} {done[0]['source']}", flush=True)
    items.sort(key=lambda item: item["number"])
    pack = {"format": "adaptjobs-postfilter-pack-1", "cache_versions": index["versions"], "crop": args.crop,
            "crfs": args.crfs, "codecs": args.codecs, "seed": args.seed, "items": items}
    (args.out / "pack.json").write_text(json.dumps(pack, indent=1))
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"pack: {len(items)} items, {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
