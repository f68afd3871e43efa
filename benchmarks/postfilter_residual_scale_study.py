"""What per-plane residual scales of the post-filter are worth on top of the per-frame-type CRF offsets, as an
oracle on eval-dev (benchmarks/RESULTS.md section postfilter-residual-scales; issue 12).

    measure: python benchmarks/postfilter_residual_scale_study.py measure FILTER --codec x264 --out DIR
             [--stream-cache S]
    analyse: python benchmarks/postfilter_residual_scale_study.py analyse DIR

``measure`` decodes each eval-dev sequence's PSNR-tuned stream (adaptjobs.postfilter_eval's, cached) at CRFs
22..51, runs the filter at crf + d for each default CRF offset d, and stores, per frame, offset and plane, the
MSE of round(x + s (f - x)) for s = k/16, k = 0..32 (x the decoded plane, f the filter's unrounded output; s = 0
is the plain frame) in DIR/CODEC-SEQUENCE-CRF.npz. ``analyse`` picks, per (sequence, CRF) and frame type (intra
= frame index divisible by the intra period, 12), the offset (or no filter) and the scales that maximise the
summed PSNR-YUV, as the encoder does with the originals at hand, and prints BD-rate PSNR-YUV against the plain
stream for several scale grids, the rate counting the SEI (47 bytes in H.264, 48 in HEVC, plus the scale bytes).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch

INTRA_PERIOD = 12
SCALES = np.arange(33) / 16
SEI_BYTES = {"x264": 47, "x265": 48}  # the record with CRF offsets, without scales


def measure(args) -> None:
    from adaptjobs.postfilter_eval import coded_stream, default_sources, read_sequence
    from schemas.methods.postfilter import DEFAULT_CRF_OFFSETS
    from workers.postfilter.checkpoint import load_filter
    from workers.postfilter.network import planes_to_tensors
    from workers.standard.encoder import DEFAULT_CRFS, decode_stream

    torch.set_num_threads(1)
    model = load_filter(args.filter).model.eval()
    scales = torch.from_numpy(SCALES)
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    for path in default_sources(args.data):
        name, frames = read_sequence(path, None)
        for crf in DEFAULT_CRFS:
            data = coded_stream(frames, name, args.codec, crf, args.stream_cache)
            decoded = decode_stream(data, args.codec)
            mse = np.zeros((len(frames), len(DEFAULT_CRF_OFFSETS), 3, len(SCALES)))
            for index, (original, planes) in enumerate(zip(frames, decoded)):
                inputs = planes_to_tensors(planes)
                for column, offset in enumerate(DEFAULT_CRF_OFFSETS):
                    with torch.no_grad():
                        outputs = model(*inputs, float(crf + offset), args.codec)
                    for plane in range(3):
                        x = torch.from_numpy(planes[plane].astype(np.float64))
                        residual = outputs[plane][0, 0].double() * 255.0 - x
                        shown = (x[None] + scales[:, None, None] * residual[None]).clamp(0, 255).round()
                        reference = torch.from_numpy(original[plane].astype(np.float64))
                        mse[index, column, plane] = ((shown - reference[None]) ** 2).mean(dim=(1, 2)).numpy()
            np.savez(args.out / f"{args.codec}-{name}-{crf:g}.npz", mse=mse, bytes=len(data),
                     pixels=frames[0][0].size * len(frames))
            print(name, crf, f"{time.time() - began:.0f}s", flush=True)


def psnr(mse: np.ndarray) -> np.ndarray:
    return 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def best_frames(mse: np.ndarray, allowed: list[int], planes: str) -> np.ndarray:
    """(frames, 3) PSNRs of the best choice per frame type: no filter, or an offset with each plane's scale
    among ``allowed`` (indexes into SCALES) for ``planes`` "yuv" (three scales), "y+c" (luma and chroma) or
    "one" (one scale for all planes)."""
    frames = mse.shape[0]
    intra = np.arange(frames) % INTRA_PERIOD == 0
    measured = psnr(mse)  # frames, offsets, planes, scales
    shown = np.empty((frames, 3))
    for mask in (intra, ~intra):
        if not mask.any():
            continue
        sums = measured[mask].sum(axis=0)  # offsets, planes, scales
        plain = sums[0, :, 0]
        best_value, best = (6 * plain[0] + plain[1] + plain[2]) / 8, None
        for offset in range(sums.shape[0]):
            if planes == "yuv":
                picks = [max(allowed, key=lambda k: sums[offset, p, k]) for p in range(3)]
            elif planes == "y+c":
                chroma = max(allowed, key=lambda k: sums[offset, 1, k] + sums[offset, 2, k])
                picks = [max(allowed, key=lambda k: sums[offset, 0, k]), chroma, chroma]
            else:
                one = max(allowed, key=lambda k: 6 * sums[offset, 0, k] + sums[offset, 1, k] + sums[offset, 2, k])
                picks = [one] * 3
            value = (6 * sums[offset, 0, picks[0]] + sums[offset, 1, picks[1]] + sums[offset, 2, picks[2]]) / 8
            if value > best_value:
                best_value, best = value, (offset, picks)
        if best is None:
            shown[mask] = measured[mask][:, 0, :, 0]
        else:
            offset, picks = best
            shown[mask] = np.stack([measured[mask][:, offset, p, picks[p]] for p in range(3)], axis=1)
    return shown


def psnr_yuv(shown: np.ndarray) -> float:
    mean = shown.mean(axis=0)
    return float((6 * mean[0] + mean[1] + mean[2]) / 8)


def analyse(args) -> None:
    from adaptjobs.bdrate import bd_rate

    one = 16
    cases = [("offsets, residual as trained", [one], "one", 0),
             ("+ one scale per frame type, k/16", list(range(33)), "one", 2),
             ("+ luma and chroma scales, k/16", list(range(33)), "y+c", 4),
             ("+ Y, U, V scales, k/16 (shipped)", list(range(33)), "yuv", 6),
             ("+ Y, U, V scales, k/8", list(range(0, 33, 2)), "yuv", 6),
             ("+ Y, U, V scales, k/4 (nibbles)", list(range(0, 33, 4)), "yuv", 3)]
    for codec in ("x264", "x265"):
        files = sorted(args.dir.glob(f"{codec}-*.npz"))
        sequences = sorted({re.match(rf"{codec}-(.*)-[\d.]+\.npz", f.name).group(1) for f in files})
        for label, allowed, planes, extra in cases:
            result = {}
            for sequence in sequences:
                rows = sorted(args.dir.glob(f"{codec}-{sequence}-*.npz"), key=lambda f: float(f.stem.split("-")[-1]))
                anchor, test = [], []
                for row in rows:
                    stored = np.load(row)
                    mse, size, pixels = stored["mse"], int(stored["bytes"]), int(stored["pixels"])
                    anchor.append((size * 8 / pixels, psnr_yuv(psnr(mse[:, 0, :, 0]))))
                    shown = best_frames(mse, allowed, planes)
                    test.append(((size + SEI_BYTES[codec] + extra) * 8 / pixels, psnr_yuv(shown)))
                result[sequence] = bd_rate(anchor, test).percent
            print(f"{codec} {label:<36} mean {np.mean(list(result.values())):+.3f} | "
                  + " ".join(f"{s.split('_')[0]} {v:+.2f}" for s, v in result.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("measure")
    run.add_argument("filter", type=Path)
    run.add_argument("--codec", required=True, choices=["x264", "x265"])
    run.add_argument("--data", type=Path, default=Path("../shared/data/eval-dev"))
    run.add_argument("--stream-cache", type=Path, default=None)
    run.add_argument("--out", type=Path, required=True)
    report = commands.add_parser("analyse")
    report.add_argument("dir", type=Path)
    args = parser.parse_args()
    measure(args) if args.command == "measure" else analyse(args)


if __name__ == "__main__":
    main()
