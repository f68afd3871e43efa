"""What `adaptjobs report` reads from a run directory: one UnitRow per unit, grouped into rate-distortion
curves per video, one per (codec, method) over the codec's quality points. The x264/x265 anchors are the
curves of method none on those codecs.

Only RUN is read (job.json, the markers, result.json and the unit logs): no Ray, no model, no video, so a
report works on a copied or still-running run and takes a fraction of a second per hundred units. A unit
counts only when its DONE marker exists; every other unit is kept as a failed or missing row, so a partial
run reports what exists and lists what does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from adaptjobs.run_store import RunStore, Unit
from schemas.adapt import AdaptResult
from schemas.job import JobSpec, UnitStatus, quality_key
from schemas.report import UnitRow
from workers.run_layout import RESULT_FILE

BASE_METHOD = "none"


@dataclass(frozen=True)
class Metric:
    """A quality metric as the report compares curves on it: higher is better, in dB.

    MS-SSIM is turned into dB as -10 log10(1 - MS-SSIM), as CompressAI plots it, so that its curves are as
    close to linear in log-rate as PSNR's and BD-rate's interpolation behaves the same on both.
    """

    key: str            # the --metric value and CompressAI's results key
    label: str
    row_field: str      # the UnitRow attribute holding the raw value
    raw_is_db: bool

    def value(self, row: UnitRow) -> float:
        """The metric in dB; +inf for a perfect MS-SSIM of 1 (such a point cannot be on a curve)."""
        raw = getattr(row, self.row_field)
        if self.raw_is_db:
            return float(raw)
        return math.inf if raw >= 1.0 else -10.0 * math.log10(1.0 - raw)

    @property
    def axis_label(self) -> str:
        return f"{self.label} [dB]" if self.raw_is_db else f"{self.label} [dB] = -10 log10(1 - {self.label})"


METRICS = {
    "psnr-rgb": Metric("psnr-rgb", "PSNR-RGB", "psnr_rgb_db", True),
    "psnr-yuv": Metric("psnr-yuv", "PSNR-YUV", "psnr_yuv_db", True),
    "psnr-y": Metric("psnr-y", "PSNR-Y", "psnr_y_db", True),
    "ms-ssim": Metric("ms-ssim", "MS-SSIM", "ms_ssim_rgb", False),
}
DEFAULT_METRIC = "psnr-rgb"


def default_metric(spec: JobSpec) -> str:
    """The codecs' own primary metric when they agree (standard codecs: psnr-yuv), else psnr-rgb."""
    chosen = {run.primary_metric for run in spec.codecs}
    return chosen.pop() if len(chosen) == 1 else DEFAULT_METRIC


def curve_name(codec: str, method: str) -> str:
    """'ssf/decoder-lora', 'x264/none': how curves are named in tables, plots and files."""
    return f"{codec}/{method}"


@dataclass
class Curve:
    """One RD curve on one video: a method on a codec over the codec's quality points.

    ``points`` are the done rows sorted by rate (bpp_with_payload); ``not_done`` says which points are
    absent and why (e.g. "q3 failed"), so BD-rates computed on a short curve can say so.
    """

    video: str
    codec: str
    method: str
    points: list[UnitRow] = field(default_factory=list)
    not_done: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return curve_name(self.codec, self.method)

    @property
    def is_base(self) -> bool:
        """A base codec unadapted (method none): the reference of its codec, an anchor for the others."""
        return self.method == BASE_METHOD

    def rd(self, metric: Metric) -> list[tuple[float, float]]:
        """(bpp with payload, metric in dB) per point, by rate; points with an infinite metric are left out."""
        pairs = [(row.bpp_with_payload, metric.value(row)) for row in self.points]
        return [(rate, value) for rate, value in pairs if math.isfinite(value)]

    @property
    def has_payload(self) -> bool:
        return any((row.payload_bytes or 0) > 0 for row in self.points)


@dataclass
class RunData:
    """Everything a report shows: the spec, one row per unit, the curves of every video."""

    root: Path
    spec: JobSpec
    rows: list[UnitRow]
    curves: dict[str, list[Curve]]              # video -> curves in spec order (codec, then method)

    @property
    def curve_names(self) -> list[str]:
        return [curve_name(run.codec, m) for run in self.spec.codecs for m in run.methods]

    @property
    def methods(self) -> list[str]:
        return [m.method for m in self.spec.methods]

    def curve(self, video: str, name: str) -> Curve | None:
        return next((c for c in self.curves.get(video, []) if c.name == name), None)

    def unit_counts(self) -> dict[str, int]:
        """Units by report state: done, failed, missing, total."""
        counts = {state: sum(1 for row in self.rows if row.state == state) for state in ("done", "failed", "missing")}
        return {**counts, "total": len(self.rows)}

    def not_done_rows(self) -> list[UnitRow]:
        return [row for row in self.rows if row.state != "done"]


def collect_run(root: str | Path) -> RunData:
    """Read RUN into rows and curves. Raises InputError when RUN is not a run directory."""
    store = RunStore(root)
    spec = store.read_spec()
    active = store.driver_active()
    rows = [unit_row(store, unit, store.unit_status(unit, active)) for unit in store.units(spec)]
    return RunData(store.root, spec, rows, build_curves(spec, rows))


def unit_row(store: RunStore, unit: Unit, status: UnitStatus) -> UnitRow:
    """The row of one unit: its result when done, else why not."""
    base = {"unit": unit.rel, "video": unit.video.name, "codec": unit.codec, "method": unit.method,
            "quality": unit.quality}
    if status.state == "failed":
        return UnitRow(**base, state="failed", error=status.last_error or "failed (no reason recorded)")
    if status.state != "done":
        return UnitRow(**base, state="missing", error=_missing_reason(status))
    path = store.unit_dir(unit) / RESULT_FILE
    try:
        return result_row(base, AdaptResult.model_validate_json(path.read_text()))
    except OSError as exc:
        cause = f"{path}: DONE but result.json cannot be read ({exc.strerror or exc.__class__.__name__})"
    except ValidationError as exc:
        cause = f"{path}: DONE but result.json is not a valid result ({str(exc).splitlines()[0]})"
    return UnitRow(**base, state="failed", error=cause)


def _missing_reason(status: UnitStatus) -> str:
    if status.state == "running":
        return "running now"
    if status.state == "interrupted":
        tries = f"{status.attempts} attempt{'s' if status.attempts != 1 else ''}"
        detail = f"; last error: {status.last_error}" if status.last_error else ""
        return f"interrupted after {tries} (adaptjobs resume continues it){detail}"
    return "not run yet (adaptjobs resume runs it)"


def result_row(base: dict, result: AdaptResult) -> UnitRow:
    bits = result.bits
    return UnitRow(
        **base, state="done", model_id=result.model_id, frames=result.frames, width=result.width,
        height=result.height, bits_file_bytes=result.bytes_written,
        payload_bytes=result.payload_bytes + result.update_bytes_in_stream,  # an SEI update is weight overhead too
        total_bytes=result.bytes_written + result.payload_bytes, bpp_without_payload=result.bpp_without_payload,
        bpp_with_payload=result.bpp_with_payload, payload_share_fraction=result.payload_share,
        intra_bits=bits and bits.intra, motion_bits=bits and bits.motion, residual_bits=bits and bits.residual,
        container_bits=bits and bits.container, psnr_rgb_db=result.psnr_rgb, psnr_yuv_db=result.psnr_yuv,
        psnr_y_db=result.psnr_y, psnr_u_db=result.psnr_u, psnr_v_db=result.psnr_v,
        ms_ssim_rgb=result.ms_ssim_rgb, adapt_seconds=result.adapt_seconds, train_seconds=result.train_seconds,
        decision=result.decision, update_sent=result.update_sent, bpp_adapted=result.bpp_adapted,
        psnr_rgb_adapted_db=result.psnr_rgb_adapted)


def build_curves(spec: JobSpec, rows: list[UnitRow]) -> dict[str, list[Curve]]:
    curves: dict[str, list[Curve]] = {}
    for video in spec.videos:
        mine = [row for row in rows if row.video == video.name]
        curves[video.name] = []
        for run in spec.codecs:
            for method in run.methods:
                own = [row for row in mine if row.codec == run.codec and row.method == method]
                done = sorted((row for row in own if row.state == "done"), key=lambda row: row.bpp_with_payload)
                not_done = [f"q{quality_key(row.quality)} {row.state}" for row in own if row.state != "done"]
                curves[video.name].append(Curve(video.name, run.codec, method, done, not_done))
    return curves
