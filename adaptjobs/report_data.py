"""What `adaptjobs report` reads from a run directory: one UnitRow per adaptation unit and per anchor point,
grouped into rate-distortion curves per video.

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
from schemas.job import AnchorResult, JobSpec, UnitStatus
from schemas.report import UnitRow

RESULT_FILE = "result.json"
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
    "ms-ssim": Metric("ms-ssim", "MS-SSIM", "ms_ssim_rgb", False),
}
DEFAULT_METRIC = "psnr-rgb"


@dataclass
class Curve:
    """One RD curve on one video: an adaptation method over the qualities, or an anchor codec over its CRFs.

    ``points`` are the done rows sorted by rate (bpp_with_payload); ``not_done`` says which points are
    absent and why (e.g. "q3 failed"), so BD-rates computed on a short curve can say so.
    """

    video: str
    name: str
    kind: str                                   # "adapt" or "anchor"
    points: list[UnitRow] = field(default_factory=list)
    not_done: list[str] = field(default_factory=list)

    def rd(self, metric: Metric) -> list[tuple[float, float]]:
        """(bpp with payload, metric in dB) per point, by rate; points with an infinite metric are left out."""
        pairs = [(row.bpp_with_payload, metric.value(row)) for row in self.points]
        return [(rate, value) for rate, value in pairs if math.isfinite(value)]

    @property
    def has_payload(self) -> bool:
        return any((row.payload_bytes or 0) > 0 for row in self.points)


@dataclass
class RunData:
    """Everything a report shows: the spec, one row per unit or anchor point, the curves of every video."""

    root: Path
    spec: JobSpec
    rows: list[UnitRow]
    curves: dict[str, list[Curve]]              # video -> method curves (spec order), then anchor curves

    @property
    def methods(self) -> list[str]:
        return [m.method for m in self.spec.methods]

    @property
    def anchor_codecs(self) -> list[str]:
        return list(self.spec.anchors.codecs)

    def curve(self, video: str, name: str) -> Curve | None:
        return next((c for c in self.curves.get(video, []) if c.name == name), None)

    def unit_counts(self) -> dict[str, int]:
        """Units (not anchor points) by report state: done, failed, missing, total."""
        states: dict[str, str] = {}
        for row in self.rows:
            states.setdefault(row.unit, row.state)
        counts = {state: sum(1 for s in states.values() if s == state) for state in ("done", "failed", "missing")}
        return {**counts, "total": len(states)}

    def not_done_rows(self) -> list[UnitRow]:
        return [row for row in self.rows if row.state != "done"]


def collect_run(root: str | Path) -> RunData:
    """Read RUN into rows and curves. Raises InputError when RUN is not a run directory."""
    store = RunStore(root)
    spec = store.read_spec()
    active = store.driver_active()
    rows: list[UnitRow] = []
    for unit in store.units(spec):
        rows.extend(unit_rows(store, unit, store.unit_status(unit, active)))
    return RunData(store.root, spec, rows, build_curves(spec, rows))


def unit_rows(store: RunStore, unit: Unit, status: UnitStatus) -> list[UnitRow]:
    """The rows of one unit: one per adaptation unit, one per CRF point of a done anchor unit."""
    base = {"unit": unit.rel, "kind": unit.kind, "video": unit.video.name, "method": unit.method,
            "quality": unit.quality}
    if status.state == "failed":
        return [UnitRow(**base, state="failed", error=status.last_error or "failed (no reason recorded)")]
    if status.state != "done":
        return [UnitRow(**base, state="missing", error=_missing_reason(status))]
    path = store.unit_dir(unit) / RESULT_FILE
    try:
        text = path.read_text()
        if unit.kind == "adapt":
            return [adapt_row(base, AdaptResult.model_validate_json(text))]
        return anchor_rows(base, AnchorResult.model_validate_json(text))
    except OSError as exc:
        cause = f"{path}: DONE but result.json cannot be read ({exc.strerror or exc.__class__.__name__})"
    except ValidationError as exc:
        cause = f"{path}: DONE but result.json is not a valid result ({str(exc).splitlines()[0]})"
    return [UnitRow(**base, state="failed", error=cause)]


def _missing_reason(status: UnitStatus) -> str:
    if status.state == "running":
        return "running now"
    if status.state == "interrupted":
        tries = f"{status.attempts} attempt{'s' if status.attempts != 1 else ''}"
        detail = f"; last error: {status.last_error}" if status.last_error else ""
        return f"interrupted after {tries} (adaptjobs resume continues it){detail}"
    return "not run yet (adaptjobs resume runs it)"


def adapt_row(base: dict, result: AdaptResult) -> UnitRow:
    return UnitRow(
        **base, state="done", model_id=result.model_id, frames=result.frames, width=result.width,
        height=result.height, bits_file_bytes=result.bytes_written, payload_bytes=result.payload_bytes,
        total_bytes=result.bytes_written + result.payload_bytes, bpp_without_payload=result.bpp_without_payload,
        bpp_with_payload=result.bpp_with_payload, payload_share_fraction=result.payload_share,
        intra_bits=result.bits.intra, motion_bits=result.bits.motion, residual_bits=result.bits.residual,
        container_bits=result.bits.container, psnr_rgb_db=result.psnr_rgb, psnr_yuv_db=result.psnr_yuv,
        ms_ssim_rgb=result.ms_ssim_rgb, adapt_seconds=result.adapt_seconds, train_seconds=result.train_seconds,
        decision=result.decision, update_sent=result.update_sent, bpp_adapted=result.bpp_adapted,
        psnr_rgb_adapted_db=result.psnr_rgb_adapted)


def anchor_rows(base: dict, result: AnchorResult) -> list[UnitRow]:
    """One row per CRF; an anchor has no payload, so both bpp columns hold its rate."""
    return [UnitRow(**{**base, "quality": None}, crf=point.crf, state="done", model_id=f"{point.codec} {point.preset}",
                    frames=point.frames, width=point.width, height=point.height, bits_file_bytes=point.bytes,
                    payload_bytes=0, total_bytes=point.bytes, bpp_without_payload=point.bpp,
                    bpp_with_payload=point.bpp, payload_share_fraction=0.0, psnr_rgb_db=point.psnr_rgb,
                    psnr_yuv_db=point.psnr_yuv, ms_ssim_rgb=point.ms_ssim_rgb)
            for point in result.points]


def build_curves(spec: JobSpec, rows: list[UnitRow]) -> dict[str, list[Curve]]:
    curves: dict[str, list[Curve]] = {}
    for video in spec.videos:
        mine = [row for row in rows if row.video == video.name]
        names = [("adapt", m.method) for m in spec.methods] + [("anchor", c) for c in spec.anchors.codecs]
        curves[video.name] = []
        for kind, name in names:
            own = [row for row in mine if row.kind == kind and row.method == name]
            done = sorted((row for row in own if row.state == "done"), key=lambda row: row.bpp_with_payload)
            not_done = [f"q{row.quality} {row.state}" if kind == "adapt" else row.state
                        for row in own if row.state != "done"]
            curves[video.name].append(Curve(video.name, name, kind, done, not_done))
    return curves
