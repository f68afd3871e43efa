"""Training loops of the adaptation methods, on the test video itself, resumable and deterministic.

Every random choice of step s (clip order, crop position) comes from a generator seeded with
(seed, epoch, step), never from a running RNG, the learning rate is a function of the step, and the whole
state (trainable tensors, Adam moments, counters, the best state and its cost) is checkpointed atomically,
so a run resumed from its checkpoint ends with the same tensors as an uninterrupted one (same machine,
same thread count).

The model runs in eval mode: latents are rounded exactly as the coder rounds them, with straight-through
gradients (workers/codec/entropy_models.py).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.func import functional_call

from schemas.adapt import DecoderTraining, GopAdaptersConfig, WeightPrior
from workers.adapt.decoder_updates import DecoderUpdate, apply_update
from workers.adapt.prior import grid_indices, quantize_ste, weight_bits
from workers.adapt.state import load_state, optimizer_tensors, restore_optimizer, save_state
from workers.codec.ssf import ScaleSpaceFlow
from workers.rd_loss import likelihood_bits, rate_distortion

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
                        lmbda: float, sequence_pixels: int, gradient_spike: float | None = None) -> dict[str, torch.Tensor]:
    """Loss of one batch: mean over frames of lambda*255^2*MSE + bpp(latents), plus the weight bits of the
    quantized update divided by the pixels of the whole sequence (a per-sequence cost, PEVC eq. 8)."""
    quantized = {name: quantize_ste(value, prior.grid) for name, value in update.coded.items()}
    out = functional_call(model, update.weights(quantized), (clip,))
    terms = rate_distortion(clip, out["x_hat"], out["likelihoods"], lmbda)
    bits = sum(weight_bits(prior, value, gradient_spike) for value in update.coded.values())
    terms["weight_bits"] = bits
    terms["loss"] = terms["loss"] + bits / sequence_pixels
    return terms


def peak_learning_rate(training: DecoderTraining, prior: WeightPrior) -> float:
    """Adam's peak learning rate: ``training.learning_rate`` if set, else ``step_cells`` grid cells. Adam moves
    a weight by at most ~lr per step, so tying lr to the grid keeps a straight-through step from jumping
    several quantization cells at once (what made the loss end above its start on main)."""
    return training.learning_rate if training.learning_rate is not None else training.step_cells * prior.grid


def learning_rate_at(training: DecoderTraining, peak: float, step: int, total: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``total``: a linear warm-up over the first
    ``warmup_fraction`` of the steps, then a cosine from ``peak`` down to ``final_lr_fraction * peak`` at the
    last step. A pure function of the step, so a resumed run needs no scheduler state."""
    warmup = math.ceil(training.warmup_fraction * total)
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    progress = min((step - warmup) / max(total - warmup - 1, 1), 1.0)
    floor = training.final_lr_fraction * peak
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def epochs_to_run(training: DecoderTraining, steps_per_epoch: int) -> int:
    """``training.epochs``, raised so that at least ``min_steps`` steps run (0 epochs stays 0: no training)."""
    if training.epochs == 0:
        return 0
    return max(training.epochs, math.ceil(training.min_steps / steps_per_epoch))


def centre_window(frame: torch.Tensor, crop: int | None) -> torch.Tensor:
    """The centred ``crop`` x ``crop`` window of a (3, H, W) frame (the whole frame where it is smaller or
    ``crop`` is None)."""
    if crop is None:
        return frame
    _, height, width = frame.shape
    ch, cw = min(crop, height), min(crop, width)
    top, left = (height - ch) // 2, (width - cw) // 2
    return frame[:, top: top + ch, left: left + cw]


@torch.no_grad()
def sequence_rd_cost(model: ScaleSpaceFlow, update: DecoderUpdate, prior: WeightPrior, frames: Sequence[torch.Tensor],
                     lmbda: float, gop: int, crop: int | None, sequence_pixels: int,
                     payload_bits: Callable[[DecoderUpdate], int]) -> dict[str, float]:
    """RD cost per pixel of coding the sequence with the update as the decoder will rebuild it.

    What the kept state is chosen by: every frame (``crop`` None, the default: the whole padded frame; else
    its centred ``crop`` window), coded in GoPs of ``gop`` frames as the coder does (I-frame, then P-frames
    predicted from the clamped reconstruction), with the decoder's weights (grid index * grid); latent rate
    = ideal bits of the rounded latents (within 0.002% of the coded bits, design section 5); plus every byte
    sending the update adds (``payload_bits``: the coded payload and the stream header's naming of it, 0 for
    the empty update) over the pixels of the whole sequence. Its absolute value leaves out what no update
    changes (per-frame stream framing: 16.5% of carphone q1's stream). A window is cheaper on large frames
    but is not the sequence: foreman's 256 window scored a state 3.3% below the base that the whole frames
    put 0.44% above (issue 14); mobile q2's window said -3.2% for runs whose real RD costs were -2.0% and
    -1.0%. Returns cost, mse, bpp (latents), payload_bits.
    """
    values = {name: grid_indices(v, prior.grid).to(torch.float32) * prior.grid for name, v in update.coded.items()}
    adapted = apply_update(model, update, values).eval()
    squared, bits, pixels, count = 0.0, 0.0, 0, 0
    for start in range(0, len(frames), gop):
        reference = None
        for index in range(start, min(start + gop, len(frames))):
            x = centre_window(frames[index], crop).unsqueeze(0)
            if reference is None:
                x_hat, likelihoods = adapted.forward_intra(x)
            else:
                x_hat, likelihoods = adapted.forward_inter(x, reference)
            reference = x_hat.clamp(0.0, 1.0)
            squared += float(torch.mean((x - reference) ** 2))
            bits += float(likelihood_bits(likelihoods))
            pixels, count = pixels + x.shape[-2] * x.shape[-1], count + 1
    mse, coded_payload = squared / count, payload_bits(update)
    bpp = bits / (sequence_pixels if crop is None else pixels)  # whole frames: per pixel of the picture, as reported
    return {"cost": lmbda * 255.0**2 * mse + bpp + coded_payload / sequence_pixels, "mse": mse, "bpp": bpp,
            "payload_bits": coded_payload}


def train_decoder_update(model: ScaleSpaceFlow, update: DecoderUpdate, prior: WeightPrior, training: DecoderTraining,
                         frames: Sequence[torch.Tensor], sequence_pixels: int, lmbda: float, seed: int,
                         state_path: Path, config_json: str,
                         on_log: Callable[[dict], None] | None = None, *, eval_gop: int = 12,
                         payload_bits: Callable[[DecoderUpdate], int] | None = None,
                         include_base: bool = True,
                         coded_cost: Callable[[DecoderUpdate], dict[str, float]] | None = None) -> tuple[int, int]:
    """Train ``update.coded`` in place on ``frames`` (padded (3, H, W) in [0, 1]) and leave in it the best
    state seen by the sequence RD cost, so a run never ends worse than its best evaluated point. The cost
    is ``coded_cost(update)`` when given (the caller codes the sequence for real: what is sent), else the
    estimate :func:`sequence_rd_cost` (GoPs of ``eval_gop`` frames, payload bits from ``payload_bits``;
    default: the prior's ideal bits). With ``include_base`` the base model (zero update) is a candidate
    too, so it never ends worse than the base either; without (send_update=always) the best trained state
    is kept.

    Returns (steps done in total, steps found in the checkpoint at start).
    """
    if payload_bits is None:
        payload_bits = lambda u: int(sum(float(weight_bits(prior, v.detach())) for v in u.coded.values()))  # noqa: E731
    evaluate = coded_cost or (lambda u: sequence_rd_cost(model, u, prior, frames, lmbda, eval_gop,  # noqa: E731
                                                         training.eval_crop, sequence_pixels, payload_bits))
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # only the update trains; restored below for the caller
    try:
        return _train_decoder_update(model, update, prior, training, frames, sequence_pixels, lmbda, seed,
                                     state_path, config_json, on_log, evaluate, include_base)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


@dataclass
class _Progress:
    """Where a decoder-update run stands; all of it is checkpointed. ``best`` holds the coded tensors of the
    lowest sequence RD cost among the candidates evaluated so far (None before the first candidate);
    ``base_cost`` the cost of the base model (None before it was evaluated, at step 0)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: dict[str, torch.Tensor] | None = None
    best_cost: float = math.inf
    best_step: int = 0
    base_cost: float | None = None
    first_stage_dropped: bool = False  # the first stage ended with the base still the best: its tensors stay zero


def _save_progress(path: Path, config_json: str, update: DecoderUpdate, optimizer: torch.optim.Optimizer,
                   run: _Progress) -> None:
    opt_tensors, groups = optimizer_tensors(optimizer, "opt")
    tensors = {f"coded.{n}": p.detach().clone() for n, p in update.coded.items()} | opt_tensors
    tensors |= {f"best.{n}": t for n, t in (run.best or {}).items()}
    save_state(path, tensors, {"config": config_json, "epoch": run.epoch, "step_in_epoch": run.step_in_epoch,
                               "global_step": run.global_step, "param_groups": groups, "has_best": run.best is not None,
                               "best_cost": None if run.best is None else run.best_cost, "best_step": run.best_step, "base_cost": run.base_cost,
                               "first_stage_dropped": run.first_stage_dropped})


def _load_progress(path: Path, config_json: str, update: DecoderUpdate, optimizer: torch.optim.Optimizer) -> _Progress:
    saved = load_state(path, config_json)
    if saved is None:
        return _Progress()
    tensors, info = saved
    with torch.no_grad():
        for name, p in update.coded.items():
            p.copy_(tensors[f"coded.{name}"])
    restore_optimizer(optimizer, "opt", tensors, info["param_groups"])
    best = {n: tensors[f"best.{n}"] for n in update.coded} if info["has_best"] else None
    log.info("resumed from checkpoint %s at step %d (epoch %d)", path, info["global_step"], info["epoch"])
    best_cost = math.inf if info["best_cost"] is None else info["best_cost"]
    return _Progress(info["epoch"], info["step_in_epoch"], info["global_step"], best, best_cost,
                     info["best_step"], info["base_cost"], info.get("first_stage_dropped", False))


def _keep_if_best(run: _Progress, update: DecoderUpdate, evaluate, on_log, candidate: bool) -> None:
    """Evaluate the current update on the sequence; if it is a ``candidate``, keep it when it is the cheapest
    so far (ties keep the older, so the base model wins a tie)."""
    terms = evaluate(update)
    if run.base_cost is None:
        run.base_cost = terms["cost"]
    if candidate and terms["cost"] < run.best_cost:
        run.best = {n: p.detach().clone() for n, p in update.coded.items()}
        run.best_cost, run.best_step = terms["cost"], run.global_step
    if on_log is not None:
        on_log({"eval": True, "epoch": run.epoch, "step": run.global_step, **terms, "base_cost": run.base_cost,
                "best_cost": None if run.best is None else run.best_cost, "best_step": run.best_step})


def stage_epochs(training: DecoderTraining, steps_per_epoch: int, has_first_stage: bool) -> tuple[int, int]:
    """(epochs in all, of which first-stage epochs). The first stage is ``first_stage_fraction`` of
    :func:`epochs_to_run`'s epochs (rounded down), taken from them, or, with ``first_stage_extra``, run before
    them (0 epochs stays 0: no training)."""
    epochs = epochs_to_run(training, steps_per_epoch)
    first = math.floor(training.first_stage_fraction * epochs) if has_first_stage else 0
    return (epochs + first, first) if training.first_stage_extra else (epochs, first)


def _schedule_position(training: DecoderTraining, step: int, first_stage_steps: int,
                       total_steps: int) -> tuple[int, int]:
    """(step within its schedule, that schedule's length) for the learning rate of global step ``step``: one
    schedule over all steps, or with ``first_stage_extra`` one over the first stage and a fresh one over the
    rest, so the epochs where everything trains get the warm-up and cosine they would get without a first
    stage."""
    if not training.first_stage_extra or first_stage_steps == 0:
        return step, total_steps
    if step < first_stage_steps:
        return step, first_stage_steps
    return step - first_stage_steps, total_steps - first_stage_steps


def _drop_first_stage(run: _Progress, update: DecoderUpdate, on_log) -> None:
    """The first stage ended and none of its states beat the base: its tensors go back to zero and stay there,
    so the second stage trains the rest from the base model. Issue 14: on foreman q1 and q2 every bias-only
    state cost 3-15% more than the base (coded), and the LoRA stage that followed from there never got back
    below it, where the LoRA alone from zero had paid (-0.6%, -0.8% in lorafix)."""
    run.first_stage_dropped = True
    with torch.no_grad():
        for key in update.first_stage:
            update.coded[key].zero_()
    if on_log is not None:
        on_log({"first_stage_dropped": True, "epoch": run.epoch, "step": run.global_step})


def _optimizer(update: DecoderUpdate, training: DecoderTraining,
               prior: WeightPrior) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]:
    """Adam over the update's coded tensors, one parameter group per peak learning rate (``group["peak"]``):
    the first-stage tensors at ``first_stage_step_cells`` grid cells, the rest at :func:`peak_learning_rate`.
    Also returns the tensors that wait for the first stage to end."""
    first = [update.coded[key] for key in update.first_stage]
    later = [p for key, p in update.coded.items() if key not in update.first_stage]
    groups = [{"params": later, "peak": peak_learning_rate(training, prior)}] if later else []
    if first:
        groups.append({"params": first, "peak": training.first_stage_step_cells * prior.grid})
    return torch.optim.Adam(groups, lr=groups[0]["peak"], eps=training.adam_eps), later


def _train_decoder_update(model, update, prior, training, frames, sequence_pixels, lmbda, seed, state_path,
                          config_json, on_log, evaluate, include_base) -> tuple[int, int]:
    optimizer, later = _optimizer(update, training, prior)
    first = [update.coded[key] for key in update.first_stage]
    starts = clip_starts(len(frames), training.train_gop)
    length = min(training.train_gop, len(frames))
    steps_per_epoch = math.ceil(len(starts) / training.batch)
    epochs, first_stage_epochs = stage_epochs(training, steps_per_epoch, bool(update.first_stage))
    run = _load_progress(state_path, config_json, update, optimizer)
    resumed_from = run.global_step
    if epochs == 0:
        return 0, 0  # nothing trains: the update stays zero, nothing to evaluate
    if run.base_cost is None:
        _keep_if_best(run, update, evaluate, on_log, include_base)  # the base model: the cost to beat

    while run.epoch < epochs:
        order = torch.randperm(len(starts), generator=_generator(seed, run.epoch)).tolist()
        while run.step_in_epoch < steps_per_epoch:
            batch = order[run.step_in_epoch * training.batch: (run.step_in_epoch + 1) * training.batch]
            clip = crop_batch(frames, [starts[i] for i in batch], length, training.crop,
                              _generator(seed, run.epoch, run.step_in_epoch, 1))
            step, steps = _schedule_position(training, run.global_step, first_stage_epochs * steps_per_epoch,
                                             epochs * steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(training, group["peak"], step, steps)
            lr = optimizer.param_groups[0]["lr"]
            terms = decoder_update_cost(model, update, prior, clip, lmbda, sequence_pixels,
                                        None if training.rate_gradient_spike_cells is None
                                        else training.rate_gradient_spike_cells * prior.grid)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            frozen = later if run.epoch < first_stage_epochs else (first if run.first_stage_dropped else [])
            for p in frozen:
                p.grad = None  # Adam skips a parameter without a gradient: it stays where it is
            optimizer.step()
            run.step_in_epoch, run.global_step = run.step_in_epoch + 1, run.global_step + 1
            if run.global_step % training.checkpoint_every == 0:  # before the log line: a logged step is saved
                _save_progress(state_path, config_json, update, optimizer, run)
            if on_log is not None:
                on_log({"epoch": run.epoch, "step": run.global_step, "loss": float(terms["loss"].detach()),
                        "bpp": float(terms["bpp"].detach()), "psnr": float(terms["psnr"]),
                        "weight_bits": float(terms["weight_bits"].detach()), "lr": lr})
        run.epoch, run.step_in_epoch = run.epoch + 1, 0
        if run.epoch % training.eval_every == 0 or run.epoch == epochs:
            _keep_if_best(run, update, evaluate, on_log, candidate=True)
        if run.epoch == first_stage_epochs and include_base and run.best_step == 0:
            _drop_first_stage(run, update, on_log)
        _save_progress(state_path, config_json, update, optimizer, run)
    with torch.no_grad():
        for name, p in update.coded.items():
            p.copy_(run.best[name])
    return run.global_step, resumed_from


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
    ``checkpoint(passes)`` is called after every pass with the passes done (the caller evaluates the
    adapters and saves its state there). Returns the number of optimizer steps taken.
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
