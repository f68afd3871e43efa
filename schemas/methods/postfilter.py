"""Config of method ``postfilter``: the standard stream plus the shipped post-filter, named in its SEI."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.methods._shared import SEND_UPDATE_HELP, SendUpdate
from schemas.methods.registry import register_method_config


@register_method_config
class PostFilterConfig(BaseModel):
    """x264/x265 plus the shipped learned post-filter (no update): sent only where it lowers the RD cost."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["postfilter"] = "postfilter"
    send_update: SendUpdate = Field("if-better", description=SEND_UPDATE_HELP.replace("update", "filtered stream"))
