"""`adaptjobs report RUN`: what the weights cost and what adaptation bought, per video, against each codec
unadapted (`<codec>/none`) and against the other codecs' none curves (x264/x265: the anchors), as tables,
plots and files other tools read.

Reads only RUN (report_data.py) and writes RUN/report/ (or --out), every file atomically:

    report.md          tables per video (rates with and without payload, payload share, bits per frame type,
                       quality, time), BD-rates per video and averaged, units failed or missing
    report.html        the same, self-contained (plots embedded)
    plots/rd-<video>.png, plots/overhead.png
    summary.csv        one row per unit (schemas/report.py UnitRow)
    bd_rate.csv        every BD-rate (schemas/report.py BDRateRow)
    summary.json       every curve in CompressAI's results format (a list of curves)
    compressai/<video>/<codec>/<method>.json   one curve per file, as `python -m compressai.utils.plot -f` reads them
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from adaptjobs.report_bdrate import average_bd_rates, summary_line, video_bd_rates
from adaptjobs.report_data import METRICS, Curve, RunData, collect_run, default_metric
from schemas.job import RunStatus
from schemas.report import BDRateRow, CompressAICurve, UnitRow
from workers.atomic import atomic_write_bytes, atomic_write_text
from workers.errors import InputError

REPORT_DIR = "report"


@dataclass
class ReportOutcome:
    out_dir: Path
    files: list[Path]
    counts: dict[str, int]      # units: done, failed, missing, total


def write_report(run: str | Path, metric: str | None = None, out: str | Path | None = None) -> ReportOutcome:
    """Collect RUN and write every report file; returns where and what. Raises InputError for a folder that
    is not a run, an unknown metric, or an output folder that cannot be written."""
    from adaptjobs.report_document import build_document, render_markdown
    from adaptjobs.report_html import render_html
    from adaptjobs.report_plots import overhead_plot, rd_plot

    from adaptjobs.extras import require

    require("matplotlib", "adaptjobs report (plots)")
    require("bjontegaard", "adaptjobs report (BD-rates)")
    if metric is not None and metric not in METRICS:
        raise InputError(None, f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    data = collect_run(run)
    chosen = METRICS[metric or default_metric(data.spec)]
    out_dir = Path(out).resolve() if out is not None else data.root / REPORT_DIR
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "is a file; --out must be a folder")
    per_video = video_bd_rates(data, chosen)
    averages = average_bd_rates(data, per_video, chosen)
    files: list[Path] = []

    def write(relative: str, content: bytes | str) -> None:
        path = out_dir / relative
        try:
            (atomic_write_text if isinstance(content, str) else atomic_write_bytes)(path, content)
        except OSError as exc:
            raise InputError(path, f"cannot write the report ({exc.strerror or exc.__class__.__name__})") from None
        files.append(path)

    rd_plots = {}
    for video, curves in data.curves.items():
        if any(c.rd(chosen) for c in curves):
            rd_plots[video] = f"plots/rd-{video}.png"
            write(rd_plots[video], rd_plot(video, curves, chosen))
    overhead = overhead_plot(data)
    if overhead is not None:
        write("plots/overhead.png", overhead)
    write("summary.csv", rows_csv(data.rows, UnitRow))
    write("bd_rate.csv", rows_csv(per_video + averages, BDRateRow))
    curves = compressai_curves(data)
    write("summary.json", json.dumps([c.model_dump() for _, c in curves], indent=1) + "\n")
    for video, curve in curves:
        write(f"compressai/{video}/{curve.name}.json", curve.model_dump_json(indent=1) + "\n")
    blocks = build_document(data, chosen, per_video, averages, rd_plots,
                            "plots/overhead.png" if overhead is not None else None)
    write("report.md", render_markdown(blocks))
    write("report.html", render_html(blocks, out_dir, f"Adaptation report: {data.root.name}"))
    return ReportOutcome(out_dir, files, data.unit_counts())


def _cell(value) -> str:
    """CSV cell: empty for None, true/false for booleans, repr for floats (round-trips exactly)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def rows_csv(rows: list, model: type) -> str:
    """One CSV line per pydantic row, the model's fields as columns in declaration order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(model.model_fields))
    for row in rows:
        writer.writerow([_cell(getattr(row, name)) for name in model.model_fields])
    return buffer.getvalue()


def compressai_curve(curve: Curve, model_id: str) -> CompressAICurve:
    """A curve in CompressAI's results format, points by rate. ``ms-ssim`` repeats ``ms-ssim-rgb`` because
    CompressAI's plot tool converts to dB only the key named ``ms-ssim``."""
    points = curve.points
    results: dict[str, list] = {
        "bpp": [p.bpp_with_payload for p in points],
        "bpp-without-payload": [p.bpp_without_payload for p in points],
        "psnr-rgb": [p.psnr_rgb_db for p in points],
        "psnr-yuv": [p.psnr_yuv_db for p in points],
        "psnr-y": [p.psnr_y_db for p in points],
        "ms-ssim-rgb": [p.ms_ssim_rgb for p in points],
        "ms-ssim": [p.ms_ssim_rgb for p in points],
        "payload-bytes": [p.payload_bytes for p in points],
    }
    results["quality"] = [p.quality for p in points]
    description = (f"{curve.video}: adaptjobs {curve.name}, {model_id}, quality = the codec's own "
                   "(SSF index, x264/x265 CRF), rate includes the weight payload")
    return CompressAICurve(name=curve.name, description=description, results=results)


def compressai_curves(data: RunData) -> list[tuple[str, CompressAICurve]]:
    """(video, curve) for every curve with at least one finished point: videos in spec order, then curves in
    spec order (codec, method)."""
    return [(video, compressai_curve(curve, curve.points[0].model_id or curve.codec))
            for video, curves in data.curves.items() for curve in curves if curve.points]


def status_bd_rate_line(status: RunStatus) -> str | None:
    """The one-line BD-rate summary `adaptjobs status` prints once every unit of the run is done (average
    PSNR-RGB BD-rates); None while units are missing or failed, or when there is nothing to compare."""
    import importlib.util

    if status.counts.get("done") != status.counts.get("total"):
        return None
    if importlib.util.find_spec("bjontegaard") is None:  # adaptjobs[report] not installed: status without it
        return None
    data = collect_run(status.run)
    return summary_line(data, METRICS[default_metric(data.spec)])
