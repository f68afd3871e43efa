"""The encoder side of one unit: a video, a base codec at one quality point, a method -> stream, payload,
result.json, log (workers/decoder.py is the other side).

    1. code the video with the base codec (the reference and the fallback);
    2. ask the method (workers/methods/) for its candidates: it trains what it trains, checkpointing into
       OUTDIR/checkpoint/, and codes the video as a decoder will rebuild it (base + payload);
    3. keep the candidate with the lowest RD cost lambda*255^2*D + (stream + payload bits)/pixels, or the
       base stream when nothing beats it (``send_update=always``: the method's first candidate regardless);
    4. write the files atomically, decode them as `adaptjobs decode` does (workers/decoder.py) and require
       the encoder's frames bit for bit; measure.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from schemas.adapt import AdaptResult
from workers.atomic import atomic_write_bytes, atomic_write_text
from workers.decoder import verify_written
from workers.methods import AdaptContext, Candidate, MethodOutcome, check_applies, method
from workers.run_layout import (ADAPT_LOG, CHECKPOINT_DIR, DEFAULT_INTRA_PERIOD, RESULT_FILE, append_log, payload_file,
                                safe_name, stream_file)


def choose(config, base: Candidate, outcome: MethodOutcome, lmbda: float, pixels: int) -> tuple[Candidate, str]:
    """The candidate to send and the decision label (see AdaptResult.decision)."""
    if not outcome.candidates:
        return base, "base-method" if config.method == "none" else "zero-update"
    if getattr(config, "send_update", "if-better") == "always":
        return outcome.candidates[0], outcome.candidates[0].label
    best = min(outcome.candidates, key=lambda c: c.cost(lmbda, pixels))  # the first of equals: the primary one
    if best.cost(lmbda, pixels) < base.cost(lmbda, pixels):
        return best, best.label
    return base, "base-cheaper"


def adapt_video(video, base, outdir: str | Path, config, intra_period: int = DEFAULT_INTRA_PERIOD,
                recon: str | Path | None = None) -> AdaptResult:
    """Run one unit (see the module docstring). ``base`` is a base codec at one quality point
    (workers.codecs; an SSF LoadedModel is taken as the SSF codec); ``config`` a registered method config."""
    from workers.codecs.base import BaseCodec
    from workers.codecs.ssf import SSFCodec

    codec = base if isinstance(base, BaseCodec) else SSFCodec(base)
    check_applies(config.method, codec.name)
    outdir = Path(outdir)
    (outdir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    config_json = json.dumps({"method": config.model_dump(mode="json"), "input": str(video.path), "frames": len(video),
                              "base": codec.weights_sha256 or codec.describe(), "intra_period": intra_period},
                             sort_keys=True, separators=(",", ":"))
    context = AdaptContext(video, codec, intra_period, outdir / CHECKPOINT_DIR, config_json,
                           lambda record: append_log(outdir / ADAPT_LOG, record))
    context.log({"event": "start", "input": str(video.path), "frames": len(video), "codec": codec.name,
                 "quality": codec.quality, "config": config.model_dump(mode="json")})
    base_candidate = context.candidate(codec.encode(video, intra_period), None, "base")
    outcome = method(config.method).adapt(context, config)
    chosen, decision = choose(config, base_candidate, outcome, codec.lmbda, context.pixels)
    frames = _write_and_verify(codec, outdir, safe_name(video.name), chosen)
    seconds = time.perf_counter() - started
    if recon is not None:
        codec.write_reconstruction(recon, frames, video.fps)
    result = _result(context, config, outdir, safe_name(video.name), frames, base_candidate, chosen, decision,
                     outcome, seconds)
    atomic_write_text(outdir / RESULT_FILE, result.model_dump_json(indent=2))
    return result


def _write_and_verify(codec, outdir: Path, name: str, chosen: Candidate) -> list:
    """Write the chosen stream and payload (removing a stale payload), decode them, require the encoder's frames."""
    stream_path, payload_path = outdir / stream_file(name, codec.suffix), outdir / payload_file(name)
    atomic_write_bytes(stream_path, chosen.encoded.data)
    if chosen.payload is not None:
        atomic_write_bytes(payload_path, chosen.payload)
    else:
        payload_path.unlink(missing_ok=True)
    return verify_written(codec, stream_path, payload_path if chosen.payload is not None else None,
                          chosen.encoded.reconstruction)


def _mean_psnr_rgb(codec, video, frames: list) -> float:
    from workers.metrics import psnr_rgb

    rgb = codec.rgb(frames)
    return sum(psnr_rgb(video.frame_rgb(i), rgb[i]) for i in range(len(rgb))) / len(rgb)


def _result(context: AdaptContext, config, outdir: Path, name: str, frames: list, base: Candidate, chosen: Candidate,
            decision: str, outcome: MethodOutcome, seconds: float) -> AdaptResult:
    codec, video, pixels, lmbda = context.codec, context.video, context.pixels, context.lmbda
    adapted = outcome.candidates[0] if outcome.candidates else None
    stream_path, payload_path = outdir / stream_file(name, codec.suffix), outdir / payload_file(name)
    stream_bytes = stream_path.stat().st_size
    payload_bytes = payload_path.stat().st_size if chosen.payload is not None else 0
    return AdaptResult(
        input=str(video.path), bitstream=str(stream_path), codec=codec.name, model_id=codec.model_id,
        weights_sha256=codec.weights_sha256, quality=codec.quality, method=config.method, width=video.width,
        height=video.height, frames=len(video), intra_period=context.intra_period, bytes_written=stream_bytes,
        bits=chosen.encoded.bits, bpp=8 * stream_bytes / pixels, encode_seconds=seconds, verified=True,
        **codec.metrics(video, frames),
        payload=str(payload_path) if chosen.payload is not None else None, payload_bytes=payload_bytes,
        bpp_without_payload=8 * stream_bytes / pixels, bpp_with_payload=8 * (stream_bytes + payload_bytes) / pixels,
        payload_share=(payload_bytes + chosen.update_bytes_in_stream) / (stream_bytes + payload_bytes),
        update_bytes_in_stream=chosen.update_bytes_in_stream, method_details=outcome.details,
        update_sent=chosen is not base,
        decision=decision, rd_cost=chosen.cost(lmbda, pixels), rd_cost_base=base.cost(lmbda, pixels), lmbda=lmbda,
        bpp_base=8 * len(base.encoded.data) / pixels,
        psnr_rgb_base=_mean_psnr_rgb(codec, video, base.encoded.reconstruction),
        rd_cost_adapted=None if adapted is None else adapted.cost(lmbda, pixels),
        bpp_adapted=None if adapted is None else 8 * adapted.total_bytes / pixels,
        psnr_rgb_adapted=None if adapted is None else _mean_psnr_rgb(codec, video, adapted.encoded.reconstruction),
        adaptation_steps=outcome.steps, train_seconds=outcome.train_seconds, adapt_seconds=seconds,
        resumed_from_step=outcome.resumed, config=config.model_dump(mode="json"))
