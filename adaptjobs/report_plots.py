"""The report's PNG plots: the RD curves of one video, and the weight overhead of every video and quality.

matplotlib is imported inside the functions (it costs about a second and only `report` needs it) and used
through Figure objects with the Agg canvas: no pyplot state, no display, safe in a test process.
"""

from __future__ import annotations

import io

from adaptjobs.report_data import BASE_METHOD, Curve, Metric, RunData, curve_name

DPI = 100
PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
MARKERS = ["o", "^", "s", "D", "v", "P", "X", "*"]
LOG_RATE_SPAN = 8.0   # use a log rate axis when the largest rate is this many times the smallest


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def rd_plot(video: str, curves: list[Curve], metric: Metric) -> bytes:
    """bpp (weight payload included) vs the metric for every curve: the first codec's (solid) and the other
    codecs' none curves (anchors, dashed); a method
    that sent a payload also gets its curve without the payload (dotted), so the gap is the weight cost."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.0, 4.8))  # the legend goes right of the axes; savefig's tight box takes it in
    axes = figure.subplots()
    rates = []
    for index, curve in enumerate(c for c in curves if c.rd(metric)):
        colour = PALETTE[index % len(PALETTE)]
        points = curve.rd(metric)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        rates += xs
        anchor = curve.is_base and curve.codec != curves[0].codec  # another codec's base curve: an anchor
        # earlier curves are drawn wider, so a method identical to `none` (no update sent) still shows both
        axes.plot(xs, ys, linestyle="--" if anchor else "-", marker=MARKERS[index % len(MARKERS)],
                  markersize=max(4.0, 8.0 - 1.5 * index) if not anchor else 4.0,
                  linewidth=1.2 if anchor else max(1.2, 3.6 - 1.2 * index), color=colour,
                  label=curve.name + (" (payload included)" if curve.has_payload else ""))
        if curve.has_payload:
            bare = sorted((row.bpp_without_payload, metric.value(row)) for row in curve.points)
            axes.plot([p[0] for p in bare], [p[1] for p in bare], linestyle=":", marker="o", markersize=3,
                      color=colour, alpha=0.6, label=f"{curve.name} (without payload)")
            rates += [p[0] for p in bare]
    positive = [r for r in rates if r > 0]
    log_axis = bool(positive) and max(positive) / min(positive) > LOG_RATE_SPAN
    if log_axis:
        axes.set_xscale("log")
    axes.set_xlabel("rate [bpp, weight payload included]" + (", log scale" if log_axis else ""))
    axes.set_ylabel(metric.axis_label)
    axes.set_title(f"{video}: rate vs {metric.label}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: never over the curves
    return _png(figure)


def overhead_plot(data: RunData) -> bytes | None:
    """Per video, per codec quality point: the payload's share of the bytes a decoder receives, one bar per
    adapted curve, labelled with the payload size. None when no adapted unit has finished."""
    from matplotlib.figure import Figure

    adapted = [(run.codec, m) for run in data.spec.codecs for m in run.methods if m != BASE_METHOD]
    names = [curve_name(c, m) for c, m in adapted]
    videos = [v for v in data.curves if any(data.curve(v, n) and data.curve(v, n).points for n in names)]
    if not videos:
        return None
    columns = min(3, len(videos))
    rows = -(-len(videos) // columns)
    figure = Figure(figsize=(max(6.0, 4.6 * columns), 3.6 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    points = [(run.codec, q) for run in data.spec.codecs if any(c == run.codec for c, _ in adapted)
              for q in run.qualities]
    width = 0.8 / max(1, len(names))
    for index, video in enumerate(videos):
        axes = grid[index // columns][index % columns]
        for offset, (codec, method) in enumerate(adapted):
            curve = data.curve(video, curve_name(codec, method))
            by_point = {(codec, row.quality): row for row in (curve.points if curve else [])}
            xs = [i + (offset - (len(names) - 1) / 2) * width for i in range(len(points))]
            shares = [100 * by_point[p].payload_share_fraction if p in by_point else 0.0 for p in points]
            bars = axes.bar(xs, shares, width=width, label=curve_name(codec, method))
            labels = [_bytes_label(by_point[p].payload_bytes) if p in by_point else "" for p in points]
            axes.bar_label(bars, labels=labels, fontsize=7, padding=2)
        axes.set_xticks(range(len(points)), [f"{c} q{q:g}" if len({c for c, _ in points}) > 1 else f"q{q:g}"
                                             for c, q in points])
        axes.set_ylabel("payload, % of total bytes")
        axes.set_title(video, fontsize=10)
        axes.set_ylim(0, max(5.0, axes.get_ylim()[1] * 1.15))
        axes.grid(True, axis="y", alpha=0.3)
        axes.legend(fontsize=7, loc="upper left")
    for index in range(len(videos), rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    figure.suptitle("Weight overhead (bar label: payload size)", fontsize=11)
    return _png(figure)


def _bytes_label(count: int) -> str:
    return f"{count} B" if count < 10_000 else f"{count / 1000:.0f} kB"
