"""Config of method ``none``: the base codec unchanged."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from schemas.methods.registry import register_method_config


@register_method_config
class NoneConfig(BaseModel):
    """The base model, unchanged: the reference every method is compared with."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    method: Literal["none"] = "none"
