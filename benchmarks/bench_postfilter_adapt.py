"""Per-video post-filter updates on eval-dev (not a test: numbers go to RESULTS.md).

    nice python benchmarks/bench_postfilter_adapt.py --filter /root/pf-run/latest.safetensors \\
        --units /tmp/pfa-units.jsonl --out benchmarks/RESULTS.md

For every sequence (all frames), CRF and parameterisation: x264 (PSNR-tuned, intra period 12) codes the
video; the generic filter and the adapted one run on the decoded frames; the decision (none / generic /
adapted, update bytes counted, at the config's RD measure: psnr-yuv by default) gives this method's point. Curves are PSNR-YUV over bits per pixel, where
the rate is the stream's bytes plus the update's (the SEI carrier's own fixed bytes are left out of every
method alike). ``postfilter`` is the generic filter with its on/off switch (on when it lowers
lambda * wMSE). BD-rate of ``postfilter-adapt`` against ``none`` (plain x264) and against ``postfilter``,
per sequence and on average; update bytes and their share of the stream; adaptation seconds per frame.
It also compares the QP-lambda relation with the local slope of each sequence's own ``none`` curve.

Units already in --units (JSON lines) are not measured again, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, replace_section  # noqa: E402

from adaptjobs.bdrate import bd_rate  # noqa: E402
from workers.postfilter.adapt import (FilterAdaptConfig, UpdateTraining, adapt_filter, codec_lambda,  # noqa: E402
                                      filter_all, lambda_from_slope, mean_psnr_yuv, mean_wmse)
from workers.postfilter.checkpoint import load_filter  # noqa: E402
from workers.standard.encoder import DEFAULT_CRFS, decode_stream, encode_planes  # noqa: E402
from workers.video_io import read_video  # noqa: E402

EVAL_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval-dev"


def measure_sequence(path: Path, loaded, crfs, parameterisations, args, done: set, write) -> None:
    video = read_video(path, max_frames=args.frames)
    originals = [video.frame_yuv420(i) for i in range(len(video))]
    pixels = video.width * video.height * len(video)
    for crf in crfs:
        todo = [p for p in parameterisations if (video.name, crf, p) not in done]
        if not todo:
            continue
        data, decoded, generic, filter_seconds = coded_unit(video, originals, loaded, crf, args)
        for parameterisation in todo:
            config = FilterAdaptConfig(**{"parameterisation": parameterisation, **json.loads(args.config),
                                          "training": UpdateTraining(**json.loads(args.training))})
            result = adapt_filter(loaded, loaded.metadata.weights_sha256, originals, decoded, crf, args.codec, config,
                                  generic_planes=generic, stream_bytes=len(data))
            write({"sequence": video.name, "crf": crf, "parameterisation": parameterisation, "frames": len(video),
                   "pixels": pixels, "stream_bytes": len(data), "wmse_none": mean_wmse(originals, decoded),
                   "wmse_generic": mean_wmse(originals, generic),
                   "wmse_adapted": mean_wmse(originals, result.planes) if result.blob is not None else None,
                   "filter_seconds_per_frame": filter_seconds, "planes_none": plane_psnrs(originals, decoded),
                   "planes_generic": plane_psnrs(originals, generic),
                   "planes_adapted": plane_psnrs(originals, result.planes) if result.blob is not None else None,
                   **result.decision.to_dict(), **result.stats})


def plane_psnrs(originals, frames) -> list[float]:
    """[PSNR-Y, PSNR-U, PSNR-V] (dB), each averaged over frames, as PSNR-YUV averages them."""
    from workers.postfilter.adapt import plane_mses

    mses = np.array([plane_mses(o, f) for o, f in zip(originals, frames)])
    return [float(v) for v in np.mean(10 * np.log10(255.0**2 / np.maximum(mses, 1e-10)), axis=0)]


def _stack(frames) -> dict[str, np.ndarray]:
    return {name: np.stack([f[i] for f in frames]) for i, name in enumerate("yuv")}


def _unstack(arrays, prefix: str) -> list:
    y, u, v = (arrays[f"{prefix}{name}"] for name in "yuv")
    return [(y[i], u[i], v[i]) for i in range(len(y))]


def coded_unit(video, originals, loaded, crf: float, args) -> tuple[bytes, list, list, float]:
    """(stream, decoded frames, generic filter's output, generic filter seconds per frame) of one (sequence,
    codec, CRF). With --cache DIR they are kept in DIR/<codec>-<sequence>-<crf>-<filter sha>.npz (written
    atomically), so comparing parameterisations, or a resumed run, encodes and filters each unit once; the
    arrays are ours (np.load with allow_pickle off)."""
    from workers.atomic import atomic_write_bytes

    name = f"{args.codec}-{video.name}-{crf:g}-ip{args.intra_period}-{loaded.metadata.weights_sha256[:12]}.npz"
    path = None if args.cache is None else args.cache / name
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as arrays:
            return (arrays["stream"].tobytes(), _unstack(arrays, "decoded_"), _unstack(arrays, "generic_"),
                    float(arrays["filter_seconds"]))
    data = encode_planes(originals, video.width, video.height, video.fps, args.codec, crf, args.intra_period)
    decoded = decode_stream(data, args.codec)
    began = time.perf_counter()
    generic = filter_all(loaded.model, decoded, crf, args.codec)
    filter_seconds = (time.perf_counter() - began) / len(decoded)
    if path is not None:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, stream=np.frombuffer(data, np.uint8), filter_seconds=np.float64(filter_seconds),
                 **{f"decoded_{k}": v for k, v in _stack(decoded).items()},
                 **{f"generic_{k}": v for k, v in _stack(generic).items()})
        args.cache.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
    return data, decoded, generic, filter_seconds


def runner_decision(r: dict) -> tuple[str, int]:
    """(what the unit loop sends, update bytes) for unit ``r``: the method offers the adapted candidate when
    adapt_filter's own decision is "adapted", the generic filter always, the plain stream is the base; the unit
    loop (workers/encoder.py) takes the cheapest at the codec's lambda 1 / (0.85 * 2^((CRF - 12) / 3)) on wMSE
    (the SEI's own few bytes left out alike), ties to the simpler."""
    qp = codec_lambda(r["crf"], "x264")  # workers/codecs/standard.py uses x264's factor for both codecs
    costs = {"none": qp * r["wmse_none"], "generic": qp * r["wmse_generic"]}
    if r["decision"] == "adapted":
        costs["adapted"] = qp * r["wmse_adapted"] + 8 * r["blob_bytes"] / r["pixels"]
    label = min(costs, key=costs.get)  # dict order: none, generic, adapted; min keeps the first of equals
    return label, r["blob_bytes"] if label == "adapted" else 0


PLANE_METRICS = {"Y": lambda p: p[0], "chroma": lambda p: (p[1] + p[2]) / 2}  # chroma = (PSNR-U + PSNR-V) / 2


def plane_bd(rows: list[dict], parameterisation: str, sequence: str, metric: str) -> float | None:
    """BD-rate against none on PSNR-Y or chroma (PLANE_METRICS) of the unit loop's choice (:func:`runner_decision`),
    None where a unit lacks the per-plane PSNRs (measured before they were recorded)."""
    mine = sorted((r for r in rows if r["sequence"] == sequence and r["parameterisation"] == parameterisation),
                  key=lambda r: r["crf"])
    if len(mine) < 4 or any("planes_none" not in r for r in mine):
        return None
    score = PLANE_METRICS[metric]
    none, ours = [], []
    for r in mine:
        decision, sent = runner_decision(r)
        bpp = 8 * r["stream_bytes"] / r["pixels"]
        none.append((bpp, score(r["planes_none"])))
        ours.append((8 * (r["stream_bytes"] + sent) / r["pixels"], score(r[f"planes_{decision}"] if decision != "none"
                                                                        else r["planes_none"])))
    return bd_rate(none, ours).percent


def curves(rows: list[dict]) -> dict:
    """sequence -> {"none", "postfilter", "<parameterisation>"} -> [(bpp, psnr)]; the method's points are what
    the unit loop sends (:func:`runner_decision`); postfilter's filter is on when it lowers wMSE."""
    out: dict = {}
    for r in rows:
        seq = out.setdefault(r["sequence"], {})
        bpp = 8 * r["stream_bytes"] / r["pixels"]
        seq.setdefault("none", {})[r["crf"]] = (bpp, r["psnr_none"])
        decision, sent = runner_decision(r)
        on = r["wmse_generic"] < r["wmse_none"]
        seq.setdefault("postfilter", {})[r["crf"]] = (bpp, r["psnr_generic"] if on else r["psnr_none"])
        chosen = {"none": r["psnr_none"], "generic": r["psnr_generic"], "adapted": r["psnr_adapted"]}[decision]
        seq.setdefault(r["parameterisation"], {})[r["crf"]] = (8 * (r["stream_bytes"] + sent) / r["pixels"], chosen)
    return {s: {m: [pts[c] for c in sorted(pts)] for m, pts in methods.items()} for s, methods in out.items()}


def slope_table(rows: list[dict]) -> list[str]:
    """QP-lambda relation vs the local slope of the none curve (bpp over wMSE, neighbouring CRFs)."""
    lines = ["| sequence | CRF | lambda QP relation | lambda local slope | ratio |", "|---|---|---|---|---|"]
    by_seq: dict = {}
    for r in rows:
        by_seq.setdefault(r["sequence"], {})[r["crf"]] = (8 * r["stream_bytes"] / r["pixels"], r["wmse_none"])
    for seq, points in sorted(by_seq.items()):
        crfs = sorted(points)
        for i in range(1, len(crfs) - 1):
            try:
                slope = lambda_from_slope([points[c] for c in crfs[i - 1: i + 2]])
            except ValueError:
                continue
            rel = codec_lambda(crfs[i], "x264")
            lines.append(f"| {seq} | {crfs[i]:g} | {rel:.5f} | {slope:.5f} | {slope / rel:.2f} |")
    return lines


def summary(rows: list[dict], parameterisations) -> str:
    table = curves(rows)
    lines = ["| parameterisation | sequence | BD-rate vs none | BD-rate vs postfilter | BD-rate PSNR-Y | BD-rate chroma "
             "| units sent (tied, wide) | groups per sent unit "
             "| update bytes (mean when sent) | share of stream (mean when sent) | adapt s/frame | adapted, not sent by the unit "
             "loop |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:+.2f}%"  # noqa: E731
    for p in parameterisations:
        vs_none, vs_generic, planes = [], [], {"Y": [], "chroma": []}
        for seq in sorted(table):
            if len(table[seq].get(p, [])) < 4:  # a BD-rate needs 4 points: unfinished sequences are left out
                continue
            a = bd_rate(table[seq]["none"], table[seq][p]).percent
            b = bd_rate(table[seq]["postfilter"], table[seq][p]).percent
            vs_none.append(a)
            vs_generic.append(b)
            mine = [r for r in rows if r["sequence"] == seq and r["parameterisation"] == p]
            vetoed = sum(r["decision"] == "adapted" and runner_decision(r)[0] != "adapted" for r in mine)
            mine = [r | dict(zip(("decision", "blob_bytes"), runner_decision(r))) for r in mine]
            sent = [r for r in mine if r["decision"] == "adapted"]
            size = np.mean([r["blob_bytes"] for r in sent]) if sent else 0
            share = np.mean([r["blob_bytes"] / (r["stream_bytes"] + r["blob_bytes"]) for r in sent]) if sent else 0
            tied = sum(r.get("structure") == "cross-linear-tied" or bool(r.get("tied")) for r in sent)
            wide = sum(bool(r.get("wide")) for r in sent)
            groups = [r["groups"] for r in sorted(sent, key=lambda r: r["crf"]) if r.get("groups")]  # by CRF
            by_plane = {m: plane_bd(rows, p, seq, m) for m in planes}
            for m, v in by_plane.items():
                planes[m].append(v)
            lines.append(f"| {p} | {seq} | {a:+.2f}% | {b:+.2f}% | {fmt(by_plane['Y'])} | {fmt(by_plane['chroma'])} | "
                         f"{len(sent)}/{len(mine)} ({tied}, {wide}) | "
                         f"{' '.join(str(g) for g in groups) or '-'} | {size:.0f} | {100 * share:.2f}% "
                         f"| {np.mean([r['adapt_seconds_per_frame'] for r in mine]):.2f} | {vetoed} |")
        means = {m: None if not v or None in v else float(np.mean(v)) for m, v in planes.items()}
        lines.append(f"| {p} | **average** | **{np.mean(vs_none):+.2f}%** | **{np.mean(vs_generic):+.2f}%** | "
                     f"{fmt(means['Y'])} | {fmt(means['chroma'])} | | | | | | |")
    generic = [bd_rate(table[s]["none"], table[s]["postfilter"]).percent for s in sorted(table) if len(table[s]["none"]) >= 4]
    lines.append(f"| postfilter (generic, reference) | average | {np.mean(generic):+.2f}% | | | | | | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", type=Path, default=Path("/root/pf-run/latest.safetensors"))
    parser.add_argument("--data", type=Path, default=EVAL_DEV)
    parser.add_argument("--codec", default="x264")
    parser.add_argument("--crfs", type=float, nargs="+", default=list(DEFAULT_CRFS))
    parser.add_argument("--parameterisations", nargs="+", default=["scale-bias", "lora", "last-layer", "cross-linear",
                                                                   "classified-linear", "classified-linear-on-base"])
    parser.add_argument("--intra-period", type=int, default=12)
    parser.add_argument("--frames", type=int, default=None, help="default: all frames")
    parser.add_argument("--sequences", nargs="*", default=None, help="names under --data (default: all)")
    parser.add_argument("--training", default="{}", help="UpdateTraining fields as JSON (default: the defaults)")
    parser.add_argument("--config", default="{}", help="other FilterAdaptConfig fields as JSON, e.g. "
                                                        "'{\"rd_measure\": \"wmse\"}' (default: the defaults)")
    parser.add_argument("--units", type=Path, required=True, help="JSON lines of measured units (resumable)")
    parser.add_argument("--cache", type=Path, default=None, help="folder of encoded + generic-filtered units (reused)")
    parser.add_argument("--out", type=Path, default=None, help="RESULTS.md to update")
    parser.add_argument("--section", default="postfilter-adapt", help="the RESULTS.md section (marker) to replace")
    parser.add_argument("--title", default="", help="added to the section's heading")
    args = parser.parse_args()
    loaded = load_filter(args.filter)
    rows = [json.loads(line) for line in args.units.read_text().splitlines()] if args.units.exists() else []
    rows = [r for r in rows if r["crf"] in args.crfs and r["parameterisation"] in args.parameterisations]
    done = {(r["sequence"], r["crf"], r["parameterisation"]) for r in rows}

    def write(row: dict) -> None:
        rows.append(row)
        with open(args.units, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps({k: row[k] for k in ("sequence", "crf", "parameterisation", "decision", "blob_bytes",
                                              "psnr_none", "psnr_generic", "psnr_adapted", "adapt_seconds_per_frame")}),
              flush=True)

    paths = (sorted(args.data.iterdir()) if args.sequences is None  # given names: measured in that order
             else [args.data / name for name in args.sequences])
    for path in paths:
        measure_sequence(path, loaded, args.crfs, args.parameterisations, args, done, write)
    measures = sorted({r["lambda_source"].split(" ")[0] for r in rows})
    text = (f"Decisions in {' and '.join(measures)} (adapt_filter's lambda_source), the generic filter's own on/off "
            "switch at the QP-lambda relation on wMSE:\n\n" + summary(rows, args.parameterisations)
            + "\n\nlambda of the QP relation against the local slope of each sequence's none curve (neighbouring CRFs "
            "of this sweep):\n\n" + "\n".join(slope_table(rows)))
    print(text)
    if args.out is not None:
        header = (f"## Post-filter adaptation per video{args.title} (eval-dev, {args.codec}, intra period {args.intra_period})\n\n"
                  f"Measured {datetime.date.today()} on {cpu_name()} (2 cores shared with a training run), base filter "
                  f"{args.filter} (sha256 {loaded.metadata.weights_sha256[:12]}), training {args.training}, config "
                  f"{args.config}:\n`nice python benchmarks/bench_postfilter_adapt.py "
                  f"{' '.join(shlex.quote(a) for a in sys.argv[1:])}`\n\n")
        replace_section(args.out, args.section, header + text)


if __name__ == "__main__":
    main()
