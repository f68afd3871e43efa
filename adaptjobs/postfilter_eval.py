"""What a post-filter gains on real sequences: ``python -m adaptjobs.postfilter_eval FILTER``.

For each sequence, codec and CRF: code every frame with the PSNR-tuned settings (intra period 12), decode,
and measure PSNR-Y/U/V/YUV (per frame, averaged; PSNR-YUV = (6 Y + U + V) / 8 as
:func:`workers.metrics.psnr_yuv`) of the plain decode and of the filtered decode. Streams are cached on disk
(``--stream-cache``) because they do not depend on the filter, so intermediate checkpoints cost only the
filtering.

The ``postfilter`` rule (what the method's encoder does): per (video, codec, CRF) the filter is on only if it
raises PSNR-YUV; otherwise off. Its rate is the size of the stream with the method's SEI record attached
(workers.standard.side_info.attach_side_info: the filter's id, the CRF, on/off, this run's thread count; 46
bytes in H.264, 47 in HEVC, more if emulation prevention adds any), the record the method writes whether the
filter is on or off; ``none`` is the stream alone. JSONs written before the points carried ``sei_bytes``
priced the record at ``SEI_BYTES`` (100). BD-rate (adaptjobs.bdrate, PCHIP on log rate) of postfilter
vs none, on PSNR-YUV, PSNR-Y and chroma ((PSNR-U + PSNR-V) / 2), per sequence and averaged over sequences.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from workers.atomic import atomic_write_bytes, atomic_write_text
from workers.metrics import psnr_from_mse
from workers.postfilter.network import PostFilter, filter_planes
from workers.standard.encoder import DEFAULT_CRFS, codec_info, decode_stream, encode_planes

SEI_BYTES = 100  # what a point without its own measured ``sei_bytes`` (an older JSON) is charged
INTRA_PERIOD = 12
PLANES = ("y", "u", "v")


@dataclass
class EvalPoint:
    """One (sequence, codec, CRF): stream bytes and per-plane PSNRs (dB, per-frame mean) without and with
    the filter; ``filter_on`` is the postfilter rule's decision; ``sei_bytes``: what attaching the method's SEI
    record adds to the stream."""

    sequence: str
    codec: str
    crf: float
    frames: int
    width: int
    height: int
    stream_bytes: int
    none: dict[str, float]
    filtered: dict[str, float]
    sei_bytes: int = SEI_BYTES

    @property
    def filter_on(self) -> bool:
        return self.filtered["yuv"] > self.none["yuv"]

    def bpp(self, method: str, sei_bytes: int | None = None) -> float:
        """Bits per pixel; ``sei_bytes`` overrides the point's record size (0: as if the record were free)."""
        extra = (self.sei_bytes if sei_bytes is None else sei_bytes) if method == "postfilter" else 0
        return (self.stream_bytes + extra) * 8.0 / (self.width * self.height * self.frames)

    def quality(self, method: str, metric: str) -> float:
        """metric: 'yuv', 'y' or 'chroma'; method: 'none' or 'postfilter' (the rule)."""
        psnr = self.filtered if method == "postfilter" and self.filter_on else self.none
        return (psnr["u"] + psnr["v"]) / 2.0 if metric == "chroma" else psnr[metric]


def plane_psnrs(originals: list[tuple], decoded: list[tuple]) -> dict[str, float]:
    """Per-plane PSNR (peak 255) per frame, averaged over frames; 'yuv' = (6 Y + U + V) / 8."""
    values = {name: [] for name in PLANES}
    for source, coded in zip(originals, decoded):
        for name, a, b in zip(PLANES, source, coded):
            values[name].append(psnr_from_mse(float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)), 255.0))
    means = {name: float(np.mean(v)) for name, v in values.items()}
    means["yuv"] = (6.0 * means["y"] + means["u"] + means["v"]) / 8.0
    return means


def coded_stream(frames: list[tuple], name: str, codec: str, crf: float, cache: Path | None) -> bytes:
    """The stream of ``frames`` at ``crf``, from the cache when it holds it (streams are deterministic)."""
    height, width = frames[0][0].shape
    path = None if cache is None else cache / f"{name}-{len(frames)}f-{codec}-crf{crf:g}{codec_info(codec).suffix}"
    if path is not None and path.exists():
        return path.read_bytes()
    data = encode_planes(frames, width, height, Fraction(25), codec, crf, INTRA_PERIOD)
    if path is not None:
        atomic_write_bytes(path, data)
    return data


def sei_record_bytes(stream: bytes, codec: str, crf: float, filter_id: bytes, enabled: bool) -> int:
    """Bytes the method's SEI record adds to ``stream`` (measured by attaching it, emulation prevention included)."""
    from schemas.side_info import StandardSideInfo
    from workers.standard.side_info import attach_side_info

    info = StandardSideInfo(crf=crf, threads=torch.get_num_threads(), filter_id=filter_id, filter_enabled=enabled)
    return len(attach_side_info(stream, codec, info)) - len(stream)


def model_filter_id(model: PostFilter) -> bytes:
    """The id a stream would name ``model`` by (the first bytes of its weights' sha256)."""
    from schemas.side_info import filter_id
    from workers.checkpoints import weights_sha256
    from workers.postfilter.checkpoint import filter_weights

    return filter_id(weights_sha256(filter_weights(model)))


def evaluate_sequence(model: PostFilter, name: str, frames: list[tuple], codecs: tuple[str, ...],
                      crfs: tuple[float, ...], cache: Path | None) -> list[EvalPoint]:
    height, width = frames[0][0].shape
    identity = model_filter_id(model)
    points = []
    for codec in codecs:
        for crf in crfs:
            data = coded_stream(frames, name, codec, crf, cache)
            decoded = decode_stream(data, codec)
            filtered = [filter_planes(model, planes, crf, codec) for planes in decoded]
            point = EvalPoint(name, codec, float(crf), len(frames), width, height, len(data),
                              plane_psnrs(frames, decoded), plane_psnrs(frames, filtered))
            point.sei_bytes = sei_record_bytes(data, codec, float(crf), identity, point.filter_on)
            points.append(point)
    return points


def read_sequence(path: Path, max_frames: int | None) -> tuple[str, list[tuple]]:
    from workers.video_io import read_video

    video = read_video(path, max_frames)
    return video.name, [video.frame_yuv420(i) for i in range(len(video))]


def evaluate(model: PostFilter, sources: list[Path], codecs: tuple[str, ...] = ("x264", "x265"),
             crfs: tuple[float, ...] = DEFAULT_CRFS, max_frames: int | None = None,
             cache: Path | None = None) -> list[EvalPoint]:
    """Evaluate ``model`` on every sequence in ``sources`` (files or PNG folders)."""
    model = model.eval()
    points = []
    for path in sources:
        name, frames = read_sequence(path, max_frames)
        points += evaluate_sequence(model, name, frames, codecs, crfs, cache)
    return points


def _bd(points: list[EvalPoint], metric: str, sei_bytes: int | None = None) -> float | None:
    from adaptjobs.bdrate import bd_rate

    anchor = [(p.bpp("none"), p.quality("none", metric)) for p in points]
    test = [(p.bpp("postfilter", sei_bytes), p.quality("postfilter", metric)) for p in points]
    try:
        return bd_rate(anchor, test).percent
    except ValueError:  # a curve that is not monotone (e.g. chroma of a tiny clip): no BD-rate
        return None


def summarize(points: list[EvalPoint]) -> dict:
    """BD-rates (percent, postfilter vs none) per codec and sequence, and their mean over sequences,
    for PSNR-YUV, PSNR-Y and chroma; ``bd_rate_without_sei``: PSNR-YUV as if the SEI record were free
    (what the filter itself gives); plus the dB gain of the filter (always on) per point."""
    summary: dict = {"sei_bytes": sorted({p.sei_bytes for p in points}), "codecs": {}}
    for codec in sorted({p.codec for p in points}):
        per_sequence = {}
        for name in dict.fromkeys(p.sequence for p in points if p.codec == codec):
            curve = sorted((p for p in points if p.codec == codec and p.sequence == name), key=lambda p: p.crf)
            per_sequence[name] = {
                "bd_rate": {metric: _bd(curve, metric) for metric in ("yuv", "y", "chroma")},
                "bd_rate_without_sei": _bd(curve, "yuv", 0),
                "gain_db": {f"{p.crf:g}": round(p.filtered["yuv"] - p.none["yuv"], 4) for p in curve},
                "filter_on": {f"{p.crf:g}": p.filter_on for p in curve}}
        mean = {}
        for metric in ("yuv", "y", "chroma"):
            values = [s["bd_rate"][metric] for s in per_sequence.values()]
            mean[metric] = None if any(v is None for v in values) else float(np.mean(values))
        without = [s["bd_rate_without_sei"] for s in per_sequence.values()]
        mean["yuv_without_sei"] = None if any(v is None for v in without) else float(np.mean(without))
        summary["codecs"][codec] = {"sequences": per_sequence, "mean_bd_rate": mean}
    return summary


def format_summary(summary: dict) -> str:
    fmt = lambda v: "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+6.2f}"  # noqa: E731
    lines = []
    for codec, data in summary["codecs"].items():
        crfs = next(iter(data["sequences"].values()))["gain_db"].keys()
        lines.append(f"{codec}: BD-rate % (YUV / Y / chroma / YUV without SEI) | filter gain dB (PSNR-YUV) at CRF "
                     f"{' '.join(crfs)}")
        for name, s in data["sequences"].items():
            bd = s["bd_rate"]
            gains = " ".join(f"{g:+.3f}" for g in s["gain_db"].values())
            lines.append(f"  {name:<12} {fmt(bd['yuv'])} {fmt(bd['y'])} {fmt(bd['chroma'])} "
                         f"{fmt(s['bd_rate_without_sei'])} | {gains}")
        m = data["mean_bd_rate"]
        lines.append(f"  {'mean':<12} {fmt(m['yuv'])} {fmt(m['y'])} {fmt(m['chroma'])} {fmt(m['yuv_without_sei'])}")
    return "\n".join(lines)


def default_sources(folder: Path) -> list[Path]:
    from workers.pretrain.dataset import find_sources

    videos, _ = find_sources([folder])
    return videos


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m adaptjobs.postfilter_eval", description=__doc__.split("\n")[0])
    parser.add_argument("filter", type=Path, help="a post-filter .safetensors (workers.postfilter.checkpoint)")
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/eval-dev"))
    parser.add_argument("--codecs", nargs="+", default=["x264", "x265"])
    parser.add_argument("--crfs", nargs="+", type=float, default=list(DEFAULT_CRFS))
    parser.add_argument("--frames", type=int, default=None, help="first N frames of each sequence (default all)")
    parser.add_argument("--stream-cache", type=Path, default=None, help="folder that keeps the coded streams")
    parser.add_argument("--json", type=Path, default=None, help="write points + summary here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams-only", action="store_true", help="only fill --stream-cache (no filter runs)")
    return parser


def prepare_streams(sources: list[Path], codecs: tuple[str, ...], crfs: tuple[float, ...], max_frames: int | None,
                    cache: Path) -> None:
    """Code every stream once into ``cache`` (they do not depend on the filter)."""
    for path in sources:
        name, frames = read_sequence(path, max_frames)
        for codec in codecs:
            for crf in crfs:
                coded_stream(frames, name, codec, crf, cache)


def main(argv: list[str] | None = None) -> int:
    from workers.errors import InputError
    from workers.postfilter.checkpoint import load_filter

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    if args.streams_only:
        prepare_streams(default_sources(args.data), tuple(args.codecs), tuple(args.crfs), args.frames, args.stream_cache)
        return 0
    try:
        loaded = load_filter(args.filter)
        points = evaluate(loaded.model, default_sources(args.data), tuple(args.codecs), tuple(args.crfs),
                          args.frames, args.stream_cache)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = summarize(points)
    print(format_summary(summary))
    print(f"({time.monotonic() - started:.0f} s; rates include the SEI record of each postfilter stream: "
          f"{'/'.join(map(str, summary['sei_bytes']))} bytes)")
    if args.json:
        report = {"filter": str(args.filter), "weights_sha256": loaded.metadata.weights_sha256,
                  "training": loaded.metadata.training.model_dump(exclude={"config"}), "frames": args.frames,
                  "summary": summary, "points": [asdict(p) for p in points]}
        atomic_write_text(args.json, json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
