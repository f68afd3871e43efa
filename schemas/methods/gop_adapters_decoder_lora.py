"""Config of method ``gop-adapters+decoder-lora``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.methods._shared import SEND_UPDATE_HELP, SendUpdate
from schemas.methods.decoder_lora import DecoderLoraConfig
from schemas.methods.gop_adapters import GopAdaptersConfig
from schemas.methods.registry import register_method_config


@register_method_config
class GopAdaptersDecoderLoraConfig(BaseModel):
    """Both: decoder LoRA trained on the sequence first, then per-GoP encoder adapters on top of it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    method: Literal["gop-adapters+decoder-lora"] = "gop-adapters+decoder-lora"
    send_update: SendUpdate = Field("if-better", description=SEND_UPDATE_HELP)
    lora: DecoderLoraConfig = DecoderLoraConfig()
    adapters: GopAdaptersConfig = GopAdaptersConfig()
