"""The files of one unit of a run, shared by the worker that fills the unit folder and the driver tools that
read it (status, resume, report): this module owns every file name of a run. See schemas/job.py for the
layout.

Completion markers follow datatrove's rule: the result first, the marker last, and a unit counts as done
only when its DONE marker exists. Markers and results are written atomically (temp, fsync, rename).
The unit log is JSON lines, appended (one line per event), so a killed worker loses at most its last line.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from schemas.job import DoneRecord, FailureKind, FailureRecord, Quality, quality_key
from workers.atomic import atomic_write_text

DONE, FAILED, UNIT_LOCK = "DONE", "FAILED", ".unit.lock"
ADAPT_LOG = "adapt.log"
RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoint"
JOB_FILE = "job.json"
PAYLOAD_SUFFIX = ".payload"
DEFAULT_INTRA_PERIOD = 12  # PEVC's test GoP


def safe_name(name: str) -> str:
    """A file-name stem that cannot escape a folder: [A-Za-z0-9._-], no leading dot."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".")
    return cleaned or "video"


def unit_rel(video: str, codec: str, method: str, quality: Quality) -> str:
    """units/<video>/<codec>/<method>/q<quality>: a unit's folder relative to RUN."""
    return f"units/{video}/{codec}/{method}/q{quality_key(quality)}"


def stream_file(name: str, suffix: str) -> str:
    """<name><suffix>: the unit's stream (.bits for SSF, .h264 / .hevc for x264 / x265)."""
    return f"{name}{suffix}"


def payload_file(name: str) -> str:
    """<name>.payload: the weight update a decoder applies (absent when none is sent)."""
    return f"{name}{PAYLOAD_SUFFIX}"


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def host_name() -> str:
    return socket.gethostname()


def append_log(path: Path, record: dict) -> None:
    """Append one JSON line to a unit log (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps({"at": now_iso(), **record}) + "\n")
        handle.flush()


class UnitLogHandler(logging.Handler):
    """Writes the worker's ``logging`` records (the training loops' included) into the unit log, as events
    {"event": "log", "level", "logger", "message"}: inside a Ray worker nothing else would show them."""

    def __init__(self, path: Path):
        super().__init__(logging.INFO)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            append_log(self.path, {"event": "log", "level": record.levelname.lower(), "logger": record.name,
                                   "message": record.getMessage()})
        except Exception:  # noqa: BLE001 - logging must never break the unit
            self.handleError(record)


@contextlib.contextmanager
def unit_logging(path: Path, loggers: tuple[str, ...] = ("workers", "adaptjobs")) -> Iterator[None]:
    """Route INFO and above of ``loggers`` to the unit log ``path`` while the block runs, then restore them
    (a long-lived worker runs many units: nothing is configured at import or left behind)."""
    handler = UnitLogHandler(path)
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, level in saved:
        logger.addHandler(handler)
        if level == logging.NOTSET or level > logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)


def read_log(path: Path) -> list[dict]:
    """Every complete JSON line of a unit log (a torn last line from a killed worker is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def attempts(log_path: Path) -> int:
    """How many times a worker started this unit (one "attempt" event each)."""
    return sum(1 for r in read_log(log_path) if r.get("event") == "attempt")


def write_done(unit_dir: Path, attempt: int, seconds: float) -> None:
    (unit_dir / FAILED).unlink(missing_ok=True)
    record = DoneRecord(attempt=attempt, seconds=seconds, finished_at=now_iso(), host=host_name())
    atomic_write_text(unit_dir / DONE, record.model_dump_json(indent=1))


def write_failed(unit_dir: Path, error: str, kind: FailureKind, attempt: int) -> FailureRecord:
    record = FailureRecord(error=" ".join(error.split()), kind=kind, attempt=attempt, failed_at=now_iso(),
                           host=host_name())
    atomic_write_text(unit_dir / FAILED, record.model_dump_json(indent=1))
    return record


def read_done(unit_dir: Path) -> DoneRecord | None:
    try:
        return DoneRecord.model_validate_json((unit_dir / DONE).read_text())
    except (OSError, ValidationError):
        return None


def read_failed(unit_dir: Path) -> FailureRecord | None:
    """The FAILED marker, or None. A marker we cannot parse still counts as a failure."""
    path = unit_dir / FAILED
    if not path.exists():
        return None
    try:
        return FailureRecord.model_validate_json(path.read_text())
    except (OSError, ValidationError) as exc:
        return FailureRecord(error=f"{path}: unreadable FAILED marker ({exc.__class__.__name__})", kind="error",
                             attempt=0, failed_at="", host="")


def is_done(unit_dir: Path) -> bool:
    return (unit_dir / DONE).exists()


class UnitBusy(RuntimeError):
    """Another live process holds the unit (a worker of an earlier attempt that has not died yet)."""


@contextlib.contextmanager
def unit_lock(unit_dir: Path, wait_s: float = 120.0) -> Iterator[None]:
    """Hold an exclusive flock on the unit while working on it.

    A retried task can start before the worker of the previous attempt is gone (a killed driver leaves
    its workers for a moment); waiting for the lock keeps two processes from writing one unit. The kernel
    drops the lock when its holder dies, so a crashed worker never blocks its successor.
    """
    unit_dir.mkdir(parents=True, exist_ok=True)
    handle = open(unit_dir / UNIT_LOCK, "a+")
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise UnitBusy(f"{unit_dir}: another process has held this unit for {wait_s:.0f} s") from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{host_name()} {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()
