"""Result objects printed by `--json` and written as result.json."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FrameTypeBits(BaseModel):
    """Bits written per kind of data, summed over the sequence (bits of real streams, not estimates)."""

    model_config = ConfigDict(extra="forbid")

    intra: int = Field(0, ge=0, description="I-frame latents + hyper-latents")
    motion: int = Field(0, ge=0, description="P-frame motion latents + hyper-latents")
    residual: int = Field(0, ge=0, description="P-frame residual latents + hyper-latents")
    container: int = Field(0, ge=0, description="magic, header, per-frame lengths and CRCs")
    escaped_latents: int = Field(0, ge=0, description="latent symbols outside their coding table's range, "
                                 "escape-coded (format 4; formats 2-3 clamped them); a count, not bits")


class EncodeResult(BaseModel):
    """One encoded sequence: sizes from the written file, distortion of the verified reconstruction."""

    model_config = ConfigDict(extra="forbid")

    input: str
    bitstream: str
    codec: str = Field("ssf", description="the base codec (ssf, x264, x265, ...)")
    model_id: str = Field(description="the model the stream is bound to; standard codecs: '<codec> <preset>'")
    weights_sha256: str | None = Field(None, description="sha256 of the model weights (None: no learned model)")
    quality: int | float = Field(description="the codec's own quality: SSF quality index, x264/x265 CRF")
    method: str = "none"
    width: int
    height: int
    frames: int
    intra_period: int
    bytes_written: int = Field(ge=0, description="size of the .bits file on disk")
    bits: FrameTypeBits | None = Field(None, description="bits per kind of data (codecs that report it: SSF)")
    bpp: float = Field(ge=0, description="bytes_written * 8 / (width * height * frames)")
    psnr_rgb: float = Field(description="dB, RGB [0,255], mean over frames")
    psnr_yuv: float = Field(description="dB, (6 Y + U + V) / 8 on the 4:2:0 planes, mean over frames")
    psnr_y: float | None = Field(None, description="dB, luma plane, mean over frames")
    psnr_u: float | None = Field(None, description="dB, U plane, mean over frames")
    psnr_v: float | None = Field(None, description="dB, V plane, mean over frames")
    ms_ssim_rgb: float = Field(description="MS-SSIM on RGB, mean over frames")
    encode_seconds: float = Field(ge=0)
    verified: bool = Field(description="the written file was decoded again and matched bit-exactly")
