"""How adaptjobs' default padding differs from CompressAI's (``--padding compressai``): bytes and PSNR.

For each video and quality, encodes with both modes through the same path as `adaptjobs encode` (written,
decoded and verified; the rate is the file's bytes over the ORIGINAL size) and prints a Markdown table:

    PYTHONPATH=$PWD python scripts/measure_padding.py /work/shared/data/eval-dev/foreman_352x288_10f.y4m \
        /work/shared/data/eval-dev/carphone_176x144_120f.mp4 --frames 30 --qualities 1 2 3 4

Both modes use ``--intra-period 0`` (one I-frame, as CompressAI's video eval codes), the shipped model
unless --model says otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def measure(video_path: str, model: str | None, quality: int, frames: int | None, padding: str, folder: Path) -> dict:
    from workers.encode_job import encode_file

    out = folder / f"{Path(video_path).stem}-q{quality}-{padding}.bits"
    result = encode_file(video_path, out, model=model, quality=quality, frames=frames, intra_period=0,
                         settings={"padding": padding})
    return {"bytes": result.bytes_written, "bpp": result.bpp, "psnr": result.psnr_rgb, "frames": result.frames,
            "size": f"{result.width}x{result.height}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("videos", nargs="+")
    parser.add_argument("--model", default=None, help="default: the shipped model")
    parser.add_argument("--qualities", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--frames", type=int, default=None, help="at most this many frames per video")
    args = parser.parse_args(argv)
    print("| video | q | frames | adaptjobs bytes | compressai bytes | bytes change | adaptjobs PSNR-RGB | "
          "compressai PSNR-RGB | PSNR change (dB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for video in args.videos:
            for quality in args.qualities:
                ours = measure(video, args.model, quality, args.frames, "adaptjobs", Path(tmp))
                theirs = measure(video, args.model, quality, args.frames, "compressai", Path(tmp))
                print(f"| {Path(video).name} ({ours['size']}) | {quality} | {ours['frames']} | {ours['bytes']} | "
                      f"{theirs['bytes']} | {100 * (theirs['bytes'] / ours['bytes'] - 1):+.2f}% | {ours['psnr']:.3f} | "
                      f"{theirs['psnr']:.3f} | {theirs['psnr'] - ours['psnr']:+.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
