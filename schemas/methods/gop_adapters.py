"""Config of method ``gop-adapters``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.methods._shared import SEND_UPDATE_HELP, SendUpdate
from schemas.methods.registry import register_method_config


@register_method_config
class GopAdaptersConfig(BaseModel):
    """Encoder-side adapters trained per GoP with patch-based GoP updating (seed 002, Algorithm 1).

    Parallel adapters beside every conv of the motion and residual encoders, serial adapters after the
    motion and residual hyper-encoders (the paper's, for P-frames); with ``intra_steps`` the same on the image
    encoder and hyper-encoder, for I-frames (beyond the paper). Nothing is sent: a stock decoder decodes the
    stream.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    method: Literal["gop-adapters"] = "gop-adapters"
    send_update: SendUpdate = Field("if-better", description=SEND_UPDATE_HELP)
    hidden_channels: int = Field(8, ge=1, description="C_dw, the adapter's squeezed width")
    kernel_size: int = Field(3, ge=1, le=7, description="M, the depthwise kernel")
    steps: int = Field(16, ge=0, description="MAX: passes over the GoP's patch-GoPs; with keep_best the coded cost of "
                                             "one GoP is far from monotone in the passes (carphone q4 GoP 0, lr 1e-4: "
                                             "-0.45% after 4, -1.84% after 16, +0.24% after 32; the best of 32 was "
                                             "pass 16), so more passes mostly buy more evaluated candidates")
    patch: int = Field(128, ge=128, description="patch-GoP side in px, a multiple of 128")
    learning_rate: float = Field(1e-4, gt=0, description="Adam's; at 1e-3 the coded cost of carphone q1 GoP 0 rose "
                                                         "+30% in 16 passes; best of 16 evaluated passes (issue 14, "
                                                         "benchmarks/RESULTS.md gopad): 1e-4 -1.54% / -1.84% / -1.64% "
                                                         "on carphone q1 GoP 3 / carphone q4 GoP 0 / foreman q2, "
                                                         "1e-5 0% / -1.31% / -3.06%, 3e-5 0% / -1.58% / -")
    rate_proxy: Literal["noise", "rounded", "table", "coder"] = Field(
        "coder", description="what the rate term is evaluated at while training: the rounded latents (the coded "
                             "cost, straight-through) or latents + U(-0.5, 0.5); the noisy proxy estimated 0.152 bpp "
                             "for 12 P-frames the rounded one put at 0.0185 (issue 14, carphone q1, base encoder), so "
                             "it optimised bits the coder never pays"
                             "; table: the rounded latents priced under the coding table's scales "
                             "(snapped up to the next of 64 entries, straight-through); coder (the default): as "
                             "table, with the coder's probability floor (2^-24) added to y's and z's likelihoods, so "
                             "a far-tail symbol costs the ~24 bits the coder pays, not the ~31 the float density "
                             "charges: the estimate is then the coded rate (mobile q1 P-frames: coded 0.18% below "
                             "it, against 3.23% below the rounded proxy's; benchmarks/RESULTS.md gopad-coder-proxy)")
    intra_steps: int = Field(64, ge=0, description=(
        "Adam steps of the I-frame adapters per GoP, on the whole I-frame, each step's state coded and the cheapest "
        "(or the base encoder) kept; 0: the I-frames are coded by the base encoder, as in the paper (which adapts "
        "P-frames only). I-frame RD cost, GoP 0, best of 64 steps at lr 1e-2: carphone q1 -28.6%, q4 -11.8%; "
        "foreman q4 -16.9%; mobile q1 -16.2%; calendar q1 -23.6% (benchmarks/RESULTS.md gopad-intra)"))
    intra_learning_rate: float = Field(1e-2, gt=0, description="Adam's, for the I-frame adapters; 1e-3 and 3e-3 "
                                                               "gained less in the same steps on every clip tried")
    keep_best: bool = Field(True, description="per GoP, code its P-frames with the base encoder and with the adapters "
                                             "every eval_every passes, and keep the cheapest by the coded RD cost "
                                             "(nothing is sent either way, so the choice is free in the stream and "
                                             "no GoP costs more than the base encoder)")
    eval_every: int = Field(1, ge=1, description="passes between two coded evaluations of the adapters (and after "
                                                 "the last pass), when keep_best")
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _patch_multiple(self) -> "GopAdaptersConfig":
        if self.patch % 128:
            raise ValueError("patch must be a multiple of 128")
        return self
