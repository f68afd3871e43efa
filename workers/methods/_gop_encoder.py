"""Shared by the encoder-adapter methods: the intra_encoder and inter_encoder callbacks that train (or reload
from the unit's checkpoint) the adapters of each GoP, the P-frames' with patch-based GoP updating (seed 002,
Algorithm 1), the I-frame's on the whole frame, and keep, per GoP, whichever encoder codes the I-frame, and
the P-frames, cheapest: the base one or the adapters at one of their evaluated passes.

Why the per-GoP choice: nothing is sent either way (a stock decoder decodes any of them), so the encoder may
pick per GoP by the coded RD cost it measures, and the unit can never cost more than the base encoder's
stream (the I-frames are the base's whatever is chosen). Issue 14: the adapters' training loss is a
straight-through estimate, and on carphone q1 GoP 0 the coded cost of the trained adapters rose +1.4% after
4 passes at lr 1e-4 while the estimate stayed flat; the choice makes such a GoP cost nothing.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from workers.methods.registry import AdaptContext

log = logging.getLogger(__name__)  # routed to the unit log by workers.run_layout.unit_logging


@torch.no_grad()
def coded_gop_cost(model, tables, intra_hat: torch.Tensor, p_frames: list[torch.Tensor], picture: tuple[int, int],
                   lmbda: float) -> dict[str, float]:
    """What coding a GoP's P-frames with ``model``'s encoder adds to the unit's RD cost, in the units of a
    per-frame cost: sum over P-frames of lambda * 255^2 * MSE + stream bits / picture pixels.

    ``intra_hat``: the coded I-frame (1, 3, H, W) padded; ``p_frames``: the padded P-frames (1, 3, H, W);
    ``picture``: (height, width) before padding, the region the distortion is measured on (as the unit's
    D is). The frames are coded exactly as the sequence coder codes them (same tables, same references), so
    the bytes counted are the bytes the stream will hold for these frames (less the per-frame framing, the
    same for every encoder). Returns cost, bits (of the four latent streams) and mse (mean over P-frames)."""
    reference, cost, bits, squared = intra_hat, 0.0, 0, 0.0
    for x in p_frames:
        reference, motion, residual = model.encode_inter(x, reference, tables)
        terms = _frame_cost(x, reference, [motion, residual], picture, lmbda)
        cost, bits, squared = cost + terms["cost"], bits + terms["bits"], squared + terms["mse"]
    return {"cost": cost, "bits": bits, "mse": squared / max(len(p_frames), 1)}


def _frame_cost(x: torch.Tensor, x_hat: torch.Tensor, latents: list, picture: tuple[int, int],
                lmbda: float) -> dict[str, float]:
    """One coded frame's lambda * 255^2 * MSE (on ``picture``) + bits of its latents' streams / pixels."""
    height, width = picture
    bits = 8 * sum(len(latent.y_stream) + len(latent.z_stream) for latent in latents)
    mse = float(torch.mean((x[..., :height, :width] - x_hat[..., :height, :width]) ** 2))
    return {"cost": lmbda * 255.0**2 * mse + bits / (height * width), "bits": bits, "mse": mse}


@dataclass
class GopChoice:
    """The cheapest encoder of one GoP so far, by :func:`coded_gop_cost`: ``best`` the adapter tensors
    (None: the base encoder), ``best_pass`` the passes they had trained (0: the base), ``base_cost`` the base
    encoder's cost (None before it was measured). Checkpointed with the GoP's training state."""

    base_cost: float | None = None
    best_cost: float = math.inf
    best_pass: int = 0
    best: list[torch.Tensor] | None = None

    def offer(self, cost: float, passes: int, tensors: list[torch.Tensor] | None) -> bool:
        """Keep the candidate if strictly cheaper (a tie keeps the older: the base wins ties)."""
        if cost < self.best_cost:
            self.best_cost, self.best_pass, self.best = cost, passes, tensors
            return True
        return False

    def tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        return {} if self.best is None else {f"best.{n}": t for n, t in zip(names, self.best)}

    def info(self) -> dict:
        return {"base_cost": self.base_cost, "best_cost": None if math.isinf(self.best_cost) else self.best_cost,
                "best_pass": self.best_pass}

    @classmethod
    def restored(cls, saved, names: list[str]) -> "GopChoice":
        if saved is None or "best_pass" not in saved[1]:
            return cls()
        tensors, info = saved
        best = [tensors[f"best.{n}"] for n in names] if f"best.{names[0]}" in tensors else None
        best_cost = math.inf if info["best_cost"] is None else info["best_cost"]
        return cls(info["base_cost"], best_cost, info["best_pass"], best)


def gop_adapter_encoders(model, config, context: AdaptContext, counters: dict,
                         checkpoint_prefix: str = "adapters") -> dict:
    """The encode options (``intra_encoder``, ``inter_encoder``) of SSFCodec.encode for encoder adapters:
    before each I-frame, train the I-frame adapters on it (``config.intra_steps`` > 0) and return the encoder
    that codes it; after each I-frame, train the adapters on the GoP's P-frames and return the encoder that
    codes them. With ``config.keep_best`` each is the cheapest of the base encoder and the adapters at their
    evaluated passes, by the coded cost; the kept state is what the next GoP starts from.
    ``counters`` accumulates "steps", "resumed" and "seconds" (training and coded evaluations) while the
    sequence is encoded; adapters trained on another model in the same unit need another
    ``checkpoint_prefix`` (their states must not mix)."""
    from workers.adapt.adapters import with_adapters
    from workers.codec.ssf import pad_frame
    from workers.device import module_device
    from workers.video_io import SourceFrames

    header = context.codec.header(context.video, context.intra_period)
    device = module_device(model)  # the adapters train where the model was placed (workers/device.py)
    padded = SourceFrames(context.video, lambda frame: pad_frame(frame.unsqueeze(0).to(device)))  # (1, 3, H16, W16)
    tables = model.entropy_tables()  # one build for both runs and their adapted copies
    adapted, parameters = with_adapters(model, config, tables)
    picture = (header.height, header.width)
    gop_run = _GopRun(model, adapted, parameters, config, context, counters, checkpoint_prefix, picture, tables)
    intra_run = (_IntraRun(model, config, context, counters, checkpoint_prefix, picture, tables)
                 if config.intra_steps else None)
    starts = [i for i in range(header.frame_count) if header.is_intra(i)]

    def timed(run):
        began = time.perf_counter()
        try:
            return run()
        finally:
            counters["seconds"] += time.perf_counter() - began

    def intra_encoder(index: int, x: torch.Tensor):
        return timed(lambda: intra_run.encoder_for(starts.index(index), x))

    def inter_encoder(index: int, intra_hat: torch.Tensor):
        gop = starts.index(index)
        end = starts[gop + 1] if gop + 1 < len(starts) else header.frame_count
        return timed(lambda: gop_run.encoder_for(gop, list(padded[index:end]), intra_hat))

    return {"intra_encoder": intra_encoder if intra_run is not None else None, "inter_encoder": inter_encoder}


def coded_intra_cost(model, tables, x: torch.Tensor, picture: tuple[int, int], lmbda: float) -> dict[str, float]:
    """What coding the I-frame ``x`` (1, 3, H, W, padded) with ``model``'s encoder adds to the unit's RD cost,
    in the units of :func:`coded_gop_cost`: lambda * 255^2 * MSE (on ``picture``) + stream bits / pixels."""
    with torch.no_grad():
        x_hat, coded = model.encode_intra(x, tables)
    return _frame_cost(x, x_hat, [coded], picture, lmbda)


class _IntraRun:
    """The I-frame adapters of one unit: per GoP, ``intra_steps`` Adam steps on the whole I-frame
    (lambda * D + R, R priced by ``rate_proxy``), the I-frame coded after every step, and the cheapest of the
    base encoder and those states kept (by :func:`coded_intra_cost`: the I-frame's own cost, the P-frames then
    train on its reconstruction). Their state carries over from GoP to GoP, as the P-frame adapters' does.
    One checkpoint per GoP, written after its choice (a GoP's training is short: 64 steps of a 720x576 I-frame,
    each coded, took 44-50 s on one core), so a resumed unit codes the same bytes."""

    def __init__(self, model, config, context: AdaptContext, counters: dict, prefix: str, picture: tuple[int, int],
                 tables):
        from workers.adapt.adapters import with_intra_adapters

        self.model, self.config, self.context, self.counters = model, config, context, counters
        self.prefix, self.picture = prefix, picture
        self.adapted, self.parameters = with_intra_adapters(model, config, tables)
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.intra_learning_rate)
        self.names = [n for n, p in self.adapted.named_parameters() if p.requires_grad]
        self.initial = [p.detach().clone() for p in self.parameters]
        self.tables = tables

    def encoder_for(self, gop: int, x: torch.Tensor):
        from workers.adapt.state import load_state

        path = self.context.checkpoint_dir / f"{self.prefix}-intra-gop{gop:05d}.safetensors"
        saved = load_state(path, self.context.config_json)
        if saved is not None:
            _restore(saved, self.names, self.parameters, self.optimizer, self.counters)
            choice = GopChoice.restored(saved, self.names)
            log.info("resumed the I-frame adapters of GoP %d from checkpoint %s", gop, path)
        else:
            choice = self._train(gop, x)
        encoder = _keep(choice, self.parameters, self.initial, self.model, self.adapted, self.context, gop,
                        "gop-adapters-intra-choice", "kept_step", "I-frame", "steps")
        if saved is None:  # after the kept state is loaded: it is what the next GoP starts from
            _save(path, self.names, self.parameters, self.optimizer, self.context.config_json, self.config.intra_steps,
                  self.config.intra_steps, choice)
        self.counters["steps"] += self.config.intra_steps
        return encoder

    def _train(self, gop: int, x: torch.Tensor) -> GopChoice:
        from workers.rd_loss import rate_distortion

        height, width = self.picture
        lmbda = self.context.lmbda
        choice = GopChoice()
        choice.base_cost = coded_intra_cost(self.model, self.tables, x, self.picture, lmbda)["cost"]
        choice.offer(choice.base_cost, 0, None)
        self.adapted.eval()  # rounding as the coder does (straight-through), not noise
        target = x[..., :height, :width]
        for step in range(1, self.config.intra_steps + 1):
            x_hat, likelihoods = self.adapted.forward_intra(x)
            terms = rate_distortion([target], [x_hat[..., :height, :width]], [likelihoods], lmbda)
            self.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            self.optimizer.step()
            record = {"phase": "gop-adapters-intra", "gop": gop, "step": step, "loss": float(terms["loss"].detach()),
                      "bpp": float(terms["bpp"].detach())}
            if self.config.keep_best or step == self.config.intra_steps:  # without keep_best: the last state
                coded = coded_intra_cost(self.adapted, self.tables, x, self.picture, lmbda)
                record |= coded
                if not self.config.keep_best:
                    choice.best_cost = math.inf
                choice.offer(coded["cost"], step, [p.detach().clone() for p in self.parameters])
            self.context.log(record)
        return choice


class _GopRun:
    """The adapters of one unit, trained GoP after GoP (their state carries over, as theta_u does in
    Algorithm 1), with the per-GoP checkpoints and choice."""

    def __init__(self, model, adapted, parameters, config, context: AdaptContext, counters: dict, prefix: str,
                 picture: tuple[int, int], tables):
        self.model, self.adapted, self.parameters, self.config = model, adapted, parameters, config
        self.context, self.counters, self.prefix, self.picture = context, counters, prefix, picture
        self.optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
        self.names = [n for n, p in adapted.named_parameters() if p.requires_grad]
        self.initial = [p.detach().clone() for p in parameters]  # zero-output adapters: the base encoder
        self.tables = tables

    def encoder_for(self, gop: int, frames: list[torch.Tensor], intra_hat: torch.Tensor):
        from workers.adapt.state import load_state

        path = self.context.checkpoint_dir / f"{self.prefix}-gop{gop:05d}.safetensors"
        saved = load_state(path, self.context.config_json)
        start_step, gop_steps = _restore(saved, self.names, self.parameters, self.optimizer, self.counters)
        choice = GopChoice.restored(saved, self.names)
        if gop_steps:
            log.info("resumed the adapters of GoP %d from checkpoint %s at step %d", gop, path, start_step)
        # otherwise the adapters carry over from the previous GoP, as theta_u does in Algorithm 1
        if len(frames) < 2:
            return self.adapted
        keep_best = self.config.keep_best and self.config.steps > 0
        if keep_best and choice.base_cost is None:
            choice.base_cost = self._evaluate(self.model, frames, intra_hat, gop, 0)
            choice.offer(choice.base_cost, 0, None)
        if start_step < self.config.steps:
            gop_steps = self._train(frames, intra_hat, gop, path, start_step, gop_steps, choice if keep_best else None)
        self.counters["steps"] += gop_steps
        return self._kept(choice, gop) if keep_best else self.adapted

    def _kept(self, choice: GopChoice, gop: int):
        return _keep(choice, self.parameters, self.initial, self.model, self.adapted, self.context, gop,
                     "gop-adapters-choice", "kept_pass", "P-frames", "passes")

    def _evaluate(self, encoder, frames, intra_hat, gop: int, passes: int) -> float:
        terms = coded_gop_cost(encoder, self.tables, intra_hat, frames[1:], self.picture, self.context.lmbda)
        self.context.log({"phase": "gop-adapters-eval", "gop": gop, "passes": passes, **terms})
        return terms["cost"]

    def _train(self, frames, intra_hat, gop: int, path: Path, start_step: int, gop_steps: int,
               choice: GopChoice | None) -> int:
        """Train one GoP's adapters from ``start_step``; after every pass, evaluate (every ``eval_every``
        passes and after the last, when keeping the best) and checkpoint. Returns the GoP's optimizer steps."""
        from workers.adapt.training import train_gop_adapters

        steps = {"n": gop_steps}

        def on_log(record: dict) -> None:
            steps["n"] += 1
            self.context.log({"phase": "gop-adapters", "gop": gop, **record})

        def after_pass(step: int) -> None:
            if choice is not None and (step % self.config.eval_every == 0 or step == self.config.steps):
                cost = self._evaluate(self.adapted, frames, intra_hat, gop, step)
                choice.offer(cost, step, [p.detach().clone() for p in self.parameters])
            _save(path, self.names, self.parameters, self.optimizer, self.context.config_json, step, steps["n"], choice)

        train_gop_adapters(self.adapted, self.parameters, self.optimizer, frames, intra_hat, self.picture,
                           self.config, self.context.lmbda, start_step, after_pass, on_log=on_log, gop=gop)
        return steps["n"]


def _keep(choice: GopChoice, parameters, initial, base, adapted, context: AdaptContext, gop: int, phase: str,
          kept_key: str, frames: str, unit: str):
    """Load the kept state into the adapters (the next GoP starts from it) and log the choice; returns the model
    that codes this GoP's ``frames`` (``base`` when the base encoder was cheapest)."""
    with torch.no_grad():
        for p, value in zip(parameters, choice.best or initial):
            p.copy_(value)
    log.info("GoP %d, %s: kept %s, coded RD cost %.6f against the base encoder's %.6f (%+.2f%%)", gop, frames,
             "the base encoder" if choice.best is None else f"the adapters after {choice.best_pass} {unit}",
             choice.best_cost, choice.base_cost, 100.0 * (choice.best_cost / choice.base_cost - 1.0))
    context.log({"phase": phase, "gop": gop, kept_key: choice.best_pass, "cost": choice.best_cost,
                 "base_cost": choice.base_cost})
    return base if choice.best is None else adapted


def _save(path: Path, names, parameters, optimizer, config_json: str, step: int, optimizer_steps: int,
          choice: GopChoice | None) -> None:
    """Checkpoint adapters (their current state), optimizer and, when keeping the best, the choice so far: what
    :func:`_restore` and :meth:`GopChoice.restored` read back."""
    from workers.adapt.state import optimizer_tensors, save_state

    opt_tensors, groups = optimizer_tensors(optimizer, "opt")
    tensors = {f"adapter.{n}": p.detach().clone() for n, p in zip(names, parameters)} | opt_tensors
    info = {"config": config_json, "step": step, "param_groups": groups, "optimizer_steps": optimizer_steps}
    if choice is not None:
        tensors, info = tensors | choice.tensors(names), info | choice.info()
    save_state(path, tensors, info)


def _restore(saved, names, parameters, optimizer, counters: dict) -> tuple[int, int]:
    """Load a GoP's checkpoint into the adapters and optimizer; (step to start from, optimizer steps so far)."""
    from workers.adapt.state import restore_optimizer

    if saved is None:
        return 0, 0
    tensors, info = saved
    with torch.no_grad():
        for name, p in zip(names, parameters):
            p.copy_(tensors[f"adapter.{name}"])
    restore_optimizer(optimizer, "opt", tensors, info["param_groups"])
    counters["resumed"] += info["optimizer_steps"]
    return info["step"], info["optimizer_steps"]
