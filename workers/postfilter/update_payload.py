"""The coded post-filter update: grid indices under the spike-and-slab prior, in a compact binary frame.

Why not workers/adapt/payload.py's format: its header is UTF-8 JSON (full sha256 in hex, the prior's
field names, the method and structure as text), ~300 bytes. A post-filter update of a CIF clip codes in a
few hundred bytes and competes with a stream of a few KB, so that header alone would decide most units
against sending (measured: tests/test_postfilter_adapt.py::test_compact_header_vs_json_header). The
coding itself is the same: one constriction ``Categorical`` table over -bound..bound built by
workers.adapt.prior.coding_probabilities, all indices in one vectorised call.

Byte layout (integers little-endian, 43 bytes besides the ANS words)::

    magic            4   b"AJFU"
    version          u8  FORMAT_VERSION
    parameterisation u8  workers.postfilter.update.PARAMETERISATION_IDS
    rank             u8  LoRA rank (0 otherwise)
    init_seed        u32 seed of LoRA's A initialisation (0 otherwise)
    base_sha256      8   first 8 bytes of the base filter's weights sha256: binds the update to it
    prior            4 x f32  grid, slab_std, spike_std, alpha (the encoder trains with these float32 values)
    bound            u32 K: the table covers indices -K..K (at most MAX_BOUND)
    stream           ANS words (uint32) of every coded tensor's indices, row-major, in coding order
    crc              u32 CRC32 of everything from version to the end of the stream

The tensor list (names, shapes, order) is rebuilt by the decoder from the base filter and the structure.
Nothing is pickled; a wrong magic, version, base, structure, length or CRC is refused before decoding.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import constriction
import numpy as np
import torch

from schemas.adapt import WeightPrior
from workers.adapt.prior import coding_probabilities
from workers.codec.entropy_coding import bytes_to_words, words_to_bytes
from workers.errors import BitstreamError
from workers.postfilter.update import PARAMETERISATION_IDS, UpdateStructure

MAGIC = b"AJFU"
FORMAT_VERSION = 1
MAX_BOUND = 1 << 16  # the decoder builds a table of 2K+1 float64: bounded memory for hostile headers
_FIELDS = struct.Struct("<BBBI8s4fI")
FIXED_BYTES = len(MAGIC) + _FIELDS.size + 4  # 43: every byte besides the ANS words
_NAMES = {number: name for name, number in PARAMETERISATION_IDS.items()}


@dataclass
class CodedUpdate:
    """Grid indices (int64) per coded tensor, in coding order, with what they were coded under."""

    structure: UpdateStructure
    prior: WeightPrior
    indices: dict[str, torch.Tensor]

    def values(self) -> dict[str, torch.Tensor]:
        """index * grid in float32: the update the decoder applies (and the encoder evaluated)."""
        return {name: k.to(torch.float32) * self.prior.grid for name, k in self.indices.items()}


def transmitted_prior(prior: WeightPrior) -> WeightPrior:
    """The prior as the payload carries it (float32 fields, the spike explicit): train and code with this
    one so encoder and decoder use bit-identical grids and tables."""
    grid, slab, spike, alpha = (float(np.float32(v)) for v in (prior.grid, prior.slab_std, prior.spike, prior.alpha))
    return WeightPrior(grid=grid, slab_std=slab, spike_std=spike, alpha=alpha)


def _table(prior: WeightPrior, bound: int):
    return constriction.stream.model.Categorical(coding_probabilities(prior, bound), perfect=False)


def encode_update(update: CodedUpdate, base_sha256: str) -> bytes:
    """The payload bytes of ``update`` for the base filter whose weights hash to ``base_sha256`` (hex)."""
    prior = transmitted_prior(update.prior)
    if prior != update.prior:
        raise ValueError("code with transmitted_prior(prior): the decoder only sees the float32 values")
    flat = torch.cat([k.reshape(-1) for k in update.indices.values()]).to(torch.int64)
    bound = max(1, int(flat.abs().max()) if flat.numel() else 1)
    if bound > MAX_BOUND:
        raise ValueError(f"an update index of {bound} exceeds the payload's table bound {MAX_BOUND}")
    coder = constriction.stream.stack.AnsCoder()
    if flat.numel():
        coder.encode_reverse((flat + bound).numpy().astype(np.int32), _table(prior, bound))
    s = update.structure
    fields = _FIELDS.pack(FORMAT_VERSION, PARAMETERISATION_IDS[s.parameterisation], s.rank, s.init_seed,
                          bytes.fromhex(base_sha256)[:8], prior.grid, prior.slab_std, prior.spike, prior.alpha, bound)
    body = fields + words_to_bytes(coder.get_compressed())
    return MAGIC + body + struct.pack("<I", zlib.crc32(body))


def _parse_fields(data: bytes, base_sha256: str, source) -> tuple[UpdateStructure, WeightPrior, int, bytes]:
    if len(data) < 4 or data[:4] != MAGIC:
        raise BitstreamError(source, "not an adaptjobs post-filter update (wrong magic bytes)")
    if len(data) < 4 + _FIELDS.size + 4:
        raise BitstreamError(source, f"truncated post-filter update ({len(data)} bytes, the fixed fields need {4 + _FIELDS.size + 4})")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[4:-4]) != crc:
        raise BitstreamError(source, "post-filter update CRC mismatch (corrupted or truncated)")
    version, number, rank, init_seed, base, grid, slab, spike, alpha, bound = _FIELDS.unpack_from(data, 4)
    if version != FORMAT_VERSION:
        raise BitstreamError(source, f"post-filter update format {version} is not supported (this adaptjobs reads {FORMAT_VERSION})")
    if base != bytes.fromhex(base_sha256)[:8]:
        raise BitstreamError(source, f"post-filter update was made for another base filter (sha256 {base.hex()}...), "
                                     f"not for {base_sha256[:16]}...")
    try:
        structure = UpdateStructure(_NAMES[number], rank, init_seed)
        prior = WeightPrior(grid=grid, slab_std=slab, spike_std=spike, alpha=alpha)
    except (KeyError, ValueError) as exc:
        raise BitstreamError(source, f"invalid post-filter update header ({str(exc).splitlines()[0]})") from None
    if not 1 <= bound <= MAX_BOUND:
        raise BitstreamError(source, f"post-filter update table bound {bound} is outside 1..{MAX_BOUND}")
    return structure, prior, bound, data[4 + _FIELDS.size: -4]


def decode_update(data: bytes, base_sha256: str,
                  shapes_for: Callable[[UpdateStructure], dict[str, tuple[int, ...]]],
                  source: str | Path | None = None) -> CodedUpdate:
    """Parse and decode a payload made for the base filter with ``base_sha256``; ``shapes_for(structure)``
    rebuilds the coded tensors' names and shapes in coding order (called after framing and base are checked).
    Any defect raises a one-line BitstreamError naming ``source``."""
    structure, prior, bound, stream = _parse_fields(data, base_sha256, source)
    shapes = shapes_for(structure)
    counts = [int(np.prod(shape, dtype=np.int64)) for shape in shapes.values()]
    try:
        words = bytes_to_words(stream, "post-filter update stream")
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = coder.decode(_table(prior, bound), sum(counts)) if sum(counts) else np.zeros(0, dtype=np.int32)
        leftover = not coder.is_empty()
    except BitstreamError as exc:
        raise BitstreamError(source, exc.cause) from None
    except BaseException as exc:  # constriction panics are BaseExceptions
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise BitstreamError(source, f"post-filter update stream does not decode ({exc})") from None
    if leftover:
        raise BitstreamError(source, "post-filter update stream has data left over after decoding (corrupted)")
    flat = torch.from_numpy(np.asarray(symbols, dtype=np.int64)) - bound
    indices, offset = {}, 0
    for (name, shape), count in zip(shapes.items(), counts):
        indices[name] = flat[offset: offset + count].reshape(shape).clone()
        offset += count
    return CodedUpdate(structure, prior, indices)
