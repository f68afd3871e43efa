"""How much per-video, per-frame-type CRF offsets of the post-filter's conditioning are worth, measured as an
oracle on eval-dev before the method had them (benchmarks/RESULTS.md section postfilter-crf-offsets).

    measure: python benchmarks/postfilter_offsets_study.py measure FILTER --codec x264 --offsets -8,-6,-4,-2,0,2,4
             --json x264.json [--skip calendar] [--blends 0.5,0.75,1,1.25] [--stream-cache S]
    analyse: python benchmarks/postfilter_offsets_study.py analyse x264.json [more.json merged per point]

``measure`` decodes each sequence's PSNR-tuned stream (adaptjobs.postfilter_eval's, cached) at CRFs 22..51 and
records every frame's PSNR-Y/U/V plain and filtered at crf + d for each offset d (with ``--blends``: also
round(x + s (filtered - x)) for each s, keyed "d@s"). ``analyse`` computes BD-rate against the plain stream
(adaptjobs.bdrate on per-frame-averaged PSNR-YUV) for strategies chosen per (sequence, CRF) with the originals
at hand, as the encoder would: one offset for all frames, or one per frame type (intra = frame index
divisible by the intra period, 12), each option including "off"; the rate adds ``--sei`` bytes. The last case
picks per frame type one option for luma and one for chroma (a decoder would run the filter twice where they
differ; its SEI would need one more byte, which the rate adds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

INTRA_PERIOD = 12


def frame_psnrs(originals, coded) -> list[list[float]]:
    from workers.metrics import psnr_from_mse

    return [[psnr_from_mse(float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)), 255.0)
             for a, b in zip(source, frame)] for source, frame in zip(originals, coded)]


def blended(decoded, filtered, strength: float):
    return tuple(np.clip(np.round(a.astype(np.float64) + strength * (b.astype(np.float64) - a)), 0, 255).astype(np.uint8)
                 for a, b in zip(decoded, filtered))


def measure(args) -> None:
    from adaptjobs.postfilter_eval import coded_stream, default_sources, read_sequence
    from workers.postfilter.checkpoint import load_filter
    from workers.postfilter.network import filter_planes
    from workers.standard.encoder import DEFAULT_CRFS, decode_stream

    torch.set_num_threads(1)
    model = load_filter(args.filter).model.eval()
    offsets = [float(x) for x in args.offsets.split(",")]
    blends = [float(x) for x in args.blends.split(",")] if args.blends else None
    rows, began = [], time.time()
    for path in default_sources(args.data):
        if any(skip in str(path) for skip in args.skip):
            continue
        name, frames = read_sequence(path, None)
        for crf in DEFAULT_CRFS:
            data = coded_stream(frames, name, args.codec, crf, args.stream_cache)
            decoded = decode_stream(data, args.codec)
            row = {"sequence": name, "codec": args.codec, "crf": crf, "bytes": len(data),
                   "pixels": frames[0][0].size * len(frames), "none": frame_psnrs(frames, decoded), "offsets": {}}
            for d in offsets:
                filtered = [filter_planes(model, planes, crf + d, args.codec) for planes in decoded]
                if blends is None:
                    row["offsets"][f"{d:g}"] = frame_psnrs(frames, filtered)
                for s in blends or ():
                    row["offsets"][f"{d:g}@{s:g}"] = frame_psnrs(frames, [blended(x, f, s) for x, f in zip(decoded, filtered)])
            rows.append(row)
            print(name, crf, f"{time.time() - began:.0f}s", flush=True)
    args.json.write_text(json.dumps(rows))


def yuv(psnrs) -> float:
    mean = np.mean(np.array(psnrs), axis=0)
    return float((6 * mean[0] + mean[1] + mean[2]) / 8)


def choose(row, allowed, per_type: bool, per_plane: bool = False) -> tuple[float, tuple]:
    """PSNR-YUV of the best option ("off" or an offset key) for all frames, or per frame type; with
    ``per_plane`` (per frame type only), luma and chroma each take their own best option."""
    options = {"off": np.array(row["none"])} | {key: np.array(v) for key, v in row["offsets"].items()}
    allowed = [option for option in allowed if option in options]
    if not per_type:
        best = max(allowed, key=lambda option: yuv(options[option]))
        return yuv(options[best]), (best, best)
    intra = np.array([i % INTRA_PERIOD == 0 for i in range(len(row["none"]))])

    def part(mask):
        return max(allowed, key=lambda o: ((6 * options[o][mask, 0] + options[o][mask, 1] + options[o][mask, 2]) / 8).sum())

    if per_plane:  # the mean PSNR of each plane is a sum over frames: pick luma and chroma apart
        frames = np.empty_like(options["off"])
        picks = []
        for mask in (intra, ~intra):
            luma = max(allowed, key=lambda o: options[o][mask, 0].sum())
            chroma = max(allowed, key=lambda o: (options[o][mask, 1] + options[o][mask, 2]).sum())
            frames[mask, 0], frames[mask, 1:] = options[luma][mask, 0], options[chroma][mask, 1:]
            picks.append((luma, chroma))
        return yuv(frames), tuple(picks)
    best_intra, best_inter = part(intra), part(~intra)
    frames = np.where(intra[:, None], options[best_intra], options[best_inter])
    return yuv(frames), (best_intra, best_inter)


def strategy(rows, allowed, per_type: bool, sei: int, per_plane: bool = False) -> dict[str, tuple[float, list]]:
    from adaptjobs.bdrate import bd_rate

    out = {}
    for sequence in dict.fromkeys(r["sequence"] for r in rows):
        curve = [r for r in rows if r["sequence"] == sequence]
        anchor = [(r["bytes"] * 8 / r["pixels"], yuv(r["none"])) for r in curve]
        test, picks = [], []
        for r in curve:
            quality, pick = choose(r, allowed, per_type, per_plane)
            test.append(((r["bytes"] + sei) * 8 / r["pixels"], quality))
            picks.append(pick)
        out[sequence] = (bd_rate(anchor, test).percent, picks)
    return out


def analyse(args) -> None:
    merged: dict[tuple, dict] = {}
    for path in args.json_files:  # later files add offsets to the points of earlier ones
        for row in json.loads(Path(path).read_text()):
            key = (row["sequence"], row["codec"], row["crf"])
            if key in merged:
                merged[key]["offsets"].update(row["offsets"])
            else:
                merged[key] = row
    rows = [r for r in merged.values() if not any(skip in r["sequence"] for skip in args.skip)]
    keys = list(dict.fromkeys(k for r in rows for k in r["offsets"]))
    if args.allowed:
        keys = [k for k in keys if k.split("@")[0] in args.allowed.split(",")]
    unit = [k for k in keys if "@" not in k or k.endswith("@1")]
    # (label, allowed options, per frame type, luma and chroma apart)
    cases = [("d = 0 (on/off)", [k for k in unit if k.split("@")[0] == "0"], False, False),
             ("one offset for all frames", unit, False, False), ("one offset per frame type", unit, True, False)]
    if any("@" in k for k in keys):
        cases.append(("offset and strength per frame type", keys, True, False))
    cases.append(("per frame type, luma/chroma apart", unit, True, True))
    for label, allowed, per_type, per_plane in cases:
        sei = args.sei + (1 if per_plane else 0)  # the second offsets byte
        result = strategy(rows, ["off", *allowed], per_type, sei, per_plane)
        mean = np.mean([v[0] for v in result.values()])
        print(f"{label:<36} mean {mean:+.3f} | " + " ".join(f"{s.split('_')[0]} {v[0]:+.2f}" for s, v in result.items()))
        if args.picks:
            for sequence, (_, picks) in result.items():
                print(f"    {sequence}: {picks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("measure")
    run.add_argument("filter", type=Path)
    run.add_argument("--codec", required=True, choices=["x264", "x265"])
    run.add_argument("--offsets", required=True)
    run.add_argument("--blends", default=None)
    run.add_argument("--skip", nargs="*", default=[])
    run.add_argument("--data", type=Path, default=Path("/work/shared/data/eval-dev"))
    run.add_argument("--stream-cache", type=Path, default=None)
    run.add_argument("--json", type=Path, required=True)
    report = commands.add_parser("analyse")
    report.add_argument("json_files", nargs="+")
    report.add_argument("--sei", type=int, default=47, help="bytes the method's SEI adds (47: H.264 with offsets)")
    report.add_argument("--picks", action="store_true")
    report.add_argument("--skip", nargs="*", default=[], help="leave out sequences whose name contains these")
    report.add_argument("--allowed", default=None, help="only these offsets, e.g. -6,-4,-2,0,2,4")
    args = parser.parse_args()
    measure(args) if args.command == "measure" else analyse(args)


if __name__ == "__main__":
    main()
