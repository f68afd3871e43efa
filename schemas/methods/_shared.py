"""Options shared by several methods: the weight prior, decoder-side training, when to send an update."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class WeightPrior(BaseModel):
    """Spike-and-slab prior p(d) = [N(d|0, sigma^2) + alpha N(d|0, spike_std^2)] / (1 + alpha) on every
    coded weight update d, quantized on a grid of width ``grid`` (van Rozendaal et al.; PEVC)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    grid: float = Field(0.005, gt=0, description="quantization step t of the weight updates")
    slab_std: float = Field(0.05, gt=0, description="sigma: std of the wide (slab) component")
    spike_std: float | None = Field(None, gt=0, description="s: std of the narrow (spike) component; default grid/6")
    alpha: float = Field(1000.0, gt=0, description="weight of the spike relative to the slab")

    @property
    def spike(self) -> float:
        return self.spike_std if self.spike_std is not None else self.grid / 6.0


class DecoderTraining(BaseModel):
    """How a decoder-side update is trained on the test video itself.

    An epoch visits every training clip (``train_gop`` consecutive frames, starting at multiples of
    ``train_gop``) once in a seeded order, ``batch`` clips per step, each a random ``crop`` x ``crop`` window.
    The learning rate warms up, then decays on a cosine; every ``eval_every`` epochs the RD cost of the
    quantized update on the sequence is evaluated and the best state (the base model included) is kept.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    epochs: int = Field(8, ge=0, description="0 = no training: the update stays zero (PEVC: 15 on GPU)")
    min_steps: int = Field(0, ge=0, le=100_000, description=(
        "at least this many optimizer steps: short sequences run more epochs (0 = exactly ``epochs``; a "
        "10-frame clip has 2 steps per epoch, 41-frame calendar 6: 8 epochs were 16 and 48 steps). decoder-lora "
        "and full-decoder default to 64"))
    train_gop: int = Field(4, ge=1, le=32, description="frames per training clip: I + P-frames (PEVC: 4)")
    batch: int = Field(2, ge=1, description="clips per step (PEVC: 3)")
    crop: int = Field(256, ge=128, description="crop side in px, a multiple of 128 (whole frame if smaller)")
    learning_rate: float | None = Field(None, gt=0, description=(
        "peak Adam learning rate; None (default) ties it to the prior's grid: step_cells * prior.grid. A fixed lr "
        "above the grid lets one straight-through step jump several grid cells (measured on main: lr 3e-3 = 1.5 "
        "cells of the LoRA grid, the loss ended above its start on carphone)"))
    step_cells: float = Field(1.0, gt=0, le=8, description=(
        "peak Adam step in grid cells when learning_rate is None: Adam moves a weight by at most ~lr per step, so "
        "1 keeps a step from jumping several quantization cells (carphone q1 at 0.5 cells: no weight left the zero "
        "bin in the first epoch)"))
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="share of the steps over which lr rises linearly to its peak")
    final_lr_fraction: float = Field(0.05, ge=0, le=1, description=(
        "cosine decay from the peak to this fraction of it at the last step: the schedule ends below where it starts"))
    adam_eps: float = Field(1e-3, gt=0, description=(
        "Adam's epsilon, of the order of the update's gradients: with the default 1e-8 Adam moves every weight by "
        "~lr per step whatever its gradient, so within a few steps most weights leave the zero bin and the payload "
        "explodes (measured on foreman: 5.3 Mbit after 10 steps at lr 1e-3); eps ~ |gradient| keeps weak-gradient "
        "weights at zero"))
    rate_gradient_spike_cells: float | None = Field(None, gt=0, le=8, description=(
        "the weight rate's gradient is taken from the prior with its spike std set to this many grid cells (its "
        "value stays the exact coded cost); None: the prior's own spike (grid/6 by default), whose pull at the "
        "zero bin's edge kept every weight of carphone's LoRA at zero"))
    first_stage_fraction: float = Field(0.0, ge=0, le=1, description=(
        "share of the epochs (rounded down) in which only the update's first-stage tensors train (decoder-lora: "
        "the biases), before everything trains; the states evaluated in that stage are candidates too, so a "
        "sequence where the few first-stage numbers pay and the rest cannot (carphone, issue 14) keeps them; when no "
        "first-stage state beat the base, the first-stage tensors go back to zero and stay there (foreman, issue 14). "
        "0: everything trains from the start"))
    first_stage_extra: bool = Field(False, description=(
        "True: the first-stage epochs come before the ``epochs`` in which everything trains (which then keep their "
        "full count, the learning-rate schedule restarting for them); False: they are a share of ``epochs``. Issue "
        "14: with the share, the LoRA trained for half of the epochs and calendar q3 fell from -15.3% to -9.4% RD "
        "cost against none"))
    first_stage_step_cells: float = Field(0.25, gt=0, le=8, description=(
        "peak Adam step of the first-stage tensors (the biases) in grid cells, in both stages: a bias moves a whole "
        "channel, so one cell per step is too much (carphone q1, biases alone, 120 steps: lr 5e-4 = 0.25 cells "
        "-2.3% estimated RD cost, 2e-3 = 1 cell +30%; /tmp/lora2/bias.py)"))
    eval_every: int = Field(1, ge=1, description=(
        "epochs between evaluations of the sequence RD cost (best-state keeping); also after the last epoch"))
    evaluate: Literal["coded", "estimate"] = Field("coded", description=(
        "how a state's RD cost is measured for best-state keeping: coded (default) codes the whole sequence with "
        "the decoder the payload rebuilds and counts every byte written, exactly the final send decision; "
        "estimate uses the likelihoods' ideal bits (cheaper): on foreman q1 they put the kept state's latents "
        "2.5% below the base's where the coded stream was 0.14% below, and the unit was not sent (issue 14)"))
    eval_crop: int | None = Field(None, ge=128, description=(
        "None (default): the RD cost that picks the kept state is evaluated on the whole frames, what is sent; "
        "else the side in px of a centred window (whole frame if smaller), a multiple of 128, which bounds the "
        "evaluation's time on large frames but can pick a state the whole sequence rejects (issue 14: foreman's "
        "256 window scored a state 3.3% below the base, the whole sequence 0.44% above)"))
    checkpoint_every: int = Field(5, ge=1, description="steps between atomic state checkpoints")

    @model_validator(mode="after")
    def _crop_multiple(self) -> "DecoderTraining":
        if self.crop % 128 or (self.eval_crop is not None and self.eval_crop % 128):
            raise ValueError("crop and eval_crop must be multiples of 128")
        return self


SendUpdate = Literal["if-better", "always"]
SEND_UPDATE_HELP = ("if-better: send the adapted result only when its RD cost (payload included) beats the base "
                    "model's on this sequence; always: send it regardless (for experiments)")
