"""Where the post-filter methods stand when measured through the runner (not a test: numbers go to RESULTS.md).

    adaptjobs submit ../shared/data/eval-dev --run R --methods none,postfilter,postfilter-adapt \\
        --codec x264:22,27,32,37,42,47,51 --anchors none --no-progress
    python benchmarks/runner_postfilter_table.py R [R2 ...] --section NAME --command "..." --out benchmarks/RESULTS.md

Reads every unit's result.json of the given run directories (several runs may hold different methods or
codecs; a (video, codec, method, CRF) found in two runs is refused), and per codec and sequence gives the
BD-rate (PSNR-YUV, PSNR-Y, chroma = (PSNR-U + PSNR-V) / 2) of each method against ``none`` on the
rates the units wrote (the whole file: stream, SEI and update), the units whose update was sent, the update
bytes and their share of the stream, adaptation seconds per frame and the unit's encoder time relative to
x264/x265's own encode time (``none``'s encode_seconds at the same CRF; both measured by the same runner).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, replace_section  # noqa: E402

from adaptjobs.bdrate import bd_rate  # noqa: E402

STANDARD = ("x264", "x265")


def load_units(runs: list[Path]) -> dict[tuple[str, str, str, float], dict]:
    """(video, codec, method, crf) -> result.json of every finished standard-codec unit of ``runs``."""
    units: dict[tuple[str, str, str, float], dict] = {}
    for run in runs:
        for path in sorted(run.glob("units/*/*/*/q*/result.json")):
            video, codec, method = path.parts[-5], path.parts[-4], path.parts[-3]
            if codec not in STANDARD:
                continue
            result = json.loads(path.read_text())
            key = (video, codec, method, float(result["quality"]))
            if key in units:
                raise SystemExit(f"{path}: this unit is also in another run given")
            units[key] = result
    return units


def _curve(points: list[dict], metric) -> list[tuple[float, float]]:
    return [(p["bpp_with_payload"], metric(p)) for p in points]


METRICS = {"PSNR-YUV": lambda r: r["psnr_yuv"], "PSNR-Y": lambda r: r["psnr_y"],
           "chroma": lambda r: (r["psnr_u"] + r["psnr_v"]) / 2}


def _bd(anchor: list[dict], test: list[dict], metric) -> str:
    result = bd_rate(_curve(anchor, metric), _curve(test, metric))
    return "n/a" if result.percent is None else f"{result.percent:+.2f}%"


def rows(units: dict) -> list[list[str]]:
    """One row per (codec, sequence, method other than none), then per (codec, method) the mean of sequences."""
    by_curve: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for (video, codec, method, _), result in sorted(units.items()):
        by_curve[(codec, video, method)].append(result)
    table, means = [], defaultdict(list)
    for (codec, video, method), points in sorted(by_curve.items()):
        anchor = by_curve.get((codec, video, "none"))
        if method == "none" or not anchor:
            continue
        bds = [_bd(anchor, points, metric) for metric in METRICS.values()]
        sent = [p for p in points if p.get("update_bytes_in_stream")]
        encode = {p["quality"]: p["encode_seconds"] for p in anchor}
        relative = [p["adapt_seconds"] / encode[p["quality"]] for p in points if encode.get(p["quality"])]
        per_frame = [p["adapt_seconds"] / p["frames"] for p in points]
        table.append([codec, video, method, *bds, f"{len(sent)}/{len(points)}",
                      f"{statistics.mean(p['update_bytes_in_stream'] for p in sent):.0f}" if sent else "-",
                      (f"{100 * min(p['update_bytes_in_stream'] / p['bytes_written'] for p in sent):.2f}-"
                       f"{100 * max(p['update_bytes_in_stream'] / p['bytes_written'] for p in sent):.2f}%") if sent else "-",
                      f"{statistics.mean(per_frame):.2f}", f"{statistics.mean(relative):.1f}x" if relative else "-"])
        if "n/a" not in bds:
            means[(codec, method)].append([float(b.rstrip("%")) for b in bds])
    for (codec, method), values in sorted(means.items()):
        averaged = [f"**{statistics.mean(column):+.2f}%**" for column in zip(*values)]
        table.append([codec, f"**mean of {len(values)} sequences**", method, *averaged, "", "", "", "", ""])
    return table


def section(units: dict, command: str, runs: list[Path]) -> str:
    header = ["codec", "sequence", "method", "BD-rate PSNR-YUV", "BD-rate PSNR-Y", "BD-rate chroma", "update sent",
              "mean update bytes", "update share of stream", "unit s/frame", "unit time / codec encode time"]
    lines = ["## Post-filter methods through the runner (eval-dev, all frames, CRFs 22..51, intra period 12)", "",
             f"Measured {datetime.date.today().isoformat()} on {cpu_name()}, 2 cores shared with other work "
             "(times are upper bounds), by `adaptjobs submit` (each unit a Ray task with 1 CPU): " + command,
             f"then `python benchmarks/runner_postfilter_table.py {' '.join(str(r) for r in runs)}`. BD-rate against "
             "`none` (= the PSNR-tuned x264/x265 anchor point for point) on the bytes each unit wrote: stream, SEI "
             "record and update. Unit time is the whole unit (encode, filters, adaptation, decode check, metrics) "
             "against the same CRF's plain encode in the `none` unit.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(units)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--section", default="runner-postfilter")
    parser.add_argument("--command", default="", help="the submit command(s) that made the runs, quoted in the section")
    parser.add_argument("--out", type=Path, help="RESULTS.md to update (default: print)")
    args = parser.parse_args(argv)
    text = section(load_units(args.runs), args.command, args.runs)
    if args.out is None:
        print(text)
    else:
        replace_section(args.out, args.section, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
