"""The run directory seen from the driver: the job spec, the driver lock, the units and their states.

Everything here reads or writes RUN only (no Ray), so `status` and `report` work on a copied or finished
run, and tests can check exactly what a runner leaves on disk. Layout: schemas/job.py.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from schemas.adapt import AdaptResult
from schemas.job import JobSpec, Quality, RunStatus, UnitStatus, VideoEntry, VideoTask
from workers.atomic import atomic_write_text
from workers.errors import InputError
from workers.run_layout import ADAPT_LOG, JOB_FILE, RESULT_FILE, host_name, now_iso, read_done, read_failed, read_log, unit_rel

DRIVER_LOCK = "driver.lock"


@dataclass(frozen=True)
class Unit:
    """One unit of a run, as the spec defines it (whether or not it has run): (video, codec, quality, method)."""

    video: VideoEntry
    codec: str
    method: str
    quality: Quality
    rel: str           # folder relative to RUN

    log_name = ADAPT_LOG


class RunStore:
    """A run directory: RUN/job.json, RUN/driver.lock, RUN/units/..., RUN/anchors/..."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    # ------------------------------------------------------------------ the spec
    @property
    def job_path(self) -> Path:
        return self.root / JOB_FILE

    def exists(self) -> bool:
        return self.job_path.exists()

    def read_spec(self) -> JobSpec:
        try:
            text = self.job_path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            raise InputError(self.root, "is not a run directory (no job.json); start one with `adaptjobs submit`") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(self.job_path, f"cannot read the job spec ({getattr(exc, 'strerror', None) or exc.__class__.__name__})") from None
        try:
            return JobSpec.model_validate_json(text)
        except ValidationError as exc:
            raise InputError(self.job_path, f"is not a valid job spec ({str(exc).splitlines()[0]})") from None

    def write_spec_once(self, spec: JobSpec) -> bool:
        """Write job.json if RUN has none (returns True); if it has one, require the same spec (False)."""
        if self.exists():
            existing = self.read_spec()
            if existing != spec:
                raise InputError(self.root, "holds a run with another spec (" + spec_difference(existing, spec) +
                                 "); resume it with `adaptjobs resume`, or submit to a new --run folder")
            return False
        text = spec.model_dump_json(indent=2)
        if JobSpec.model_validate_json(text) != spec:  # e.g. a non-finite float the schema let through: never
            raise InputError(None, "the job spec does not survive a JSON round trip; refusing to write it")
        self.make_root()
        try:
            atomic_write_text(self.job_path, text)
        except OSError as exc:
            raise InputError(self.job_path, f"cannot write the job spec ({exc.strerror or type(exc).__name__})") from None
        return True

    def make_root(self) -> None:
        """Create RUN (and its parents); InputError when that is impossible: --run names a file, a folder
        under a file, or a place we may not write (issue 11: FileExistsError/PermissionError tracebacks)."""
        from adaptjobs.output_paths import make_output_folder

        make_output_folder(self.root, "run directory")

    # ------------------------------------------------------------------ one driver at a time
    @contextlib.contextmanager
    def driver_lock(self) -> Iterator[None]:
        """Hold RUN/driver.lock for the life of a submit/resume; a second driver is refused."""
        self.make_root()
        try:
            handle = open(self.root / DRIVER_LOCK, "a+")
        except OSError as exc:
            raise InputError(self.root / DRIVER_LOCK, f"cannot open the driver lock ({exc.strerror})") from None
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                handle.seek(0)
                holder = handle.read().strip() or "unknown process"
                raise InputError(self.root, f"another driver is working on this run ({holder}); wait for it to "
                                            "finish or stop it, then resume") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {host_name()} since {now_iso()}\n")
            handle.flush()
            yield
        finally:
            handle.close()

    def driver_active(self) -> bool:
        """Whether a live driver holds RUN/driver.lock (the kernel drops it when the driver dies)."""
        path = self.root / DRIVER_LOCK
        if not path.exists():
            return False
        with open(path) as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return False

    # ------------------------------------------------------------------ units
    def units(self, spec: JobSpec) -> list[Unit]:
        """Every unit the spec defines, in a fixed order: video, codec (spec order), method, quality."""
        return [Unit(video, run.codec, method, quality, unit_rel(video.name, run.codec, method, quality))
                for video in spec.videos for run in spec.codecs for method in run.methods for quality in run.qualities]

    def unit_dir(self, unit: Unit) -> Path:
        return self.root / unit.rel

    def video_task(self, spec: JobSpec, unit: Unit, threads: int | None) -> VideoTask:
        return VideoTask(unit_dir=str(self.unit_dir(unit)), run_dir=str(self.root), video=unit.video,
                         method=spec.method(unit.method), codec=spec.codec(unit.codec).point(unit.quality),
                         frames=spec.frames, intra_period=spec.intra_period, threads=threads)

    def unit_status(self, unit: Unit, driver_active: bool) -> UnitStatus:
        """State of one unit from its folder: markers first, then the log (attempts, last error, seconds)."""
        folder = self.unit_dir(unit)
        log = read_log(folder / unit.log_name)
        tried = [r for r in log if r.get("event") == "attempt"]
        failed_events = [r for r in log if r.get("event") == "failed"]
        done_events = [r for r in log if r.get("event") == "done"]
        done, failure = read_done(folder), read_failed(folder)
        broken = None if done is None else result_problem(folder)
        if broken is not None:  # DONE without a valid result.json: what `report` calls failed
            done, state = None, "failed"
        elif done is not None:
            state = "done"
        elif failure is not None:
            state = "failed"
        elif tried:
            state = "running" if driver_active else "interrupted"
        else:
            state = "pending"
        last_error = broken or (failure.error if failure is not None else
                                (failed_events[-1].get("error") if failed_events else None))
        ended = [r.get("seconds") for r in done_events + failed_events if isinstance(r.get("seconds"), (int, float))]
        return UnitStatus(unit=unit.rel, video=unit.video.name, codec=unit.codec, method=unit.method,
                          quality=unit.quality, state=state, attempts=len(tried), last_error=last_error,
                          seconds=None if done is None else round(done.seconds, 3),
                          total_seconds=round(sum(ended), 3) if ended else None,
                          resumed_from_step=done_events[-1].get("resumed_from_step") if done_events else None)

    def status(self) -> RunStatus:
        spec = self.read_spec()
        active = self.driver_active()
        rows = [self.unit_status(unit, active) for unit in self.units(spec)]
        counts = {state: sum(1 for r in rows if r.state == state)
                  for state in ("done", "failed", "running", "interrupted", "pending")}
        return RunStatus(run=str(self.root), driver_active=active, counts={"total": len(rows), **counts}, units=rows)


def result_problem(folder: Path) -> str | None:
    """None when ``folder``/result.json is a valid result, else why not (one line). A unit counts as done only
    with a DONE marker AND this (issue 11: `status` said done where `report` said failed)."""
    path = folder / RESULT_FILE
    try:
        AdaptResult.model_validate_json(path.read_bytes())
    except OSError as exc:
        return f"{path}: DONE but result.json cannot be read ({exc.strerror or exc.__class__.__name__})"
    except ValidationError as exc:
        return f"{path}: DONE but result.json is not a valid result ({str(exc).splitlines()[0]})"
    return None


def spec_difference(old: JobSpec, new: JobSpec) -> str:
    """'differs in methods, qualities': the top-level fields that changed."""
    changed = [name for name in JobSpec.model_fields if getattr(old, name) != getattr(new, name)]
    return "differs in " + ", ".join(changed)
