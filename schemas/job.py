"""Contracts of a run: the job spec written once to RUN/job.json, the tasks the runner hands to Ray
workers, and the markers and status rows the run directory holds.

Run directory (design.md section 3; every file written atomically, markers last)::

    RUN/job.json                                      JobSpec, written once
    RUN/driver.lock                                   held (flock) by the driver working on RUN
    RUN/units/<video>/<codec>/<method>/q<quality>/    one unit (VideoTask): a video, a base codec at one of
                                                      its quality points (SSF index, x264/x265 CRF), a method
        <video><suffix>  <video>.payload  result.json (AdaptResult)  adapt.log (JSON lines)  checkpoint/
        DONE (DoneRecord) | FAILED (FailureRecord)

workers/run_layout.py owns these names. Only what determines the results is in :class:`JobSpec` (videos,
methods with every option, per codec its quality points, model weights and settings, frames, intra period);
how they are computed (cluster address, CPUs and GPUs per task, retries) is not, so a run can be resumed
on another cluster. Codec names are checked against the worker-side codec registry when a spec is built
(schemas know no codec list).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.adapt import MethodConfig

JOB_FORMAT = "adaptjobs-job-2"
Quality = int | float  # the codec's own quality: an SSF quality index, an x264/x265 CRF
CODEC_NAME = r"^[a-z0-9][a-z0-9+-]*$"


def quality_key(quality: Quality) -> str:
    """The text form of a quality point: 3, 32, 22.5 (folder names q<key>, JSON keys)."""
    return f"{quality:g}"


class VideoEntry(BaseModel):
    """One input video of a run. ``name`` is the sanitised folder name of its units ([A-Za-z0-9._-],
    unique within the run); ``bytes`` is the file size (a folder of PNGs: the sum) when the run was
    submitted, so a changed input is noticed."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$", max_length=200)
    path: str
    bytes: int = Field(ge=0)


class ModelRef(BaseModel):
    """The model a codec needs (SSF weights): what the user named and the exact weights of every quality."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    spec: str = Field(description="shipped family name, family folder or checkpoint path, as resolved at submit")
    model_id: str
    weights_sha256: dict[str, str] = Field(description="quality_key(quality) -> sha256 of the weights")


class CodecPoint(BaseModel):
    """One quality point of one base codec: what a worker needs to open it (workers.codecs.load_codec)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    codec: str = Field(pattern=CODEC_NAME, max_length=64)
    quality: Quality
    model_spec: str | None = Field(None, description="the model to load (codecs that need one)")
    weights_sha256: str | None = Field(None, description="the weights the run was submitted with")
    settings: dict[str, str] = Field(default_factory=dict, description="codec settings, e.g. x264 preset")


class CodecRun(BaseModel):
    """One base codec of a run: its quality points, the model they need, its settings, the methods run on it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    codec: str = Field(pattern=CODEC_NAME, max_length=64)
    qualities: tuple[Quality, ...] = Field(min_length=1)
    model: ModelRef | None = None
    settings: dict[str, str] = Field(default_factory=dict)
    methods: tuple[str, ...] = Field(min_length=1, description="names of the run's methods that run on this codec")
    primary_metric: Literal["psnr-rgb", "psnr-yuv"] = "psnr-rgb"

    @model_validator(mode="after")
    def _points(self) -> "CodecRun":
        keys = [quality_key(q) for q in self.qualities]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{self.codec}: a quality appears twice")
        if self.model is not None:
            missing = [k for k in keys if k not in self.model.weights_sha256]
            if missing:
                raise ValueError(f"{self.codec}: the model has no weights for qualities {missing}")
        return self

    def point(self, quality: Quality) -> CodecPoint:
        key = quality_key(quality)
        return CodecPoint(codec=self.codec, quality=quality, settings=self.settings,
                          model_spec=None if self.model is None else self.model.spec,
                          weights_sha256=None if self.model is None else self.model.weights_sha256[key])


class JobSpec(BaseModel):
    """Everything that determines a run's results. Submitting to an existing RUN with another spec is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    format: Literal["adaptjobs-job-2"] = JOB_FORMAT
    videos_dir: str
    videos: tuple[VideoEntry, ...] = Field(min_length=1)
    methods: tuple[MethodConfig, ...] = Field(min_length=1)
    codecs: tuple[CodecRun, ...] = Field(min_length=1)
    frames: int | None = Field(None, ge=1, description="frames per video (None: all)")
    intra_period: int = Field(ge=0)

    @model_validator(mode="after")
    def _unique(self) -> "JobSpec":
        names = [v.name for v in self.videos]
        if len(set(names)) != len(names):
            raise ValueError("video names must be unique")
        methods = [m.method for m in self.methods]
        if len(set(methods)) != len(methods):
            raise ValueError("each method may appear once")
        codecs = [c.codec for c in self.codecs]
        if len(set(codecs)) != len(codecs):
            raise ValueError("each codec may appear once")
        unknown = sorted({m for c in self.codecs for m in c.methods} - set(methods))
        if unknown:
            raise ValueError(f"codecs name methods the run does not have: {unknown}")
        return self

    def method(self, name: str):
        return next(m for m in self.methods if m.method == name)

    def codec(self, name: str) -> CodecRun:
        return next(c for c in self.codecs if c.codec == name)


class VideoTask(BaseModel):
    """One unit as a worker receives it: everything run_task needs, nothing of the scheduler."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    unit_dir: str = Field(description="absolute path of the unit folder (RUN/units/<video>/<codec>/<method>/q<q>, "
                                      "or the -o folder of `adaptjobs adapt`)")
    run_dir: str | None = Field(None, description="the run directory, checked for visibility before any work")
    video: VideoEntry
    method: MethodConfig
    codec: CodecPoint
    frames: int | None = None
    intra_period: int = Field(ge=0)
    threads: int | None = Field(None, ge=1, description="torch CPU threads for this task (the CPUs reserved "
                                                        "for it); None leaves torch's setting alone")
    recon: str | None = Field(None, description="also write the verified reconstruction here (`adapt --recon`)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d{1,4})?)$",
                        description="where the unit's transforms and training run (workers/device.py); the "
                                    "runner turns auto into the GPU Ray assigned to the task, else cpu")


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
    video: str
    codec: str
    method: str
    quality: Quality
    state: UnitState
    attempts: int = Field(ge=0)
    last_error: str | None = None
    seconds: float | None = Field(None, description="wall time of the finished attempt")
    total_seconds: float | None = Field(None, description="wall time summed over the attempts that ended (done or "
                                                          "failed; a killed attempt records none)")
    resumed_from_step: int | None = None


class RunStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: str
    driver_active: bool
    counts: dict[str, int]
    units: list[UnitStatus]


TaskOutcome.model_rebuild()
