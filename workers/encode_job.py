"""File-level encode and decode: what `adaptjobs encode` / `adaptjobs decode` do.

encode: read the video, code it, write the .bits atomically, read the file back and decode it, check
that the decoded frames equal the encoder's reconstruction, then measure rate (from the file size) and
distortion (of the verified frames).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from schemas.bitstream import BitstreamHeader
from schemas.results import EncodeResult
from workers.atomic import atomic_write_bytes
from workers.bitstream import unpack_header
from workers.checkpoints import LoadedModel
from workers.codec.ssf import EntropyTables, ScaleSpaceFlow
from workers.colour import rgb_to_yuv420
from workers.errors import BitstreamError, InputError
from workers.metrics import ms_ssim_rgb, psnr_rgb, psnr_yuv
from workers.limits import MAX_BITSTREAM_BYTES, MAX_PAYLOAD_BYTES, read_regular_file
from workers.model_store import resolve_for_stream, resolve_model
from workers.video_codec import decode_sequence, encode_sequence
from workers.video_io import SourceFrames, Video, read_video, write_reconstruction

DEFAULT_INTRA_PERIOD = 12  # PEVC's test GoP


class ReconstructionMismatch(RuntimeError):
    """The decoder did not reproduce the encoder's frames: a bug or a non-deterministic platform."""


def checked_model(loaded: LoadedModel, header: BitstreamHeader, source: str | Path | None) -> tuple[ScaleSpaceFlow, EntropyTables]:
    """Refuse a model whose weights are not the ones the stream was made with."""
    if loaded.metadata.weights_sha256 != header.weights_sha256:
        raise BitstreamError(source, f"was encoded with model {header.model_id} (weights sha256 {header.weights_sha256[:12]}), "
                                     f"but {loaded.source} has sha256 {loaded.metadata.weights_sha256[:12]}")
    return loaded.model, loaded.model.entropy_tables()


def sequence_metrics(video: Video, frames: list[torch.Tensor]) -> dict[str, float]:
    """PSNR-RGB, PSNR-YUV and MS-SSIM-RGB of ``frames`` against the first len(frames) of ``video``."""
    originals = SourceFrames(video)  # converted on access: no float copy of the whole video
    rgb = sum(psnr_rgb(video.frame_rgb(i), r) for i, r in enumerate(frames)) / len(frames)
    yuv = sum(psnr_yuv(video.frame_yuv420(i), rgb_to_yuv420(r)) for i, r in enumerate(frames)) / len(frames)
    return {"psnr_rgb": rgb, "psnr_yuv": yuv, "ms_ssim_rgb": ms_ssim_rgb(originals[: len(frames)], frames)}


def encode_video(video: Video, loaded: LoadedModel, output: str | Path, intra_period: int = DEFAULT_INTRA_PERIOD,
                 recon: str | Path | None = None, method: str = "none") -> EncodeResult:
    """Encode an already-read video with ``loaded`` into ``output`` and verify it (see module docstring)."""
    if intra_period < 0:
        raise InputError(None, f"--intra-period must be >= 0, got {intra_period}")
    output = Path(output)
    started = time.perf_counter()
    metadata = loaded.metadata
    header = BitstreamHeader(model_id=metadata.model_id, weights_sha256=metadata.weights_sha256, quality=metadata.quality,
                             width=video.width, height=video.height, frame_count=len(video),
                             fps_num=video.fps.numerator, fps_den=video.fps.denominator,
                             intra_period=intra_period, method=method)
    tables = loaded.model.entropy_tables()
    encoded = encode_sequence(loaded.model, tables, video.frames_rgb(), header)
    atomic_write_bytes(output, encoded.data)
    written = output.read_bytes()
    _, decoded = decode_sequence(written, lambda h: checked_model(loaded, h, output), output)
    if len(decoded) != len(encoded.reconstruction) or not all(
            torch.equal(a, b) for a, b in zip(decoded, encoded.reconstruction)):
        raise ReconstructionMismatch(f"{output}: decoding the written file does not reproduce the encoder's frames")
    seconds = time.perf_counter() - started
    if recon is not None:
        write_reconstruction(recon, decoded, video.fps)
    metrics = sequence_metrics(video, decoded)
    return EncodeResult(
        input=str(video.path), bitstream=str(output), model_id=metadata.model_id, weights_sha256=metadata.weights_sha256,
        quality=metadata.quality, method=method, width=video.width, height=video.height, frames=len(video),
        intra_period=intra_period, bytes_written=len(written), bits=encoded.bits,
        bpp=len(written) * 8 / (video.width * video.height * len(video)), encode_seconds=seconds, verified=True,
        **metrics)


def encode_file(input_path: str | Path, output: str | Path, model: str | None = None, quality: int | None = None,
                frames: int | None = None, intra_period: int = DEFAULT_INTRA_PERIOD,
                recon: str | Path | None = None) -> EncodeResult:
    video = read_video(input_path, frames)
    loaded = resolve_model(model, quality)
    return encode_video(video, loaded, output, intra_period, recon)


def unit_bitstream(path: Path) -> Path:
    """The bitstream to decode: ``path`` itself, or the one .bits file of a unit folder (a run's
    units/<video>/<method>/q<k>/ or the -o folder of `adaptjobs adapt`)."""
    if not path.is_dir():
        return path
    found = sorted(path.glob("*.bits"))
    if len(found) != 1:
        raise InputError(path, f"a folder to decode must hold exactly one .bits file, it holds {len(found)}")
    return found[0]


def decode_file(bits_path: str | Path, output: str | Path, model: str | None = None,
                payload_path: str | Path | None = None) -> BitstreamHeader:
    """Decode ``bits_path`` to ``output`` (.y4m, or a PNG folder). The model defaults to the installed one
    whose weights hash the header names (model_store.resolve_for_stream). A stream made with a decoder update needs its payload:
    ``payload_path``, by default <bits stem>.payload beside the bitstream."""
    from workers.adapt.job import check_payload_binding, decoder_model

    bits_path = unit_bitstream(Path(bits_path))
    data = read_regular_file(bits_path, "bitstream", MAX_BITSTREAM_BYTES)  # issue 11: no FIFO/device, bounded
    header, _ = unpack_header(data, bits_path)
    if payload_path is None and header.payload_sha256 is not None and bits_path.with_suffix(".payload").exists():
        payload_path = bits_path.with_suffix(".payload")
    payload = None
    if payload_path is not None:
        payload = read_regular_file(payload_path, "payload", MAX_PAYLOAD_BYTES)
    loaded = resolve_for_stream(model, header, bits_path)  # issue 11: the header never names a path

    def model_for(h: BitstreamHeader) -> tuple[ScaleSpaceFlow, EntropyTables]:
        checked_model(loaded, h, bits_path)
        check_payload_binding(h, payload, bits_path, payload_path)
        adapted = decoder_model(loaded, payload, payload_path)
        return adapted, adapted.entropy_tables()

    _, frames = decode_sequence(data, model_for, bits_path)
    write_reconstruction(output, frames, header.fps)
    return header
