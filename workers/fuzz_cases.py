"""Crafted inputs for the hostile-input tests and the long fuzz run (tests/test_fuzz_*.py,
benchmarks/fuzz_long.py), and the rule that judges what a reader did with them.

Random bytes die at the magic or a CRC; to reach the semantic checks behind them, the builders here
frame arbitrary header JSON, frame records and payload streams with every length and CRC recomputed,
exactly as an attacker who read workers/bitstream.py and workers/adapt/payload.py would. Payloads are
built in format 5 (binary header fields, :class:`PayloadFields`) and, for the old readers, formats 2/3 (JSON).

The rule (issue 11): every case ends in a decode or in an InputError (BitstreamError, ModelError) whose
message is one line; anything else is a crash, reported with its type and first line.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from workers.bitstream import MAGIC as BITS_MAGIC
from workers.errors import InputError


@dataclass
class FrameRecord:
    """One frame record as bytes on disk; ``lengths`` default to the streams' own lengths."""

    frame_type: int
    streams: list[bytes]
    count: int | None = None
    lengths: list[int] | None = None

    def to_bytes(self) -> bytes:
        count = len(self.streams) if self.count is None else self.count
        lengths = [len(s) for s in self.streams] if self.lengths is None else self.lengths
        chunk = struct.pack("<BB", self.frame_type & 0xFF, count & 0xFF)
        chunk += b"".join(struct.pack("<I", n & 0xFFFFFFFF) for n in lengths) + b"".join(self.streams)
        return chunk + struct.pack("<I", zlib.crc32(chunk))


def frame_bitstream(header_json: bytes, frames: list[FrameRecord] | bytes, version: int | None = None) -> bytes:
    """A bitstream with ``header_json`` as its header and a correct header CRC; ``frames`` are records
    (each with its CRC recomputed) or raw bytes appended as they are. ``version``: the current format."""
    from workers.bitstream import FORMAT_VERSION

    version = FORMAT_VERSION if version is None else version
    prefix = struct.pack("<BI", version, len(header_json)) + header_json
    body = frames if isinstance(frames, bytes) else b"".join(f.to_bytes() for f in frames)
    return BITS_MAGIC + prefix + struct.pack("<I", zlib.crc32(prefix)) + body


def split_bitstream(data: bytes) -> tuple[bytes, list[FrameRecord]]:
    """(header JSON, frame records) of a valid bitstream: the raw material for mutations."""
    from workers.bitstream import unpack, unpack_header

    _, offset = unpack_header(data)
    hlen = struct.unpack_from("<I", data, 5)[0]
    _, chunks = unpack(data)
    assert offset == 13 + hlen
    return data[9: 9 + hlen], [FrameRecord(c.frame_type, list(c.streams)) for c in chunks]


@dataclass
class PayloadFields:
    """Payload format 5's header fields as raw values, any of them out of range (workers/adapt/payload_header.py
    gives the layout). Integers are wrapped to their field widths when packed; ``structure`` and ``prior``
    are the raw bytes of the method's structure layout and of the prior field (:func:`lora_structure`,
    :func:`explicit_prior`), so a case can give one method another method's structure or cut a field short."""

    version: int = 5
    base_id: bytes = bytes(8)
    method: int = 1
    structure: bytes = b""
    prior: bytes = b"\x01"
    bound: int = 1
    fingerprint: bytes = bytes(4)

    def to_bytes(self) -> bytes:
        return (struct.pack("<B", self.version & 0xFF) + (self.base_id + bytes(8))[:8] + struct.pack("<B", self.method & 0xFF)
                + self.structure + self.prior + struct.pack("<I", self.bound & 0xFFFFFFFF) + (self.fingerprint + bytes(4))[:4])


def lora_structure(variant: int = 1, ranks: list[int] = (2, 1), init_seed: int = 7, count: int | None = None,
                   biases: int | None = 1) -> bytes:
    """decoder-lora's structure bytes with any values (``count`` defaults to ``len(ranks)``; may lie);
    ``biases`` the format-5 flag byte (None: format 4's layout, which has none)."""
    count = len(ranks) if count is None else count
    flag = b"" if biases is None else struct.pack("<B", biases & 0xFF)
    return struct.pack(f"<BB{len(ranks)}HI", variant & 0xFF, count & 0xFF, *(r & 0xFFFF for r in ranks),
                       init_seed & 0xFFFFFFFF) + flag


def explicit_prior(grid: float, slab_std: float, spike_std: float, alpha: float) -> bytes:
    """The prior field with id 0 (explicit) and four float32 values (NaN, inf, negatives allowed)."""
    return struct.pack("<B4f", 0, grid, slab_std, spike_std, alpha)


def frame_payload(fields: PayloadFields | bytes, stream: bytes) -> bytes:
    """A format-5 weight payload: magic, ``fields`` (or raw header bytes from the version byte on), ``stream``
    as it is, and a correct CRC."""
    from workers.adapt.payload import MAGIC as PAYLOAD_MAGIC

    body = (fields.to_bytes() if isinstance(fields, PayloadFields) else fields) + stream
    return PAYLOAD_MAGIC + body + struct.pack("<I", zlib.crc32(body))


def split_payload(data: bytes) -> tuple[PayloadFields, bytes]:
    """(header fields, stream) of a valid format-5 payload: the raw material for mutations."""
    from workers.adapt.payload import MAGIC as PAYLOAD_MAGIC
    from workers.adapt.payload_header import PAYLOAD_METHOD_IDS, STRUCTURE_LAYOUTS, unpack_header

    header, stream_start = unpack_header(data[:-4], len(PAYLOAD_MAGIC))
    structure = STRUCTURE_LAYOUTS[header.method].pack(header.structure)
    prior_start = len(PAYLOAD_MAGIC) + 10 + len(structure)
    fields = PayloadFields(data[2], data[3:11], PAYLOAD_METHOD_IDS[header.method], structure,
                           data[prior_start: stream_start - 8], header.bound, bytes.fromhex(header.tensors_fingerprint))
    assert frame_payload(fields, data[stream_start:-4]) == data
    return fields, data[stream_start:-4]


def mutated_payload_fields(fields: PayloadFields, draw: Callable[[int], int]) -> PayloadFields:
    """``fields`` with 1-3 fields changed at random; ``draw(n)`` returns an integer in 0..n-1 (any source of
    randomness: numpy's ``rng.integers``, hypothesis' ``data.draw``). Edge values mostly: 0, 1, the field's
    maximum, one past the limits the reader enforces."""
    edges = [0, 1, 2, 3, 4, 255, 1024, 1025, 65535, 2**31 - 1, 2**31, 2**32 - 1, (1 << 20), (1 << 20) + 1]
    out = PayloadFields(**vars(fields))
    for _ in range(1 + draw(3)):
        which = draw(8)
        value = edges[draw(len(edges))]
        if which == 0:
            out.version = value
        elif which == 1:
            out.base_id = bytes(draw(256) for _ in range(8))
        elif which == 2:
            out.method = value
        elif which == 3:
            ranks = [edges[draw(len(edges))] for _ in range(draw(5))]
            out.structure = lora_structure(draw(4), ranks, value, count=edges[draw(len(edges))] if draw(4) == 0 else None,
                                           biases=(0, 1, 2, 255, None)[draw(5)])
        elif which == 4:
            out.structure = out.structure[: draw(len(out.structure) + 1)]
        elif which == 5:
            floats = [0.0, -1.0, 1e-45, 1e-30, 0.002, 1.0, 3e38, float("inf"), float("nan")]
            out.prior = explicit_prior(*(floats[draw(len(floats))] for _ in range(4))) if draw(3) else bytes([value & 0xFF])
        elif which == 6:
            out.bound = value
        else:
            out.fingerprint = bytes(draw(256) for _ in range(4))
    return out


def frame_json_payload(header_json: bytes, stream: bytes, version: int = 3) -> bytes:
    """A format 2/3 weight payload (JSON header) with ``header_json`` as its header and a correct CRC."""
    from workers.adapt.payload import LEGACY_MAGIC

    body = struct.pack("<BI", version, len(header_json)) + header_json + struct.pack("<I", len(stream)) + stream
    return LEGACY_MAGIC + body + struct.pack("<I", zlib.crc32(body))


def split_json_payload(data: bytes) -> tuple[bytes, bytes]:
    """(header JSON, stream) of a valid format 2/3 payload."""
    hlen = struct.unpack_from("<I", data, 5)[0]
    slen = struct.unpack_from("<I", data, 9 + hlen)[0]
    return data[9: 9 + hlen], data[13 + hlen: 13 + hlen + slen]


class Crash(AssertionError):
    """A case ended in something other than a decode or a one-line InputError."""


def judge(action: Callable[[], object]) -> str:
    """Run ``action``; return "ok" or "refused" (a one-line InputError). Raise :class:`Crash` otherwise."""
    try:
        action()
    except InputError as exc:
        message = str(exc)
        if "\n" in message or "\r" in message or not message.strip():
            raise Crash(f"multi-line or empty refusal: {message!r}") from None
        return "refused"
    except BaseException as exc:  # constriction panics are BaseExceptions; KeyboardInterrupt must stop us
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        first = (str(exc).splitlines() or [""])[0][:200]
        raise Crash(f"{type(exc).__module__}.{type(exc).__name__}: {first}") from exc
    return "ok"


# ----------------------------------------------------------------- seed material (valid streams to mutate)
def sample_stream(loaded, frames: int = 3, size: tuple[int, int] = (64, 48), intra_period: int = 2) -> bytes:
    """A valid bitstream of a smooth synthetic clip (``size`` = (width, height)) coded with ``loaded``."""
    import torch

    from schemas.bitstream import BitstreamHeader
    from workers.video_codec import encode_sequence

    width, height = size
    ramp = torch.linspace(0, 1, width).view(1, 1, -1) * torch.linspace(0.2, 0.8, height).view(1, -1, 1)
    clip = [torch.cat([ramp, ramp.roll(t + 1, -1), 1 - ramp]).clamp(0, 1) for t in range(frames)]
    meta = loaded.metadata
    header = BitstreamHeader(model_id=meta.model_id, weights_sha256=meta.weights_sha256, quality=meta.quality,
                             width=width, height=height, frame_count=frames, fps_num=30, fps_den=1,
                             intra_period=intra_period)
    return encode_sequence(loaded.model, loaded.model.entropy_tables(), clip, header).data


SAMPLE_LORA_STRUCTURE = {"variant": "extended", "ranks": [2, 1], "init_seed": 7, "biases": True}


def sample_payload(loaded, seed: int = 0) -> bytes:
    """A valid decoder-lora payload for ``loaded`` with sparse seeded indices (what training leaves)."""
    import torch

    from schemas.adapt import DecoderLoraConfig, WeightPrior
    from workers.adapt.decoder_updates import make_update, payload_name
    from workers.adapt.payload import WeightUpdate, encode_payload, make_header

    config = DecoderLoraConfig(**SAMPLE_LORA_STRUCTURE)
    template = make_update(loaded.model, config)
    generator = torch.Generator().manual_seed(seed)
    indices = {}
    for key, tensor in template.coded.items():
        values = torch.randint(-3, 4, tuple(tensor.shape), generator=generator)
        keep = torch.rand(tuple(tensor.shape), generator=generator) < 0.1
        indices[payload_name(key)] = torch.where(keep, values, torch.zeros_like(values))
    header = make_header(loaded.metadata.weights_sha256, "decoder-lora", dict(SAMPLE_LORA_STRUCTURE),
                         WeightPrior(grid=0.002), indices)
    return encode_payload(WeightUpdate(header, indices))


def decode_stream_action(data: bytes, loaded, source: str = "case.bits") -> Callable[[], object]:
    """What `adaptjobs decode --model M` does with bytes ``data``, minus the file writing."""
    from workers.decoder import checked_model
    from workers.video_codec import decode_sequence

    return lambda: decode_sequence(data, lambda h: checked_model(loaded, h, source), source)


def decode_payload_action(data: bytes, loaded, source: str = "case.payload") -> Callable[[], object]:
    """What the decoder does with a payload: rebuild the adapted model from ``loaded`` + ``data``."""
    from workers.decoder import decoder_model

    return lambda: decoder_model(loaded, data, source)


# ------------------------------------------------- the post-filter path: side info SEI + coded filter update
# Same idea for x264/x265 streams (workers/standard/side_info.py, workers/postfilter/update_payload.py):
# records and updates framed field by field with the CRCs recomputed, chunked and put into SEI NAL units
# exactly as an attacker who read those modules would, so the checks behind the CRCs are reached.
SAMPLE_CODECS = {"x264": "case.h264", "x265": "case.hevc"}


def side_info_record(flags: int = 1, crf: int = 3200, threads: int = 1, filter_id: bytes = bytes(8),
                     method: int | None = None, blob: bytes = b"", length: int | None = None,
                     version: int | None = None, magic: bytes = b"AJ", offsets: int | None = None) -> bytes:
    """A side info record with any field values (``method`` None: no update fields; ``offsets`` None: no CRF
    offsets byte, whatever the flags say) and a correct CRC32; ``length`` defaults to ``len(blob)``. Integers
    are wrapped to their field widths."""
    from workers.standard.side_info import FORMAT_VERSION

    version = FORMAT_VERSION if version is None else version
    body = magic + struct.pack("<BBHH", version & 0xFF, flags & 0xFF, crf & 0xFFFF, threads & 0xFFFF)
    body += (filter_id + bytes(8))[:8]
    if offsets is not None:
        body += bytes([offsets & 0xFF])
    if method is not None:
        size = len(blob) if length is None else length
        body += struct.pack("<BI", method & 0xFF, size & 0xFFFFFFFF) + blob
    return body + struct.pack("<I", zlib.crc32(body))


def record_chunks(record: bytes, chunk_bytes: int | None = None, headers: list[tuple[int, int]] | None = None) -> list[bytes]:
    """``record`` cut into SEI message data of ``chunk_bytes`` record bytes each (default: the writer's),
    each prefixed by ``index u8, count u8`` (``headers`` overrides them, e.g. to lie)."""
    from workers.standard.side_info import CHUNK_BYTES

    step = max(1, chunk_bytes or CHUNK_BYTES)
    pieces = [record[at: at + step] for at in range(0, len(record), step)] or [b""]
    heads = headers or [(i, len(pieces)) for i in range(len(pieces))]
    return [struct.pack("<BB", i & 0xFF, n & 0xFF) + piece for (i, n), piece in zip(heads, pieces)]


def carry_chunks(stream: bytes, codec: str, chunks: list[bytes], units: int = 1) -> bytes:
    """``stream`` with ``chunks`` as our user_data_unregistered messages before its first slice, spread over
    ``units`` SEI NAL units (1: all in one, as the writer does)."""
    from workers.standard.sei import insert_user_data
    from workers.standard.side_info import SIDE_INFO_UUID

    units = max(1, min(units, len(chunks)))
    per = -(-len(chunks) // units)
    groups = [chunks[at: at + per] for at in range(0, len(chunks), per)]
    for group in groups:  # each insert goes right before the slice, so after the previous one
        stream = insert_user_data(stream, codec, SIDE_INFO_UUID, group)
    return stream


def frame_filter_update(stream: bytes, parameterisation: int = 4, rank: int = 0, init_seed: int = 0,
                        base: bytes = bytes(8), prior: tuple[float, float, float, float] = (0.004, 0.05, 0.004 / 6, 1000.0),
                        bound: int = 4, version: int | None = None, magic: bytes | None = None) -> bytes:
    """A coded post-filter update (workers/postfilter/update_payload.py) with any header fields around the
    ANS bytes ``stream``, and a correct CRC32."""
    from workers.postfilter.update_payload import _FIELDS, FORMAT_VERSION, MAGIC

    version = FORMAT_VERSION if version is None else version
    body = _FIELDS.pack(version & 0xFF, parameterisation & 0xFF, rank & 0xFF, init_seed & 0xFFFFFFFF,
                        (base + bytes(8))[:8], *prior, bound & 0xFFFFFFFF) + stream
    return (MAGIC if magic is None else magic) + body + struct.pack("<I", zlib.crc32(body))


def sample_standard_stream(codec: str, frames: int = 2, size: tuple[int, int] = (64, 48), crf: int = 32) -> bytes:
    """A plain Annex B stream (no record of ours) of a smooth synthetic clip: the carrier to attack."""
    from fractions import Fraction

    import numpy as np

    from workers.standard.encoder import encode_planes

    width, height = size
    ramp = np.add.outer(np.arange(height) * 3, np.arange(width) * 2)
    clip = [((ramp + 5 * t) % 256).astype(np.uint8) for t in range(frames)]
    planes = [(y, y[::2, ::2].copy(), (255 - y[::2, ::2]).copy()) for y in clip]
    return encode_planes(planes, width, height, Fraction(25), codec, crf, frames)


def sample_filter_update(loaded_filter, parameterisation: str = "cross-linear", seed: int = 0,
                         rank: int = 2, spread: int = 3, density: float = 0.2) -> bytes:
    """A valid coded update of ``loaded_filter`` (a LoadedFilter): seeded indices in -spread..spread, a
    ``density`` share of them non-zero (a dense, wide LoRA update is over CHUNK_BYTES: several chunks)."""
    import torch

    from schemas.adapt import WeightPrior
    from workers.postfilter.update import CLASSIFIED, UpdateStructure, classified_structure, coded_shapes, make_filter_update
    from workers.postfilter.update_payload import CodedUpdate, encode_update, transmitted_prior

    if parameterisation in CLASSIFIED:  # 3 groups of activity classes, full form
        structure = classified_structure((4, 9), False, parameterisation)
    else:
        structure = UpdateStructure(parameterisation, rank if parameterisation == "lora" else 0,
                                    seed if parameterisation == "lora" else 0)
    generator = torch.Generator().manual_seed(seed)
    indices = {}
    for name, shape in coded_shapes(make_filter_update(loaded_filter.model, structure)).items():
        values = torch.randint(-spread, spread + 1, shape, generator=generator)
        indices[name] = torch.where(torch.rand(shape, generator=generator) < density, values, torch.zeros_like(values))
    prior = transmitted_prior(WeightPrior(grid=0.004))
    return encode_update(CodedUpdate(structure, prior, indices), loaded_filter.metadata.weights_sha256)


def decode_standard_action(data: bytes, codec: str, model: str | None = None,
                           source: str | None = None) -> Callable[[], object]:
    """What `adaptjobs decode case.h264 -o out.y4m` (``codec`` x264) does with bytes ``data``, minus the
    file reading and writing: the stream's info (side info included), then its frames through the filter."""
    from pathlib import Path

    from workers.codecs.base import codec_for_path

    path = Path(source or SAMPLE_CODECS[codec])

    def action():
        decoder = codec_for_path(path).for_stream(data, path, model)
        decoder.stream_info(data, path)
        return decoder.decode(data, path)

    return action
