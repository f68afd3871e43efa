"""File-level encode and decode: what `adaptjobs encode` / `adaptjobs decode` do, for any base codec.

encode: read the video, code it, write the stream atomically, read the file back and decode it, check
that the decoded frames equal the encoder's reconstruction, then measure rate (from the file size) and
distortion (of the verified frames). The decoder side lives in workers/decoder.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from schemas.results import EncodeResult
from workers.atomic import atomic_write_bytes
from workers.decoder import ReconstructionMismatch, checked_model, decode_file, unit_stream  # noqa: F401 (re-exported)
from workers.errors import InputError
from workers.video_io import Video, read_video

DEFAULT_INTRA_PERIOD = 12  # PEVC's test GoP
unit_bitstream = unit_stream  # the former name


def encode_video(video: Video, codec, output: str | Path, intra_period: int = DEFAULT_INTRA_PERIOD,
                 recon: str | Path | None = None, method: str = "none") -> EncodeResult:
    """Encode an already-read video with ``codec`` (a workers.codecs codec at one quality point; an SSF
    LoadedModel is taken as the SSF codec) into ``output`` and verify it (see module docstring)."""
    from workers.codecs.base import BaseCodec
    from workers.codecs.ssf import SSFCodec
    from workers.decoder import verify_written

    if intra_period < 0:
        raise InputError(None, f"--intra-period must be >= 0, got {intra_period}")
    codec = codec if isinstance(codec, BaseCodec) else SSFCodec(codec)
    output = Path(output)
    started = time.perf_counter()
    encoded = codec.encode(video, intra_period, **({"method": method} if method != "none" else {}))
    atomic_write_bytes(output, encoded.data)
    decoded = verify_written(codec, output, None, encoded.reconstruction)
    seconds = time.perf_counter() - started
    if recon is not None:
        codec.write_reconstruction(recon, decoded, video.fps)
    written = output.stat().st_size
    return EncodeResult(
        input=str(video.path), bitstream=str(output), codec=codec.name, model_id=codec.model_id,
        weights_sha256=codec.weights_sha256, quality=codec.quality, method=method, width=video.width,
        height=video.height, frames=len(video), intra_period=intra_period, bytes_written=written, bits=encoded.bits,
        bpp=written * 8 / (video.width * video.height * len(video)), encode_seconds=seconds, verified=True,
        **codec.metrics(video, decoded))


def encode_file(input_path: str | Path, output: str | Path, model: str | None = None, quality: int | float | None = None,
                frames: int | None = None, intra_period: int = DEFAULT_INTRA_PERIOD,
                recon: str | Path | None = None, codec: str = "ssf", settings: dict[str, str] | None = None) -> EncodeResult:
    from workers.codecs.base import codec_class

    codec_cls = codec_class(codec)
    point = codec_cls.single_point(model, quality, settings or {})
    video = read_video(input_path, frames)
    return encode_video(video, codec_cls.load(point), output, intra_period, recon)
