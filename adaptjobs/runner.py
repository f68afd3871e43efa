"""Run the units of a run directory as Ray tasks (design.md section 7; datatrove's executor split).

The runner only schedules: each unit is a Ray task calling workers.task.run_task, which writes everything
into the unit folder (whatever the codec and the method). What
survives what:

- a worker or node dies: Ray retries the task up to ``max_retries`` times (system failures only) and
  run_task continues from the unit's last checkpoint in RUN; past the limit the unit is FAILED (kind lost);
- a Python exception (bad input, a bug) is recorded in the unit as FAILED by the worker and not retried;
- the driver dies: its tasks die with it; `adaptjobs resume` skips DONE units and continues the others
  from their checkpoints (resume comes from RUN, not from Ray).

Ray is imported here only, when a run is actually scheduled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from schemas.job import JobSpec, TaskOutcome
from adaptjobs.run_store import RunStore, Unit, result_problem
from adaptjobs.spec import probe
from workers.run_layout import DONE, FAILED, append_log, is_done, read_failed, write_failed


@dataclass(frozen=True)
class Execution:
    """How units are computed (not part of the spec: a run can resume elsewhere)."""

    address: str | None = None      # None: RAY_ADDRESS if set (ray job submit), else an embedded local Ray
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    max_retries: int = 3
    progress: bool = True
    local_cpus: int | None = None   # CPUs of the embedded instance (default: all of this machine's)
    sigterm_interrupts: bool = False  # SIGTERM raises KeyboardInterrupt in the driver (the CLI sets it)
    device: str = "auto"            # per unit: auto = the GPU Ray assigned to the task, else cpu (workers/device.py)


@dataclass
class RunSummary:
    scheduled: int = 0
    done: int = 0
    failed: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    failures: dict[str, str] = field(default_factory=dict)   # unit -> error
    seconds: float = 0.0


def _ray_adapt(task_json: str) -> dict:
    """The Ray task of one unit (runs in a worker): workers.task.run_task, told which Ray node runs it and
    which device: ``auto`` becomes the GPU Ray assigned to this task, else the CPU (task_device)."""
    import ray

    from schemas.job import VideoTask
    from workers.task import run_task

    node_id = ray.get_runtime_context().get_node_id()
    task = VideoTask.model_validate_json(task_json)
    task = task.model_copy(update={"device": task_device(task.device, ray.get_gpu_ids())})
    return run_task(task, node_id=node_id).model_dump()


def task_device(spec: str, gpu_ids: list) -> str:
    """A unit's --device inside its Ray task: ``auto`` -> "cuda" when Ray assigned GPUs to the task (Ray sets
    CUDA_VISIBLE_DEVICES to them, so the first is cuda:0 in the worker), else "cpu"; others unchanged.
    The Ray side of workers/device.resolve_device, which never imports Ray."""
    if spec != "auto":
        return spec
    return "cuda" if gpu_ids else "cpu"


def connect(execution: Execution) -> bool:
    """Connect to Ray; returns True when this call started it (and so should shut it down)."""
    from adaptjobs.extras import require

    ray = require("ray", "running units (submit, resume)")

    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    with _quiet_auth_notice():
        if execution.address:
            ray.init(address=execution.address, log_to_driver=False, logging_level=logging.WARNING)
        elif os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`, or pointed at a cluster by the environment
            ray.init(log_to_driver=False, logging_level=logging.WARNING)
        else:
            # address="local": always a new embedded instance, never a cluster that happens to run on this machine
            ray.init(address="local", num_cpus=execution.local_cpus or os.cpu_count(), **quiet)
    return True


RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextlib.contextmanager
def _quiet_auth_notice():
    """Silence Ray's token-auth notice during ray.init (issue 11: "Token authentication is enabled for this
    Ray cluster..." on every submit's stderr). Nothing else changes: Ray 2.60 enables token auth for a new
    local instance when RAY_AUTH_MODE is unset and exports RAY_AUTH_MODE=token to its workers itself, and a
    cluster's own mode is respected; the user chooses with RAY_AUTH_MODE as before."""
    logger = logging.getLogger(RAY_AUTH_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def interrupt_on_sigterm() -> None:
    """SIGTERM (a scheduler preempting the driver, `kill`) takes the same path as Ctrl-C: the caller's
    KeyboardInterrupt handling shuts Ray down, releases the driver lock and says how to resume."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def select_units(store: RunStore, spec: JobSpec, retry_failed: bool, summary: RunSummary) -> list[Unit]:
    """Units to schedule: not done; failed ones only with ``retry_failed`` (their markers are cleared, their
    log keeps the history). A DONE unit whose result.json is missing or invalid counts as failed, as in
    `status` and `report` (issue 11): ``retry_failed`` redoes it (its DONE marker is removed, else the
    task would skip it as done)."""
    todo = []
    for unit in store.units(spec):
        folder = store.unit_dir(unit)
        broken = result_problem(folder) if is_done(folder) else None
        if is_done(folder) and broken is None:
            summary.skipped_done += 1
            continue
        if broken is not None or read_failed(folder) is not None:
            if not retry_failed:
                summary.skipped_failed += 1
                continue
            if broken is not None:
                append_log(folder / unit.log_name, {"event": "redo", "reason": broken})
            (folder / DONE).unlink(missing_ok=True)
            (folder / FAILED).unlink(missing_ok=True)
        todo.append(unit)
    return todo


def fail_unprobed(store: RunStore, units: list[Unit], summary: RunSummary) -> list[Unit]:
    """Open every input once; units of an input that does not open become FAILED with the reason."""
    problems = {}
    for video in {u.video.name: u.video for u in units}.values():
        problems[video.name] = probe(video)
    runnable = []
    for unit in units:
        problem = problems[unit.video.name]
        if problem is None:
            runnable.append(unit)
            continue
        reason, kind = problem
        folder = store.unit_dir(unit)
        append_log(folder / unit.log_name, {"event": "failed", "kind": kind, "error": reason, "stage": "probe"})
        write_failed(folder, reason, kind, 0)
        summary.failed += 1
        summary.failures[unit.rel] = reason
    return runnable


def run(store: RunStore, spec: JobSpec, execution: Execution, retry_failed: bool = False) -> RunSummary:
    """Schedule every unit of RUN that still has work, wait for all of them, and return the counts.
    The caller holds the driver lock."""
    from adaptjobs.extras import require

    ray = require("ray", "running units (submit, resume)")

    started = time.perf_counter()
    summary = RunSummary()
    units = fail_unprobed(store, select_units(store, spec, retry_failed, summary), summary)
    summary.scheduled = len(units)
    if not units:
        summary.seconds = time.perf_counter() - started
        return summary
    started_ray = connect(execution)
    if execution.sigterm_interrupts:
        interrupt_on_sigterm()  # after ray.init, which installs a SIGTERM handler of its own
    try:
        _schedule_and_wait(ray, store, spec, units, execution, summary)
    finally:
        if started_ray:
            ray.shutdown()
    summary.seconds = time.perf_counter() - started
    return summary


def _schedule_and_wait(ray, store: RunStore, spec: JobSpec, units: list[Unit], execution: Execution,
                       summary: RunSummary) -> None:
    from tqdm import tqdm

    threads = max(1, int(execution.cpus_per_task))
    options = {"num_cpus": execution.cpus_per_task, "num_gpus": execution.gpus_per_task,
               "max_retries": execution.max_retries, "retry_exceptions": False}
    adapt = ray.remote(_ray_adapt).options(**options)
    pending = {adapt.remote(store.video_task(spec, unit, threads).model_copy(update={"device": execution.device})
                            .model_dump_json()): unit for unit in units}
    slots = _slots(ray, execution)
    if execution.gpus_per_task and not ray.cluster_resources().get("GPU"):
        print(f"adaptjobs: warning: units ask for {execution.gpus_per_task:g} GPU(s) each but the cluster has none "
              "right now; they wait until a GPU node joins (pass --gpus-per-task 0 to run on CPUs)", file=sys.stderr)
    with tqdm(total=len(units), unit="unit", disable=not execution.progress, dynamic_ncols=True,
              file=sys.stderr) as bar:
        while pending:
            bar.set_postfix(done=summary.done, failed=summary.failed, running=min(len(pending), slots))
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
            for ref in ready:
                unit = pending.pop(ref)
                outcome = _outcome(ray, ref, store, unit)
                if outcome.state == "done":
                    summary.done += 1
                else:
                    summary.failed += 1
                    summary.failures[unit.rel] = outcome.failure.error if outcome.failure else "failed"
                bar.update(1)
        bar.set_postfix(done=summary.done, failed=summary.failed, running=0)


def _slots(ray, execution: Execution) -> int:
    """How many tasks the cluster can run at once (for the progress bar's running count)."""
    resources = ray.cluster_resources()
    slots = resources.get("CPU", 1) / max(execution.cpus_per_task, 1e-9)
    if execution.gpus_per_task:
        slots = min(slots, resources.get("GPU", 0) / execution.gpus_per_task)
    return max(1, int(slots))


def _outcome(ray, ref, store: RunStore, unit: Unit) -> TaskOutcome:
    """The task's outcome; failures the worker could not record (lost workers, storage) are recorded here."""
    folder = store.unit_dir(unit)
    try:
        outcome = TaskOutcome.model_validate(ray.get(ref))
    except ray.exceptions.RayTaskError as exc:  # an exception that escaped run_task: a bug
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        error = f"{unit.video.path}: {cause.__class__.__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
        return _record(folder, unit, error, "error")
    except ray.exceptions.RayError as exc:  # worker or node died more often than max_retries allows
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"{unit.video.path}: the worker was lost ({exc.__class__.__name__}: {first})"
        return _record(folder, unit, error, "lost")
    if outcome.state == "failed" and outcome.failure is not None and not (folder / FAILED).exists():
        return _record(folder, unit, outcome.failure.error, outcome.failure.kind)
    return outcome


def _record(folder: Path, unit: Unit, error: str, kind: str) -> TaskOutcome:
    if is_done(folder):  # the unit finished after all (e.g. a retry that won the race)
        return TaskOutcome(unit_dir=str(folder), state="done")
    append_log(folder / unit.log_name, {"event": "failed", "kind": kind, "error": error, "stage": "driver"})
    failure = write_failed(folder, error, kind, 0)
    return TaskOutcome(unit_dir=str(folder), state="failed", failure=failure)
