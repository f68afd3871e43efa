"""The weight payload: grid indices of a weight update, entropy-coded under the spike-and-slab prior.

Format 5 (written; integers little-endian)::

    magic    2 bytes  b"AW"
    header   34 bytes for decoder-lora: version u8 = 5, then binary fields (workers/adapt/payload_header.py):
                      base id (8 bytes of sha256), method id, structure, prior (preset id or 4 x f32),
                      bound, tensor fingerprint (4 bytes)
    stream   the rest ANS words (uint32, little-endian) of all grid indices, one Categorical table; the
                      last word's trailing zero bytes are left out (the decoder puts them back: 1.5
                      bytes saved on average, the top word of an ANS state is small more often than not)
    crc      u32      CRC32 of everything from version to the end of the stream

The stream's length is what lies between the header and the CRC: no length field. Format 4 is format 5
without decoder-lora's biases flag (ranks >= 1): its payloads decode as ``biases: false``. Formats 2 and 3
(magic ``AJWP``, a ~300-byte JSON header; workers/adapt/payload_json.py) still decode (READABLE_VERSIONS).

The header carries no tensor names or shapes: the decoder rebuilds the list from the base model and the
header's ``structure`` and checks it against the fingerprint, which covers the method and the structure
options too, so a payload whose ``init_seed`` was changed is refused, not decoded into other weights. The
decoder refuses another base model, another tensor list, truncation, trailing bytes and CRC mismatches
before it decodes a single symbol, and every header field is bounded before anything is built from it
(ranks 1..MAX_LORA_RANK, counts, seeds, bound, a positive finite prior). Nothing is pickled. The same
update gives the same bytes.
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

from schemas.adapt import PayloadHeader, WeightPrior
from workers.adapt import payload_header, payload_json
from workers.adapt.prior import coding_probabilities
from workers.codec.entropy_coding import bytes_to_words, words_to_bytes
from workers.errors import BitstreamError, InputError, exception_line

MAGIC = b"AW"
LEGACY_MAGIC = payload_json.MAGIC  # b"AJWP": formats 2 and 3
FORMAT_VERSION = payload_header.VERSION  # 5: decoder-lora biases; 4: binary header; 3: JSON, method in fingerprint
READABLE_VERSIONS = (*payload_json.VERSIONS, *payload_header.READ_VERSIONS)
CRC_BYTES = 4


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
    which changes the decoded weights without changing any shape). Format 4 sends its first 8 digits."""
    tensors = [[name, list(shape)] for name, shape in shapes.items()]
    content = tensors if method is None else {"method": method, "structure": structure or {}, "tensors": tensors}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _fingerprint(header: PayloadHeader, shapes: dict[str, tuple[int, ...]], version: int = FORMAT_VERSION) -> str:
    if version == 2:
        return tensor_list_sha256(shapes)
    structure = header.structure
    if version < 5:  # the writer knew no option format 5 added: its fingerprint does not cover them
        added = payload_header.ADDED_IN_FORMAT_5.get(header.method, {})
        structure = {key: value for key, value in structure.items() if key not in added}
    full = tensor_list_sha256(shapes, header.method, structure)
    return full if version == 3 else full[: 2 * payload_header.FINGERPRINT_BYTES]


def make_header(base_weights_sha256: str, method: str, structure: dict, prior: WeightPrior,
                indices: dict[str, torch.Tensor], fit_prior: bool = False) -> PayloadHeader:
    """The format-4 header of ``indices``: the base's 8-byte id, the prior as it travels
    (payload_header.transmitted_prior: a preset, or float32 values both sides build the same table from).
    With ``fit_prior`` the coding table is :func:`fitted_coding_prior` (same grid, so the same weights)."""
    bound = max([1] + [int(k.abs().max()) for k in indices.values() if k.numel()])
    if fit_prior:
        prior = fitted_coding_prior(prior, indices, bound)
    shapes = {n: tuple(k.shape) for n, k in indices.items()}
    header = PayloadHeader(base_id=base_weights_sha256[: 2 * payload_header.BASE_ID_BYTES], method=method,
                           structure=structure, prior=payload_header.transmitted_prior(prior), bound=bound,
                           tensors_fingerprint="0" * 2 * payload_header.FINGERPRINT_BYTES)
    return header.model_copy(update={"tensors_fingerprint": _fingerprint(header, shapes)})


# Coding priors tried by fitted_coding_prior (same grid as training's): the spike's weight alpha on a log
# grid, the spike's std as a fraction of the grid, the slab's std in grid cells.
FIT_ALPHAS = tuple(10.0 ** (e / 4) for e in range(0, 33))  # 1 .. 1e8
FIT_SPIKE_CELLS = (1 / 6, 1 / 8, 1 / 12, 1 / 24)
FIT_SLAB_CELLS = (1.0, 2.0, 4.0, 8.0, 25.0)


def coded_bits(prior: WeightPrior, counts: np.ndarray) -> float:
    """Ideal bits of indices -bound..bound occurring ``counts`` times (len 2*bound+1) under ``prior``'s table."""
    probabilities = coding_probabilities(prior, (len(counts) - 1) // 2)
    used = counts > 0
    return float(-(counts[used] * np.log2(probabilities[used])).sum())


def fitted_coding_prior(prior: WeightPrior, indices: dict[str, torch.Tensor], bound: int) -> WeightPrior:
    """The prior (as it travels) that codes ``indices`` in the fewest bits, header bytes included.

    Why: the training prior's zero bin is not what the payload needs. With the decoder-lora preset (spike
    std = grid/6, alpha 1000) a zero index costs 0.0053 bits (the spike's mass beyond half a cell leaks into
    the +-1 bins): 1777 bits for the 334k zeros of an untrained carphone LoRA, 222 of its 291 bytes. A table
    fitted to the few non-zero indices the update really has costs a fraction of that. The grid is kept (it
    fixes the decoded weights); spike, slab and alpha are searched on FIT_* grids; an explicit prior costs
    16 header bytes more than a preset, which the comparison counts. Deterministic: the first minimum wins.
    """
    flat = torch.cat([k.reshape(-1) for k in indices.values()]) if indices else torch.zeros(0, dtype=torch.int64)
    counts = np.bincount((flat + bound).numpy(), minlength=2 * bound + 1).astype(np.float64)
    best = payload_header.transmitted_prior(prior)
    best_bits = coded_bits(best, counts) + 8 * payload_header.prior_bytes(best)
    for slab in FIT_SLAB_CELLS:
        for spike in FIT_SPIKE_CELLS:
            for alpha in FIT_ALPHAS:
                candidate = payload_header.transmitted_prior(WeightPrior(
                    grid=prior.grid, slab_std=slab * prior.grid, spike_std=spike * prior.grid, alpha=alpha))
                bits = coded_bits(candidate, counts) + 8 * payload_header.prior_bytes(candidate)
                if bits < best_bits:
                    best, best_bits = candidate, bits
    return best


def _table(header: PayloadHeader):
    return constriction.stream.model.Categorical(coding_probabilities(header.prior, header.bound), perfect=False)


def encode_payload(update: WeightUpdate) -> bytes:
    """Format-4 bytes of ``update`` (its header from :func:`make_header`)."""
    header = update.header
    if header.tensors_fingerprint != _fingerprint(header, {n: tuple(k.shape) for n, k in update.indices.items()}):
        raise ValueError("the header's tensor fingerprint does not match the indices")
    flat = torch.cat([k.reshape(-1) for k in update.indices.values()]) if update.indices else torch.zeros(0, dtype=torch.int64)
    if flat.numel() and int(flat.abs().max()) > header.bound:
        raise ValueError("an index lies outside the table bound")
    coder = constriction.stream.stack.AnsCoder()
    if flat.numel():
        coder.encode_reverse((flat + header.bound).numpy().astype(np.int32), _table(header))
    body = payload_header.pack_header(header) + _strip_last_word(words_to_bytes(coder.get_compressed()))
    return MAGIC + body + struct.pack("<I", zlib.crc32(body))


def _strip_last_word(stream: bytes) -> bytes:
    """Drop the trailing zero bytes of the last 32-bit word (at most 3: whole words keep their count)."""
    keep = len(stream)
    while keep > max(0, len(stream) - 3) and stream[keep - 1] == 0:
        keep -= 1
    return stream[:keep]


def read_payload_header(data: bytes, source: str | Path | None = None) -> PayloadHeader:
    """Check framing and CRC, return the header (no symbols decoded)."""
    return _split(data, source)[0]


def payload_layout(data: bytes, source: str | Path | None = None) -> dict[str, int]:
    """Where a payload's bytes go: {"version", "header" (magic, fields, CRC: what a payload costs besides
    the coded weights), "stream"}, after every framing check."""
    _, stream, version = _split(data, source)
    return {"version": version, "header": len(data) - len(stream), "stream": len(stream)}


def _split(data: bytes, source: str | Path | None) -> tuple[PayloadHeader, bytes, int]:
    """(header, stream bytes, format version) after every framing check."""
    if data[: len(LEGACY_MAGIC)] == LEGACY_MAGIC:
        if len(data) > len(LEGACY_MAGIC) and data[len(LEGACY_MAGIC)] not in payload_json.VERSIONS:
            _refuse_version(data[len(LEGACY_MAGIC)], LEGACY_MAGIC, payload_json.VERSIONS, source)
        header, stream, version = payload_json.split_json_payload(data, source)
        return _with_added_options(header, source), stream, version
    if data[: len(MAGIC)] != MAGIC:
        raise BitstreamError(source, "not an adaptjobs weight payload (wrong magic bytes)")
    if len(data) > len(MAGIC) and data[len(MAGIC)] not in payload_header.READ_VERSIONS:
        _refuse_version(data[len(MAGIC)], MAGIC, payload_header.READ_VERSIONS, source)
    if len(data) < len(MAGIC) + 1 + CRC_BYTES:
        raise BitstreamError(source, f"truncated payload ({len(data)} bytes)")
    (crc,) = struct.unpack_from("<I", data, len(data) - CRC_BYTES)
    if zlib.crc32(data[len(MAGIC): -CRC_BYTES]) != crc:
        raise BitstreamError(source, "payload CRC mismatch (corrupted, truncated or extended)")
    header, stream_start = payload_header.unpack_header(data[:-CRC_BYTES], len(MAGIC), source)
    return header, data[stream_start: -CRC_BYTES], data[len(MAGIC)]


def _with_added_options(header: PayloadHeader, source: str | Path | None) -> PayloadHeader:
    """A format 2/3 header with the values of the structure options added later (ADDED_IN_FORMAT_5) that
    its payload implies; a JSON structure that names one itself is refused (no such writer existed)."""
    added = payload_header.ADDED_IN_FORMAT_5.get(header.method, {})
    named = sorted(set(added) & set(header.structure))
    if named:
        raise BitstreamError(source, f"invalid payload header (structure.{named[0]} is a format-5 option)")
    return header.model_copy(update={"structure": header.structure | added}) if added else header


def _refuse_version(version: int, magic: bytes, versions: tuple[int, ...], source: str | Path | None):
    readable = ", ".join(map(str, versions))
    raise BitstreamError(source, f"payload format version {version} is not supported (this adaptjobs reads {readable} "
                                 f"after the magic {magic.decode()}, versions {', '.join(map(str, READABLE_VERSIONS))} in all)")


def decode_payload(data: bytes, base_weights_sha256: str,
                   shapes_for: Callable[[PayloadHeader], dict[str, tuple[int, ...]]],
                   source: str | Path | None = None) -> WeightUpdate:
    """Parse and decode a payload made for the base model with ``base_weights_sha256``.

    ``shapes_for(header)`` rebuilds the coded tensors' names and shapes (in coding order) from the base
    model and ``header.structure``; it is called only after the base model and the framing are checked."""
    header, stream, version = _split(data, source)
    if not header.made_for(base_weights_sha256):
        raise BitstreamError(source, f"payload was made for another base model (sha256 {header.base_id[:12]}...), "
                                     f"not for sha256 {base_weights_sha256[:12]}...")
    shapes = shapes_for(header)
    if _fingerprint(header, shapes, version) != header.tensors_fingerprint:
        raise BitstreamError(source, f"payload tensors do not match the {header.method} update this base model gives "
                                     f"for {json.dumps(header.structure, sort_keys=True)}")
    counts = [int(np.prod(shape, dtype=np.int64)) for shape in shapes.values()]
    if version in payload_header.READ_VERSIONS:
        stream += bytes(-len(stream) % 4)  # the zero bytes the writer left out (formats 4 and 5)
    symbols = _decode_symbols(stream, header, sum(counts), source)
    flat = torch.from_numpy(np.asarray(symbols, dtype=np.int64)) - header.bound
    indices, offset = {}, 0
    for (name, shape), count in zip(shapes.items(), counts):
        indices[name] = flat[offset: offset + count].reshape(shape).clone()
        offset += count
    return WeightUpdate(header, indices)


def _decode_symbols(stream: bytes, header: PayloadHeader, total: int, source) -> np.ndarray:
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
    return symbols
