"""x264 and x265 anchors (design.md section 8): a video coded over a CRF sweep with the PSNR-tuned settings
of workers.standard.encoder (the same the x264/x265 base codecs use), decoded again with FFmpeg and measured
exactly as our reconstructions are: PSNR-RGB on RGB converted with workers.colour, PSNR-YUV on the planes,
MS-SSIM-RGB. Rate = every byte of the Annex B stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from schemas.anchors import AnchorPoint
from workers.metrics import sequence_metrics
from workers.colour import yuv420_to_rgb
from workers.standard.encoder import DEFAULT_CRFS, DEFAULT_PRESET, decode_stream, encode_planes
from workers.video_io import SourceFrames, Video


def encode_anchor(video: Video, codec: str, crf: float, intra_period: int, preset: str = DEFAULT_PRESET,
                  extra_options: dict[str, str] | None = None) -> tuple[AnchorPoint, list[tuple[np.ndarray, ...]]]:
    """Encode all frames of ``video`` and decode them again. Returns the point and the decoded planes."""
    data = encode_planes((video.frame_yuv420(i) for i in range(len(video))), video.width, video.height, video.fps,
                         codec, crf, intra_period, preset, extra_options)
    decoded = decode_stream(data, codec)
    if len(decoded) != len(video):
        raise RuntimeError(f"{codec} at crf {crf}: decoded {len(decoded)} frames of {len(video)}")
    total = len(data)
    return _measure(video, codec, crf, preset, intra_period, total, decoded), decoded


def _measure(video: Video, codec: str, crf: float, preset: str, intra_period: int, total: int,
             decoded: list[tuple[np.ndarray, ...]]) -> AnchorPoint:
    """The point's metrics, averaged by workers.metrics.sequence_metrics (the one place that averages)."""
    metrics = sequence_metrics(SourceFrames(video), [video.frame_yuv420(i) for i in range(len(video))],
                               _DecodedFrames(decoded), decoded)
    return AnchorPoint(
        codec=codec, crf=crf, preset=preset, intra_period=intra_period, frames=len(video), width=video.width,
        height=video.height, bytes=total, bpp=total * 8 / (video.width * video.height * len(video)),
        psnr_rgb=metrics["psnr_rgb"], psnr_yuv=metrics["psnr_yuv"], ms_ssim_rgb=metrics["ms_ssim_rgb"])


class _DecodedFrames(Sequence):
    """Decoded 4:2:0 planes seen as RGB float frames (3, H, W), converted on access."""

    def __init__(self, planes: list[tuple[np.ndarray, ...]]):
        self.planes = planes

    def __len__(self) -> int:
        return len(self.planes)

    def __getitem__(self, index: int) -> torch.Tensor:
        return yuv420_to_rgb(*self.planes[index])


def anchor_curve(video: Video, codec: str, intra_period: int, crfs: Iterable[float] = DEFAULT_CRFS,
                 preset: str = DEFAULT_PRESET) -> list[AnchorPoint]:
    """One point per CRF, sorted by rate."""
    points = [encode_anchor(video, codec, crf, intra_period, preset)[0] for crf in crfs]
    return sorted(points, key=lambda p: p.bpp)
