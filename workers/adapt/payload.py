"""The weight payload: grid indices of a weight update, entropy-coded under the spike-and-slab prior.

Byte layout (integers little-endian)::

    magic    4 bytes  b"AJWP"
    version  u8       FORMAT_VERSION
    hlen     u32      length of the header
    header   hlen     UTF-8 JSON of schemas.adapt.PayloadHeader (keys sorted, no spaces; ~300 bytes)
    slen     u32      length of the constriction stream
    stream   slen     ANS words (uint32, little-endian) of all grid indices, one Categorical table
    crc      u32      CRC32 of everything from version to the end of the stream

The header carries no tensor names or shapes: the decoder rebuilds the list from the base model and the
header's ``structure`` and checks it against ``tensors_sha256``. The decoder refuses another base model
(sha256), another tensor list, truncation, trailing bytes and CRC mismatches before it decodes a single
symbol. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import constriction
import numpy as np
import torch
from pydantic import ValidationError

from schemas.adapt import PayloadHeader, WeightPrior
from workers.adapt.prior import coding_probabilities
from workers.codec.entropy_coding import bytes_to_words, words_to_bytes
from workers.errors import BitstreamError

MAGIC = b"AJWP"
FORMAT_VERSION = 2  # 2: tensor list fingerprinted, not sent; only the structural options (1: everything)


@dataclass
class WeightUpdate:
    """Grid indices (int64) per coded tensor, with the prior and the context they were coded in."""

    header: PayloadHeader
    indices: dict[str, torch.Tensor]

    def dequantized(self) -> dict[str, torch.Tensor]:
        """index * grid in float32: the update values the decoder applies."""
        return {name: k.to(torch.float32) * self.header.prior.grid for name, k in self.indices.items()}


def tensor_list_sha256(shapes: dict[str, tuple[int, ...]]) -> str:
    """Fingerprint of the coded tensors' names and shapes in coding order (16 hex digits)."""
    canonical = json.dumps([[name, list(shape)] for name, shape in shapes.items()], separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def make_header(base_weights_sha256: str, method: str, structure: dict, prior: WeightPrior,
                indices: dict[str, torch.Tensor]) -> PayloadHeader:
    bound = max([1] + [int(k.abs().max()) for k in indices.values() if k.numel()])
    return PayloadHeader(base_weights_sha256=base_weights_sha256, method=method, structure=structure, prior=prior,
                         bound=bound, tensors_sha256=tensor_list_sha256({n: tuple(k.shape) for n, k in indices.items()}))


def _table(header: PayloadHeader):
    return constriction.stream.model.Categorical(coding_probabilities(header.prior, header.bound), perfect=False)


def encode_payload(update: WeightUpdate) -> bytes:
    header = update.header
    if header.tensors_sha256 != tensor_list_sha256({n: tuple(k.shape) for n, k in update.indices.items()}):
        raise ValueError("the header's tensor fingerprint does not match the indices")
    flat = torch.cat([k.reshape(-1) for k in update.indices.values()]) if update.indices else torch.zeros(0, dtype=torch.int64)
    if flat.numel() and int(flat.abs().max()) > header.bound:
        raise ValueError("an index lies outside the table bound")
    coder = constriction.stream.stack.AnsCoder()
    if flat.numel():
        coder.encode_reverse((flat + header.bound).numpy().astype(np.int32), _table(header))
    stream = words_to_bytes(coder.get_compressed())
    head = json.dumps(header.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode("utf-8")
    body = struct.pack("<BI", FORMAT_VERSION, len(head)) + head + struct.pack("<I", len(stream)) + stream
    return MAGIC + body + struct.pack("<I", zlib.crc32(body))


def read_payload_header(data: bytes, source: str | Path | None = None) -> PayloadHeader:
    """Check framing and CRC, return the header (no symbols decoded)."""
    return _split(data, source)[0]


def _split(data: bytes, source: str | Path | None) -> tuple[PayloadHeader, bytes]:
    if len(data) < 4 or data[:4] != MAGIC:
        raise BitstreamError(source, "not an adaptjobs weight payload (wrong magic bytes)")
    if len(data) < 4 + 5 + 4 + 4:
        raise BitstreamError(source, "truncated payload (shorter than its fixed fields)")
    version, hlen = struct.unpack_from("<BI", data, 4)
    if version != FORMAT_VERSION:
        raise BitstreamError(source, f"payload format version {version} is not supported (this adaptjobs reads {FORMAT_VERSION})")
    header_end = 9 + hlen
    if len(data) < header_end + 4:
        raise BitstreamError(source, "truncated payload (header cut off)")
    (slen,) = struct.unpack_from("<I", data, header_end)
    stream_end = header_end + 4 + slen
    if len(data) < stream_end + 4:
        raise BitstreamError(source, f"truncated payload ({len(data)} bytes, the header announces {stream_end + 4})")
    if len(data) > stream_end + 4:
        raise BitstreamError(source, f"{len(data) - stream_end - 4} unexpected bytes after the payload")
    (crc,) = struct.unpack_from("<I", data, stream_end)
    if zlib.crc32(data[4:stream_end]) != crc:
        raise BitstreamError(source, "payload CRC mismatch (corrupted)")
    try:
        header = PayloadHeader.model_validate(json.loads(data[9:header_end].decode("utf-8")))
    except (ValueError, ValidationError) as exc:
        raise BitstreamError(source, f"invalid payload header ({str(exc).splitlines()[0]})") from None
    return header, data[header_end + 4: stream_end]


def decode_payload(data: bytes, base_weights_sha256: str,
                   shapes_for: Callable[[PayloadHeader], dict[str, tuple[int, ...]]],
                   source: str | Path | None = None) -> WeightUpdate:
    """Parse and decode a payload made for the base model with ``base_weights_sha256``.

    ``shapes_for(header)`` rebuilds the coded tensors' names and shapes (in coding order) from the base
    model and ``header.structure``; it is called only after the base model and the framing are checked."""
    header, stream = _split(data, source)
    if header.base_weights_sha256 != base_weights_sha256:
        raise BitstreamError(source, f"payload was made for another base model (sha256 {header.base_weights_sha256[:12]}), "
                                     f"not for sha256 {base_weights_sha256[:12]}")
    shapes = shapes_for(header)
    if tensor_list_sha256(shapes) != header.tensors_sha256:
        raise BitstreamError(source, f"payload tensors do not match the {header.method} update this base model gives "
                                     f"for {json.dumps(header.structure, sort_keys=True)}")
    counts = [int(np.prod(shape, dtype=np.int64)) for shape in shapes.values()]
    total = sum(counts)
    words = bytes_to_words(stream, "payload stream")
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = coder.decode(_table(header), total) if total else np.zeros(0, dtype=np.int32)
        leftover = not coder.is_empty()
    except BaseException as exc:  # constriction panics are BaseExceptions
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise BitstreamError(source, f"payload stream does not decode ({exc})") from None
    if leftover:
        raise BitstreamError(source, "payload stream has data left over after decoding (corrupted)")
    flat = torch.from_numpy(np.asarray(symbols, dtype=np.int64)) - header.bound
    indices, offset = {}, 0
    for (name, shape), count in zip(shapes.items(), counts):
        indices[name] = flat[offset: offset + count].reshape(shape).clone()
        offset += count
    return WeightUpdate(header, indices)
