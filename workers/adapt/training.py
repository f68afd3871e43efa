"""Training loops of the adaptation methods, on the test video itself, resumable and deterministic.

Every random choice of step s (clip order, crop position) comes from a generator seeded with
(seed, epoch, step), never from a running RNG, and the whole state (trainable tensors, Adam moments,
scheduler, counters, the running epoch loss) is checkpointed atomically, so a run resumed from its
checkpoint ends with the same tensors as an uninterrupted one (same machine, same thread count).

The model runs in eval mode: latents are rounded exactly as the coder rounds them, with straight-through
gradients (workers/codec/entropy_models.py).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.func import functional_call

from schemas.adapt import DecoderTraining, GopAdaptersConfig, WeightPrior
from workers.adapt.decoder_updates import DecoderUpdate
from workers.adapt.prior import quantize_ste, weight_bits
from workers.adapt.state import load_state, optimizer_tensors, restore_optimizer, save_state
from workers.codec.ssf import ScaleSpaceFlow
from workers.rd_loss import rate_distortion

log = logging.getLogger(__name__)  # routed to the unit log by workers.run_layout.unit_logging


def _generator(*parts: int) -> torch.Generator:
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + part) % (2**62)
    return torch.Generator().manual_seed(seed)


def clip_starts(frame_count: int, gop: int) -> list[int]:
    """First frame of every training clip of ``min(gop, frame_count)`` frames; the last clip is moved
    back so it ends at the last frame and every frame is trained on."""
    length = min(gop, frame_count)
    return sorted({min(start, frame_count - length) for start in range(0, frame_count, length)})


def crop_batch(frames: Sequence[torch.Tensor], starts: list[int], length: int, crop: int,
               generator: torch.Generator) -> list[torch.Tensor]:
    """``length`` tensors (B, 3, ch, cw): clip b starts at frame starts[b], each with its own window."""
    _, height, width = frames[0].shape
    ch, cw = min(crop, height), min(crop, width)
    windows = []
    for _ in starts:
        top = int(torch.randint(0, height - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - cw + 1, (1,), generator=generator))
        windows.append((top, left))
    return [torch.stack([frames[s + t][:, top: top + ch, left: left + cw] for s, (top, left) in zip(starts, windows)])
            for t in range(length)]


def decoder_update_cost(model: ScaleSpaceFlow, update: DecoderUpdate, prior: WeightPrior, clip: list[torch.Tensor],
                        lmbda: float, sequence_pixels: int) -> dict[str, torch.Tensor]:
    """Loss of one batch: mean over frames of lambda*255^2*MSE + bpp(latents), plus the weight bits of the
    quantized update divided by the pixels of the whole sequence (a per-sequence cost, PEVC eq. 8)."""
    quantized = {name: quantize_ste(value, prior.grid) for name, value in update.coded.items()}
    out = functional_call(model, update.weights(quantized), (clip,))
    terms = rate_distortion(clip, out["x_hat"], out["likelihoods"], lmbda)
    bits = sum(weight_bits(prior, value) for value in update.coded.values())
    terms["weight_bits"] = bits
    terms["loss"] = terms["loss"] + bits / sequence_pixels
    return terms


def train_decoder_update(model: ScaleSpaceFlow, update: DecoderUpdate, prior: WeightPrior, training: DecoderTraining,
                         frames: Sequence[torch.Tensor], sequence_pixels: int, lmbda: float, seed: int,
                         state_path: Path, config_json: str,
                         on_log: Callable[[dict], None] | None = None) -> tuple[int, int]:
    """Train ``update.coded`` in place on ``frames`` (padded (3, H, W) in [0, 1]).

    Returns (steps done in total, steps found in the checkpoint at start).
    """
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # only the update trains; restored below for the caller
    try:
        return _train_decoder_update(model, update, prior, training, frames, sequence_pixels, lmbda, seed,
                                     state_path, config_json, on_log)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def _train_decoder_update(model, update, prior, training, frames, sequence_pixels, lmbda, seed, state_path,
                          config_json, on_log) -> tuple[int, int]:
    parameters = list(update.coded.values())
    optimizer = torch.optim.Adam(parameters, lr=training.learning_rate, eps=training.adam_eps)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=training.plateau_factor,
                                                           patience=training.plateau_patience)
    starts = clip_starts(len(frames), training.train_gop)
    length = min(training.train_gop, len(frames))
    steps_per_epoch = math.ceil(len(starts) / training.batch)
    epoch, step_in_epoch, epoch_loss, global_step = 0, 0, 0.0, 0

    saved = load_state(state_path, config_json)
    if saved is not None:
        tensors, info = saved
        with torch.no_grad():
            for name, p in update.coded.items():
                p.copy_(tensors[f"coded.{name}"])
        restore_optimizer(optimizer, "opt", tensors, info["param_groups"])
        scheduler.load_state_dict(info["scheduler"])
        epoch, step_in_epoch, epoch_loss, global_step = (info["epoch"], info["step_in_epoch"], info["epoch_loss"],
                                                         info["global_step"])
        log.info("resumed from checkpoint %s at step %d (epoch %d)", state_path, global_step, epoch)
    resumed_from = global_step

    def checkpoint() -> None:
        opt_tensors, groups = optimizer_tensors(optimizer, "opt")
        tensors = {f"coded.{n}": p.detach().clone() for n, p in update.coded.items()} | opt_tensors
        save_state(state_path, tensors, {"config": config_json, "epoch": epoch, "step_in_epoch": step_in_epoch,
                                         "epoch_loss": epoch_loss, "global_step": global_step,
                                         "param_groups": groups, "scheduler": scheduler.state_dict()})

    while epoch < training.epochs:
        order = torch.randperm(len(starts), generator=_generator(seed, epoch)).tolist()
        while step_in_epoch < steps_per_epoch:
            chosen = [starts[i] for i in order[step_in_epoch * training.batch: (step_in_epoch + 1) * training.batch]]
            clip = crop_batch(frames, chosen, length, training.crop, _generator(seed, epoch, step_in_epoch, 1))
            terms = decoder_update_cost(model, update, prior, clip, lmbda, sequence_pixels)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            epoch_loss += float(terms["loss"].detach())
            step_in_epoch += 1
            global_step += 1
            if on_log is not None:
                on_log({"epoch": epoch, "step": global_step, "loss": float(terms["loss"].detach()),
                        "bpp": float(terms["bpp"].detach()), "psnr": float(terms["psnr"]),
                        "weight_bits": float(terms["weight_bits"].detach()),
                        "lr": optimizer.param_groups[0]["lr"]})
            if global_step % training.checkpoint_every == 0:
                checkpoint()
        scheduler.step(epoch_loss / steps_per_epoch)
        epoch, step_in_epoch, epoch_loss = epoch + 1, 0, 0.0
        checkpoint()
    return global_step, resumed_from


def patch_windows(height: int, width: int, padded_height: int, padded_width: int,
                  patch: int) -> list[tuple[int, int, int, int]]:
    """(top, left, h, w) of the patch-GoP tiles covering the padded frame, which is what the coder codes.

    Tiles start on multiples of ``patch`` (a multiple of 128 px, the size of one hyper-latent cell), and the
    last row and column end at the frame's edge, a remainder under half a patch joining its neighbour: every
    tile's hyper-latents are then the frame's own z cells, with the frame's replicate padding at its edges.
    Issue 14: tiles shifted inwards (the previous layout) put z on another grid than the coder's; on carphone
    (176x144, z of 2x2 cells) the tiles' estimate was 0.0054 bpp for P-frames whose full-frame estimate is
    0.0217 bpp (quality 1), so the adapters optimised a rate the coder never paid. (``height`` and
    ``width``, the picture before padding, are kept for callers.)"""
    del height, width
    rows, cols = _spans(padded_height, patch), _spans(padded_width, patch)
    return [(top, left, h, w) for top, h in rows for left, w in cols]


def _spans(size: int, patch: int) -> list[tuple[int, int]]:
    """(start, length) of consecutive spans covering [0, size): starts on multiples of ``patch``, a last span
    shorter than patch / 2 merged into the one before."""
    starts = list(range(0, size, patch))
    if len(starts) > 1 and size - starts[-1] < patch // 2:
        starts.pop()
    ends = starts[1:] + [size]
    return [(start, end - start) for start, end in zip(starts, ends)]


def train_gop_adapters(model: ScaleSpaceFlow, parameters: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                       gop_frames: list[torch.Tensor], intra_hat: torch.Tensor, picture: tuple[int, int],
                       config: GopAdaptersConfig,
                       lmbda: float, start_step: int, checkpoint: Callable[[int], None],
                       on_log: Callable[[dict], None] | None = None, gop: int = 0) -> int:
    """Patch-based GoP updating (seed 002, Algorithm 1) of the adapters of ``model``, in place.

    ``gop_frames``: the GoP's padded frames (1, 3, H, W), I-frame first; ``intra_hat`` the coded I-frame;
    ``picture`` the (height, width) of the picture before padding; ``gop`` its index (seeds the rate noise).
    For every step and every patch-GoP, the P-frame chain runs on the patch from the I-frame's
    reconstruction with its own references, and one Adam step lowers sum_t lambda*D + R(y) + R(m).
    Returns the number of optimizer steps taken.
    """
    model.eval()
    windows = patch_windows(*picture, intra_hat.shape[-2], intra_hat.shape[-1], config.patch)
    taken = 0
    for step in range(start_step, config.steps):
        for number, (top, left, ph, pw) in enumerate(windows):
            ref = intra_hat[..., top: top + ph, left: left + pw]
            targets, reconstructions, likelihoods = [], [], []
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(_generator(config.seed, gop, step, number).initial_seed()))  # rate noise
                for frame in gop_frames[1:]:
                    x = frame[..., top: top + ph, left: left + pw]
                    x_hat, lik = model.forward_inter(x, ref)
                    targets.append(x)
                    reconstructions.append(x_hat)
                    likelihoods.append(lik)
                    ref = x_hat.clamp(0.0, 1.0)  # the coder's reference is clamped too
            terms = rate_distortion(targets, reconstructions, likelihoods, lmbda)
            optimizer.zero_grad(set_to_none=True)
            (terms["loss"] * len(targets)).backward()  # the paper's sum over the GoP
            optimizer.step()
            taken += 1
            if on_log is not None:
                on_log({"step": step, "patch": [top, left], "loss": float(terms["loss"].detach()), "bpp": float(terms["bpp"].detach()),
                        "psnr": float(terms["psnr"])})
        checkpoint(step + 1)
    return taken


def dumps(config) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))
