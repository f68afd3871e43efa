"""Shared by the encoder-adapter methods: the inter_encoder callback that trains (or reloads from the unit's
checkpoint) the adapters of each GoP with patch-based GoP updating (seed 002, Algorithm 1)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from workers.methods.registry import AdaptContext

log = logging.getLogger(__name__)  # routed to the unit log by workers.run_layout.unit_logging


def gop_adapter_encoder(model, config, context: AdaptContext, counters: dict, checkpoint_prefix: str = "adapters"):
    """inter_encoder for SSFCodec.encode: after each I-frame, train the adapters on the GoP's P-frames.
    ``counters`` accumulates "steps", "resumed" and "seconds" while the sequence is encoded; adapters trained
    on another model in the same unit need another ``checkpoint_prefix`` (their states must not mix)."""
    from workers.adapt.adapters import with_adapters
    from workers.adapt.state import load_state
    from workers.codec.ssf import pad_frame
    from workers.device import module_device
    from workers.video_io import SourceFrames

    header = context.codec.header(context.video, context.intra_period)
    device = module_device(model)  # the adapters train where the model was placed (workers/device.py)
    padded = SourceFrames(context.video, lambda frame: pad_frame(frame.unsqueeze(0).to(device)))  # (1, 3, H16, W16)
    adapted, parameters = with_adapters(model, config)
    optimizer = torch.optim.Adam(parameters, lr=config.learning_rate)
    names = [n for n, p in adapted.named_parameters() if p.requires_grad]
    starts = [i for i in range(header.frame_count) if header.is_intra(i)]

    def callback(index: int, intra_hat: torch.Tensor):
        gop = starts.index(index)
        end = starts[gop + 1] if gop + 1 < len(starts) else header.frame_count
        path = context.checkpoint_dir / f"{checkpoint_prefix}-gop{gop:05d}.safetensors"
        start_step, gop_steps = _restore(load_state(path, context.config_json), names, parameters, optimizer, counters)
        if gop_steps:
            log.info("resumed the adapters of GoP %d from checkpoint %s at step %d", gop, path, start_step)
        # otherwise the adapters carry over from the previous GoP, as theta_u does in Algorithm 1
        if end - index >= 2 and start_step < config.steps:
            gop_steps = _train_gop(adapted, parameters, optimizer, names, list(padded[index:end]), intra_hat, header,
                                   config, context, gop, path, start_step, gop_steps, counters)
        counters["steps"] += gop_steps
        return adapted

    return callback


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


def _train_gop(adapted, parameters, optimizer, names, frames, intra_hat, header, config, context: AdaptContext,
               gop: int, path: Path, start_step: int, gop_steps: int, counters: dict) -> int:
    """Train one GoP's adapters from ``start_step``, checkpointing; returns the GoP's optimizer steps."""
    from workers.adapt.state import optimizer_tensors, save_state
    from workers.adapt.training import train_gop_adapters

    steps = {"n": gop_steps}

    def on_log(record: dict) -> None:
        steps["n"] += 1
        context.log({"phase": "gop-adapters", "gop": gop, **record})

    def checkpoint(step: int) -> None:
        opt_tensors, groups = optimizer_tensors(optimizer, "opt")
        tensors = {f"adapter.{n}": p.detach().clone() for n, p in zip(names, parameters)} | opt_tensors
        save_state(path, tensors, {"config": context.config_json, "step": step, "param_groups": groups,
                                   "optimizer_steps": steps["n"]})

    began = time.perf_counter()
    train_gop_adapters(adapted, parameters, optimizer, frames, intra_hat, (header.height, header.width), config,
                       context.lmbda, start_step, checkpoint, on_log=on_log, gop=gop)
    counters["seconds"] += time.perf_counter() - began
    return steps["n"]
