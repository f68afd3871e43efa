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
header's ``structure`` and checks it against ``tensors_sha256``, which (format 3) fingerprints the method
and the structure options too, so a payload whose ``init_seed`` was changed is refused, not decoded into
other weights. The decoder refuses another base model (sha256), another tensor list, truncation,
trailing bytes and CRC mismatches before it decodes a single symbol. The header is strict JSON (no
duplicate keys, no NaN/Infinity) and its ``structure`` is checked (:func:`check_structure`: ranks
positive and bounded, every integer a non-negative int32) before any tensor is built. Nothing is pickled.
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
from workers.errors import BitstreamError, InputError, exception_line, validation_line
from workers.limits import MAX_HEADER_BYTES, MAX_LORA_RANK, MAX_STRUCTURE_ITEMS
from workers.strict_json import StrictJsonError, loads_strict

MAGIC = b"AJWP"
FORMAT_VERSION = 3  # 3: the fingerprint covers method and structure; 2: tensor list fingerprinted, not sent
READABLE_VERSIONS = (2, 3)  # 2 differs only by what the fingerprint covers
MAX_STRUCTURE_STRING = 64


@dataclass
class WeightUpdate:
    """Grid indices (int64) per coded tensor, with the prior and the context they were coded in."""

    header: PayloadHeader
    indices: dict[str, torch.Tensor]

    def dequantized(self) -> dict[str, torch.Tensor]:
        """index * grid in float32: the update values the decoder applies."""
        return {name: k.to(torch.float32) * self.header.prior.grid for name, k in self.indices.items()}


def tensor_list_sha256(shapes: dict[str, tuple[int, ...]], method: str | None = None,
                       structure: dict | None = None) -> str:
    """Fingerprint of the coded tensors' names and shapes in coding order (16 hex digits); from format 3
    on (``method`` given) it also covers the method and its structure options (e.g. LoRA's init_seed,
    which changes the decoded weights without changing any shape)."""
    tensors = [[name, list(shape)] for name, shape in shapes.items()]
    content = tensors if method is None else {"method": method, "structure": structure or {}, "tensors": tensors}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _fingerprint(header: PayloadHeader, shapes: dict[str, tuple[int, ...]], version: int = FORMAT_VERSION) -> str:
    if version == 2:
        return tensor_list_sha256(shapes)
    return tensor_list_sha256(shapes, header.method, header.structure)


def check_structure(structure: dict, source: str | Path | None = None) -> None:
    """Refuse structure options that could not come from a method config, before anything is built from
    them: at most MAX_STRUCTURE_ITEMS keys and list items, short strings, every integer a non-negative
    int32 (sizes, seeds), every rank in 1..MAX_LORA_RANK (issue 11: ``ranks: [-1]`` crashed tensor
    construction). Nested objects are refused: no method's structure has them."""
    if len(structure) > MAX_STRUCTURE_ITEMS:
        raise BitstreamError(source, f"invalid payload header (structure has {len(structure)} options)")
    for key, value in structure.items():
        items = value if isinstance(value, list) else [value]
        if len(key) > MAX_STRUCTURE_STRING or len(items) > MAX_STRUCTURE_ITEMS:
            raise BitstreamError(source, "invalid payload header (structure option too long)")
        for item in items:
            _check_structure_item(key, item, source)


def _check_structure_item(key: str, item: object, source: str | Path | None) -> None:
    what = f"invalid payload header (structure.{key[:MAX_STRUCTURE_STRING]}"
    if isinstance(item, bool) or (isinstance(item, str) and len(item) <= MAX_STRUCTURE_STRING):
        return
    if not isinstance(item, int):
        raise BitstreamError(source, f"{what} holds a {type(item).__name__}, not a number, string or flag)")
    if not 0 <= item < 2**31:
        raise BitstreamError(source, f"{what} = {item} is outside 0..2^31-1)")
    if key == "ranks" and not 1 <= item <= MAX_LORA_RANK:
        raise BitstreamError(source, f"{what}: rank {item} is outside 1..{MAX_LORA_RANK})")


def make_header(base_weights_sha256: str, method: str, structure: dict, prior: WeightPrior,
                indices: dict[str, torch.Tensor]) -> PayloadHeader:
    bound = max([1] + [int(k.abs().max()) for k in indices.values() if k.numel()])
    shapes = {n: tuple(k.shape) for n, k in indices.items()}
    return PayloadHeader(base_weights_sha256=base_weights_sha256, method=method, structure=structure, prior=prior,
                         bound=bound, tensors_sha256=tensor_list_sha256(shapes, method, structure))


def _table(header: PayloadHeader):
    return constriction.stream.model.Categorical(coding_probabilities(header.prior, header.bound), perfect=False)


def encode_payload(update: WeightUpdate) -> bytes:
    header = update.header
    if header.tensors_sha256 != _fingerprint(header, {n: tuple(k.shape) for n, k in update.indices.items()}):
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


def _split(data: bytes, source: str | Path | None) -> tuple[PayloadHeader, bytes, int]:
    """(header, stream bytes, format version) after every framing check."""
    if len(data) < 4 or data[:4] != MAGIC:
        raise BitstreamError(source, "not an adaptjobs weight payload (wrong magic bytes)")
    if len(data) < 4 + 5 + 4 + 4:
        raise BitstreamError(source, "truncated payload (shorter than its fixed fields)")
    version, hlen = struct.unpack_from("<BI", data, 4)
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise BitstreamError(source, f"payload format version {version} is not supported (this adaptjobs reads {readable})")
    if hlen > MAX_HEADER_BYTES:
        raise BitstreamError(source, f"the payload header claims {hlen} bytes, more than the limit of {MAX_HEADER_BYTES}")
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
        header = PayloadHeader.model_validate(loads_strict(data[9:header_end]))
    except StrictJsonError as exc:
        raise BitstreamError(source, f"invalid payload header ({exc})") from None
    except ValidationError as exc:
        raise BitstreamError(source, f"invalid payload header ({validation_line(exc)})") from None
    check_structure(header.structure, source)
    return header, data[header_end + 4: stream_end], version


def decode_payload(data: bytes, base_weights_sha256: str,
                   shapes_for: Callable[[PayloadHeader], dict[str, tuple[int, ...]]],
                   source: str | Path | None = None) -> WeightUpdate:
    """Parse and decode a payload made for the base model with ``base_weights_sha256``.

    ``shapes_for(header)`` rebuilds the coded tensors' names and shapes (in coding order) from the base
    model and ``header.structure``; it is called only after the base model and the framing are checked."""
    header, stream, version = _split(data, source)
    if header.base_weights_sha256 != base_weights_sha256:
        raise BitstreamError(source, f"payload was made for another base model (sha256 {header.base_weights_sha256[:12]}), "
                                     f"not for sha256 {base_weights_sha256[:12]}")
    shapes = shapes_for(header)
    if _fingerprint(header, shapes, version) != header.tensors_sha256:
        raise BitstreamError(source, f"payload tensors do not match the {header.method} update this base model gives "
                                     f"for {json.dumps(header.structure, sort_keys=True)}")
    counts = [int(np.prod(shape, dtype=np.int64)) for shape in shapes.values()]
    total = sum(counts)
    try:
        words = bytes_to_words(stream, "payload stream")
    except InputError as exc:
        raise BitstreamError(source, exc.cause) from None
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = coder.decode(_table(header), total) if total else np.zeros(0, dtype=np.int32)
        leftover = not coder.is_empty()
    except BaseException as exc:  # constriction panics are BaseExceptions
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise BitstreamError(source, f"payload stream does not decode ({exception_line(exc, 160)})") from None
    if leftover:
        raise BitstreamError(source, "payload stream has data left over after decoding (corrupted)")
    flat = torch.from_numpy(np.asarray(symbols, dtype=np.int64)) - header.bound
    indices, offset = {}, 0
    for (name, shape), count in zip(shapes.items(), counts):
        indices[name] = flat[offset: offset + count].reshape(shape).clone()
        offset += count
    return WeightUpdate(header, indices)
