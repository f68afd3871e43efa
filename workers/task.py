"""The worker entry point: run one adaptation unit into its folder. No Ray here.

`adaptjobs adapt` calls :func:`run_task` in process; the runner calls the same function inside a Ray task.
It continues from the unit's checkpoint when there is one, writes result.json and then the DONE marker,
and turns failures into a FAILED marker plus the traceback in the unit log:

- bad input or config (InputError): recorded, never retried (the same input fails the same way);
- any other exception (a bug): recorded with its traceback, not retried;
- a killed worker or node writes nothing: Ray retries the task and this function continues from the
  last checkpoint in the unit folder.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from schemas.job import FailureRecord, TaskOutcome, VideoEntry, VideoTask
from workers.errors import InputError
from workers.run_layout import (ADAPT_LOG, DONE, JOB_FILE, append_log, attempts, host_name, is_done, read_done,
                                unit_lock, unit_logging, write_done, write_failed)


def input_bytes(path: Path) -> int:
    """Size of an input: the file, or the sum of the files of a frame folder (0 if it cannot be read)."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def describe_input(path: str | Path, name: str | None = None) -> VideoEntry:
    """The VideoEntry of an input path (absolute), named after its file stem unless ``name`` is given."""
    from workers.run_layout import safe_name

    path = Path(path).resolve()
    stem = path.name.split(".")[0] if not path.is_dir() else path.name
    return VideoEntry(name=name or safe_name(stem), path=str(path), bytes=input_bytes(path))


def storage_failure(run_dir: Path, unit_dir: Path) -> TaskOutcome | None:
    """A failure outcome when this host cannot see the run directory (None when it can)."""
    if (run_dir / JOB_FILE).is_file():
        return None
    failure = FailureRecord(
        error=f"{run_dir}: host {host_name()} cannot see the run directory (no {JOB_FILE}); on a cluster RUN must "
              "be on storage that every node mounts at the same path (see infra/README.md)",
        kind="storage", attempt=0, failed_at="", host=host_name())
    return TaskOutcome(unit_dir=str(unit_dir), state="failed", failure=failure)


def check_unchanged(video: VideoEntry) -> None:
    """Refuse an input whose size changed since the run was submitted (its results would not match)."""
    now = input_bytes(Path(video.path))
    if now != video.bytes and Path(video.path).exists():
        raise InputError(video.path, f"changed since the run was submitted ({video.bytes} bytes then, {now} now)")


def run_unit(unit_dir: Path, run_dir: Path | None, log_name: str, source: str, work: Callable[[], dict],
             redo: bool = False, node_id: str | None = None) -> TaskOutcome:
    """The life of one unit, whatever its work: check that RUN is visible, take the unit lock, skip it if
    DONE (unless ``redo``), log the attempt (host, pid and the Ray node id when there is one: two nodes on one
    host differ only by it), run ``work`` with the worker's logging routed to the unit log (``work`` writes
    the unit's artifacts and returns extra fields for the "done" event), then write DONE last; record
    failures as FAILED. ``source`` names the input in messages about unexpected errors."""
    if run_dir is not None:
        missing = storage_failure(run_dir, unit_dir)
        if missing is not None:
            return missing
    log_path = unit_dir / log_name
    with unit_lock(unit_dir):
        if is_done(unit_dir) and not redo:
            done = read_done(unit_dir)
            return TaskOutcome(unit_dir=str(unit_dir), state="done", skipped=True,
                               seconds=done.seconds if done else 0.0)
        (unit_dir / DONE).unlink(missing_ok=True)
        attempt = attempts(log_path) + 1
        where = {"host": host_name(), "pid": os.getpid(), **({"node_id": node_id} if node_id else {})}
        append_log(log_path, {"event": "attempt", "attempt": attempt, **where})
        started = time.perf_counter()
        try:
            with unit_logging(log_path):
                details = work()
        except InputError as exc:
            return _failed(unit_dir, log_path, str(exc), "input", attempt, started)
        except Exception as exc:  # noqa: BLE001 - a bug: recorded with its traceback, not retried
            return _failed(unit_dir, log_path, f"{source}: {exc.__class__.__name__}: {exc}", "error", attempt, started)
        seconds = time.perf_counter() - started
        append_log(log_path, {"event": "done", "attempt": attempt, "seconds": round(seconds, 3), **details})
        write_done(unit_dir, attempt, seconds)  # last: the unit counts as done from here on
        return TaskOutcome(unit_dir=str(unit_dir), state="done", seconds=seconds,
                           resumed_from_step=int(details.get("resumed_from_step", 0)))


def run_task(task: VideoTask, redo: bool = False, node_id: str | None = None) -> TaskOutcome:
    """Run one unit (see module docstring). ``redo``: run even if the unit is DONE (the `adapt` command); the
    runner never redoes a DONE unit. ``node_id``: the Ray node running it (recorded with the attempt)."""
    unit_dir = Path(task.unit_dir)

    def work() -> dict:
        timings: dict[str, float] = {}
        result = _adapt(task, unit_dir, timings)
        return {"resumed_from_step": result.resumed_from_step, "decision": result.decision, **timings}

    return run_unit(unit_dir, None if task.run_dir is None else Path(task.run_dir), ADAPT_LOG, task.video.path, work,
                    redo, node_id)


def _adapt(task: VideoTask, unit_dir: Path, timings: dict[str, float]):
    """Read the input, open the base codec at its quality point (weights checked), adapt; ``timings`` gets the
    seconds of the first two."""
    import torch

    from workers.device import use_device
    from workers.encoder import adapt_video
    from workers.codecs import load_codec
    from workers.video_io import read_video

    if task.threads is not None:
        torch.set_num_threads(task.threads)  # per task, so a long-lived worker never keeps another task's setting
    device = use_device(task.device)  # the runner resolved auto against Ray's GPUs; here auto = cpu
    check_unchanged(task.video)
    began = time.perf_counter()
    video = read_video(task.video.path, task.frames)
    timings["read_seconds"] = round(time.perf_counter() - began, 4)
    began = time.perf_counter()
    codec = load_codec(task.codec).place(device)
    timings["model_seconds"] = round(time.perf_counter() - began, 4)
    return adapt_video(video, codec, unit_dir, task.method, intra_period=task.intra_period, recon=task.recon)


def _failed(unit_dir: Path, log_path: Path, error: str, kind: str, attempt: int, started: float) -> TaskOutcome:
    append_log(log_path, {"event": "failed", "attempt": attempt, "kind": kind, "error": error,
                          "seconds": round(time.perf_counter() - started, 3), "traceback": traceback.format_exc()})
    failure = write_failed(unit_dir, error, kind, attempt)
    return TaskOutcome(unit_dir=str(unit_dir), state="failed", failure=failure, seconds=time.perf_counter() - started)
