"""decoder-lora against none on the small eval-dev clips, one unit at a time (not a test: numbers go to
RESULTS.md, issue 14).

    nice -n 5 python benchmarks/bench_lora_small.py --videos carphone,foreman --qualities 1,2,3,4 \
        --none-cache /tmp/lora-none --work /tmp/lora-after --label after

Every unit is ``adaptjobs --threads 1 adapt VIDEO -o DIR --method M --quality Q [--set ...]`` in its own
process, exactly the command a user runs. ``none`` units go to ``--none-cache`` and are reused by every later
invocation (they do not depend on the method's options); a method unit whose result.json exists in ``--work``
is reused too, so an interrupted measurement continues. Prints one row per unit and the BD-rate (PSNR-RGB,
payload counted) of the method against none per video, and writes them as JSON to ``WORK/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from adaptjobs.bdrate import bd_rate  # noqa: E402

EVAL_DEV = ROOT.parents[0] / "shared" / "data" / "eval-dev"
if not EVAL_DEV.exists():
    EVAL_DEV = Path("/work/shared/data/eval-dev")


def video_path(name: str) -> Path:
    found = sorted(p for p in EVAL_DEV.iterdir() if p.name.startswith(name + "_"))
    if not found:
        raise SystemExit(f"no eval-dev video named {name} in {EVAL_DEV}")
    return found[0]


def run_unit(video: Path, method: str, quality: int, folder: Path, options: list[str]) -> dict:
    """result.json of the unit in ``folder``, running it first when it is not there."""
    result = folder / "result.json"
    if not result.exists():
        command = [sys.executable, "-m", "adaptjobs", "--threads", "1", "adapt", str(video), "-o", str(folder),
                   "--method", method, "--quality", str(quality)]
        for option in options:
            command += ["--set", option]
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text())


def markdown_table(summaries: list[dict]) -> str:
    """One row per (summary, video, quality), then one BD-rate row per (summary, video)."""
    lines = ["| label | video | q | decision | payload B | bpp none | PSNR none | bpp | PSNR | RD cost vs none | "
             "adapted RD cost vs none |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for summary in summaries:
        for video, entry in summary["videos"].items():
            for unit in entry["units"]:
                adapted = unit["adapted_rd_cost_change"]
                lines.append(f"| {summary['label']} | {video} | {unit['quality']} | {unit['decision']} | "
                             f"{unit['payload_bytes']} | {unit['bpp_none']:.5f} | {unit['psnr_none']:.3f} | "
                             f"{unit['bpp']:.5f} | {unit['psnr']:.3f} | {100 * unit['rd_cost_change']:+.2f}% | "
                             + ("-" if adapted is None else f"{100 * adapted:+.2f}%") + " |")
    lines += ["", "| label | video | BD-rate vs none (PSNR-RGB, payload counted) |", "|---|---|---:|"]
    for summary in summaries:
        for video, entry in summary["videos"].items():
            lines.append(f"| {summary['label']} | {video} | {entry['bd_rate']:+.2f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", default="carphone,foreman")
    parser.add_argument("--qualities", default="1,2,3,4")
    parser.add_argument("--method", default="decoder-lora")
    parser.add_argument("--set", action="append", default=[], help="method option (repeatable)")
    parser.add_argument("--none-cache", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--label", default="")
    parser.add_argument("--table", type=Path, nargs="+", default=None,
                        help="only print a markdown table of these summary.json files (e.g. before and after)")
    args = parser.parse_args()
    if args.table:
        print(markdown_table([json.loads(p.read_text()) for p in args.table]))
        return
    qualities = [int(q) for q in args.qualities.split(",")]
    summary = {"label": args.label, "method": args.method, "options": args.set, "videos": {}}
    for name in args.videos.split(","):
        video = video_path(name)
        rows, anchor, test = [], [], []
        for quality in qualities:
            base = run_unit(video, "none", quality, args.none_cache / f"{name}-q{quality}", [])
            unit = run_unit(video, args.method, quality, args.work / f"{name}-q{quality}", args.set)
            anchor.append((base["bpp_with_payload"], base["psnr_rgb"]))
            test.append((unit["bpp_with_payload"], unit["psnr_rgb"]))
            rows.append({"quality": quality, "decision": unit["decision"], "payload_bytes": unit["payload_bytes"],
                         "bpp_none": base["bpp_with_payload"], "psnr_none": base["psnr_rgb"],
                         "bpp": unit["bpp_with_payload"], "psnr": unit["psnr_rgb"],
                         "rd_cost_change": unit["rd_cost"] / base["rd_cost"] - 1.0,
                         "adapted_rd_cost_change": None if unit["rd_cost_adapted"] is None
                         else unit["rd_cost_adapted"] / base["rd_cost"] - 1.0,
                         "steps": unit["adaptation_steps"], "adapt_seconds": unit["adapt_seconds"]})
            print(f"{name} q{quality}: {rows[-1]}", flush=True)
        result = bd_rate(anchor, test)
        summary["videos"][name] = {"bd_rate": result.percent, "warning": result.warning, "units": rows}
        percent = "n/a" if result.percent is None else f"{result.percent:+.2f}%"
        print(f"{name}: BD-rate {percent} ({result.warning or 'ok'})", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
