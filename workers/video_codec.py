"""Code a whole sequence with the base codec: frames -> bitstream bytes -> frames.

The encoder reconstructs every frame from the symbols it actually wrote, with the same functions the
decoder runs, and P-frames reference that reconstruction, so ``decode_sequence(encode_sequence(...))``
returns the encoder's frames bit for bit on the same machine and software. The header records the
encoder's torch thread count and the decoder runs with it: CPU convolutions split their sums by thread,
so a decoder with another count differs in the last bit of some pixels (and P-frames carry it on). The
count is capped to the decoder's cores (workers/limits.capped_threads): a decoder with fewer cores than
the encoder had may then differ in the last bit.

Device (workers/device.py): the transforms run on the model's device, the parse path on the CPU. A
stream coded with its transforms on an accelerator records the device kind in its header and a CPU
thread count of PARSE_THREADS_ON_ACCELERATOR (1: the CPU only parses there, and every decoder can match 1
thread exactly); frames and reconstructions are handed out on the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from schemas.bitstream import BitstreamHeader
from schemas.results import FrameTypeBits
from workers.bitstream import FRAME_INTER, FRAME_INTRA, FrameChunk, latents_escaped, pack, unpack
from workers.codec.entropy_coding import gaussian_table
from workers.codec.hyperprior import CodedLatent
from workers.codec.ssf import EntropyTables, FramePadding, ScaleSpaceFlow
from workers.device import PARSE_THREADS_ON_ACCELERATOR, device_kind, module_device
from workers.errors import BitstreamError
from workers.limits import capped_threads, check_decoded_frame_bytes

LOG = logging.getLogger(__name__)


@dataclass
class EncodedSequence:
    """A coded sequence: the bytes, the encoder's reconstruction (cropped frames (3, H, W)), and the
    coded latents per frame (for rate analysis and tests)."""

    data: bytes
    header: BitstreamHeader
    reconstruction: list[torch.Tensor]
    bits: FrameTypeBits
    coded_latents: list[dict[str, CodedLatent]] = field(default_factory=list)


def encode_sequence(model: ScaleSpaceFlow, tables: EntropyTables, frames: Iterable[torch.Tensor],
                    header: BitstreamHeader, keep_latents: bool = False,
                    inter_encoder: Callable[[int, torch.Tensor], ScaleSpaceFlow] | None = None,
                    intra_encoder: Callable[[int, torch.Tensor], ScaleSpaceFlow] | None = None) -> EncodedSequence:
    """Encode ``header.frame_count`` RGB frames (3, H, W) in [0, 1] of ``header``'s size.

    Encoder-side adaptation: ``intra_encoder(index, x)``, called before each I-frame with its index and
    padded frame (1, 3, H, W), returns the model whose encoder codes it; ``inter_encoder(index, intra_hat)``,
    called after each I-frame with its index and padded reconstruction (1, 3, H, W), returns the model whose
    encoder codes the GoP's P-frames. Their decoder parts must be ``model``'s, so a stock decoder decodes the
    stream.
    """
    device = module_device(model)
    threads = torch.get_num_threads() if device.type == "cpu" else PARSE_THREADS_ON_ACCELERATOR
    recorded = {"threads": threads} | ({} if device.type == "cpu" else {"device": device_kind(device)})
    with torch_threads(threads):  # the parse path's CPU thread count, recorded for the decoder
        return _encode_frames(model, tables, frames, header.model_copy(update=recorded), keep_latents,
                              intra_encoder, inter_encoder, device)


def _encode_frames(model: ScaleSpaceFlow, tables: EntropyTables, frames: Iterable[torch.Tensor],
                   header: BitstreamHeader, keep_latents: bool,
                   intra_encoder: Callable[[int, torch.Tensor], ScaleSpaceFlow] | None,
                   inter_encoder: Callable[[int, torch.Tensor], ScaleSpaceFlow] | None,
                   device: torch.device) -> EncodedSequence:
    padding = FramePadding.of(header.padding, header.height, header.width)
    chunks, reconstruction, latents = [], [], []
    bits = FrameTypeBits()
    x_ref = None
    for index, frame in enumerate(frames):
        if tuple(frame.shape) != (3, header.height, header.width):
            raise ValueError(f"frame {index} has shape {tuple(frame.shape)}, header says 3x{header.height}x{header.width}")
        x = padding.pad(frame.unsqueeze(0).to(device))
        if header.is_intra(index):
            intra_model = model if intra_encoder is None else intra_encoder(index, x)
            x_ref, intra = intra_model.encode_intra(x, tables)
            inter_model = model if inter_encoder is None else inter_encoder(index, x_ref)
            streams, coded = [intra.y_stream, intra.z_stream], {"intra": intra}
            chunks.append(FrameChunk(FRAME_INTRA, streams))
            bits.intra += 8 * sum(map(len, streams))
        else:
            x_ref, motion, residual = inter_model.encode_inter(x, x_ref, tables)
            streams = [motion.y_stream, motion.z_stream, residual.y_stream, residual.z_stream]
            coded = {"motion": motion, "residual": residual}
            chunks.append(FrameChunk(FRAME_INTER, streams))
            bits.motion += 8 * (len(streams[0]) + len(streams[1]))
            bits.residual += 8 * (len(streams[2]) + len(streams[3]))
        bits.escaped_latents += sum(tables.latents.escape_count(c.y_symbols, c.y_indexes) for c in coded.values())
        reconstruction.append(padding.crop(x_ref)[0].clone().cpu())
        if keep_latents:
            latents.append(coded)
    if len(chunks) != header.frame_count:
        raise ValueError(f"header says {header.frame_count} frames, got {len(chunks)}")
    assert x_ref is None or x_ref.shape[-2:] == padding.padded
    data = pack(header, chunks)
    bits.container = 8 * len(data) - (bits.intra + bits.motion + bits.residual)
    if bits.escaped_latents:
        LOG.info("escape-coded %d latent symbols outside their table range (%d frames)", bits.escaped_latents,
                 header.frame_count)
    return EncodedSequence(data, header, reconstruction, bits, latents)


def decode_sequence(data: bytes, model_for: Callable[[BitstreamHeader], tuple[ScaleSpaceFlow, EntropyTables]],
                    source: str | Path | None = None) -> tuple[BitstreamHeader, list[torch.Tensor]]:
    """Decode a bitstream. ``model_for(header)`` returns the model (already checked against
    ``header.weights_sha256``) and its tables. Returns the header and the frames (3, H, W)."""
    header, chunks = unpack(data, source)  # refuses frame counts and sizes the bytes present cannot carry
    padding = FramePadding.of(header.padding, header.height, header.width)
    padded = padding.padded
    # issue 11: the frames this decode will hold, float32 RGB, counted at their padded size (an upper bound)
    check_decoded_frame_bytes(source, header.frame_count * 3 * padded[0] * padded[1] * 4,
                              f"{header.frame_count} frames of {header.width}x{header.height}, float32 RGB")
    model, tables = model_for(header)
    if not latents_escaped(data):  # formats 2 and 3 clamped out-of-range latents; decode what they meant
        tables = replace(tables, latents=gaussian_table(escapes=False))
    frames, x_ref = [], None
    with torch_threads(capped_threads(header.threads, torch.get_num_threads())):  # issue 11: never > cores
        for index, chunk in enumerate(chunks):
            try:
                if chunk.frame_type == FRAME_INTRA:
                    x_ref = model.decode_intra(chunk.streams[0], chunk.streams[1], padded, tables)
                else:
                    x_ref = model.decode_inter(x_ref, chunk.streams, padded, tables)
            except BitstreamError as exc:
                raise BitstreamError(source, f"frame {index}: {exc.cause}") from None
            frames.append(padding.crop(x_ref)[0].clone().cpu())
    return header, frames


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (None: leave the setting), then restore it.
    The count fixes how kernels split their work, not how many cores run it: a 2-thread stream decodes
    exactly on one core too."""
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
