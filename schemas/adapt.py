"""Results of per-video adaptation (`adaptjobs adapt`, one unit of a run) and the payload header.

Method configs live one module per method in schemas/methods/ (registered there; the union
``MethodConfig`` and ``METHOD_CONFIGS`` are built from the registry). They are re-exported here for the
modules that import them from schemas.adapt.
"""

from __future__ import annotations


from pydantic import BaseModel, ConfigDict, Field

from schemas.methods import METHOD_CONFIGS, MethodConfig, MethodName
from schemas.methods._shared import SEND_UPDATE_HELP, DecoderTraining, SendUpdate, WeightPrior
from schemas.methods.decoder_lora import DecoderLoraConfig
from schemas.methods.full_decoder import FullDecoderConfig
from schemas.methods.gop_adapters import GopAdaptersConfig
from schemas.methods.gop_adapters_decoder_lora import GopAdaptersDecoderLoraConfig
from schemas.methods.none import NoneConfig
from schemas.results import EncodeResult

__all__ = ["METHOD_CONFIGS", "MethodConfig", "MethodName", "SEND_UPDATE_HELP", "DecoderTraining", "SendUpdate",
           "WeightPrior", "DecoderLoraConfig", "FullDecoderConfig", "GopAdaptersConfig",
           "GopAdaptersDecoderLoraConfig", "NoneConfig", "EncodeResult", "AdaptResult", "PayloadHeader",
           "JsonPayloadHeader"]


class AdaptResult(EncodeResult):
    """One adapted sequence: EncodeResult (rates of the .bits alone) plus the payload and the decision."""

    payload: str | None = Field(None, description="path of the .payload file; None when nothing is sent")
    payload_bytes: int = Field(0, ge=0)
    bpp_without_payload: float = Field(ge=0)
    bpp_with_payload: float = Field(ge=0, description="(bits + payload bytes) * 8 / (W * H * frames)")
    payload_share: float = Field(ge=0, le=1, description="(payload + in-stream update bytes) / (bitstream + payload "
                                                        "bytes): the share of the rate spent on weights")
    update_bytes_in_stream: int = Field(0, ge=0, description="bytes of a weight update carried inside the stream "
                                                             "(x264/x265 post-filter SEI); counted in bytes_written")
    method_details: dict | None = Field(None, description="method-specific record (postfilter-adapt: its decision)")
    update_sent: bool = Field(description="whether the adapted result (not the base model's) was sent")
    decision: str = Field(
        min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9-]*$",
        description="what was sent and why (methods may add their own labels): sent: the adapted result; "
                    "sent-lora-only (gop-adapters+decoder-lora): the LoRA update without the encoder adapters was "
                    "cheapest and was sent; sent-adapters-only (gop-adapters+decoder-lora): encoder adapters trained on the "
                    "base model, no payload, were cheapest and were sent; base-cheaper: nothing adapted beat the base codec's RD cost; "
                    "zero-update: the method produced nothing to try; base-method: none")
    rd_cost: float = Field(description="lambda * 255^2 * MSE + bpp_with_payload of what was sent")
    rd_cost_base: float = Field(description="the same for the base model on this sequence")
    bpp_base: float = Field(description="bpp of the base model's stream on this sequence (the `none` point)")
    psnr_rgb_base: float = Field(description="PSNR-RGB of the base model's stream on this sequence")
    rd_cost_adapted: float | None = Field(None, description="the same for the adapted result, sent or not "
                                                            "(None when there was nothing to try)")
    bpp_adapted: float | None = Field(None, description="bits + payload per pixel of the adapted result, sent or not")
    psnr_rgb_adapted: float | None = Field(None, description="PSNR-RGB of the adapted result, sent or not")
    lmbda: float
    adaptation_steps: int = Field(ge=0)
    train_seconds: float = Field(0.0, ge=0, description="time spent in training loops (decoder update, adapters)")
    adapt_seconds: float = Field(ge=0, description="the whole unit: base encode, training, final encode, verification")
    resumed_from_step: int = Field(0, ge=0, description="steps found in the checkpoint when this run started")
    config: dict


class PayloadHeader(BaseModel):
    """What a decoder needs, besides the base model, to rebuild the adapted weights from the coded indices
    (the parsed header of any payload format; workers/adapt/payload.py gives the byte layouts).

    Only what the decoder cannot rebuild travels: the base model's identity, the method and the options that
    fix the update's tensors (``structure``, e.g. LoRA variant, ranks and the seed of A's initialisation), the
    prior and the table bound. The tensor list itself (names, shapes, order) is rebuilt by the decoder from
    the base model and ``structure``; ``tensors_fingerprint`` fingerprints it so a mismatch is refused.
    (Sending the list and the full training config cost 1.9 KB per payload, more than the coded weights of a
    decoder-lora update at low rates; format 3's JSON of this header cost ~300 bytes, format 4's binary
    fields 34 for decoder-lora, 33 in format 4.) The coded symbols are the grid indices of every tensor, flattened row-major
    in that order, shifted by ``bound`` into 0..2*bound.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_id: str = Field(pattern="^([0-9a-f]{16}|[0-9a-f]{64})$", description=(
        "the base model's weights sha256 in hex: whole (formats 2, 3) or its first 8 bytes (format 4; 64 bits "
        "tell the few models adaptjobs ever ships apart, see schemas/side_info.py filter_id)"))
    method: str = Field(min_length=1, max_length=64)
    structure: dict = Field(description="the method options that fix the update's tensors (the method's STRUCTURE_FIELDS)")
    prior: WeightPrior
    bound: int = Field(ge=1, le=1 << 20, description="K: the table covers grid indices -K..K")
    tensors_fingerprint: str = Field(pattern="^([0-9a-f]{8}|[0-9a-f]{16})$", description=(
        "first hex digits of the sha256 of the (name, shape) list in coding order (format 3 on: with the method "
        "and structure): 16 in formats 2 and 3, 8 in format 4"))

    def made_for(self, weights_sha256: str) -> bool:
        """Whether this payload names the base model whose weights hash to ``weights_sha256`` (hex)."""
        return weights_sha256.startswith(self.base_id)


class JsonPayloadHeader(BaseModel):
    """The header of payload formats 2 and 3 as it was written: UTF-8 JSON (keys sorted); read, never written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_weights_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    method: str = Field(min_length=1, max_length=64)
    structure: dict
    prior: WeightPrior
    bound: int = Field(ge=1, le=1 << 20)
    tensors_sha256: str = Field(pattern="^[0-9a-f]{16}$")

    def parsed(self) -> PayloadHeader:
        return PayloadHeader(base_id=self.base_weights_sha256, method=self.method, structure=self.structure,
                             prior=self.prior, bound=self.bound, tensors_fingerprint=self.tensors_sha256)
