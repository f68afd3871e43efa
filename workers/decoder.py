"""The decoder side in one place: what `adaptjobs decode` runs and what every unit runs on its own files.

- :func:`checked_model`: refuse SSF weights that are not the ones a stream was made with;
- :func:`check_payload_binding`: a stream that names a payload (by sha256) gets exactly that payload;
- :func:`decoder_model`: base model + payload -> the adapted model, rebuilt by the method that the
  payload names (workers/methods/, ``rebuild``), so a new decoder-side method needs no edit here;
- :func:`decode_ssf`: decode an SSF stream with its checked model and payload;
- :func:`verify_written`: decode the files a unit wrote exactly as a decoder would and require the
  encoder's reconstruction bit for bit (:class:`ReconstructionMismatch` otherwise).

Nothing here imports the encoder side (workers/encoder.py, workers/encode_job.py) or the codec registry
(workers/codecs/ imports this; the file-level `adaptjobs decode` is in workers/encode_job.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from schemas.bitstream import BitstreamHeader
from workers.checkpoints import LoadedModel
from workers.errors import BitstreamError


class ReconstructionMismatch(RuntimeError):
    """The decoder did not reproduce the encoder's frames: a bug or a non-deterministic platform."""


def checked_model(loaded: LoadedModel, header: BitstreamHeader, source: str | Path | None):
    """Refuse a model whose weights are not the ones the stream was made with; returns (model, tables)."""
    if loaded.metadata.weights_sha256 != header.weights_sha256:
        raise BitstreamError(source, f"was encoded with model {header.model_id} (weights sha256 {header.weights_sha256[:12]}), "
                                     f"but {loaded.source} has sha256 {loaded.metadata.weights_sha256[:12]}")
    return loaded.model, loaded.model.entropy_tables()


def check_payload_binding(header: BitstreamHeader, payload: bytes | None, bits_source, payload_source) -> None:
    if header.payload_sha256 is None:
        if payload is not None:
            raise BitstreamError(payload_source, f"{bits_source} needs no payload, but one was given")
        return
    if payload is None:
        raise BitstreamError(bits_source, "needs its weight payload (--payload); none was given or found")
    if hashlib.sha256(payload).hexdigest() != header.payload_sha256:
        raise BitstreamError(payload_source, f"is not the payload of {bits_source} (sha256 differs)")


def decoder_model(base: LoadedModel, payload: bytes | None, source: str | Path | None = None):
    """The model a decoder runs: the base model, plus the payload's update when there is one. The payload
    header names the method; that method's ``rebuild`` turns base + payload into the adapted model."""
    if payload is None:
        return base.model
    from workers.adapt.payload import read_payload_header
    from workers.methods import METHODS

    header = read_payload_header(payload, source)
    method = METHODS.get(header.method)
    if method is None:
        raise BitstreamError(source, f"payload method {header.method!r} has no decoder weight update")
    return method.rebuild(base, payload, source)


def decode_ssf(data: bytes, base: LoadedModel, payload: bytes | None, bits_source, payload_source=None):
    """Decode an SSF stream with ``base`` (checked against the header) and its payload; (header, frames)."""
    from workers.video_codec import decode_sequence

    def model_for(header: BitstreamHeader):
        checked_model(base, header, bits_source)
        check_payload_binding(header, payload, bits_source, payload_source)
        model = decoder_model(base, payload, payload_source)
        return model, model.entropy_tables()

    return decode_sequence(data, model_for, bits_source)


def verify_written(codec, stream_path: Path, payload_path: Path | None, expected: list) -> list:
    """Decode the files on disk as `adaptjobs decode` does and require the encoder's frames exactly."""
    data = stream_path.read_bytes()
    payload = payload_path.read_bytes() if payload_path is not None else None
    frames = codec.decode(data, stream_path, payload, payload_path)
    if not codec.same(frames, expected):
        raise ReconstructionMismatch(f"{stream_path}: decoding the written files does not reproduce the encoder's frames")
    return frames
