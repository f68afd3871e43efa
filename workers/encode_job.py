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
from workers.decoder import ReconstructionMismatch, checked_model  # noqa: F401 (re-exported)
from workers.errors import InputError
from workers.limits import MAX_BITSTREAM_BYTES, MAX_PAYLOAD_BYTES, read_regular_file
from workers.run_layout import DEFAULT_INTRA_PERIOD, PAYLOAD_SUFFIX
from workers.video_io import Video, read_video


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
                recon: str | Path | None = None, codec: str = "ssf", settings: dict[str, str] | None = None,
                device="cpu") -> EncodeResult:
    """``device``: where the codec's transforms run (a torch.device or name; workers/device.py)."""
    from workers.codecs.base import codec_class

    codec_cls = codec_class(codec)
    point = codec_cls.single_point(model, quality, settings or {})
    video = read_video(input_path, frames)
    return encode_video(video, codec_cls.load(point).place(device), output, intra_period, recon)


def decode_files(bits_path: Path, payload_path: Path | None, base) -> list:
    """Decode an SSF unit's files with ``base`` (a LoadedModel: tests and tools that hold the model already)."""
    from workers.codecs.ssf import SSFCodec

    data = bits_path.read_bytes()
    payload = payload_path.read_bytes() if payload_path is not None else None
    return SSFCodec(base).decode(data, bits_path, payload, payload_path)


def unit_stream(path: Path) -> Path:
    """The stream to decode: ``path`` itself, or the one stream file of a unit folder (a run's unit folder
    or the -o folder of `adaptjobs adapt`)."""
    from workers.codecs.base import stream_suffixes

    if not path.is_dir():
        return path
    found = sorted(p for p in path.iterdir() if p.suffix in stream_suffixes() and p.is_file())
    if len(found) != 1:
        raise InputError(path, f"a folder to decode must hold exactly one stream ({', '.join(stream_suffixes())}), "
                               f"it holds {len(found)}")
    return found[0]


def decode_file(stream_path: str | Path, output: str | Path, model: str | None = None,
                payload_path: str | Path | None = None, device="cpu") -> dict:
    """Decode ``stream_path`` (codec from its suffix) to ``output`` (.y4m, or a PNG folder). SSF: the model
    defaults to the one the header names when it ships with the package, and a stream made with a decoder
    update needs its payload (default: <stem>.payload beside it); its transforms run on ``device``.
    Returns the stream's info, with ``expected_match`` (workers/device.expected_match): "bit-exact" when
    the decoder runs on the device kind that encoded, else "parse-exact"."""
    from workers.device import device_kind, expected_match
    from fractions import Fraction

    from workers.codecs.base import codec_for_path

    stream_path = unit_stream(Path(stream_path))
    codec_cls = codec_for_path(stream_path)
    data = read_regular_file(stream_path, "bitstream", MAX_BITSTREAM_BYTES)  # no FIFO/device, bounded size
    codec = codec_cls.for_stream(data, stream_path, model).place(device)
    info = codec.stream_info(data, stream_path)
    decoder_kind = device_kind(device) if codec_cls.takes_model else "cpu"  # standard codecs decode on the CPU
    info["expected_match"] = expected_match(info.get("device") or "cpu", decoder_kind)
    beside = stream_path.with_suffix(PAYLOAD_SUFFIX)
    if payload_path is None and info.get("payload_sha256") is not None and beside.exists():
        payload_path = beside
    payload = None
    if payload_path is not None:
        payload = read_regular_file(payload_path, "payload", MAX_PAYLOAD_BYTES)
    frames = codec.decode(data, stream_path, payload, payload_path)
    # SSF headers carry the frame rate; Annex B streams their VUI timing (25 fps when they have none)
    fps = Fraction(info["fps_num"], info["fps_den"]) if "fps_num" in info else Fraction(25)
    codec.write_reconstruction(output, frames, fps)
    return info
