"""Markdown rows for RESULTS.md (gopad-runner): gop-adapters against none through the runner, per unit and per video.

    adaptjobs submit ../shared/data/eval-dev --run R --methods none,gop-adapters --codec ssf:1,2,3,4 --anchors none
    PYTHONPATH=$PWD python benchmarks/gopad_study/runner_rows.py R [R2 ...]

Per unit: the decision, the GoPs whose I-frame and whose P-frames the adapters coded (the others: the base encoder
was cheaper), the mean change of the kept I-frames' coded RD cost, bpp and PSNR-RGB against none's, the unit's RD
cost against none's, the coded bits of the I- and P-frames against training's estimate (`adaptjobs info --rates`:
the coder proxy, + 32 bits per stream) and the unit's seconds. Per video: BD-rate (PSNR-RGB, bytes written) against
none, as `adaptjobs report` computes it.
"""

import json
import sys
from pathlib import Path

from adaptjobs.bdrate import bd_rate
from workers.rate_audit import ANS_STREAM_BITS, stream_rates_of

units: dict = {}
for run in map(Path, sys.argv[1:]):
    for path in sorted(run.glob("units/*/ssf/*/q*/result.json")):
        units[(path.parts[-5], path.parts[-3], int(path.parts[-2][1:]))] = (path.parent, json.loads(path.read_text()))


def records(unit: Path, phase: str) -> list[dict]:
    lines = (unit / "adapt.log").read_text().splitlines()
    return [r for r in map(json.loads, (line for line in lines if line.startswith("{"))) if r.get("phase") == phase]


def coded_against_estimate(rows) -> str:
    coded = sum(r.coded for r in rows)
    estimate = sum(r.estimated + ANS_STREAM_BITS for r in rows)
    return f"{coded / estimate - 1:+.2%}"


print("| video | q | decision | I-frames adapted | kept I-frame cost | P GoPs adapted | bpp none | PSNR none | bpp "
      "| PSNR | RD cost vs none | I coded vs est. | P coded vs est. | s (none) | s (gop-adapters) |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
bd_rates = {}
for video in sorted({v for v, _, _ in units}):
    anchor, test = [], []
    for q in sorted({q for v, m, q in units if v == video and m == "gop-adapters"}):
        if (video, "none", q) not in units:
            continue
        (unit, r), (_, n) = units[(video, "gop-adapters", q)], units[(video, "none", q)]
        intra, inter = records(unit, "gop-adapters-intra-choice"), records(unit, "gop-adapters-choice")
        change = sum(c["cost"] / c["base_cost"] - 1 for c in intra) / max(len(intra), 1)
        rows, _ = stream_rates_of(unit)
        i_rows, p_rows = [x for x in rows if x.latent == "intra"], [x for x in rows if x.latent != "intra"]
        print(f"| {video} | {q} | {r['decision']} | {sum(c['kept_step'] > 0 for c in intra)}/{len(intra)} | "
              f"{change:+.2%} | {sum(c['kept_pass'] > 0 for c in inter)}/{len(inter)} | {n['bpp_with_payload']:.5f} | "
              f"{n['psnr_rgb']:.3f} | {r['bpp_with_payload']:.5f} | {r['psnr_rgb']:.3f} | "
              f"{r['rd_cost'] / n['rd_cost'] - 1:+.2%} | {coded_against_estimate(i_rows)} | "
              f"{coded_against_estimate(p_rows) if p_rows else '-'} | {n['adapt_seconds']:.0f} | "
              f"{r['adapt_seconds']:.0f} |")
        anchor.append((n["bpp_with_payload"], n["psnr_rgb"]))
        test.append((r["bpp_with_payload"], r["psnr_rgb"]))
    bd_rates[video] = bd_rate(anchor, test).percent if len(anchor) >= 4 else None
print()
print("| video | BD-rate vs none (PSNR-RGB, all frames) |")
print("|---|---:|")
for video, value in bd_rates.items():
    print(f"| {video} | {'n/a' if value is None else f'{value:+.2f}%'} |")
known = [v for v in bd_rates.values() if v is not None]
if known:
    print(f"| **mean of {len(known)}** | **{sum(known) / len(known):+.2f}%** |")
