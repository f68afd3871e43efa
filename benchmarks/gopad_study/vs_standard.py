"""BD-rate (PSNR-RGB, bytes written) of each SSF method's units against the PSNR-tuned x264/x265 units of another
run (the `none` units of a standard-codec run, e.g. the post-filter runs'), per video and averaged.

    PYTHONPATH=$PWD python benchmarks/gopad_study/vs_standard.py ANCHOR_RUN SSF_RUN [SSF_RUN ...]

The neural curves overlap the standard ones over a small range of rates only (calendar: 1-5% of the span), so
these numbers say how far apart the curves are, not more.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

from adaptjobs.bdrate import bd_rate


def curve(paths) -> list[tuple[float, float]]:
    return sorted((r["bpp_with_payload"], r["psnr_rgb"]) for r in (json.loads(p.read_text()) for p in paths))


anchor_run, ssf_runs = Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]]
ssf: dict = defaultdict(list)
for run in ssf_runs:
    for path in run.glob("units/*/ssf/*/q*/result.json"):
        ssf[(path.parts[-5], path.parts[-3])].append(path)
for codec in ("x264", "x265"):
    means = defaultdict(list)
    for (video, method), paths in sorted(ssf.items()):
        anchor = curve(anchor_run.glob(f"units/{video}/{codec}/none/q*/result.json"))
        if len(anchor) < 4:
            continue
        percent = bd_rate(anchor, curve(paths)).percent
        print(f"{codec} {video} {method}: {'n/a' if percent is None else f'{percent:+.1f}%'}")
        if percent is not None:
            means[method].append(percent)
    for method, values in means.items():
        print(f"{codec} mean over {len(values)} videos, {method}: {sum(values) / len(values):+.1f}%")
