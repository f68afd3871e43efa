"""Config of method ``decoder-lora``."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.methods._shared import SEND_UPDATE_HELP, DecoderTraining, SendUpdate, WeightPrior
from schemas.methods.registry import register_method_config

# Bounds a --set or a payload structure may ask for (the same numbers as workers.limits MAX_LORA_RANK and
# MAX_STRUCTURE_ITEMS): a rank above the widest layer (192 channels x 5x5 kernel) adds nothing, and a
# negative or zero rank is a tensor that cannot exist (issue 11: ranks=[-3] failed in every unit at run time).
MAX_RANK = 1024
MAX_RANKS = 64


@register_method_config
class DecoderLoraConfig(BaseModel):
    """LoRA on every ConvTranspose2d of the I-frame, motion and residual decoders (PEVC, seed 003).

    ``extended``: A in R^{rK x Cin K}, B in R^{Cout K x rK}, dW = reshape(BA).
    ``repeat``:   A in R^{r x Cin},    B in R^{Cout x r},    dW = BA tiled over the K x K kernel.
    A starts from a generator seeded with ``init_seed`` (stored in the payload, so never sent), B from
    zeros; the payload codes B and A - A_init. A rank of 0 leaves that deconv without LoRA.

    ``biases``: every deconv's per-output-channel bias is coded too (BitFit-style: 441 numbers on the
    shipped model, the last deconvs' 3 a per-colour offset). Issue 14: on carphone q1 a LoRA index costs
    ~10-12 bits and none pays, while the biases alone lowered the estimated sequence RD cost by 2.3% with
    2.6 kbit of payload (/tmp/lora2/bias.py, lr 5e-4, 120 steps). Training moves the biases alone for
    ``training.first_stage_fraction`` x ``epochs`` extra epochs, then everything for ``epochs`` epochs (the
    biases back at zero and frozen if none of their states beat the base); the payload leaves out a group whose indices are all zero
    (ranks 0 or biases off), so the coded evaluation judges bias-only states too.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    method: Literal["decoder-lora"] = "decoder-lora"
    STRUCTURE_FIELDS: ClassVar[tuple[str, ...]] = ("variant", "ranks", "init_seed", "biases")  # what the payload carries
    send_update: SendUpdate = Field("if-better", description=SEND_UPDATE_HELP)
    variant: Literal["extended", "repeat"] = "extended"
    ranks: tuple[Annotated[int, Field(ge=0, le=MAX_RANK)], ...] = Field(
        (16, 8, 8, 2), min_length=1, max_length=MAX_RANKS, description=(
            "rank per deconv, first layer first (the last repeats); 0: no LoRA on that deconv"))
    init_seed: int = Field(0, ge=0, lt=2**31)
    biases: bool = Field(True, description="also code every deconv's per-output-channel bias (payload format 5)")
    prior: WeightPrior = WeightPrior(grid=0.002)
    training: DecoderTraining = DecoderTraining(min_steps=64, first_stage_fraction=0.5, first_stage_extra=True)
    seed: int = Field(0, ge=0, description="crop and clip order")

    @model_validator(mode="after")
    def _codes_something(self) -> "DecoderLoraConfig":
        if not self.biases and not any(self.ranks):
            raise ValueError("ranks all 0 and biases off: the update would have no tensor")
        return self
