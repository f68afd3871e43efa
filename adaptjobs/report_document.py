"""The content of report.md and report.html, built once as a list of blocks (headings, paragraphs, tables,
images) so both files say the same thing; render_markdown writes report.md, report_html.render_html the HTML.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adaptjobs.bdrate import MIN_OVERLAP, MIN_POINTS
from adaptjobs.report_bdrate import format_percent
from adaptjobs.report_data import BASE_METHOD, Metric, RunData
from schemas.report import BDRateRow, UnitRow


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str
    warning: bool = False      # shown highlighted in the HTML


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)   # right-aligned columns
    wide_last: bool = False    # the last column holds free text (errors, warnings)


@dataclass
class Image:
    path: str                  # relative to the report folder
    alt: str


Block = Heading | Paragraph | Table | Image


def _num(value: float | int | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _int(value: int | None) -> str:
    return "" if value is None else str(value)


UNIT_HEADER = ["codec", "method", "q", "state", "bpp without payload", "bpp with payload", "payload bytes",
               "payload share", "intra bits", "motion bits", "residual bits", "container bits", "PSNR-RGB dB",
               "PSNR-YUV dB", "PSNR-Y dB", "MS-SSIM", "adapt s", "train s", "decision / error"]


def unit_table(rows: list[UnitRow]) -> Table:
    """Per codec, method and quality: rates with and without the weight payload, what the weights cost, bits
    per frame type (SSF), quality and time."""
    body = []
    for r in rows:
        share = "" if r.payload_share_fraction is None else f"{100 * r.payload_share_fraction:.2f}%"
        body.append([r.codec, r.method, f"{r.quality:g}", r.state, _num(r.bpp_without_payload, 4),
                     _num(r.bpp_with_payload, 4), _int(r.payload_bytes), share, _int(r.intra_bits), _int(r.motion_bits),
                     _int(r.residual_bits), _int(r.container_bits), _num(r.psnr_rgb_db, 2), _num(r.psnr_yuv_db, 2),
                     _num(r.psnr_y_db, 2), _num(r.ms_ssim_rgb, 4), _num(r.adapt_seconds, 1), _num(r.train_seconds, 1),
                     _decision(r)])
    return Table(UNIT_HEADER, body, numeric={2, *range(4, 18)}, wide_last=True)


def _decision(row: UnitRow) -> str:
    """The decision, with the adapted result's point when it was tried but not sent (what the weights would
    have cost); the error for a unit that is not done."""
    if row.state != "done":
        return row.error or ""
    if not row.update_sent and row.bpp_adapted is not None and row.psnr_rgb_adapted_db is not None:
        return f"{row.decision} (adapted: {row.bpp_adapted:.4f} bpp, {row.psnr_rgb_adapted_db:.2f} dB PSNR-RGB)"
    return row.decision or ""


def bd_table(rows: list[BDRateRow], metric: Metric, average: bool) -> Table:
    if average:
        body = [[r.method, r.reference, format_percent(r.bd_rate_percent), f"{r.videos_averaged} of {r.videos_total}",
                 r.warning or ""] for r in rows]
        return Table(["method", "against", f"mean BD-rate ({metric.label})", "videos", "warning"], body,
                     numeric={2}, wide_last=True)
    body = [[r.method, r.reference, format_percent(r.bd_rate_percent),
             "" if r.overlap_fraction is None else f"{100 * r.overlap_fraction:.0f}%", r.warning or ""] for r in rows]
    return Table(["method", "against", f"BD-rate ({metric.label})", "overlap", "warning"], body, numeric={2, 3},
                 wide_last=True)


def missing_table(rows: list[UnitRow]) -> Table:
    return Table(["unit", "state", "reason"], [[r.unit, r.state, r.error or ""] for r in rows], wide_last=True)


def run_description(data: RunData) -> str:
    """One sentence per codec (its model or settings, quality points, methods), then frames and intra period."""
    parts = []
    for run in data.spec.codecs:
        what = (f"model {run.model.model_id}{'' if run.model.spec == run.model.model_id else f' ({run.model.spec})'}"
                if run.model is not None else ", ".join(f"{k} {v}" for k, v in run.settings.items()) or "default settings")
        parts.append(f"{run.codec} ({what}): qualities {', '.join(f'{q:g}' for q in run.qualities)}; methods "
                     f"{', '.join(run.methods)}")
    frames = "all frames" if data.spec.frames is None else f"{data.spec.frames} frames"
    return f"Run {data.root}. " + ". ".join(parts) + f". {frames} per video, intra period {data.spec.intra_period}."


def video_blocks(data: RunData, video: str, metric: Metric, per_video: list[BDRateRow],
                 rd_plots: dict[str, str]) -> list[Block]:
    """One video's section: its units, its BD-rates, its RD plot."""
    mine = [r for r in per_video if r.video == video]
    blocks: list[Block] = [Heading(2, f"Video {video}"), Heading(3, "Rate and quality per codec, method and quality"),
                           unit_table([r for r in data.rows if r.video == video]),
                           Heading(3, f"BD-rate ({metric.label})"),
                           bd_table(mine, metric, average=False) if mine else
                           Paragraph("No comparison: the run has no `none` curve to compare with.")]
    if video in rd_plots:
        blocks.append(Image(rd_plots[video], f"{video}: rate (bpp, payload included) vs {metric.label}"))
    else:
        blocks.append(Paragraph(f"No RD plot for {video}: none of its units has finished.", warning=True))
    return blocks


def build_document(data: RunData, metric: Metric, per_video: list[BDRateRow], averages: list[BDRateRow],
                   rd_plots: dict[str, str], overhead_plot: str | None) -> list[Block]:
    counts = data.unit_counts()
    blocks: list[Block] = [
        Heading(1, f"Adaptation report: {data.root.name}"),
        Paragraph(run_description(data)),
        Paragraph(f"Units: {counts['done']} of {counts['total']} done, {counts['failed']} failed, "
                  f"{counts['missing']} missing."),
    ]
    if counts["done"] == 0:
        blocks.append(Paragraph("No unit of this run has finished yet: there is nothing to compare. The units are "
                                "listed under 'Units failed or missing'.", warning=True))
    elif counts["done"] < counts["total"]:
        blocks.append(Paragraph(f"This run is incomplete: {counts['total'] - counts['done']} unit(s) failed or are "
                                "missing (listed at the end); curves and BD-rates use the finished units only.",
                                warning=True))
    blocks.append(Paragraph(
        "Rates: bpp = bits per pixel = bytes x 8 / (width x height x frames). The rate of a method includes its "
        "weight payload (bpp with payload); payload share = payload bytes / (bitstream + payload bytes), the weight "
        f"overhead. BD-rate: PCHIP (bjontegaard package, as in the JVET common test conditions) of {metric.label} "
        f"against log rate, over the quality range both curves cover; negative means fewer bits for the same "
        f"quality. Warned: fewer than {MIN_POINTS} points, curves overlapping on less than {100 * MIN_OVERLAP:.0f}% "
        "of their quality range, curves whose quality does not increase with rate, missing units."))
    if not metric.raw_is_db:
        blocks.append(Paragraph(f"{metric.label} is compared in dB, -10 log10(1 - {metric.label}), as CompressAI plots "
                                "it; the tables show the raw MS-SSIM (0..1)."))

    for video in data.curves:
        blocks += video_blocks(data, video, metric, per_video, rd_plots)

    blocks.append(Heading(2, f"Average BD-rate over videos ({metric.label})"))
    if averages:
        blocks.append(Paragraph("The mean of the per-video BD-rates that could be computed; 'videos' says how many "
                                "it covers."))
        blocks.append(bd_table(averages, metric, average=True))
    else:
        blocks.append(Paragraph("No comparison: the run has no `none` curve to compare with."))
    blocks.append(Heading(2, "Weight overhead"))
    if overhead_plot:
        blocks.append(Paragraph("Payload bytes as a share of everything a decoder receives, per video and quality "
                                f"(methods other than {BASE_METHOD}; the label on each bar is the payload size)."))
        blocks.append(Image(overhead_plot, "weight payload share per video and quality"))
    else:
        blocks.append(Paragraph("No adapted unit has finished: no overhead to show."))

    blocks.append(Heading(2, "Units failed or missing"))
    missing = data.not_done_rows()
    blocks.append(missing_table(missing) if missing else Paragraph("None: every unit is done."))
    blocks.append(Heading(2, "Files"))
    blocks.append(Paragraph("summary.csv: one row per unit (units in the column names); bd_rate.csv: every BD-rate above; summary.json: every curve in CompressAI's "
                            "results format, and compressai/<video>/<curve>.json one curve per file for "
                            "`python -m compressai.utils.plot -f FILES -m psnr-rgb`; plots/: the PNGs."))
    return blocks


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(f"**Warning:** {block.text}" if block.warning else block.text)
        elif isinstance(block, Image):
            out.append(f"![{block.alt}]({block.path})")
        else:
            align = ["---:" if i in block.numeric else "---" for i in range(len(block.header))]
            lines = [block.header, align, *block.rows]
            out.append("\n".join("| " + " | ".join(_md_cell(c) for c in line) + " |" for line in lines))
    return "\n\n".join(out) + "\n"
