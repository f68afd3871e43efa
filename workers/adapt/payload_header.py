"""Payload format 4's binary header: every field fixed-width, bounded and checked before anything is built.

Byte layout after the magic (integers little-endian)::

    version      u8       5 (4 still read)
    base_id      8 bytes  first 8 bytes of the base model's weights sha256
    method       u8       PAYLOAD_METHOD_IDS (assigned by hand, never by order; 0 is no method)
    structure    the method's STRUCTURE_LAYOUTS entry:
                   decoder-lora  variant u8 (LORA_VARIANT_IDS), count u8 (1..MAX_STRUCTURE_ITEMS),
                                 count x rank u16 (0..MAX_LORA_RANK; format 4: 1..), init_seed u32
                                 (< 2^31), then from format 5 biases u8 (0 or 1); not all ranks 0
                                 without biases (an update with no tensor is never written)
                   full-decoder  nothing (every decoder weight: there is nothing to choose)
    prior        u8       PRIOR_PRESETS id, or 0 (EXPLICIT_PRIOR) followed by 4 x f32: grid, slab_std,
                          spike_std, alpha (the values the tables are built from, on both sides)
    bound        u32      K: the table covers grid indices -K..K (1..MAX_BOUND)
    fingerprint  4 bytes  first 4 bytes of the sha256 of the method, structure and tensor list

34 bytes for decoder-lora with its default prior (format 4: 33, no biases byte); with the magic and the
CRC a payload spends 40 bytes besides its coded weights (format 3: 316, its JSON header alone 302). Why each width: 8 bytes of base
hash tell the models adaptjobs ships apart (schemas/side_info.py ``filter_id``: n^2 / 2^65 for n models;
the bitstream's own header still carries the full sha256 of the weights it was coded with). 4 bytes of
fingerprint catch a decoder that rebuilds another tensor list than the encoder coded (a version skew, not
an attacker: a forger could write any fingerprint): a mismatch goes unnoticed with probability 2^-32.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.adapt import PayloadHeader, WeightPrior
from workers.errors import BitstreamError
from workers.limits import MAX_LORA_RANK, MAX_STRUCTURE_ITEMS

VERSION = 5
READ_VERSIONS = (4, 5)  # format 4: decoder-lora without the biases byte, ranks >= 1
# Structure options a format added, with the value every payload of an older format implies: the decoder
# rebuilds an old payload's tensors with these (and its fingerprint leaves them out, as its writer did).
ADDED_IN_FORMAT_5 = {"decoder-lora": {"biases": False}}
BASE_ID_BYTES = 8
FINGERPRINT_BYTES = 4
MAX_BOUND = 1 << 20  # the decoder builds a table of 2K+1 float64 (8 MiB): bounded memory for hostile headers
MAX_SEED = 2**31 - 1
# Hand-kept registries: a number, once written, keeps its meaning forever (old payloads must decode).
PAYLOAD_METHOD_IDS = {"decoder-lora": 1, "full-decoder": 2}
LORA_VARIANT_IDS = {"extended": 1, "repeat": 2}
EXPLICIT_PRIOR = 0
# The priors the encoder codes with by default (the methods' config defaults): sent as one byte instead
# of 17. Exact float64 values: a preset is only used when the prior equals it field for field.
PRIOR_PRESETS = {1: WeightPrior(grid=0.002), 2: WeightPrior(grid=0.001), 3: WeightPrior()}

_FIXED = struct.Struct(f"<B{BASE_ID_BYTES}sB")        # version, base_id, method
_PRIOR_VALUES = struct.Struct("<4f")
_TAIL = struct.Struct(f"<I{FINGERPRINT_BYTES}s")      # bound, fingerprint


class _Fields:
    """Bounds-checked cursor over header bytes: a short read is a one-line BitstreamError."""

    def __init__(self, data: bytes, offset: int, source: str | Path | None, version: int = VERSION):
        self.data, self.pos, self.source, self.version = data, offset, source, version

    def take(self, layout: struct.Struct, what: str) -> tuple:
        if layout.size > len(self.data) - self.pos:
            raise BitstreamError(self.source, f"truncated payload header ({what} needs {layout.size} bytes, "
                                              f"{len(self.data) - self.pos} left)")
        values = layout.unpack_from(self.data, self.pos)
        self.pos += layout.size
        return values

    def refuse(self, what: str):
        raise BitstreamError(self.source, f"invalid payload header ({what})")


@dataclass(frozen=True)
class _LoraLayout:
    """decoder-lora's structure: variant, ranks (first deconv first), init_seed, biases (format 5)."""

    fields = ("variant", "ranks", "init_seed", "biases")

    def pack(self, structure: dict) -> bytes:
        ranks, seed, variant, biases = (list(structure["ranks"]), structure["init_seed"], structure["variant"],
                                        structure["biases"])
        if variant not in LORA_VARIANT_IDS or not 1 <= len(ranks) <= MAX_STRUCTURE_ITEMS \
                or not all(0 <= r <= MAX_LORA_RANK for r in ranks) or not 0 <= seed <= MAX_SEED \
                or not isinstance(biases, bool) or not (biases or any(ranks)):
            raise ValueError(f"decoder-lora structure {structure} is outside the payload's field bounds")
        return struct.pack(f"<BB{len(ranks)}HIB", LORA_VARIANT_IDS[variant], len(ranks), *ranks, seed, int(biases))

    def unpack(self, fields: _Fields) -> dict:
        variant_id, count = fields.take(struct.Struct("<BB"), "the LoRA variant and rank count")
        variants = {number: name for name, number in LORA_VARIANT_IDS.items()}
        if variant_id not in variants:
            fields.refuse(f"LoRA variant id {variant_id} is not one of {sorted(variants)}")
        if not 1 <= count <= MAX_STRUCTURE_ITEMS:
            fields.refuse(f"{count} LoRA ranks, not 1..{MAX_STRUCTURE_ITEMS}")
        ranks = list(fields.take(struct.Struct(f"<{count}H"), f"{count} LoRA ranks"))
        lowest = 0 if fields.version >= 5 else 1
        bad = [r for r in ranks if not lowest <= r <= MAX_LORA_RANK]
        if bad:
            fields.refuse(f"structure.ranks: rank {bad[0]} is outside {lowest}..{MAX_LORA_RANK}")
        (seed,) = fields.take(struct.Struct("<I"), "the LoRA init_seed")
        if seed > MAX_SEED:
            fields.refuse(f"structure.init_seed {seed} is outside 0..2^31-1")
        structure = {"variant": variants[variant_id], "ranks": ranks, "init_seed": seed}
        if fields.version < 5:
            return structure | ADDED_IN_FORMAT_5["decoder-lora"]
        (biases,) = fields.take(struct.Struct("<B"), "the biases flag")
        if biases > 1:
            fields.refuse(f"structure.biases flag {biases} is not 0 or 1")
        if not biases and not any(ranks):
            fields.refuse("structure codes no tensor (every rank 0, biases off)")
        return structure | {"biases": bool(biases)}


@dataclass(frozen=True)
class _EmptyLayout:
    """A method with nothing to choose (full-decoder: every decoder weight)."""

    fields = ()

    def pack(self, structure: dict) -> bytes:
        return b""

    def unpack(self, fields: _Fields) -> dict:
        return {}


STRUCTURE_LAYOUTS = {"decoder-lora": _LoraLayout(), "full-decoder": _EmptyLayout()}


def transmitted_prior(prior: WeightPrior) -> WeightPrior:
    """The prior as format 4 carries it: a preset unchanged, any other prior as float32 values with the spike
    explicit. Encoder and decoder build the coding table from this one, so both see the same numbers."""
    if _preset_id(prior) != EXPLICIT_PRIOR:
        return prior
    grid, slab, spike, alpha = (float(np.float32(v)) for v in (prior.grid, prior.slab_std, prior.spike, prior.alpha))
    return WeightPrior(grid=grid, slab_std=slab, spike_std=spike, alpha=alpha)


def prior_bytes(prior: WeightPrior) -> int:
    """Header bytes ``prior`` takes in format 4: 1 for a preset, 17 for explicit float32 values."""
    return 1 if _preset_id(prior) != EXPLICIT_PRIOR else 1 + _PRIOR_VALUES.size


def _preset_id(prior: WeightPrior) -> int:
    return next((number for number, preset in PRIOR_PRESETS.items() if preset == prior), EXPLICIT_PRIOR)


def pack_header(header: PayloadHeader) -> bytes:
    """The header's bytes from the version on (the caller adds magic, stream and CRC). ValueError when a
    field cannot travel (an encoder bug: make_header builds headers that can)."""
    if header.method not in PAYLOAD_METHOD_IDS:
        raise ValueError(f"method {header.method!r} has no payload id (PAYLOAD_METHOD_IDS)")
    layout = STRUCTURE_LAYOUTS[header.method]
    if set(header.structure) != set(layout.fields):
        raise ValueError(f"{header.method} structure needs exactly {layout.fields}, got {sorted(header.structure)}")
    if header.prior != transmitted_prior(header.prior) or len(header.base_id) != 2 * BASE_ID_BYTES \
            or len(header.tensors_fingerprint) != 2 * FINGERPRINT_BYTES or header.bound > MAX_BOUND:
        raise ValueError("build format-4 headers with make_header (transmitted prior, short ids)")
    preset = _preset_id(header.prior)
    prior = bytes([preset]) + (b"" if preset else _PRIOR_VALUES.pack(
        header.prior.grid, header.prior.slab_std, header.prior.spike, header.prior.alpha))
    return (_FIXED.pack(VERSION, bytes.fromhex(header.base_id), PAYLOAD_METHOD_IDS[header.method])
            + layout.pack(header.structure) + prior + _TAIL.pack(header.bound, bytes.fromhex(header.tensors_fingerprint)))


def unpack_header(data: bytes, offset: int, source: str | Path | None = None) -> tuple[PayloadHeader, int]:
    """Parse the header that starts at ``offset`` (the version byte, one of READ_VERSIONS); (header, offset of
    the stream). Every field is checked against its bounds as it is read; nothing is allocated from a field
    first. A format-4 header's structure gets the ADDED_IN_FORMAT_5 values its payload implies."""
    fields = _Fields(data, offset, source)
    version, base_id, method_id = fields.take(_FIXED, "the version, base id and method")
    if version not in READ_VERSIONS:
        fields.refuse(f"version {version} in a format-{'/'.join(map(str, READ_VERSIONS))} header")
    fields.version = version
    methods = {number: name for name, number in PAYLOAD_METHOD_IDS.items()}
    if method_id not in methods:
        known = ", ".join(f"{n} {name}" for n, name in sorted(methods.items()))
        fields.refuse(f"method id {method_id} is not a payload method (this adaptjobs knows {known})")
    method = methods[method_id]
    structure = STRUCTURE_LAYOUTS[method].unpack(fields)
    prior = _unpack_prior(fields)
    bound, fingerprint = fields.take(_TAIL, "the bound and fingerprint")
    if not 1 <= bound <= MAX_BOUND:
        fields.refuse(f"table bound {bound} is outside 1..{MAX_BOUND}")
    header = PayloadHeader(base_id=base_id.hex(), method=method, structure=structure, prior=prior, bound=bound,
                           tensors_fingerprint=fingerprint.hex())
    return header, fields.pos


def _unpack_prior(fields: _Fields) -> WeightPrior:
    (preset,) = fields.take(struct.Struct("<B"), "the prior id")
    if preset != EXPLICIT_PRIOR:
        if preset not in PRIOR_PRESETS:
            fields.refuse(f"prior id {preset} is not one of {[EXPLICIT_PRIOR, *sorted(PRIOR_PRESETS)]}")
        return PRIOR_PRESETS[preset]
    grid, slab, spike, alpha = fields.take(_PRIOR_VALUES, "the prior's 4 float32 values")
    values = {"grid": grid, "slab_std": slab, "spike_std": spike, "alpha": alpha}
    bad = next((name for name, value in values.items() if not (np.isfinite(value) and value > 0)), None)
    if bad is not None:
        fields.refuse(f"prior.{bad} = {values[bad]:.6g} is not a positive finite number")
    return WeightPrior(**values)
