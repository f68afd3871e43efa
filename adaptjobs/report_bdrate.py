"""BD-rates of a run: every curve (codec/method) against its codec unadapted (codec/none) and against every
other codec's none curve (x264/none and x265/none are the anchors), per video and averaged over videos.

The rate of a method is bpp_with_payload (the weight payload is part of what it costs); a standard codec's
is its stream bytes. A BD-rate that cannot be computed (a curve missing or with fewer than two points, a curve whose
quality does not increase with rate, curves that do not overlap) is kept as a row with no number and the
reason, so a report never crashes on a bad curve and never hides it.
"""

from __future__ import annotations

from statistics import fmean

from adaptjobs.bdrate import bd_rate
from adaptjobs.report_data import BASE_METHOD, Curve, Metric, RunData, curve_name
from schemas.report import BDRateRow

AVERAGE = "(average)"  # not a valid video name, so it cannot clash with one


def comparisons(data: RunData) -> list[tuple[str, str]]:
    """(curve, reference) pairs, curves in spec order: each adapted curve against its own codec's none curve
    first, then against the none curves of the other codecs; two none curves are compared once (the codec
    listed first against the later one); a curve is never compared with itself."""
    codecs = [run.codec for run in data.spec.codecs]
    bases = [(run.codec, curve_name(run.codec, BASE_METHOD)) for run in data.spec.codecs if BASE_METHOD in run.methods]
    pairs = []
    for run in data.spec.codecs:
        for method in run.methods:
            name = curve_name(run.codec, method)
            ordered = sorted(bases, key=lambda b: b[0] != run.codec)  # its own codec's reference first
            for codec, reference in ordered:
                if reference == name:
                    continue
                if method == BASE_METHOD and codecs.index(codec) < codecs.index(run.codec):
                    continue  # already compared the other way round
                pairs.append((name, reference))
    return pairs


def curve_bd_rate(reference: Curve | None, test: Curve | None, metric: Metric) -> tuple[float | None, float | None, str | None]:
    """(BD-rate %, overlap 0..1, warning) of ``test`` against ``reference`` on ``metric``."""
    notes = [f"{c.name}: {', '.join(c.not_done)}" for c in (test, reference) if c is not None and c.not_done]
    for curve in (test, reference):
        if curve is None or len(curve.rd(metric)) < 2:
            have = 0 if curve is None else len(curve.rd(metric))
            name = "a curve" if curve is None else curve.name
            return None, None, "; ".join([f"not computed: {name} has {have} finished point{'s' * (have != 1)}"] + notes)
    try:
        result = bd_rate(reference.rd(metric), test.rd(metric))
    except ValueError as exc:  # bdrate labels the curves "anchor" (the reference) and "test"
        label, _, cause = str(exc).partition(": ")
        name = reference.name if label == "anchor" else test.name
        if "does not increase" in cause:
            cause = f"its {metric.label} does not increase with rate"
        return None, None, "; ".join([f"not computed: {name}: {cause}"] + notes)
    warning = "; ".join(([result.warning] if result.warning else []) + notes) or None
    return result.percent, result.overlap, warning


def video_bd_rates(data: RunData, metric: Metric) -> list[BDRateRow]:
    """One row per video and comparison, in video order, then method order."""
    rows = []
    for video in data.curves:
        for method, reference in comparisons(data):
            percent, overlap, warning = curve_bd_rate(data.curve(video, reference), data.curve(video, method), metric)
            rows.append(BDRateRow(video=video, method=method, reference=reference, metric=metric.key,
                                  bd_rate_percent=percent, overlap_fraction=overlap, warning=warning))
    return rows


def average_bd_rates(data: RunData, per_video: list[BDRateRow], metric: Metric) -> list[BDRateRow]:
    """The mean of the per-video BD-rates that could be computed, per comparison; says how many videos it
    covers and how many of those carried a warning."""
    total = len(data.curves)
    rows = []
    for method, reference in comparisons(data):
        mine = [r for r in per_video if r.method == method and r.reference == reference]
        computed = [r for r in mine if r.bd_rate_percent is not None]
        notes = []
        if len(computed) < total:
            notes.append(f"computed on {len(computed)} of {total} videos")
        warned = sum(1 for r in computed if r.warning)
        if warned:
            notes.append(f"{warned} of them with warnings")
        rows.append(BDRateRow(video=AVERAGE, method=method, reference=reference, metric=metric.key,
                              bd_rate_percent=fmean(r.bd_rate_percent for r in computed) if computed else None,
                              videos_averaged=len(computed), videos_total=total, warning="; ".join(notes) or None))
    return rows


def format_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def summary_line(data: RunData, metric: Metric) -> str | None:
    """"BD-rate (PSNR-RGB, average over N videos): decoder-lora vs none -1.2%, vs x264 +35.0%; none vs x264 ..."
    (None when the run has nothing to compare)."""
    averages = average_bd_rates(data, video_bd_rates(data, metric), metric)
    if not averages:
        return None
    parts = []
    names = sorted(data.curve_names, key=lambda n: n.endswith("/" + BASE_METHOD))  # adapted curves first, then none
    for name in names:
        mine = [r for r in averages if r.method == name]
        if mine:
            parts.append(f"{name} " + ", ".join(f"vs {r.reference} {format_percent(r.bd_rate_percent)}" for r in mine))
    caveat = " (with warnings: see adaptjobs report)" if any(r.warning for r in averages) else ""
    videos = f"{len(data.curves)} video{'s' * (len(data.curves) != 1)}"
    return f"BD-rate ({metric.label}, average over {videos}): " + "; ".join(parts) + caveat
