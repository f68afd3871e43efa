"""Contracts of a run: the job spec written once to RUN/job.json, the tasks the runner hands to Ray
workers, and the markers and status rows the run directory holds.

Run directory (design.md section 3; every file written atomically, markers last)::

    RUN/job.json                                   JobSpec, written once
    RUN/driver.lock                                held (flock) by the driver working on RUN
    RUN/units/<video>/<method>/q<k>/               one adaptation unit (VideoTask)
        <video>.bits  <video>.payload  result.json (AdaptResult)  adapt.log (JSON lines)  checkpoint/
        DONE (DoneRecord) | FAILED (FailureRecord)
    RUN/anchors/<video>/<codec>/                   one anchor unit (AnchorTask)
        result.json (AnchorResult)  anchor.log  DONE | FAILED

Only what determines the results is in :class:`JobSpec` (videos, methods with every option, qualities,
model weights, frames, intra period, anchors); how they are computed (cluster address, CPUs and GPUs per
task, retries) is not, so a run can be resumed on another cluster.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.adapt import MethodConfig
from schemas.anchors import AnchorPoint

JOB_FORMAT = "adaptjobs-job-1"
ANCHOR_CODECS = ("x264", "x265")
AnchorCodec = Literal["x264", "x265"]


class VideoEntry(BaseModel):
    """One input video of a run. ``name`` is the sanitised folder name of its units ([A-Za-z0-9._-],
    unique within the run); ``bytes`` is the file size (a folder of PNGs: the sum) when the run was
    submitted, so a changed input is noticed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$", max_length=200)
    path: str
    bytes: int = Field(ge=0)


class ModelRef(BaseModel):
    """The base model family: what the user named and the exact weights of every quality used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: str = Field(description="shipped family name, family folder or checkpoint path, as resolved at submit")
    model_id: str
    weights_sha256: dict[int, str] = Field(description="quality -> sha256 of the weights")


class AnchorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    codecs: tuple[AnchorCodec, ...] = ANCHOR_CODECS
    crfs: tuple[float, ...] = Field((22.0, 27.0, 32.0, 37.0, 42.0, 47.0, 51.0), min_length=1)
    preset: str = "medium"


class JobSpec(BaseModel):
    """Everything that determines a run's results. Submitting to an existing RUN with another spec is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["adaptjobs-job-1"] = JOB_FORMAT
    videos_dir: str
    videos: tuple[VideoEntry, ...] = Field(min_length=1)
    methods: tuple[MethodConfig, ...] = Field(min_length=1)
    qualities: tuple[int, ...] = Field(min_length=1)
    model: ModelRef
    frames: int | None = Field(None, ge=1, description="frames per video (None: all)")
    intra_period: int = Field(ge=0)
    anchors: AnchorSettings = AnchorSettings()

    @model_validator(mode="after")
    def _unique(self) -> "JobSpec":
        names = [v.name for v in self.videos]
        if len(set(names)) != len(names):
            raise ValueError("video names must be unique")
        methods = [m.method for m in self.methods]
        if len(set(methods)) != len(methods):
            raise ValueError("each method may appear once")
        missing = [q for q in self.qualities if q not in self.model.weights_sha256]
        if missing:
            raise ValueError(f"the model has no weights for qualities {missing}")
        return self


class VideoTask(BaseModel):
    """One adaptation unit as a worker receives it: everything run_task needs, nothing of the scheduler."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit_dir: str = Field(description="absolute path of the unit folder (RUN/units/<video>/<method>/q<k>, or "
                                      "the -o folder of `adaptjobs adapt`)")
    run_dir: str | None = Field(None, description="the run directory, checked for visibility before any work")
    video: VideoEntry
    method: MethodConfig
    model_spec: str
    quality: int = Field(ge=1)
    weights_sha256: str
    frames: int | None = None
    intra_period: int = Field(ge=0)
    threads: int | None = Field(None, ge=1, description="torch CPU threads for this task (the CPUs reserved "
                                                        "for it); None leaves torch's setting alone")
    recon: str | None = Field(None, description="also write the verified reconstruction here (`adapt --recon`)")


class AnchorTask(BaseModel):
    """One anchor unit: a video coded with x264 or x265 over a CRF sweep."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit_dir: str = Field(description="absolute path of RUN/anchors/<video>/<codec>")
    run_dir: str
    video: VideoEntry
    codec: AnchorCodec
    crfs: tuple[float, ...]
    preset: str
    frames: int | None = None
    intra_period: int = Field(ge=0)


class AnchorResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str
    codec: AnchorCodec
    points: list[AnchorPoint] = Field(description="one per CRF, sorted by rate")
    seconds: float = Field(ge=0)


class TaskOutcome(BaseModel):
    """What a worker hands back to the driver (the unit folder holds the details)."""

    model_config = ConfigDict(extra="forbid")

    unit_dir: str
    state: Literal["done", "failed"]
    failure: "FailureRecord | None" = None
    seconds: float = Field(0.0, ge=0)
    resumed_from_step: int = Field(0, ge=0)
    skipped: bool = Field(False, description="the unit was already DONE; nothing was run")


class DoneRecord(BaseModel):
    """Content of a DONE marker (written after every artifact of the unit)."""

    model_config = ConfigDict(extra="forbid")

    attempt: int = Field(ge=1)
    seconds: float = Field(ge=0, description="wall time of the attempt that finished")
    finished_at: str = Field(description="ISO 8601, UTC")
    host: str


FailureKind = Literal["input", "error", "storage", "lost"]


class FailureRecord(BaseModel):
    """Content of a FAILED marker. kind: input = bad input or config (never retried); error = an
    unexpected exception in our code (a bug; not retried); storage = the worker could not see RUN;
    lost = worker or node died more often than --max-retries allows."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="one line naming the file and the cause")
    kind: FailureKind
    attempt: int = Field(ge=0)
    failed_at: str
    host: str


UnitState = Literal["done", "failed", "running", "interrupted", "pending"]


class UnitStatus(BaseModel):
    """One row of `adaptjobs status`: read from the unit folder only."""

    model_config = ConfigDict(extra="forbid")

    unit: str
    kind: Literal["adapt", "anchor"]
    video: str
    method: str = Field(description="adaptation method, or the anchor codec")
    quality: int | None = None
    state: UnitState
    attempts: int = Field(ge=0)
    last_error: str | None = None
    seconds: float | None = Field(None, description="wall time of the finished attempt")
    resumed_from_step: int | None = None


class RunStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: str
    driver_active: bool
    counts: dict[str, int]
    units: list[UnitStatus]


TaskOutcome.model_rebuild()
