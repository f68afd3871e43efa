"""Config of method ``full-decoder``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.methods._shared import SEND_UPDATE_HELP, DecoderTraining, SendUpdate, WeightPrior
from schemas.methods.registry import register_method_config


@register_method_config
class FullDecoderConfig(BaseModel):
    """Every weight and bias of the three decoders fine-tuned; W - W_base coded (van Rozendaal et al.).
    The entropy models are not adapted (their tables would have to travel too)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    method: Literal["full-decoder"] = "full-decoder"
    STRUCTURE_FIELDS: ClassVar[tuple[str, ...]] = ()  # every decoder weight: nothing to choose
    send_update: SendUpdate = Field("if-better", description=SEND_UPDATE_HELP)
    prior: WeightPrior = WeightPrior(grid=0.001)
    training: DecoderTraining = DecoderTraining(min_steps=64)
    seed: int = Field(0, ge=0)
