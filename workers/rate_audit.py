"""Estimated against coded bits of an SSF stream, per frame and per stream (`adaptjobs info --rates`).

Training (pretraining, encoder adapters, decoder updates) minimises an ESTIMATE of the rate: -log2 of the
model's likelihoods. The coder writes real bits with the scales snapped to the 64-entry table, fixed-point
probabilities (every symbol at least ~2^-24), ANS overhead and (format 4) escapes. This walks a stream as the
decoder does and, for every latent stream (I-frame y/z, motion y/z, residual y/z), reports three numbers:

- ``coded``: 8 * the stream's bytes (what the rate is made of);
- ``table``: the information content of the decoded symbols under the coding tables (snapped scales, the
  coder's probability floor, escapes); coded - table is the entropy coder's own overhead (its state words);
- ``estimated``: what eval-mode training with gop-adapters' default rate proxy (``coder``) computes for the
  same latents: the likelihood of the decoded y_hat under the table's scale, of z_hat under the entropy
  bottleneck, both with the coder's probability floor. table - estimated is what the tables' tails and
  escapes add. (Issue 14: the likelihoods under the continuous scales without the floor, which training used
  before, put mobile q1's P-frames 3.2% above their coded bits; this estimate puts them 0.2% above.)

It needs only the stream and the model (plus a decoder update's payload): the numbers describe what was
coded, whichever encoder produced it. :func:`carriage_totals` adds the bytes that are not latent symbols, so
the totals account for every byte of the unit (what the encoder's send decision counts): the stream's
header (with a payload it names the method and the payload's sha256: carphone q4 on eval-dev, 334 JSON bytes
for decoder-lora against 242 for `none`), the frame records'
framing, and the payload's header (magic, fields, CRC) and coded weights. Training estimates none of them
except the coded weights (the prior's bits), which the decoder-update methods price with the real payload.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from workers.bitstream import FRAME_INTRA, latents_escaped, unpack
from workers.codec.entropy_coding import FactorizedTable, GaussianTable, gaussian_table
from workers.codec.hyperprior import Hyperprior
from workers.codec.ssf import EntropyTables, ScaleSpaceFlow, padded_size
from workers.errors import BitstreamError
from workers.limits import capped_threads

# The entropy coder's fixed cost per stream, beyond the information content: constriction's ANS flushes its
# 32-bit head state and streams are whole 32-bit words. Mean coded - table bits per stream measured on the
# base q1 stream of 24 carphone frames (`adaptjobs encode .../carphone_176x144_120f.mp4 --quality 1 --frames 24`
# then `adaptjobs info --rates`): 31 (motion y), 36 (motion z), 36 (residual y), 38 (residual z), 40 (I z).
ANS_STREAM_BITS = 32

STREAM_NAMES = {FRAME_INTRA: (("intra", "y"), ("intra", "z")),
                1: (("motion", "y"), ("motion", "z"), ("residual", "y"), ("residual", "z"))}


@dataclass
class StreamRate:
    """One latent stream of one frame; bits (not bytes)."""

    frame: int
    latent: str       # intra, motion or residual
    stream: str       # y or z
    coded: int
    table: float
    estimated: float
    escaped: int      # latent symbols outside their table range (y only)


def _bits(likelihoods: torch.Tensor) -> float:
    return float(-torch.log(likelihoods.double()).sum() / math.log(2))


@torch.no_grad()
def _audit_latent(hyperprior: Hyperprior, y_stream: bytes, z_stream: bytes, z_table: FactorizedTable,
                  latents: GaussianTable, z_shape, y_size, what: str) -> tuple[torch.Tensor, list[tuple]]:
    """Decode one latent as Hyperprior.decompress does; returns y_hat and (stream, coded, table, estimated,
    escaped) for y and z."""
    z_symbols = z_table.decode(z_stream, z_shape, what=f"{what} hyper-latents")
    z_hat = z_table.dequantize(z_symbols)
    means, indexes = hyperprior.latent_parameters(z_hat, y_size)
    height, width = y_size
    scales = hyperprior.hyper_decoder_scale(z_hat)[..., :height, :width]
    y_symbols = latents.decode(y_stream, indexes, what=f"{what} latents")
    y_hat = y_symbols.to(torch.float32) + means
    y_row = ("y", 8 * len(y_stream), latents.ideal_bits(y_symbols, indexes),
             _bits(hyperprior.gaussian_conditional.coder_likelihood(y_hat, scales, means)),
             latents.escape_count(y_symbols, indexes))
    z_row = ("z", 8 * len(z_stream), z_table.ideal_bits(z_symbols),
             _bits(hyperprior.entropy_bottleneck.likelihood(z_hat, coder_floor=True)), 0)
    return y_hat, [y_row, z_row]


@torch.no_grad()
def stream_rates(data: bytes, model: ScaleSpaceFlow, tables: EntropyTables,
                 source: str | Path | None = None) -> list[StreamRate]:
    """Per frame and latent stream of ``data`` (already bound to ``model`` by the caller): coded, table and
    estimated bits (module docstring)."""
    from workers.video_codec import torch_threads

    header, chunks = unpack(data, source)
    if not latents_escaped(data):
        tables = replace(tables, latents=gaussian_table(escapes=False))
    padded = padded_size(header.height, header.width)
    z_shape, y_size = model.hyper_latent_shape(*padded), model.latent_size(*padded)
    rows, x_ref = [], None
    with torch_threads(capped_threads(header.threads, torch.get_num_threads())):
        for index, chunk in enumerate(chunks):
            try:
                if chunk.frame_type == FRAME_INTRA:
                    y_hat, found = _audit_latent(model.img_hyperprior, *chunk.streams, tables.intra, tables.latents,
                                                 z_shape, y_size, "I-frame")
                    x_ref = model.img_decoder(y_hat).clamp_(0.0, 1.0)
                else:
                    y_motion, found = _audit_latent(model.motion_hyperprior, *chunk.streams[:2], tables.motion,
                                                    tables.latents, z_shape, y_size, "motion")
                    y_res, res_rows = _audit_latent(model.res_hyperprior, *chunk.streams[2:], tables.residual,
                                                    tables.latents, z_shape, y_size, "residual")
                    found += res_rows
                    x_pred = model.predict(x_ref, y_motion)
                    x_ref = model.reconstruct_inter(x_pred, y_res, y_motion).clamp_(0.0, 1.0)
            except BitstreamError as exc:
                raise BitstreamError(source, f"frame {index}: {exc.cause}") from None
            for (latent, _), row in zip(STREAM_NAMES[chunk.frame_type], found, strict=True):
                rows.append(StreamRate(index, latent, *row))
    return rows


def rate_totals(rows: list[StreamRate]) -> dict[str, dict[str, float]]:
    """Sums per latent stream ("motion y", ...): coded, table, estimated bits, escaped symbols, and
    coded / estimated."""
    totals: dict[str, dict[str, float]] = {}
    for row in rows:
        entry = totals.setdefault(f"{row.latent} {row.stream}", {"coded": 0, "table": 0.0, "estimated": 0.0,
                                                                 "escaped": 0})
        for key in ("coded", "table", "estimated", "escaped"):
            entry[key] += getattr(row, key)
    for entry in totals.values():
        entry["coded_over_estimated"] = entry["coded"] / entry["estimated"] if entry["estimated"] else float("nan")
    return totals


def carriage_totals(data: bytes, rows: list[StreamRate], payload: bytes | None,
                    source: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Coded bits of what is not a latent stream, in :func:`rate_totals`' shape (table and estimated 0): the
    stream header, the frame records' framing (type, count, lengths, CRC), and with a payload its header
    and its coded weights (workers/adapt/payload.py ``payload_layout``)."""
    from workers.adapt.payload import payload_layout
    from workers.bitstream import unpack_header

    _, frames_start = unpack_header(data, source)
    coded = {"stream header": 8 * frames_start,
             "frame records": 8 * (len(data) - frames_start) - sum(row.coded for row in rows)}
    if payload is not None:
        layout = payload_layout(payload, source)
        coded.update({"payload header": 8 * layout["header"], "payload weights": 8 * layout["stream"]})
    return {name: {"coded": bits, "table": 0.0, "estimated": 0.0, "escaped": 0, "coded_over_estimated": float("nan")}
            for name, bits in coded.items()}


def rates_json(rows: list[StreamRate]) -> dict:
    return {"frames": [asdict(r) for r in rows], "totals": rate_totals(rows)}


def stream_rates_of(stream_path: str | Path, model: str | None = None, payload_path: str | Path | None = None):
    """`adaptjobs info --rates`: (rows, totals) for an SSF stream or a unit folder holding one, with the
    model and payload found as `adaptjobs decode` finds them (workers.encode_job.decode_file). The totals'
    coded bits add up to 8 x (stream bytes + payload bytes)."""
    from workers.bitstream import unpack_header
    from workers.codecs.ssf import SSFCodec
    from workers.decoder import check_payload_binding, checked_model, decoder_model
    from workers.encode_job import unit_stream
    from workers.errors import InputError
    from workers.limits import MAX_BITSTREAM_BYTES, MAX_PAYLOAD_BYTES, read_regular_file
    from workers.run_layout import PAYLOAD_SUFFIX

    stream_path = unit_stream(Path(stream_path))
    if stream_path.suffix != SSFCodec.suffix:
        raise InputError(stream_path, f"--rates reads SSF streams ({SSFCodec.suffix}), not {stream_path.suffix!r} files")
    data = read_regular_file(stream_path, "bitstream", MAX_BITSTREAM_BYTES)
    codec = SSFCodec.for_stream(data, stream_path, model)
    header, _ = unpack_header(data, stream_path)
    beside = stream_path.with_suffix(PAYLOAD_SUFFIX)
    if payload_path is None and header.payload_sha256 is not None and beside.exists():
        payload_path = beside
    payload = read_regular_file(payload_path, "payload", MAX_PAYLOAD_BYTES) if payload_path is not None else None
    checked_model(codec.loaded, header, stream_path)
    check_payload_binding(header, payload, stream_path, payload_path)
    decoder = decoder_model(codec.loaded, payload, payload_path)
    rows = stream_rates(data, decoder, decoder.entropy_tables(), stream_path)
    return rows, {**rate_totals(rows), **carriage_totals(data, rows, payload, stream_path)}
