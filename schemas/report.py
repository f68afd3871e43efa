"""Rows `adaptjobs report` writes as files other tools read: summary.csv (one UnitRow per unit), bd_rate.csv (BDRateRow) and summary.json / compressai/<video>/<name>.json (CompressAICurve).

Units are in the column names (``_bytes``, ``_bits``, ``_db``, ``_seconds``, ``_fraction``; bpp is bits per
pixel of one frame's luma grid: bits / (width * height * frames)). A field is None (an empty CSV cell) where it
does not apply or the unit has no result.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ReportState = Literal["done", "failed", "missing"]


class UnitRow(BaseModel):
    """One unit: a video, a base codec at one quality point, a method (x264/x265 anchors: method none).

    Numbers are copied from the unit's result.json unchanged (so they equal it exactly), except
    ``total_bytes`` (bits_file_bytes + payload_bytes).
    """

    model_config = ConfigDict(extra="forbid")

    unit: str = Field(description="the unit folder, relative to RUN")
    video: str
    codec: str = Field(description="the base codec: ssf, x264, x265, ...")
    method: str = Field(description="adaptation method (none: the base codec unadapted)")
    quality: int | float = Field(description="the codec's quality: SSF quality index, x264/x265 CRF")
    state: ReportState = Field(description="done; failed (FAILED marker, or a DONE unit whose result cannot be "
                                           "read); missing (pending, running or interrupted)")
    error: str | None = Field(None, description="why a unit is failed or missing")
    model_id: str | None = None
    frames: int | None = None
    width: int | None = None
    height: int | None = None
    bits_file_bytes: int | None = Field(None, description="size of the stream file (.bits, .h264, .hevc)")
    payload_bytes: int | None = Field(None, description="size of the .payload file (0 when no update was sent)")
    total_bytes: int | None = Field(None, description="bits_file_bytes + payload_bytes: what a decoder receives")
    bpp_without_payload: float | None = None
    bpp_with_payload: float | None = Field(None, description="the rate of a method: weight payload included")
    payload_share_fraction: float | None = Field(None, description="payload_bytes / total_bytes (0..1): the "
                                                                   "weight overhead")
    intra_bits: int | None = None
    motion_bits: int | None = None
    residual_bits: int | None = None
    container_bits: int | None = None
    psnr_rgb_db: float | None = None
    psnr_yuv_db: float | None = Field(None, description="(6 Y + U + V) / 8 on the 4:2:0 planes")
    psnr_y_db: float | None = None
    psnr_u_db: float | None = None
    psnr_v_db: float | None = None
    ms_ssim_rgb: float | None = Field(None, description="0..1, higher is better")
    adapt_seconds: float | None = Field(None, description="wall time of the whole unit")
    train_seconds: float | None = Field(None, description="time in training loops")
    decision: str | None = Field(None, description="sent, base-cheaper, zero-update or base-method")
    update_sent: bool | None = None
    bpp_adapted: float | None = Field(None, description="bits + payload per pixel of the adapted result, sent or "
                                                        "not (what adapting would have cost when it was not sent)")
    psnr_rgb_adapted_db: float | None = Field(None, description="PSNR-RGB of the adapted result, sent or not")


class BDRateRow(BaseModel):
    """BD-rate of one curve against a reference curve on one video, or the mean over videos (video
    ``(average)``). Negative: the method needs less rate than the reference for the same quality."""

    model_config = ConfigDict(extra="forbid")

    video: str
    method: str = Field(description="the tested curve, codec/method (e.g. ssf/decoder-lora)")
    reference: str = Field(description="the reference curve: the same codec unadapted (ssf/none) or another codec's "
                                       "none curve (x264/none, x265/none: the anchors)")
    metric: str = Field(description="psnr-rgb, psnr-yuv or ms-ssim (the latter in dB: -10 log10(1 - MS-SSIM))")
    bd_rate_percent: float | None = Field(None, description="None when it could not be computed (see warning)")
    overlap_fraction: float | None = Field(None, description="share of the quality range both curves cover")
    videos_averaged: int | None = Field(None, description="(average) rows: videos whose BD-rate was computed")
    videos_total: int | None = None
    warning: str | None = None


class CompressAICurve(BaseModel):
    """One RD curve in CompressAI's results format (what `python -m compressai.utils.plot -f FILE` reads:
    ``name`` and ``results`` with ``bpp`` and one list per metric, all lists in the same order)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    results: dict[str, list[int | float]]
