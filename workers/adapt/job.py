"""One adaptation unit: a video, a method, a base model -> <name>.bits, <name>.payload, result.json, log.

    1. code the video with the base model (the reference and the fallback);
    2. adapt (decoder update, encoder adapters, or both), checkpointing into OUTDIR/checkpoint/;
    3. entropy-code the decoder update into a payload, decode it again and rebuild the decoder from the
       base model + payload exactly as `adaptjobs decode` does, and code the video with that model;
    4. keep the adapted result only if its RD cost lambda*255^2*MSE + (bits + payload bits)/pixels beats
       the base model's; otherwise send the base stream and no payload (the header says method 'none');
    5. write files atomically, read them back, decode, and require the encoder's frames bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from schemas.adapt import (METHOD_CONFIGS, AdaptResult, DecoderLoraConfig, FullDecoderConfig, GopAdaptersConfig,
                           GopAdaptersDecoderLoraConfig, NoneConfig)
from schemas.bitstream import BitstreamHeader
from workers.adapt.adapters import with_adapters
from workers.adapt.decoder_updates import DecoderUpdate, apply_update, make_update, payload_name
from workers.adapt.payload import WeightUpdate, decode_payload, encode_payload, make_header
from workers.adapt.prior import grid_indices
from workers.adapt.state import load_state, optimizer_tensors, restore_optimizer, save_state
from workers.adapt.training import dumps, train_decoder_update, train_gop_adapters
from workers.atomic import atomic_write_bytes, atomic_write_text
from workers.checkpoints import LoadedModel
from workers.codec.ssf import ScaleSpaceFlow, pad_frame
from workers.encode_job import DEFAULT_INTRA_PERIOD, ReconstructionMismatch, sequence_metrics
from workers.errors import BitstreamError, InputError
from workers.rd_loss import lambda_for_quality
from workers.video_codec import EncodedSequence, decode_sequence, encode_sequence
from workers.video_io import SourceFrames, Video, write_reconstruction

log = logging.getLogger("adaptjobs.adapt")


def safe_name(name: str) -> str:
    """A file-name stem that cannot escape a folder: [A-Za-z0-9._-], no leading dot."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".")
    return cleaned or "video"


def parse_method_config(method: str, options: dict | None = None):
    if method not in METHOD_CONFIGS:
        raise InputError(None, f"unknown method {method!r}; choose from {', '.join(METHOD_CONFIGS)}")
    from pydantic import ValidationError
    try:
        return METHOD_CONFIGS[method].model_validate({"method": method, **(options or {})})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(None, f"invalid options for method {method}: {where}: {first['msg']}") from None


# ------------------------------------------------------------------ decoder side
def decoder_model(base: LoadedModel, payload: bytes | None, source: str | Path | None = None) -> ScaleSpaceFlow:
    """The model a decoder runs: the base model, plus the payload's update when there is one."""
    if payload is None:
        return base.model
    built = {}

    def shapes_for(header) -> dict[str, tuple[int, ...]]:
        if not hasattr(METHOD_CONFIGS.get(header.method), "STRUCTURE_FIELDS"):
            raise BitstreamError(source, f"payload method {header.method!r} has no decoder weight update")
        try:
            config = parse_method_config(header.method, header.structure)
        except InputError as exc:
            raise BitstreamError(source, f"invalid payload header ({exc.cause})") from None
        built["template"] = make_update(base.model, config)
        return {payload_name(k): tuple(v.shape) for k, v in built["template"].coded.items()}

    update = decode_payload(payload, base.metadata.weights_sha256, shapes_for, source)
    values = {name.replace(".", "__"): value for name, value in update.dequantized().items()}
    return apply_update(base.model, built["template"], values)


def check_payload_binding(header: BitstreamHeader, payload: bytes | None, bits_source, payload_source) -> None:
    if header.payload_sha256 is None:
        if payload is not None:
            raise BitstreamError(payload_source, f"{bits_source} needs no payload, but one was given")
        return
    if payload is None:
        raise BitstreamError(bits_source, "needs its weight payload (--payload); none was given or found")
    if hashlib.sha256(payload).hexdigest() != header.payload_sha256:
        raise BitstreamError(payload_source, f"is not the payload of {bits_source} (sha256 differs)")


# ------------------------------------------------------------------ encoder side
@dataclass
class Candidate:
    encoded: EncodedSequence
    payload: bytes | None
    mse: float

    def cost(self, lmbda: float, pixels: int) -> float:
        return lmbda * 255.0**2 * self.mse + 8 * (len(self.encoded.data) + len(self.payload or b"")) / pixels


def _mean_mse(video: Video, reconstruction: list[torch.Tensor]) -> float:
    return sum(float(torch.mean((video.frame_rgb(i) - r) ** 2)) for i, r in enumerate(reconstruction)) / len(reconstruction)


def _mean_psnr(video: Video, reconstruction: list[torch.Tensor]) -> float:
    from workers.metrics import psnr_rgb
    return sum(psnr_rgb(video.frame_rgb(i), r) for i, r in enumerate(reconstruction)) / len(reconstruction)


class _LogFile:
    def __init__(self, path: Path):
        self.handle = open(path, "a")

    def __call__(self, record: dict) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _train_lora_or_full(base: LoadedModel, config, frames: Sequence[torch.Tensor], pixels: int, lmbda: float,
                        checkpoint_dir: Path, config_json: str, logger) -> tuple[DecoderUpdate, int, int]:
    update = make_update(base.model, config)
    steps, resumed = train_decoder_update(base.model, update, config.prior, config.training, frames, pixels, lmbda,
                                          config.seed, checkpoint_dir / "decoder-state.safetensors", config_json,
                                          on_log=lambda r: logger({"phase": "decoder", **r}))
    return update, steps, resumed


def _payload_for(base: LoadedModel, config, update: DecoderUpdate) -> bytes | None:
    """The payload of the trained update, or None when every grid index is zero (nothing to send)."""
    indices = {payload_name(k): grid_indices(v, config.prior.grid) for k, v in update.coded.items()}
    if all(int(k.abs().max()) == 0 for k in indices.values() if k.numel()):
        return None
    structure = config.model_dump(mode="json", include=set(config.STRUCTURE_FIELDS))
    header = make_header(base.metadata.weights_sha256, config.method, structure, config.prior, indices)
    return encode_payload(WeightUpdate(header, indices))


def _gop_adapter_encoder(model: ScaleSpaceFlow, config: GopAdaptersConfig, padded: Sequence[torch.Tensor],
                         header: BitstreamHeader, lmbda: float, checkpoint_dir: Path, config_json: str, logger,
                         counters: dict):
    """inter_encoder callback for encode_sequence: trains (or reloads) the adapters of each GoP."""
    adapted, parameters = with_adapters(model, config)
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
    names = [n for n, p in adapted.named_parameters() if p.requires_grad]
    starts = [i for i in range(header.frame_count) if header.is_intra(i)]

    def gop_state_path(gop: int) -> Path:
        return checkpoint_dir / f"adapters-gop{gop:05d}.safetensors"

    def callback(index: int, intra_hat: torch.Tensor) -> ScaleSpaceFlow:
        gop = starts.index(index)
        end = starts[gop + 1] if gop + 1 < len(starts) else header.frame_count
        path = gop_state_path(gop)
        saved = load_state(path, config_json)
        start_step, gop_steps = 0, 0
        if saved is not None:  # this GoP was (partly) trained before: continue from its checkpoint
            tensors, info = saved
            with torch.no_grad():
                for name, p in zip(names, parameters):
                    p.copy_(tensors[f"adapter.{name}"])
            restore_optimizer(optimizer, "opt", tensors, info["param_groups"])
            start_step, gop_steps = info["step"], info["optimizer_steps"]
            counters["resumed"] += gop_steps
        # otherwise the adapters carry over from the previous GoP, as theta_u does in Algorithm 1
        if end - index >= 2 and start_step < config.steps:
            def on_log(record: dict) -> None:
                nonlocal gop_steps
                gop_steps += 1
                logger({"phase": "gop-adapters", "gop": gop, **record})

            def checkpoint(step: int) -> None:
                opt_tensors, groups = optimizer_tensors(optimizer, "opt")
                tensors = {f"adapter.{n}": p.detach().clone() for n, p in zip(names, parameters)} | opt_tensors
                save_state(path, tensors, {"config": config_json, "step": step, "param_groups": groups,
                                           "optimizer_steps": gop_steps})

            began = time.perf_counter()
            train_gop_adapters(adapted, parameters, optimizer, list(padded[index:end]), intra_hat,
                               (header.height, header.width), config, lmbda,
                               start_step, checkpoint, on_log=on_log, gop=gop)
            counters["seconds"] += time.perf_counter() - began
        counters["steps"] += gop_steps
        return adapted

    return callback


def adapt_video(video: Video, base: LoadedModel, outdir: str | Path, config, intra_period: int = DEFAULT_INTRA_PERIOD,
                recon: str | Path | None = None) -> AdaptResult:
    """Run one adaptation unit (see the module docstring). ``config`` is one of schemas.adapt's method
    configs. Re-running with the same arguments continues from OUTDIR/checkpoint/."""
    if intra_period < 0:
        raise InputError(None, f"--intra-period must be >= 0, got {intra_period}")
    outdir = Path(outdir)
    checkpoint_dir = outdir / "checkpoint"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    name = safe_name(video.name)
    started = time.perf_counter()
    metadata = base.metadata
    lmbda = metadata.lmbda if metadata.lmbda is not None else lambda_for_quality(metadata.quality)
    pixels = video.width * video.height * len(video)
    config_json = dumps({"method": config.model_dump(mode="json"), "input": str(video.path), "frames": len(video),
                         "base": metadata.weights_sha256, "intra_period": intra_period})
    logger = _LogFile(outdir / "adapt.log")
    logger({"event": "start", "input": str(video.path), "frames": len(video), "config": config.model_dump(mode="json")})
    header = BitstreamHeader(model_id=metadata.model_id, weights_sha256=metadata.weights_sha256, quality=metadata.quality,
                             width=video.width, height=video.height, frame_count=len(video),
                             fps_num=video.fps.numerator, fps_den=video.fps.denominator, intra_period=intra_period)
    tables = base.model.entropy_tables()
    # frames padded for the codec, (1, 3, H16, W16) and (3, H16, W16), converted on access (never all in memory)
    padded = SourceFrames(video, lambda frame: pad_frame(frame.unsqueeze(0)))
    padded_frames = SourceFrames(video, lambda frame: pad_frame(frame.unsqueeze(0))[0])

    base_encoded = encode_sequence(base.model, tables, video.frames_rgb(), header)
    base_candidate = Candidate(base_encoded, None, _mean_mse(video, base_encoded.reconstruction))
    candidate, steps, resumed = base_candidate, 0, 0
    decision = "base-method" if isinstance(config, NoneConfig) else "zero-update"
    train_seconds = 0.0
    adapted = None

    lora = config.lora if isinstance(config, GopAdaptersDecoderLoraConfig) else config
    adapters = config.adapters if isinstance(config, GopAdaptersDecoderLoraConfig) else config
    try:
        model, payload = base.model, None
        if isinstance(lora, (DecoderLoraConfig, FullDecoderConfig)):
            began = time.perf_counter()
            update, steps, resumed = _train_lora_or_full(base, lora, padded_frames, pixels, lmbda,
                                                         checkpoint_dir, config_json, logger)
            train_seconds += time.perf_counter() - began
            payload = _payload_for(base, lora, update)
            model = decoder_model(base, payload)  # exactly what the decoder will rebuild
        inter_encoder = None
        counters = {"steps": 0, "resumed": 0, "seconds": 0.0}
        if isinstance(adapters, GopAdaptersConfig):
            inter_encoder = _gop_adapter_encoder(model, adapters, padded, header, lmbda, checkpoint_dir, config_json,
                                                 logger, counters)
        if not isinstance(config, NoneConfig) and (payload is not None or inter_encoder is not None):
            adapted_header = header.model_copy(update={
                "method": config.method,
                "payload_sha256": None if payload is None else hashlib.sha256(payload).hexdigest()})
            encoded = encode_sequence(model, model.entropy_tables(), video.frames_rgb(),
                                      adapted_header, inter_encoder=inter_encoder)
            adapted = Candidate(encoded, payload, _mean_mse(video, encoded.reconstruction))
            steps += counters["steps"]
            resumed += counters["resumed"]
            train_seconds += counters["seconds"]
            best, label = adapted, "sent"
            if inter_encoder is not None and payload is not None and config.send_update != "always":
                # both: the adapters are encoder-side, so the encoder may also drop them and send the LoRA alone
                lora_only = encode_sequence(model, model.entropy_tables(), video.frames_rgb(), adapted_header)
                alone = Candidate(lora_only, payload, _mean_mse(video, lora_only.reconstruction))
                if alone.cost(lmbda, pixels) < adapted.cost(lmbda, pixels):
                    best, label = alone, "sent-lora-only"
            if config.send_update == "always":
                candidate, decision = adapted, "sent"
            elif best.cost(lmbda, pixels) < base_candidate.cost(lmbda, pixels):
                candidate, decision = best, label
            else:
                decision = "base-cheaper"
    finally:
        logger.close()

    bits_path, payload_path = outdir / f"{name}.bits", outdir / f"{name}.payload"
    atomic_write_bytes(bits_path, candidate.encoded.data)
    if candidate.payload is not None:
        atomic_write_bytes(payload_path, candidate.payload)
    else:
        payload_path.unlink(missing_ok=True)
    frames = verify_written(bits_path, payload_path if candidate.payload is not None else None, base,
                            candidate.encoded.reconstruction)
    seconds = time.perf_counter() - started
    if recon is not None:
        write_reconstruction(recon, frames, video.fps)
    metrics = sequence_metrics(video, frames)
    bits_bytes, payload_bytes = bits_path.stat().st_size, (payload_path.stat().st_size if candidate.payload else 0)
    result = AdaptResult(
        input=str(video.path), bitstream=str(bits_path), model_id=metadata.model_id,
        weights_sha256=metadata.weights_sha256, quality=metadata.quality, method=config.method,
        width=video.width, height=video.height, frames=len(video), intra_period=intra_period,
        bytes_written=bits_bytes, bits=candidate.encoded.bits, bpp=8 * bits_bytes / pixels,
        encode_seconds=seconds, verified=True, **metrics,
        payload=str(payload_path) if candidate.payload else None, payload_bytes=payload_bytes,
        bpp_without_payload=8 * bits_bytes / pixels, bpp_with_payload=8 * (bits_bytes + payload_bytes) / pixels,
        payload_share=payload_bytes / (bits_bytes + payload_bytes), update_sent=candidate is not base_candidate, decision=decision,
        rd_cost=candidate.cost(lmbda, pixels), rd_cost_base=base_candidate.cost(lmbda, pixels), lmbda=lmbda,
        bpp_base=8 * len(base_candidate.encoded.data) / pixels,
        psnr_rgb_base=_mean_psnr(video, base_candidate.encoded.reconstruction),
        rd_cost_adapted=None if adapted is None else adapted.cost(lmbda, pixels),
        bpp_adapted=None if adapted is None else 8 * (len(adapted.encoded.data) + len(adapted.payload or b"")) / pixels,
        psnr_rgb_adapted=None if adapted is None else _mean_psnr(video, adapted.encoded.reconstruction),
        adaptation_steps=steps, train_seconds=train_seconds, adapt_seconds=seconds, resumed_from_step=resumed,
        config=config.model_dump(mode="json"))
    atomic_write_text(outdir / "result.json", result.model_dump_json(indent=2))
    return result


def verify_written(bits_path: Path, payload_path: Path | None, base: LoadedModel,
                   expected: list[torch.Tensor]) -> list[torch.Tensor]:
    """Decode the files on disk as `adaptjobs decode` does and require the encoder's frames exactly."""
    frames = decode_files(bits_path, payload_path, base)
    if len(frames) != len(expected) or not all(torch.equal(a, b) for a, b in zip(frames, expected)):
        raise ReconstructionMismatch(f"{bits_path}: decoding the written files does not reproduce the encoder's frames")
    return frames


def decode_files(bits_path: Path, payload_path: Path | None, base: LoadedModel) -> list[torch.Tensor]:
    data = bits_path.read_bytes()
    payload = payload_path.read_bytes() if payload_path is not None else None

    def model_for(header: BitstreamHeader):
        from workers.encode_job import checked_model
        checked_model(base, header, bits_path)
        check_payload_binding(header, payload, bits_path, payload_path)
        model = decoder_model(base, payload, payload_path)
        return model, model.entropy_tables()

    return decode_sequence(data, model_for, bits_path)[1]
